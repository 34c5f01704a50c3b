"""Training: a `TrainingPlan` in, an adapter folder out.

Read top to bottom: `load_base` finds and loads the base model (embedded default,
local folder, .gguf file, hub id; 4-bit NF4 for QLoRA), `lora_config` and
`sft_config` translate the plan into PEFT's and TRL's vocabulary, `_Reporter` turns
trainer logs into the typed events of engine.train.events, and `train` runs it all and
writes the artifacts. The worker process (jobs/) calls `train`; nothing here knows
about the database.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.data import demo
from engine.data.chat import ensure_chat_template
from engine.data.dataset import build_datasets
from engine.data.formats import dataset_of, read_source
from engine.data.ref import DatasetRef
from engine.errors import UserError, first_line
from engine.estimate import hardware
from engine.evaluate.heldout import Judge, remembering_evaluations
from engine.evaluate.split import holdout_rows, holdout_size
from engine.model import catalog, default_model, head_input
from engine.plan import TrainingPlan, resolve_dtype
from engine.train import (
    artifacts,
    checkpoints,
    config,
    distributed,
    dropout,
    events,
    faults,
    lm_head,
    preference,
    resolved,
    stopping,
    tracking,
)
from engine.train.peak import PeakMeter

Report = Callable[[events.Event], None]


@dataclass
class TrainResult:
    out_dir: Path
    steps: int
    stopped: bool
    peak_bytes: int | None  # None when no step ran (a resume that only redid the final save)
    base_score: float | None = None
    adapter_score: float | None = None
    final_loss: float | None = None
    total_steps: int | None = None
    stop_reason: str | None = None  # early stopping: why training ended before total_steps
    device: str = "cpu"
    peak_marks: list[int] | None = None  # CPU: live bytes at each tracked step's start (see engine.peak)


# --- device and precision -------------------------------------------------------------
def train_device(plan: TrainingPlan) -> str:
    import torch

    if (plan.gpu or "").strip().lower() == "cpu":
        return "cpu"
    return "cuda" if torch.cuda.is_available() else "cpu"


def dtype_name(plan: TrainingPlan, device: str) -> str:
    """The plan's compute precision on this device: fp32, bf16 or fp16."""
    import torch

    bf16_ok = torch.cuda.is_bf16_supported() if device == "cuda" else hardware.calibration().bf16_native
    name = resolve_dtype(plan.dtype, on_cpu=device == "cpu", bf16_ok=bf16_ok)
    if name == "fp16" and device == "cpu":
        raise UserError("dtype", "fp16 training needs a GPU; on the CPU use fp32 (or bf16)")
    return name


def torch_dtype(plan: TrainingPlan, device: str):
    import torch

    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[dtype_name(plan, device)]


# --- the base model --------------------------------------------------------------------
def model_source(spec: str) -> str:
    """A local folder `from_pretrained` can read, or a hub id."""

    if spec == "default":
        return str(default_model.default_model_dir())
    path = Path(spec).expanduser()
    if spec.lower().endswith(".gguf"):
        if not path.is_file():
            raise UserError("model", f"{spec} does not exist; give a path to a .gguf file")
        return str(default_model.gguf_to_hf(path))  # converted once, then a plain folder
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise UserError(
                "model",
                f"{spec} is a folder without config.json; give a Hugging Face model folder, a .gguf file or a hub id",
            )
        return str(path)
    if path.exists():
        raise UserError("model", f"{spec} is a file; give a model folder, a .gguf file or a hub id")
    if spec.startswith(("/", "./", "../", "~")):
        raise UserError("model", f"{spec} does not exist; give a model folder, a .gguf file or a hub id")

    return catalog.hub_id_of(spec)  # a catalog name (e.g. 'llama-3.1-8b') stands for its hub id


def _hub_error(spec: str, exc: Exception) -> UserError:
    reason = first_line(exc)
    return UserError(
        "model",
        f"could not load '{spec}' ({reason}); check the hub id and your network "
        "(or HF_TOKEN for gated models), or give a local folder or .gguf file",
    )


