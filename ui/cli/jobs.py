"""Headless parity: `train`, `jobs`, `show`, `cancel`, `resume`, `export`, `demo`.

Everything the wizard does with jobs, a script can do: the same plan (YAML file or flags),
the same store, stable JSON. Without --wait a command returns at once and the job runs on
in its own process; with --wait it prints progress and exits 0 only if the job succeeded.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from engine.errors import UserError
from engine.plan import TrainingPlan, add_plan_flags, plan_from_args
from engine.train import script
from engine.units import human_bytes, human_seconds


def register(sub) -> None:
    p = sub.add_parser("train", help="queue a training job from a plan file and/or plan flags")
    p.add_argument("plan_file", nargs="?", metavar="PLAN.yaml", help="a plan saved by the wizard or `estimate`")
    add_plan_flags(p)
    p.add_argument("--anyway", action="store_true",
                   help="queue it even when the estimate says it needs more memory than the device has")
    _wait_flag(p)
    p.set_defaults(handler=cmd_train)

    p = sub.add_parser("jobs", help="list jobs, newest first")
    p.add_argument("--json", action="store_true", help="machine-readable list")
    p.set_defaults(handler=cmd_jobs)

    p = sub.add_parser("show", help="one job: status, estimate vs measured memory, metrics, log tail")
    p.add_argument("job_id", metavar="ID")
    p.add_argument("--json", action="store_true", help="machine-readable job with its metrics")
    p.set_defaults(handler=cmd_show)

    p = sub.add_parser("cancel", help="cancel a queued job, or stop a running one at its next step")
    p.add_argument("job_id", metavar="ID")
    p.set_defaults(handler=cmd_cancel)

    p = sub.add_parser("resume", help="continue an interrupted or cancelled job from its last checkpoint")
    p.add_argument("job_id", metavar="ID")
    _wait_flag(p)
    p.set_defaults(handler=cmd_resume)

    p = sub.add_parser("export", help="write the job's zip (the adapter; the whole model for method full) and print "
                                      "its path, print its plan as code (--as python|yaml|cli), or write GGUF "
                                      "files for llama.cpp/Ollama/LM Studio checked by llama.cpp (--as gguf)")
    p.add_argument("job_id", metavar="ID")
    p.add_argument("--as", dest="as_code", choices=(*script.FORMATS, "gguf"), default=None,
                   help="print the plan instead: a standalone transformers+PEFT+TRL script, YAML, "
                   "or the train command; gguf: write GGUF files and a Modelfile into the job's folder")
    p.add_argument("--quant", default="f16", help="with --as gguf: the merged file's precision, "
                   "f16 (default), q8_0, bf16, f32, q5_1, q5_0, q4_1 or q4_0")
    p.set_defaults(handler=cmd_export)

    p = sub.add_parser("demo", help="train the embedded default model on a demo skill")
    p.add_argument("--skill", default=None, help="demo skill name (see the wizard's demo list)")
    _wait_flag(p)
    p.set_defaults(handler=cmd_demo)


def _wait_flag(p) -> None:
    p.add_argument("--wait", action="store_true", help="stay, print progress, exit 0 only if the job succeeds")


# --- handlers --------------------------------------------------------------------------

def cmd_train(ns) -> int:
    base = None
    if ns.plan_file:
        path = Path(ns.plan_file)
        if not path.is_file():
            raise UserError("plan", f"file not found: {path}")
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise UserError("plan", f"{path} is not UTF-8 text; a plan is a YAML file") from None
        base = TrainingPlan.from_yaml(text, source=str(path))
    plan = plan_from_args(ns, base=base)
    if not ns.anyway:
        _refuse_misfit(plan)
    return _submit(plan, ns.wait)


def _refuse_misfit(plan: TrainingPlan) -> None:
    """The wizard's launch refusal, on the command line: a plan the estimate says cannot fit is not
    queued (it would fail at its first steps) unless --anyway; the message names the fix."""
    from engine.advice import fitting
    from engine.estimate.combined import memory_for

    try:
        mem = memory_for(plan)
    except UserError:
        return  # the submit's validation names what is wrong with the plan itself
    if mem.fits is not False:
        return
    found = fitting.fix(plan)
    fix = (f"; to fit: {'; '.join(step.what for step in found[0])}" if found else
           "; nothing in LoRA Pilot's fitting steps makes it fit: a smaller model or a larger device")
    raise UserError("memory", f"not queued: {mem.verdict}{fix}. Add --anyway to queue it regardless")


def cmd_demo(ns) -> int:
    from engine.data import demo

    if ns.skill is not None and ns.skill not in demo.SKILLS:
        raise UserError("skill", f"unknown demo skill '{ns.skill}'; choose one of {', '.join(demo.SKILLS)}")
    return _submit(demo.default_plan(ns.skill) if ns.skill else demo.default_plan(), ns.wait)


def _submit(plan: TrainingPlan, wait: bool) -> int:
    from jobs import dispatcher

    # Waiting means the user wants the result soon: start the worker's imports alongside validation.
    job = dispatcher.submit(plan, standby=dispatcher.standby() if wait else None)
    print(f"job {job.id} {job.status}: {job.name}")
    return _submit_wait(job, wait)


def _submit_wait(job, wait: bool) -> int:
    print(f"artifacts: {job.artifact_dir}")
    if not wait:
        print(f"runs in the background; follow it with `python app.py show {job.id}`")
        return 0
    return _wait(job.id)


def cmd_jobs(ns) -> int:
    from jobs import dispatcher, stall, store

    dispatcher.reconcile()
    jobs = store.list_jobs()
    if ns.json:
        print(json.dumps([store.job_summary(j) for j in jobs], indent=2))
        return 0
    if not jobs:
        print("no jobs yet; start one with `python app.py train PLAN.yaml` or `python app.py demo`")
        return 0
    rows = [("ID", "STATUS", "PROGRESS", "BASE", "ADAPTER", "CREATED", "NAME")]
    for j in jobs:
        rows.append((str(j.id), j.status + (" (stalled)" if stall.stalled_since(j) else ""),
                     f"{j.progress * 100:.0f}% {j.step}/{j.total_steps or '?'}",
                     _pct(j.base_score), _pct(j.adapter_score),
                     j.created_at.strftime("%Y-%m-%d %H:%M"), j.name))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)) + "  " + r[-1])
    return 0


def cmd_show(ns) -> int:
    from jobs import dispatcher, gguf_export, stall, store

    dispatcher.reconcile()
    job = store.get_job(ns.job_id)
    detail = store.job_detail(job)
    detail["exports"] = gguf_export.exports(job)
    if ns.json:
        print(json.dumps(detail, indent=2))
        return 0
    print(f"job {job.id}: {job.name}")
    running = job.status == store.JobStatus.RUNNING
    print(f"  status     {job.status}" + (f" (pid {job.pid}, {job.device or 'starting'})" if running else ""))
    stalled = stall.describe(job)
    if stalled:
        print(f"  STALLED    {stalled}")
    print(f"  progress   {job.progress * 100:.0f}%  step {job.step}/{job.total_steps or '?'}"
          + (f"  eta {human_seconds(job.eta_seconds)}" if job.eta_seconds else ""))
    print(f"  memory     estimated {human_bytes(job.estimated_peak_bytes)}, "
          f"measured {human_bytes(job.measured_peak_bytes)}")
    if job.base_score is not None or job.adapter_score is not None:
        print(f"  score      base {_pct(job.base_score)} -> adapter {_pct(job.adapter_score)}")
    if job.error:
        print(f"  reason     {job.error}")
    if job.host or job.ray_job_id:
        print(f"  ran on     {job.host or '?'}" + (f" (Ray job {job.ray_job_id})" if job.ray_job_id else ""))
    print(f"  folder     {job.artifact_dir}")
    if detail["exports"]:
        print(f"  gguf       {gguf_export.summary(detail['exports']['gguf'])}")
    from ui.cli.runs import show_lines

    for line in show_lines(detail):
        print(line)
    metrics = detail["metrics"]
    if metrics:
        print("  last metrics:")
        for m in metrics[-5:]:
            print(f"    step {m['step']:>5}  loss {_f(m['loss'])}  eval {_f(m['eval_loss'])}  "
                  f"lr {_f(m['learning_rate'], '.2e')}  tok/s {_f(m['tokens_per_second'], '.0f')}")
    tail = store.log_tail(job.id, lines=10)
    if tail:
        print("  log (last lines):")
        print("\n".join("    " + line for line in tail.splitlines()))
    return 0


def cmd_cancel(ns) -> int:
    from jobs import dispatcher

    job = dispatcher.cancel(ns.job_id)
    print(f"job {job.id} {job.status}" + (f": {job.error}" if job.error else ""))
    return 0


def cmd_resume(ns) -> int:
    from jobs import dispatcher

    job = dispatcher.resume(ns.job_id)
    print(f"job {job.id} {job.status}: resuming from step {job.step}")
    return _wait(job.id) if ns.wait else 0


def cmd_export(ns) -> int:
    if ns.as_code == "gguf":
        return _export_gguf(ns.job_id, ns.quant)
    if ns.as_code:
        from jobs import store

        print(script.render(store.job_plan(store.get_job(ns.job_id)), ns.as_code), end="")
        return 0
    from jobs.export import export_zip

    print(export_zip(ns.job_id))
    return 0


def _export_gguf(job_id, quant: str) -> int:
    from jobs import gguf_export

    record = gguf_export.export(job_id, quant, progress=lambda line: print(line, file=sys.stderr, flush=True))
    for path in record["files"]:
        print(path)
    print(gguf_export.summary(record), file=sys.stderr)
    print(f"took {record['seconds']} s", file=sys.stderr)
    flagged = [c for c in record["checks"] if c["flagged"]]
    for c in flagged:
        print(f"FLAGGED {Path(c['file']).name}: llama.cpp disagrees with LoRA Pilot on most held-out prompts; "
              f"first difference at {c.get('first_difference')}", file=sys.stderr)
    return 1 if flagged else 0


# --- waiting -------------------------------------------------------------------------------

def _wait(job_id: int, poll_s: float = 0.5) -> int:
    """Follow the job's rows until it finishes. Ctrl-C leaves the job running."""
    from jobs import dispatcher, store

    last = None
    try:
        while True:
            job = store.get_job(job_id)
            if job.status == store.JobStatus.RUNNING and job.pid and not dispatcher.worker_alive(job.pid, job_id):
                dispatcher.reconcile()
                job = store.get_job(job_id)
            metrics = store.job_metrics(job_id) if job.status == store.JobStatus.RUNNING else []
            loss = next((m.loss for m in reversed(metrics) if m.loss is not None), None)
            line = (f"{job.status}" + (f" ({job.phase})" if job.status == "running" and job.phase else "")
                    + f"  step {job.step}/{job.total_steps or '?'}"
                    + (f"  loss {loss:.4f}" if loss is not None else "")
                    + (f"  eta {human_seconds(job.eta_seconds)}" if job.eta_seconds else ""))
            if line != last:
                print(line, flush=True)
                last = line
            if job.status in store.FINISHED:
                break
            time.sleep(poll_s)
    except KeyboardInterrupt:
        print(f"\nstopped waiting; job {job_id} keeps running (`python app.py show {job_id}`)", file=sys.stderr)
        return 130
    if job.base_score is not None or job.adapter_score is not None:
        print(f"score: base {_pct(job.base_score)} -> adapter {_pct(job.adapter_score)}")
    if job.status == store.JobStatus.SUCCEEDED:
        print(f"succeeded: adapter in {job.artifact_dir}")
        return 0
    print(f"{job.status}: {job.error or 'no reason recorded'} (log: {store.log_path(job_id)})", file=sys.stderr)
    return 1


def _pct(v) -> str:
    return "-" if v is None else f"{v:.0f}%"


def _f(v, fmt: str = ".4f") -> str:
    return "-" if v is None else format(v, fmt)
