"""Adapter switching and time to first token on the embedded default (SmolLM2-135M-Instruct).

Targets (issue 12, two otherwise idle cores; issue 25 on a loaded machine): switch to an already
loaded adapter <= 50 ms, load one from disk <= 500 ms, and in the playground every answer's first
streamed token (the base's and each adapter's, answered together) <= 1 s after the click when the
adapters are loaded. For contrast, the cost of the alternative without an adapter host: reloading
the base model.

The adapters are made here (PEFT, random non-zero weights, r 16 on all linear layers: the
demo plan's shape), so the figures do not depend on any job having run. The machine load
is printed beside the figures: on a shared machine they are upper bounds.

    python bench/bench_adapters.py [--repeat N] [--threads N]
"""

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def _median_ms(values) -> float:
    return round(statistics.median(values) * 1000, 1)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=10)
    ap.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1), help="torch threads")
    args = ap.parse_args()
    os.environ.setdefault("LORAPILOT_HOME", tempfile.mkdtemp(prefix="bench-adapters-"))

    import torch
    from peft import LoraConfig, get_peft_model

    from engine.adapters.host import AdapterHost, load_base_for_inference

    torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="adapters-"))
    folders = []
    for i in range(4):  # adapters shaped like the demo's (r 16, all linear layers)
        torch.manual_seed(i)
        model, _ = load_base_for_inference("default")
        peft = get_peft_model(
            model,
            LoraConfig(
                r=16, lora_alpha=32, target_modules="all-linear", init_lora_weights=False, task_type="CAUSAL_LM"
            ),
        )
        peft.save_pretrained(str(work / f"a{i}"))
        folders.append(work / f"a{i}")

    reloads = []
    for _ in range(3):
        t = time.perf_counter()
        load_base_for_inference("default")
        reloads.append(time.perf_counter() - t)

    t = time.perf_counter()
    host = AdapterHost("default", max_loaded=8)
    host_start = time.perf_counter() - t
    first_load = host.load("a0", str(folders[0]))  # also wraps the base in a PeftModel
    disk, disk_cpu = [], []
    for r in range(args.repeat):
        name = f"a{1 + r % 3}"
        host.unload(name)
        c = time.process_time()
        disk.append(host.load(name, str(folders[1 + r % 3])))
        disk_cpu.append(time.process_time() - c)
    for i in range(1, 4):
        host.load(f"a{i}", str(folders[i]))
    switches, switch_cpu = [], []
    names = ["a0", "a1", None, "a2", "a3"]
    for r in range(args.repeat * 5):
        c = time.process_time()
        switches.append(host.activate(names[r % len(names)]))
        switch_cpu.append(time.process_time() - c)

    prompt = "The printer in room 12 is broken, it is urgent."
    first_tokens, first_cpu = [], []
    for r in range(args.repeat):
        name = names[r % len(names)]
        t, c = time.perf_counter(), time.process_time()
        stream = host.generate(prompt, adapter=name, max_new_tokens=16)
        next(stream)
        first_tokens.append(time.perf_counter() - t)
        first_cpu.append(time.process_time() - c)  # all threads: up to `threads` x wall on idle cores
        stream.close()

    # the playground's own path: the click handler, to the first text in each answer box (base, bench-a, bench-b);
    # the figure is the last adapter's: every answer's first token after the click
    from jobs import library
    from ui.web import playground

    library.import_adapter(folders[0], name="bench-a", base="default")
    library.import_adapter(folders[1], name="bench-b", base="default")

    def click() -> list[float]:
        t, first = time.perf_counter(), {}
        for update in playground.compare("default", ["bench-a", "bench-b"], prompt, "", 64, 0.0, 1.0, False):
            for slot, box in enumerate(update[1:4]):
                if isinstance(box, dict) and box.get("value"):
                    first.setdefault(slot, time.perf_counter() - t)
        return [first.get(slot, float("nan")) for slot in range(3)]

    pg_cold = click()  # the host's adapters a0..a3 are other names: bench-a and bench-b load from disk
    pg_warm = [click() for _ in range(3)]
    load = os.getloadavg()
    print(
        f"machine: {os.cpu_count()} cores, load average {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f}, "
        f"torch threads {torch.get_num_threads()}"
    )
    rows = [
        ("reload the base (no host)", _median_ms(reloads), "-"),
        ("host start (base load)", round(host_start * 1000, 1), "-"),
        ("first adapter from disk (wraps PeftModel)", round(first_load * 1000, 1), "-"),
        ("adapter from disk (median)", _median_ms(disk), "<= 500 ms"),
        ("  its CPU time (median)", _median_ms(disk_cpu), "-"),
        ("switch to a loaded adapter (median)", _median_ms(switches), "<= 50 ms"),
        ("  its CPU time (median)", _median_ms(switch_cpu), "-"),
        (f"switch, worst of {len(switches)}", round(max(switches) * 1000, 1), "-"),
        ("first streamed token, host.generate (median)", _median_ms(first_tokens), "<= 1000 ms"),
        ("  its CPU time, all threads (median)", _median_ms(first_cpu), "-"),
        ("playground click to base's first token, 2 adapters from disk", round(pg_cold[0] * 1000, 1), "-"),
        ("playground click to last adapter's first token, from disk", round(max(pg_cold) * 1000, 1), "-"),
        ("playground click to base's first token, warm (median)", _median_ms([c[0] for c in pg_warm]), "-"),
        ("playground click to last adapter's first token, warm", _median_ms([max(c) for c in pg_warm]), "<= 1000 ms"),
    ]
    width = max(len(r[0]) for r in rows)
    for name, ms, target in rows:
        print(f"  {name.ljust(width)}  {ms:>9.1f} ms   target {target}")


if __name__ == "__main__":
    main()