def load_base(plan: TrainingPlan, for_training: bool = True):
    """(model, tokenizer) for the plan's base, in the plan's precision; NF4 4-bit for QLoRA."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    device = train_device(plan)
    dtype = torch_dtype(plan, device)
    source = model_source(plan.model)
    kwargs: dict = {"attn_implementation": hardware.attention_to_load(plan.attention)}
    if plan.method == "qlora":
        kwargs["quantization_config"] = _nf4_config(dtype)
        kwargs["device_map"] = {"": 0 if device == "cuda" else "cpu"}
        kwargs["dtype"] = dtype
    elif plan.method == "full" and for_training and dtype == torch.float16:
        # fp16 gradients cannot be unscaled by the grad scaler: keep fp32 master weights, autocast to fp16
        kwargs["dtype"] = torch.float32
    else:
        kwargs["dtype"] = dtype  # LoRA: frozen base in compute precision, adapters stay fp32
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
        model = AutoModelForCausalLM.from_pretrained(source, **kwargs)
    except (OSError, ValueError) as exc:
        if not Path(source).exists():  # a hub id (or a catalog name's hub id)
            raise _hub_error(plan.model, exc) from None
        raise
    ensure_chat_template(tokenizer)
    head_input.make_contiguous(model)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if for_training:
        model.config.use_cache = False  # the KV cache is useless (and costs memory) in training
        if plan.method == "qlora":
            from peft import prepare_model_for_kbit_training

            model = prepare_model_for_kbit_training(
                model,
                use_gradient_checkpointing=plan.grad_ckpt,
                gradient_checkpointing_kwargs={"use_reentrant": False},
            )
    return model, tokenizer


def _nf4_config(dtype):
    try:
        import bitsandbytes  # noqa: F401
    except Exception as exc:
        raise UserError(
            "method",
            f"qlora needs the bitsandbytes package, which did not load ({exc}); "
            "install it with `pip install bitsandbytes`, or use method lora",
        ) from None
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=dtype
    )


def _choose_attention(plan: TrainingPlan, model, device: str, datasets, report: Report) -> None:
    """`attention: auto`, now that the rows are tokenized: the same rule the estimate applies."""

    if plan.attention != "auto":
        return
    longest = min(
        plan.seq_len,
        max((len(ids) for ds in datasets if ds is not None for ids in ds["input_ids"]), default=plan.seq_len),
    )
    name = dtype_name(plan, device)
    kernel = hardware.attention_for("auto", device == "cpu", name, longest)
    if kernel != hardware.attention_to_load("auto"):
        model.set_attn_implementation(kernel)
        report(
            events.Note(
                f"attention auto: {kernel}, the rows are at most {longest} tokens, where it measured "
                f"faster than sdpa in {name} on this CPU"
            )
        )


# --- plan → TRL (the keywords live in engine.train.config; the job records what it used in resolved.json) ---
def sft_kwargs(plan: TrainingPlan, out_dir: Path, device: str, precision: str, has_eval: bool) -> dict:
    """Every `SFTConfig` keyword this job runs with: the plan's, the precision's, early stopping's."""
    return {
        **config.sft_kwargs(plan, out_dir, has_eval),
        **config.precision_kwargs(precision, device),
        **stopping.trainer_args(plan, has_eval),
    }


