"""`TrainingPlan`: the one description of a fine-tuning run.

The wizard fills it, the estimator and recommender read it, the job store keeps it
as JSON, the worker trains from it, and it round-trips to YAML and to CLI flags.
Each field carries its own help text (`description`), which the CLI's `--help`
and the UI's labels and tooltips render, so there is no second copy to drift.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Literal, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from engine.errors import UserError

DEFAULT_MODEL = "default"

Method = Literal["lora", "qlora", "full"]
Difficulty = Literal["simple", "balanced", "hard", "very_hard"]
DataFormat = Literal["auto", "messages", "alpaca", "prompt_completion", "text", "preference"]
Objective = Literal["sft", "dpo", "orpo"]
Optimizer = Literal["adamw_torch", "adamw_8bit", "paged_adamw_8bit", "paged_adamw_32bit"]
Dtype = Literal["auto", "bf16", "fp16", "fp32"]
Attention = Literal["auto", "sdpa", "eager"]
Bias = Literal["none", "all", "lora_only"]
Scheduler = Literal["cosine", "linear", "constant", "constant_with_warmup"]
ReportTo = Literal["none", "tensorboard", "trackio", "mlflow"]

MAX_INT = 2**31 - 1  # the largest whole-number setting (SQLite, torch and the hub all take it)

# Target presets a user can name instead of module names.
TARGET_PRESETS = ("all-linear", "attention", "mlp")
# The ranks the advice moves between (rules R1-R4): below 4 an adapter learns little; from 64 up most
# of LoRA's savings are gone (R4's note). Any rank from 1 is still a valid plan.
MIN_RANK, MAX_RANK = 4, 64


@dataclass(frozen=True)
class DifficultyLevel:
    name: str  # the plan's value
    title: str
    description: str  # plain words, with examples a non-expert recognises


DIFFICULTY_QUESTION = "How far the task is from what the model already does"
# The one description of each difficulty: the plan's help, the wizard's choices and the
# recommender's table all read it.
DIFFICULTIES: dict[str, DifficultyLevel] = {
    d.name: d
    for d in (
        DifficultyLevel(
            "simple",
            "Simple",
            "Change how the model answers, not what it knows: a tone or style, a persona, "
            "a fixed output format such as JSON or a template.",
        ),
        DifficultyLevel(
            "balanced",
            "Balanced",
            "Most instruction tasks: answering questions in your way, summarising, "
            "classifying or extracting fields, writing replies.",
        ),
        DifficultyLevel(
            "hard",
            "Hard",
            "Multi-step reasoning or a specialised domain the model knows little of, "
            "such as law, medicine or your company's internal processes.",
        ),
        DifficultyLevel(
            "very_hard",
            "Very hard",
            "A large shift: a new language, a new programming language, or behaviour far "
            "from anything the model does today.",
        ),
    )
}


class TrainingPlan(BaseModel):
    # allow_inf_nan=False: 'nan' and 'inf' parse as floats but are never a setting.
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    # --- what to train -------------------------------------------------------------
    name: str | None = Field(None, description="A name for the run, shown in the job list.")
    model: str = Field(
        DEFAULT_MODEL,
        description="Base model: a catalog name, a Hugging Face hub id, a local folder, a .gguf file, "
        "or 'default' (the embedded SmolLM2-135M-Instruct).",
    )
    method: Method = Field(
        "lora",
        description="lora trains small adapters on a frozen base; qlora does the same on a base stored "
        "in 4-bit (much less memory, slightly lower quality); full updates every weight.",
    )
    objective: Objective = Field(
        "sft",
        description="What the data teaches: sft learns the answers given; dpo and orpo learn from pairs of a "
        "better and a worse answer (prompt, chosen, rejected) which one to prefer.",
    )
    beta: float = Field(
        0.1,
        gt=0,
        description="dpo/orpo: how strongly the preference pulls. DPO: higher keeps the adapter closer "
        "to the base; ORPO: the weight of the preference term beside learning the chosen answer.",
    )
    difficulty: Difficulty | None = Field(
        None,
        description=DIFFICULTY_QUESTION
        + ": "
        + "; ".join(f"{d.name}: {d.description[0].lower()}{d.description[1:-1]}" for d in DIFFICULTIES.values())
        + ".",
    )

    # --- the adapter ----------------------------------------------------------------
    r: int = Field(
        8,
        ge=1,
        le=MAX_INT,
        description="LoRA rank: the adapter's capacity. Higher learns more, risks overfitting, grows the file.",
    )
    alpha: float = Field(
        16, gt=0, description="LoRA alpha: the update is scaled by alpha / r, like a learning-rate multiplier."
    )
    dropout: float = Field(
        0.05, ge=0, lt=1, description="Dropout inside the adapter; more helps small or noisy datasets."
    )
    targets: str = Field(
        "all-linear",
        description="Which layers get adapters: all-linear, attention, mlp, or module names separated "
        "by commas (e.g. q_proj,v_proj).",
    )
    bias: Bias = Field("none", description="Which biases train: none, all, or lora_only.")
    use_dora: bool = Field(False, description="DoRA: also learn a per-column magnitude; a bit better, a bit slower.")
    use_rslora: bool = Field(False, description="rsLoRA: scale by alpha / sqrt(r), steadier at high ranks.")
    modules_to_save: list[str] = Field(
        default_factory=list, description="Modules trained in full and saved with the adapter (e.g. lm_head)."
    )

    # --- the data -------------------------------------------------------------------
    dataset: str | None = Field(
        None,
        description="Training data: a JSONL, JSON, CSV, Parquet or TXT file, a hub dataset id, "
        "or demo:NAME for a built-in demo skill.",
    )
    data_format: DataFormat = Field(
        "auto",
        description="Data layout: auto, messages (chat), alpaca, prompt_completion, text, or preference "
        "(prompt, chosen, rejected) for dpo/orpo.",
    )
    columns: dict[str, str] = Field(
        default_factory=dict,
        description="Column mapping when names differ, e.g. {'instruction': 'question', 'output': 'answer'}.",
    )
    dataset_rows: int | None = Field(
        None, ge=1, le=MAX_INT, description="Number of training examples, for estimates made before a file is given."
    )
    eval_split: float = Field(
        0.1,
        ge=0,
        lt=1,
        description="Share of rows held out to measure base and adapter (at least 2 rows; 0 turns it off).",
    )
    eval_generations: int = Field(
        32,
        ge=0,
        description="Held-out rows answered by greedy generation, base and adapter, for exact match, F1 and "
        "ROUGE-L (0 measures the loss only).",
    )
    eval_seconds: float = Field(
        120,
        gt=0,
        description="Time limit for scoring the base before training; the adapter is scored on the same rows.",
    )

    # --- the schedule ---------------------------------------------------------------
    seq_len: int = Field(
        512, ge=1, le=MAX_INT, description="Longest example in tokens; longer ones are cut. Memory grows with it."
    )
    batch_size: int = Field(
        4, ge=1, le=MAX_INT, description="Examples per step on the device (micro-batch). Memory grows with it."
    )
    grad_accum: int = Field(
        1,
        ge=1,
        le=MAX_INT,
        description="Steps whose gradients add up before one update; effective batch = batch x accumulation.",
    )
    epochs: float = Field(3, gt=0, description="Passes over the training data.")
    max_steps: int | None = Field(
        None, ge=1, le=MAX_INT, description="Stop after this many updates (overrides epochs)."
    )
    learning_rate: float = Field(
        2e-4, gt=0, description="Peak learning rate; LoRA takes 2-5x that of full fine-tuning."
    )
    lr_scheduler: Scheduler = Field("cosine", description="How the learning rate changes over the run.")
    warmup_ratio: float = Field(0.03, ge=0, lt=1, description="Share of steps spent ramping the learning rate up.")
    grad_ckpt: bool = Field(
        False,
        description="Gradient checkpointing: recompute activations in the backward pass; much less memory, "
        "~30% slower.",
    )
    optimizer: Optimizer = Field("adamw_torch", description="Optimizer; 8-bit and paged variants save memory.")
    dtype: Dtype = Field(
        "auto",
        description="Compute precision: auto picks bf16 where the GPU or CPU runs it natively "
        "(measured once per machine), else fp16 on a GPU and fp32 on a CPU.",
    )
    attention: Attention = Field(
        "auto",
        description="Attention kernel: auto (eager on a CPU training in bf16 where the data's rows are "
        "short enough that it measured faster there, else sdpa), sdpa (memory-efficient) or eager.",
    )
    seed: int = Field(42, ge=-MAX_INT, le=MAX_INT, description="Random seed, for repeatable runs.")
    logging_steps: int = Field(1, ge=1, le=MAX_INT, description="Write a metrics row every this many updates.")
    save_steps: int = Field(20, ge=1, le=MAX_INT, description="Save a checkpoint every this many updates.")
    patience: int = Field(
        3,
        ge=0,
        description="Stop once the held-out loss has not improved for this many evaluations in a row, keeping "
        "the best checkpoint as the adapter (0 = always train to the end). Evaluations come every save_steps.",
    )

    # --- where else the run is recorded -----------------------------------------------
    report_to: ReportTo = Field(
        "none",
        description="Also send the run to an experiment tracker: the trainer's metrics, the plan, the held-out "
        "before/after and the adapter card. tensorboard (the job folder's tensorboard/), trackio (project "
        "lorapilot) or mlflow (experiment lorapilot), kept under LORAPILOT_HOME unless the tool's own variable "
        "(TENSORBOARD_LOGGING_DIR, TRACKIO_DIR, MLFLOW_TRACKING_URI) says where. Each is an optional extra, "
        "e.g. pip install 'lorapilot[mlflow]'.",
    )

    # --- the hardware ---------------------------------------------------------------
    gpu: str | None = Field(None, description="GPU from the catalog (e.g. 'RTX 4090', 'A100 80GB') or 'cpu'.")
    budget_gb: float | None = Field(
        None,
        gt=0,
        json_schema_extra={"unit": "GB"},
        description="GPU memory available, in GiB (as nvidia-smi counts it), when the GPU is not in the catalog.",
    )
    num_processes: int | Literal["auto"] = Field(
        1,
        description="Training processes on this machine (data parallel, one per GPU): 1, a number, or auto "
        "(every visible GPU). More than one runs through `accelerate launch`.",
    )

    # --- validation: one clear line per field ------------------------------------------
    @field_validator("num_processes")
    @classmethod
    def _processes(cls, v: int | str) -> int | str:
        if isinstance(v, int) and v <= 0:
            raise ValueError("must be a whole number of 1 or more, or auto (one per visible GPU)")
        return v

    @field_validator("model", "gpu")
    @classmethod
    def _not_blank(cls, v: str | None, info) -> str | None:
        if v is not None and not v.strip():
            accepted = {
                "model": "a catalog name, a hub id, a local folder, a .gguf file or 'default'",
                "gpu": "a GPU from the catalog (e.g. 'RTX 4090') or cpu",
            }[info.field_name]
            raise ValueError(f"is empty; give {accepted}")
        return v.strip() if v is not None else v

    @field_validator("targets")
    @classmethod
    def _targets(cls, v: str) -> str:
        names = [t.strip() for t in v.split(",") if t.strip()]
        if not names:
            raise ValueError("must name at least one module, or one of " + ", ".join(TARGET_PRESETS))
        return ",".join(names)

    @model_validator(mode="after")
    def _adapter_options(self) -> TrainingPlan:
        if self.method == "full" and (self.use_dora or self.use_rslora):
            raise ValueError("use_dora/use_rslora apply to lora and qlora, not full fine-tuning")
        if self.objective != "sft" and self.method == "full":
            # a full DPO run needs a second copy of the weights as its reference; this product trains
            # preferences on an adapter, whose disabled state is the reference
            raise ValueError(f"objective {self.objective} runs with method lora or qlora, not full")
        if self.objective != "sft" and self.data_format not in ("auto", "preference"):
            raise ValueError(
                f"objective {self.objective} learns from pairs: data_format must be auto or preference, "
                f"got {self.data_format}"
            )
        return self

    # --- helpers --------------------------------------------------------------------
    @property
    def target_list(self) -> list[str]:
        """Explicit module names, or a one-element list holding a preset name."""
        return self.targets.split(",")

    @property
    def processes(self) -> int:
        """How many training processes run: `auto` is one per visible GPU (one on the CPU)."""
        if self.num_processes != "auto":
            return self.num_processes
        import torch  # only `auto` needs to look at the devices

        return max(1, torch.cuda.device_count())

    @property
    def effective_batch(self) -> int:
        """Examples per optimizer update: micro-batch x accumulation x processes (data parallel)."""
        return self.batch_size * self.grad_accum * (self.num_processes if isinstance(self.num_processes, int) else 1)

    @classmethod
    def help(cls, field: str) -> str:
        return cls.model_fields[field].description or ""

    @classmethod
    def build(cls, **values) -> TrainingPlan:
        """Construct, turning pydantic's errors into one `UserError` naming the field."""
        try:
            return cls(**{k: v for k, v in values.items() if v is not None})
        except ValidationError as exc:
            raise _user_error(exc) from None

    def updated(self, **changes) -> TrainingPlan:
        return TrainingPlan.build(**{**self.model_dump(), **changes})

    # --- YAML -----------------------------------------------------------------------
    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(exclude_defaults=False), sort_keys=False)

    @classmethod
    def from_yaml(cls, text: str, source: str = "plan") -> TrainingPlan:
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise UserError(
                source,
                f"is not valid YAML ({exc.__class__.__name__} near line "
                f"{getattr(getattr(exc, 'problem_mark', None), 'line', 0) + 1})",
            ) from None
        if not isinstance(data, dict):
            raise UserError(source, "must be a YAML mapping of plan fields (model: ..., r: ...)")
        return cls.build(**data)

    # --- CLI flags ------------------------------------------------------------------
    def to_cli_args(self) -> list[str]:
        """The flags that rebuild this plan (only those that differ from the defaults)."""
        args: list[str] = []
        defaults = TrainingPlan()
        for name in TrainingPlan.model_fields:
            value = getattr(self, name)
            if value == getattr(defaults, name):
                continue
            flag = "--" + name.replace("_", "-")
            if isinstance(value, bool):
                args.append(flag if value else "--no-" + name.replace("_", "-"))
            elif isinstance(value, list):
                args += [flag, ",".join(value)]
            elif isinstance(value, dict):
                args += [flag, ",".join(f"{k}={v}" for k, v in value.items())]
            elif isinstance(value, float):
                args += [flag, str(int(value)) if value.is_integer() else repr(value)]  # 32, not 32.0
            else:
                args += [flag, str(value)]
        return args


