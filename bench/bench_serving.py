"""Multi-adapter serving on the embedded model: mixed-adapter batches vs one adapter at a time.

4 adapters x 8 concurrent requests (32 in all, greedy, the same prompts in every mode) go to the
endpoint's scheduler on one AdapterHost:
  mixed       - what the endpoint does: rows for different adapters share one batch (PEFT adapter_names)
  one-adapter - the same scheduler allowed one adapter per batch: each adapter's 8 requests together,
                adapters one after another (what serving without mixed batches does)
  sequential  - one request at a time (reference)
Prints requests/s, completion tokens/s and p50/p95 latency per mode (median of --repeats rounds,
modes interleaved so machine load hits them alike) and the mixed / one-adapter throughput ratio.
The adapters have random (non-zero) B matrices: serving cost does not depend on what they learned.

    python bench/bench_serving.py [--max-tokens 32] [--repeats 3] [--no-sequential]
"""

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

ADAPTERS, PER_ADAPTER = 4, 8
PROMPTS = [
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "Name three primary colours.",
    "Translate 'good morning' to Spanish.",
    "Give me a synonym for happy.",
    "What is 12 times 12?",
    "Summarise: the cat sat on the mat all day.",
    "List two uses of a paperclip.",
]


def make_adapters(base_dir: str, root: Path) -> dict[str, str]:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    folders = {}
    for i in range(ADAPTERS):
        torch.manual_seed(i + 1)
        model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
        config = LoraConfig(
            r=16,
            lora_alpha=32,
            target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
            init_lora_weights=False,
            task_type="CAUSAL_LM",
        )
        peft = get_peft_model(model, config)
        with torch.no_grad():  # keep the random adapters gentle, like trained ones
            for name, p in peft.named_parameters():
                if "lora_B" in name:
                    p.mul_(0.01)
        folders[f"skill{i}"] = str(root / f"skill{i}")
        peft.save_pretrained(folders[f"skill{i}"])
    return folders


def run_mode(host, requests_spec, mode: str, max_tokens: int) -> dict:
    from engine.adapters import batch

    runner = batch.HostRunner(host)
    sched = batch.Scheduler(
        runner,
        max_batch=1 if mode == "sequential" else 64,
        max_queue=64,
        max_adapters=host.max_loaded,
        mixed=mode == "mixed",
    )
    done: dict[int, float] = {}
    try:
        start = time.perf_counter()
        futures = []
        for i, (name, path, ids) in enumerate(requests_spec):
            f = sched.submit(batch.Request(ids, adapter=name, adapter_path=path, max_tokens=max_tokens, temperature=0))
            f.add_done_callback(lambda _f, i=i: done.__setitem__(i, time.perf_counter()))
            futures.append(f)
        results = [f.result(timeout=1800) for f in futures]
        wall = time.perf_counter() - start
    finally:
        sched.stop()
    latencies = sorted(done[i] - start for i in range(len(futures)))
    tokens = sum(r.completion_tokens for r in results)
    return {
        "wall": wall,
        "rps": len(results) / wall,
        "tps": tokens / wall,
        "tokens": tokens,
        "p50": statistics.median(latencies),
        "p95": latencies[int(0.95 * (len(latencies) - 1))],
        "batches": list(sched.batches),
        "texts": [r.text for r in results],
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--no-sequential", action="store_true")
    args = ap.parse_args()

    import torch

    from engine.adapters.host import AdapterHost
    from engine.model.default_model import default_model_dir

    base_dir = str(default_model_dir())
    host = AdapterHost("default", max_loaded=ADAPTERS)
    tok = host.tokenizer
    with tempfile.TemporaryDirectory() as tmp:
        folders = make_adapters(base_dir, Path(tmp))
        spec = []
        for j in range(PER_ADAPTER):  # interleaved arrival: skill0, skill1, skill2, skill3, skill0, ...
            for name, path in folders.items():
                messages = [{"role": "user", "content": PROMPTS[j]}]
                ids = tok(host.prompt_text(messages), add_special_tokens=False)["input_ids"]
                spec.append((name, path, ids))
        modes = ["mixed", "one-adapter"] + ([] if args.no_sequential else ["sequential"])
        run_mode(host, spec[:8], "mixed", 4)  # warm-up: loads the adapters, first-call overheads
        rounds = {m: [] for m in modes}
        for k in range(args.repeats):
            for m in modes:
                rounds[m].append(run_mode(host, spec, m, args.max_tokens))
                r = rounds[m][-1]
                print(f"  round {k + 1} {m}: {r['rps']:.2f} req/s, {r['wall']:.1f} s", flush=True)
    texts = {m: rounds[m][0]["texts"] for m in modes}
    # In bf16 a row's logits depend a little on how many rows share the matmul, so greedy answers
    # may part ways between batched and one-at-a-time decoding; mixed and one-adapter batches match.
    differ = ", ".join(
        f"{m} {sum(a != b for a, b in zip(texts[m], texts['mixed']))}/{len(texts[m])}" for m in modes if m != "mixed"
    )
    print(
        f"{ADAPTERS} adapters x {PER_ADAPTER} concurrent requests, max_tokens {args.max_tokens}, greedy; "
        f"torch threads {torch.get_num_threads()}, load avg {os.getloadavg()[0]:.1f}; "
        f"answers differing from mixed: {differ}"
    )
    print(f"{'mode':12} {'req/s':>7} {'tok/s':>7} {'p50 s':>7} {'p95 s':>7} {'wall s':>7}  batches")
    summary = {}
    for m in modes:
        med = {k: statistics.median(r[k] for r in rounds[m]) for k in ("rps", "tps", "p50", "p95", "wall")}
        summary[m] = med
        print(
            f"{m:12} {med['rps']:7.2f} {med['tps']:7.1f} {med['p50']:7.2f} {med['p95']:7.2f} {med['wall']:7.2f}  "
            f"{rounds[m][0]['batches']}"
        )
    print(
        f"mixed / one-adapter throughput: {summary['mixed']['rps'] / summary['one-adapter']['rps']:.2f}x "
        f"(target >= 2x); rounds: "
        + ", ".join(f"{r['rps']:.2f}/{o['rps']:.2f}" for r, o in zip(rounds["mixed"], rounds["one-adapter"]))
    )


if __name__ == "__main__":
    main()