# --- reporting ---------------------------------------------------------------------------
def _reporter_class():
    from transformers import TrainerCallback

    class _Reporter(TrainerCallback):
        """Trainer events → typed report events; cancel requests → a graceful stop with a checkpoint."""

        def __init__(self, report: Report, should_stop, device: str, base_score):
            self.report, self.should_stop, self.device = report, should_stop, device
            self.base_score = base_score
            self.peak = PeakMeter(device)
            self.stopped = False
            self.pending: events.Metrics | None = None  # a train row waiting for this step's eval loss

        def on_train_begin(self, args, state, control, **kw):
            self.start_step = state.global_step  # > 0 after a resume
            self.t0 = time.time()
            # elapsed training time continues across resumes
            self.time_offset = max([e.get("time", 0.0) for e in state.log_history] + [0.0])
            self.last_tokens, self.last_time = 0, self.t0
            self.peak.begin()
            self.report(events.Started(total_steps=state.max_steps, device=self.device, base_score=self.base_score))

        def on_step_begin(self, args, state, control, **kw):
            self.peak.step_begin(state.global_step, self.start_step)

        def on_step_end(self, args, state, control, **kw):
            self.peak.step_end(state.global_step, self.start_step)
            done, now = state.global_step - self.start_step, time.time()
            if done == 1:
                self.t_first = now
            # The first step carries one-off costs (allocation, peak tracking), so the pace is
            # measured from its end once a later step exists.
            rate = (now - self.t0) if done == 1 else (now - self.t_first) / (done - 1)
            self.report(
                events.Progress(
                    step=state.global_step,
                    total_steps=state.max_steps,
                    eta_seconds=round(rate * (state.max_steps - state.global_step), 1),
                    step_seconds=round(rate, 3),
                )
            )
            if (
                self.should_stop is not None
                and state.global_step < state.max_steps
                and distributed.agree(self.should_stop())
            ):
                self.stopped = True
                control.should_training_stop = True
                control.should_save = True  # graceful cancel leaves a checkpoint to resume from

        def on_log(self, args, state, control, logs=None, **kw):
            logs = logs or {}
            entry = state.log_history[-1] if state.log_history else {}
            now = time.time()
            if "loss" in logs:
                tokens = logs.get("num_tokens") or 0
                tps = (tokens - self.last_tokens) / max(now - self.last_time, 1e-9) if tokens else None
                self.last_tokens, self.last_time = tokens, now
                # kept in log_history so checkpoints (and metrics.csv after a resume) have them too
                entry["tokens_per_second"] = round(tps, 1) if tps else None
                entry["time"] = round(self.time_offset + now - self.t0, 2)
                row = events.Metrics(
                    step=state.global_step,
                    epoch=logs.get("epoch"),
                    loss=logs.get("loss"),
                    learning_rate=logs.get("learning_rate"),
                    grad_norm=logs.get("grad_norm"),
                    tokens_per_second=entry["tokens_per_second"],
                    time=entry["time"],
                )
                if control.should_evaluate:  # an eval follows at this step: send one merged row
                    self.pending = row
                else:
                    self.report(row)
            elif "eval_loss" in logs:
                row = self.pending or events.Metrics(
                    step=state.global_step, epoch=logs.get("epoch"), time=round(self.time_offset + now - self.t0, 2)
                )
                row.eval_loss = logs["eval_loss"]
                self.pending = None
                self.report(row)

        def on_train_end(self, args, state, control, **kw):
            if self.pending is not None:
                self.report(self.pending)
                self.pending = None
            self.peak.finish()

    return _Reporter


# --- the run -----------------------------------------------------------------------------
def train(
    plan: TrainingPlan,
    out_dir: Path,
    report: Report | None = None,
    should_stop: Callable[[], bool] | None = None,
    resume: bool = False,
) -> TrainResult:
    """Train per `plan`, reporting events; write the adapter and artifacts to `out_dir`."""
    t0 = time.time()
    report = report or (lambda event: None)
    report(events.Phase("loading model"))  # before the heavy imports: they take seconds

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    run = _prepare(plan, out_dir, report, should_stop)
    # base before training (an adapter starts as a no-op, so the wrapped model is the base)
    judge = Judge(plan, run.eval_ds, run.tokenizer, out_dir, report, train_rows=len(run.train_ds), t0=t0)
    base = judge.score_base(run.trainer)
    base_score = run.reporter.base_score = base[run.skill.score_key] if run.skill is not None and base else None
    report(events.Phase("training"))
    _fit(run, out_dir, resume)
    stop_reason = run.early.reason if run.early else None
    for note in (stop_reason, stopping.kept_note(run.trainer.state) if run.early else None):
        if note:
            report(events.Note(note))
    adapter_score = None
    if not run.reporter.stopped:
        after = judge.score_adapter(run.trainer)
        if run.skill is not None and after:  # the demo's score columns; every job has its evaluation
            adapter_score = after[run.skill.score_key]
            report(events.Scores(base_score=base_score, adapter_score=adapter_score))
    report(events.Phase("saving"))
    return _publish(plan, run, out_dir, base_score, adapter_score, stop_reason)


@dataclass
class _Run:
    """A job between its phases: the trainer built, the record of what it resolved written."""

    trainer: Any  # a TRL trainer (the libraries' types are Any to mypy)
    tokenizer: Any
    train_ds: Any
    eval_ds: Any | None
    reporter: Any  # _reporter_class()'s instance
    early: Any | None
    skill: demo.Skill | None
    device: str
    resolved: resolved.Resolved