def alpha_for(plan: TrainingPlan, r: int) -> float:
    """The alpha that keeps `plan`'s update scale at rank `r`: alpha / r (alpha / sqrt(r) with rsLoRA)."""
    return plan.alpha * ((r / plan.r) ** 0.5 if plan.use_rslora else r / plan.r)


def resolve_dtype(requested: str, on_cpu: bool, bf16_ok: bool) -> str:
    """The precision a run uses: 'auto' is bf16 where the device runs it natively (a GPU with
    bf16, a CPU with a native bf16 matmul: `bf16_ok`), else fp16 on a GPU and fp32 on a CPU.

    One rule for the estimator (which predicts it) and the trainer (which applies it).
    """
    if requested != "auto":
        return requested
    if bf16_ok:
        return "bf16"
    return "fp32" if on_cpu else "fp16"


# Other names people type for a field, from the tools they know: `--lr` from most training
# scripts, PEFT's LoraConfig / TRL's ModelConfig (`--lora-r`), transformers' TrainingArguments
# (`--num-train-epochs`). Only exact spellings are accepted (the CLI turns argparse's prefix
# matching off), and --help lists each beside the field's own flag.
FLAG_ALIASES: dict[str, tuple[str, ...]] = {
    "learning_rate": ("--lr",),
    "r": ("--lora-r", "--rank"),
    "alpha": ("--lora-alpha",),
    "dropout": ("--lora-dropout",),
    "epochs": ("--num-train-epochs",),
    "grad_accum": ("--gradient-accumulation-steps",),
}


def add_plan_flags(parser, fields: list[str] | None = None) -> None:
    """Add one argparse flag per plan field (named after it, help from its description), with its
    FLAG_ALIASES.

    Defaults are None so that `plan_from_args` can tell "not given" from "given".
    """

    for name, field in TrainingPlan.model_fields.items():
        if fields is not None and name not in fields:
            continue
        flags = ["--" + name.replace("_", "-"), *FLAG_ALIASES.get(name, ())]
        annotation = field.annotation
        if annotation is bool:
            parser.add_argument(
                *flags, dest=name, action=argparse.BooleanOptionalAction, default=None, help=field.description
            )
            continue
        kind = {int: int, float: float}.get(annotation) or {int | None: int, float | None: float}.get(annotation, str)
        choices = _literal_values(annotation)
        metavar = "{" + ",".join(choices) + "}" if choices else None
        parser.add_argument(*flags, dest=name, type=kind, default=None, metavar=metavar, help=field.description)


def plan_from_args(ns, base: TrainingPlan | None = None) -> TrainingPlan:
    """Overlay the flags that were given on `base` (or the defaults)."""
    values = (base or TrainingPlan()).model_dump()
    for name in TrainingPlan.model_fields:
        given = getattr(ns, name, None)
        if given is None:
            continue
        if name == "modules_to_save":
            given = [s.strip() for s in given.split(",") if s.strip()]
        elif name == "columns":
            given = _parse_mapping(given)
        values[name] = given
    return TrainingPlan.build(**values)