def _prepare(plan: TrainingPlan, out_dir: Path, report: Report, should_stop) -> _Run:
    """Load the base and the data, build the trainer, and write what the job resolved."""
    from peft import LoraConfig
    from transformers import set_seed
    from trl import SFTConfig, SFTTrainer

    device = train_device(plan)
    precision = dtype_name(plan, device)
    model, tokenizer = load_base(plan, for_training=True)
    report(events.Phase("preparing data"))
    train_ds, eval_ds = build_datasets(plan, tokenizer)
    if device == "cuda" and plan.method != "qlora":
        model.to("cuda")

    reporter = _reporter_class()(report, should_stop, device, None)
    early = stopping.callback(plan.patience) if stopping.enabled(plan, eval_ds is not None) else None
    # The trainer is built from the record, so what the record says is what ran.
    record = _record(
        plan,
        device,
        precision,
        model.config._attn_implementation,
        n_examples=len(train_ds) + len(eval_ds or ()),
        has_eval=eval_ds is not None,
        replaced=[],
    )
    # --- preference objectives (dpo, orpo): TRL's pair trainer and its config class (engine.train.preference);
    # the rest of the run is the SFT path unchanged
    trainer_base, config_cls = (
        (SFTTrainer, SFTConfig)
        if plan.objective == "sft"
        else (preference.trainer_class(plan.objective), preference.config_class(plan.objective))
    )
    if plan.objective == "sft":  # its evaluation at the last step doubles as the adapter's held-out loss pass
        trainer_base = remembering_evaluations(trainer_base)
    trainer_cls = checkpoints.atomic_trainer(trainer_base, before_publish=lambda p: faults.check_write(p.name, p))
    # The adapters' initial weights come from the global generator: seed it here, as the exported
    # script does, so the job and the script start from the same adapter whatever ran before.
    set_seed(plan.seed)
    trainer = trainer_cls(
        model=model,
        args=config_cls(output_dir=str(out_dir / "checkpoints"), **tracking.destination(plan, out_dir), **record.sft),
        train_dataset=train_ds,
        eval_dataset=eval_ds,
        processing_class=tokenizer,
        peft_config=LoraConfig(**record.lora) if record.lora else None,
        callbacks=[reporter, *faults.callbacks()] + ([early] if early else []),
    )
    # the rows are tokenized now (TRL does it in the trainer's constructor); the PEFT wrapper shares the model
    # (pair trainers tokenize into other columns: their kernel is chosen for seq_len)
    _choose_attention(
        plan, model, device, (trainer.train_dataset, trainer.eval_dataset) if plan.objective == "sft" else (), report
    )
    record.attention = model.config._attn_implementation
    if device == "cpu":
        # TRL's fused head scores every position there, slowly; torch's CPU dropout draws a float per element.
        # DPO keeps TRL's head: it also reads the mean logits, which ours omits.
        swaps = (("lm_head", lm_head.use_on_cpu),) if plan.objective == "sft" else ()
        record.cpu_replacements = [
            name for name, swap in swaps + (("dropout", dropout.use_on_cpu),) if swap(trainer.model)
        ]
    if distributed.is_main():
        record.write(out_dir)
    return _Run(trainer, tokenizer, train_ds, eval_ds, reporter, early, demo.skill_of(plan), device, record)


def _record(
    plan: TrainingPlan,
    device: str,
    precision: str,
    attention: str,
    n_examples: int,
    has_eval: bool,
    replaced: list[str],
) -> resolved.Resolved:

    rows: list[int] = []
    if not has_eval:
        source = "none"
    elif DatasetRef.parse(dataset_of(plan)).is_demo:
        source = "demo"
    else:  # the same rule and seed build_datasets draws them with
        source, rows = "split", holdout_rows(n_examples, plan.eval_split, plan.seed)
    kwargs = sft_kwargs if plan.objective == "sft" else preference.trainer_kwargs  # dpo/orpo: DPOConfig/ORPOConfig's
    sft = {k: v for k, v in kwargs(plan, Path("."), device, precision, has_eval).items() if k != "output_dir"}
    return resolved.Resolved(
        device=device,
        precision=precision,
        attention=attention,
        seed=plan.seed,
        eval_source=source,
        eval_rows=rows,
        lora=config.lora_kwargs(plan) if plan.method != "full" else None,
        sft=sft,
        early_stopping=stopping.settings(plan, has_eval),
        cpu_replacements=replaced,
        versions=resolved.versions(),
    )