def _literal_values(annotation) -> list[str]:
    """The allowed values of a Literal (or Optional Literal) field, for --help."""

    args = get_args(annotation)
    if get_origin(annotation) is Literal:
        return list(args)
    return [v for a in args if get_origin(a) is Literal for v in get_args(a)]


def _parse_mapping(text: str) -> dict[str, str]:
    mapping = {}
    for pair in text.split(","):
        if "=" not in pair:
            raise UserError("columns", f"'{pair}' must look like field=column, e.g. instruction=question")
        key, value = pair.split("=", 1)
        mapping[key.strip()] = value.strip()
    return mapping


def _user_error(exc: ValidationError) -> UserError:
    err = exc.errors()[0]
    field = ".".join(str(p) for p in err["loc"]) or "plan"
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        msg = "is not a plan field; known fields: " + ", ".join(TrainingPlan.model_fields)
    elif err["type"] == "literal_error":
        msg = f"got {err.get('input')!r}; " + msg.replace("Input should be", "expected")
    elif (
        err["type"] in ("greater_than", "greater_than_equal", "less_than", "less_than_equal")
        and field in TrainingPlan.model_fields
    ):
        msg = _range_message(field, err["type"], err.get("input"))
    elif err["type"] == "finite_number":
        msg = f"got {err.get('input')!r}; expected a finite number"
    elif "input" in err and err["type"].endswith(("_parsing", "_type")):
        msg = f"got {err['input']!r}; " + msg.replace("Input should be", "expected")
    return UserError(field, msg)


def _range_message(field: str, kind: str, value) -> str:
    """The one line for a value outside a field's range, from the field's own constraints (ge, gt, lt, le)."""
    info = TrainingPlan.model_fields[field]
    bounds = {name: getattr(m, name) for m in info.metadata for name in ("ge", "gt", "lt", "le") if hasattr(m, name)}
    unit = f" {info.json_schema_extra['unit']}" if isinstance(info.json_schema_extra, dict) else ""
    whole = int in get_args(info.annotation) or info.annotation is int
    if kind == "less_than_equal":  # a typo, and more than a job row can store
        return f"got {value}; at most {bounds['le']:,}"
    if kind == "greater_than_equal" and bounds["ge"] < 0:
        return f"got {value}; at least {bounds['ge']:,}"
    if "lt" in bounds:
        return f"must be at least {bounds.get('ge', 0):g} and below {bounds['lt']:g}"
    if "gt" in bounds:
        return f"must be greater than {bounds['gt']:g}{unit}"
    return f"must be a whole number of {bounds['ge']} or more" if whole else f"must be at least {bounds['ge']:g}{unit}"