def provisional_record(plan: TrainingPlan) -> resolved.Resolved:
    """What a job of this plan resolves to on this machine before it has run (an export of a queued
    job): the same rules as `_prepare`, except that `attention: auto` stays the kernel it loads with,
    since the choice waits for the tokenized rows."""

    device = train_device(plan)
    source = dataset_of(plan)
    demo_data = DatasetRef.parse(source).is_demo
    n_examples = 0 if demo_data else len(read_source(source))
    has_eval = plan.eval_split > 0 and (demo_data or holdout_size(n_examples, plan.eval_split) > 0)
    return _record(
        plan,
        device,
        dtype_name(plan, device),
        hardware.attention_to_load(plan.attention),
        n_examples,
        has_eval,
        replaced=[],
    )


def _fit(run: _Run, out_dir: Path, resume: bool) -> None:

    checkpoint = checkpoints.resume_point(out_dir, log=print) if resume else None
    try:
        if checkpoint is not None and checkpoints.finished(checkpoint):  # every step done, the final save failed
            checkpoints.load_finished(run.trainer, checkpoint)
        else:
            with adapter_inputs_left_to_autocast(run.trainer.model, run.resolved.precision, run.resolved.lora):
                run.trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    finally:
        run.reporter.peak.finish()  # never leave the CPU tracker watching after a failure


def adapter_inputs_left_to_autocast(model, precision: str, lora: dict | None):
    """While the trainer runs under bf16/fp16 autocast, PEFT's cast of each adapter's input to the
    adapters' fp32 is undone at once by autocast's cast back for the matmul: two copies per adapted
    layer and pass for a bit-identical result (a bf16 value survives the round trip; dropout scales in
    fp32 either way). Skipping them measured 3-9% of a demo step on this CPU. Outside the trainer
    (the held-out scoring, the playground) nothing autocasts, so PEFT's cast stays on there."""
    from peft.helpers import disable_input_dtype_casting

    return disable_input_dtype_casting(model) if precision in ("bf16", "fp16") and lora else nullcontext()


def _publish(plan: TrainingPlan, run: _Run, out_dir: Path, base_score, adapter_score, stop_reason) -> TrainResult:
    """Weights (the adapter for lora/qlora, all of them for full), then the artifacts beside them."""
    import torch

    trainer = run.trainer
    trainer.save_model(str(out_dir))  # every rank calls it; only rank 0 writes
    faults.check_write("final", out_dir)
    base_ref = artifacts.base_reference(plan.model)
    artifacts.point_adapter_at(base_ref, out_dir)
    rows = artifacts.metric_rows(trainer.state.log_history)
    final_loss = next((r["loss"] for r in reversed(rows) if r.get("loss") is not None), None)
    result = TrainResult(
        out_dir=out_dir,
        steps=trainer.state.global_step,
        stopped=run.reporter.stopped,
        peak_bytes=run.reporter.peak.peak_bytes or None,
        base_score=base_score,
        adapter_score=adapter_score,
        final_loss=final_loss,
        total_steps=trainer.state.max_steps,
        device=run.device,
        peak_marks=list(run.reporter.peak.marks) or None,
        stop_reason=stop_reason,
    )
    if not distributed.is_main():
        return result  # rank 0 writes the artifacts
    run.tokenizer.save_pretrained(str(out_dir))
    artifacts.write_plan(plan, out_dir)
    artifacts.write_metrics_csv(rows, out_dir)
    artifacts.write_loss_png(rows, out_dir, title=plan.name or out_dir.name)
    artifacts.write_model_card(
        plan,
        out_dir,
        result,
        rows,
        base=base_ref,
        train_rows=len(run.train_ds),
        eval_rows=len(run.eval_ds) if run.eval_ds is not None else None,
    )
    tracking.publish(plan, out_dir, result.steps, base_score, adapter_score)  # a failure is a line in the log
    del trainer
    run.trainer = None
    if run.device == "cuda":
        torch.cuda.empty_cache()
    return result
