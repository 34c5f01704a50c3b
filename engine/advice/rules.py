"""The recommender's rules: one table, each row citing a rule id explained in docs/rules.md.

A row says which plan field it sets, when it applies, what value it picks and why,
in the product's own words. `engine.advice.recommend` walks the table top to bottom: the
first row that applies to a field sets it (so within a field, specific rows come
before the fallback row). Rows whose field is "note" are warnings: every one that
applies is shown. Nothing else in the code decides a setting, so the table is the
whole answer to "why this value?".
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from engine.advice import fitting
from engine.estimate import hardware  # measured once per machine, then cached
from engine.plan import MAX_RANK, MIN_RANK, TrainingPlan

# Every rule id in docs/rules.md, which states each rule and where it comes from. A reason
# must cite one of these (tests check it, and that the page explains each), so a user can
# look the rule up.
# R6 (rank above layer width) is stated in PLAN_CHECKS below.
RULE_IDS = frozenset(
    "M1 M2 M3 M4 M5 R1 R2 R3 R4 R5 R6 A1 A2 A3 A4 D1 D2 D3 T1 T2 T3 T4 T5 B1 B2 L1 G1 U1 U2 U3 E1 X1 P1 P2 P3".split()
)


# Thresholds, named so the table reads as sentences.
SMALL_DATA = 1_000  # rows: below this, more dropout (D2) and more epochs
TINY_DATA = 500  # rows: below this, warn that prompting may serve as well (M4)
LARGE_DATA = 10_000  # rows: from here, one epoch and the upper end of the rank range
LITTLE_MEMORY_GB = 10  # "very little memory (~8 GB)" (M4)
AMPLE_MEMORY_GB = 80  # "ample memory (80 GB+)" (M4)
BIG_MODEL_B = 13  # "large models (13B+)" (T4)
SMALL_MODEL_B = 1  # below this, adapters take a higher learning rate (L1, measured)
DEFAULT_SEQ_LEN = 512
EFFECTIVE_BATCH = 16


@dataclass
class RuleContext:
    """What the rules look at: the model, the task, the data and the hardware.

    `plan` holds the values already chosen (the table is walked in field order,
    so e.g. the learning-rate rows can read the method and r chosen above them).
    """

    params_b: float  # base model size, billions of parameters
    context: int | None  # the model's longest context, tokens
    target_names: list[str]  # module short names the model has
    difficulty: str
    rows: int | None  # training examples, None when unknown
    device: str  # 'gpu' or 'cpu'
    budget_gb: float | None  # memory available (None on CPU: no VRAM limit)
    seq_len_hint: int | None = None  # a sequence length the user already chose
    seconds: float | None = None  # the estimated training time, once known (for the notes)
    plan: dict[str, Any] = field(default_factory=dict)
    target_width: int | None = None  # min(in, out) of the narrowest layer the plan adapts
    narrowest: str = ""  # that layer's short name, e.g. k_proj
    # a demo skill's recipe, measured to learn it within minutes on a CPU (engine.data.demo.default_plan):
    # field -> value, and the steps it was measured over; None for any other data
    demo_recipe: dict[str, Any] | None = None
    demo_steps: int | None = None
    objective: str = "sft"  # sft, or a preference objective (dpo, orpo): rows P1-P3

    # --- derived facts the rows use -------------------------------------------------
    @property
    def bf16_base_gb(self) -> float:
        return self.params_b * 2  # frozen base in 16-bit, weights only

    @property
    def nf4_base_gb(self) -> float:
        return self.params_b * 0.55  # 4-bit NF4 plus unquantized embeddings/norms, roughly

    @property
    def time_text(self) -> str:
        if self.seconds is None:
            return ""
        hours = self.seconds / 3600
        if hours >= 1:
            return f" (about {hours:.1f} hours for this plan)"
        return f" (about {self.seconds / 60:.0f} minutes for this plan)"

    @property
    def cpu_precision_reason(self) -> str:
        return _cpu_precision()[1]

    @property
    def small_data(self) -> bool:
        return self.rows is not None and self.rows < SMALL_DATA

    @property
    def large_data(self) -> bool:
        return self.rows is not None and self.rows >= LARGE_DATA

    @property
    def qv_targets(self) -> str:
        """q_proj,v_proj where the model has them; else its attention preset (e.g. fused qkv)."""
        return fitting.qv_targets(self.target_names)

    @property
    def tight_memory(self) -> bool:
        """The base alone would take half the budget or more in the storage chosen."""
        if self.budget_gb is None:
            return False
        base = self.nf4_base_gb if self.plan.get("method") == "qlora" else self.bf16_base_gb
        return base * 2 > self.budget_gb


@dataclass(frozen=True)
class Rule:
    id: str  # rule id, explained in docs/rules.md
    field: str  # plan field it sets, or "note"
    when: Callable[[RuleContext], bool]
    value: Callable[[RuleContext], Any]
    text: str  # str.format(v=value, c=ctx)

    def reason(self, ctx: RuleContext, value: Any) -> str:
        return self.text.format(v=value, c=ctx)


def always(_: RuleContext) -> bool:
    return True


def const(value: Any) -> Callable[[RuleContext], Any]:
    return lambda _: value


def _cpu_precision() -> tuple[str, str]:
    return hardware.cpu_precision()


def _eval_every(c: RuleContext) -> int:
    """About a quarter of an epoch (5 to 200 steps): often enough for early stopping to act, rarely
    enough that evaluating ~10% of the rows costs little next to training on a quarter of them."""
    train_rows = c.rows * (1 - TrainingPlan.model_fields["eval_split"].default)
    per_epoch = train_rows / (c.plan["batch_size"] * c.plan["grad_accum"])
    return int(min(200, max(5, round(per_epoch / 4))))


def _full_fits(c: RuleContext) -> bool:
    # Full fine-tuning keeps weights, gradients and AdamW states: ~16 bytes per parameter,
    # plus room for activations; only worth it for a large shift with plenty of data.
    return c.budget_gb is not None and c.params_b * 16 * 1.3 <= c.budget_gb


def _small_model_adapter(c: RuleContext) -> bool:
    return c.params_b < SMALL_MODEL_B and c.plan["r"] <= 16


def _lr(c: RuleContext) -> float:
    if c.plan["method"] == "full":
        return 2e-5
    r = c.plan["r"]
    if _small_model_adapter(c):
        return 1e-3
    return 1e-4 if r >= MAX_RANK else 3e-4 if r <= MIN_RANK else 2e-4


# The fields a demo skill's measured recipe sets (engine.data.demo.default_plan); X1 in docs/rules.md.
DEMO_FIELDS = ("r", "alpha", "dropout", "batch_size", "grad_accum", "learning_rate", "seq_len")


def _demo_on_cpu(c: RuleContext) -> bool:
    return c.demo_recipe is not None and c.device == "cpu"


def demo(field_name: str) -> Rule:
    """X1: a demo skill on a CPU keeps its measured recipe for this field. Each such row sits first in its
    field's section, so the reasons, the warnings and the estimate all describe the plan that runs."""
    return Rule(
        "X1",
        field_name,
        _demo_on_cpu,
        lambda c: c.demo_recipe[field_name],
        "The demo recipe, measured to learn this skill in {c.demo_steps} steps on a CPU: a first run "
        "shows its loss fall within minutes.",
    )


RULES: list[Rule] = [
    # --- method -------------------------------------------------------------------
    Rule(
        "M2",
        "method",
        lambda c: c.device == "cpu",
        const("lora"),
        "On a CPU there is no GPU memory limit but no speed either: LoRA trains the fewest "
        "weights, in full precision (4-bit needs a GPU). Expect training to be slow.",
    ),
    Rule(
        "M1",
        "method",
        lambda c: (
            c.difficulty == "very_hard" and c.large_data and (c.budget_gb or 0) >= AMPLE_MEMORY_GB and _full_fits(c)
        ),
        const("full"),
        "A very large shift with plenty of data, and {c.budget_gb:.0f} GB easily holds every "
        "weight of the {c.params_b:.1f}B model: full fine-tuning gives the best quality.",
    ),
    Rule(
        "M4",
        "method",
        lambda c: c.budget_gb <= LITTLE_MEMORY_GB and c.params_b >= 1,
        const("qlora"),
        "Only {c.budget_gb:.0f} GB of GPU memory: storing the frozen base in 4-bit (QLoRA) is what "
        "makes the {c.params_b:.1f}B model fit; it costs a little quality.",
    ),
    Rule(
        "M3",
        "method",
        lambda c: c.bf16_base_gb > 0.75 * c.budget_gb,
        const("qlora"),
        "The {c.params_b:.1f}B base takes ~{c.bf16_base_gb:.0f} GB in 16-bit, too much of "
        "{c.budget_gb:.0f} GB: QLoRA stores it in 4-bit (~{c.nf4_base_gb:.0f} GB). It costs a "
        "little quality, most visibly on long reasoning chains.",
    ),
    Rule(
        "M2",
        "method",
        always,
        const("lora"),
        "The base fits in 16-bit with room to spare: LoRA trains small adapters on the frozen base "
        "and typically reaches 95-99% of full fine-tuning quality.",
    ),
    # --- precision and optimizer --------------------------------------------------
    Rule(
        "M2",
        "dtype",
        lambda c: c.device == "cpu",
        lambda c: _cpu_precision()[0],
        "Measured on this machine: {c.cpu_precision_reason}.",
    ),
    Rule(
        "M2",
        "dtype",
        always,
        const("auto"),
        "bf16 where the GPU supports it, else fp16: half the memory of 32-bit at the same quality.",
    ),
    Rule(
        "M3",
        "optimizer",
        lambda c: c.plan["method"] == "qlora",
        const("paged_adamw_8bit"),
        "QLoRA's recipe: a paged 8-bit AdamW, whose states spill to CPU memory on spikes instead of crashing.",
    ),
    Rule(
        "M2",
        "optimizer",
        always,
        const("adamw_torch"),
        "Plain AdamW: the standard optimizer; the adapter is small, so its states cost little.",
    ),
    # --- adapter settings do not apply to full fine-tuning ------------------------
    *[
        Rule(
            "M1",
            f,
            lambda c: c.plan["method"] == "full",
            const(v),
            "Not used: full fine-tuning trains every weight, with no adapter.",
        )
        for f, v in (("r", 8), ("alpha", 16), ("dropout", 0.05), ("targets", "all-linear"))
    ],
    # --- rank ---------------------------------------------------------------------
    # Measured (bench/bench_early_stop.py, 300 rows of date reformatting on SmolLM2-135M): r = 4
    # plateaued at 80-82% held-out exact match, r = 8 reached 97.5%; the rank costs little here.
    demo("r"),
    Rule(
        "R1",
        "r",
        lambda c: c.difficulty == "simple",
        const(8),
        "A style or format change needs little capacity: r = 8, the top of the 4-8 range.",
    ),
    Rule(
        "R2",
        "r",
        lambda c: c.difficulty == "balanced" and c.large_data,
        const(16),
        "Most tasks start at r = 8; with {c.rows:,} examples there is data for r = 16.",
    ),
    Rule(
        "R2",
        "r",
        lambda c: c.difficulty == "balanced",
        const(8),
        "r = 8 is the universal starting point for most tasks.",
    ),
    Rule(
        "R3",
        "r",
        lambda c: c.difficulty == "hard" and c.large_data,
        const(32),
        "Reasoning or a new domain needs more capacity: r = 32 with {c.rows:,} examples.",
    ),
    Rule(
        "R3",
        "r",
        lambda c: c.difficulty == "hard",
        const(16),
        "Reasoning or a new domain needs more capacity: r = 16 (32 with a large dataset).",
    ),
    Rule(
        "R4",
        "r",
        always,
        const(64),
        "A new language or a large shift needs a big adapter: r = 64. Beyond that, most of "
        "LoRA's savings are gone; consider full fine-tuning instead.",
    ),
    # --- alpha and dropout --------------------------------------------------------
    demo("alpha"),
    Rule(
        "A1",
        "alpha",
        always,
        lambda c: 2 * c.plan["r"],
        "alpha = 2 x r = {v}: the most common choice, an update scale of 2.",
    ),
    demo("dropout"),
    Rule(
        "D2",
        "dropout",
        lambda c: c.small_data,
        const(0.1),
        f"Fewer than {SMALL_DATA:,} examples overfit easily: dropout 0.1.",
    ),
    Rule("D1", "dropout", always, const(0.05), "0.05 is the usual starting dropout."),
    # --- target modules -----------------------------------------------------------
    Rule(
        "T4",
        "targets",
        lambda c: c.params_b >= BIG_MODEL_B and c.tight_memory,
        lambda c: c.qv_targets,
        "For a {c.params_b:.0f}B model on {c.budget_gb:.0f} GB, adapters on the query and value "
        "projections ({v}) are enough for a model this large and save memory.",
    ),
    Rule(
        "T3",
        "targets",
        always,
        const("all-linear"),
        "Adapters on every linear layer (attention and MLP) generally give the best quality.",
    ),
    # --- sequence, batch, memory savers -------------------------------------------
    demo("seq_len"),
    Rule(
        "G1",
        "seq_len",
        lambda c: c.seq_len_hint is not None,
        lambda c: min(c.seq_len_hint, c.context or c.seq_len_hint),
        "Kept from your plan ({v} tokens, within the model's context); memory grows with it.",
    ),
    Rule(
        "G1",
        "seq_len",
        always,
        lambda c: min(DEFAULT_SEQ_LEN, c.context or DEFAULT_SEQ_LEN),
        "{v} tokens covers most chat and instruction examples (the model reads up to "
        "{c.context} tokens); memory grows with it, so longer examples are cut.",
    ),
    # Measured on the embedded SmolLM2-135M, 2 cores, bf16, 16 rows per update: micro-batch 1 x 16
    # reached 110 tokens/s, 8 x 2 reached 288, 16 x 1 reached 265 (the matrix units need rows).
    demo("batch_size"),
    Rule(
        "G1",
        "batch_size",
        lambda c: c.device == "cpu",
        const(8),
        "8 examples per step on a CPU: its matrix units need several rows at once (one at a time ran "
        "2.6x slower, measured); lowered automatically if memory is short.",
    ),
    Rule(
        "G1",
        "batch_size",
        always,
        const(4),
        "4 examples per step to use the GPU well; lowered automatically if memory is short.",
    ),
    demo("grad_accum"),
    Rule(
        "B2",
        "grad_accum",
        lambda c: c.small_data and c.plan["batch_size"] >= 8,
        const(1),
        "No accumulation: with {c.rows:,} examples a pass is only a few dozen updates, and "
        "{c.plan[batch_size]} examples per update are plenty for a small dataset.",
    ),
    Rule(
        "G1",
        "grad_accum",
        always,
        lambda c: max(1, EFFECTIVE_BATCH // c.plan["batch_size"]),
        f"Add up {{v}} steps before each update, so every update sees ~{EFFECTIVE_BATCH} examples.",
    ),
    Rule(
        "G1",
        "grad_ckpt",
        always,
        const(False),
        "Off: recomputing activations saves memory but costs ~30% speed; turned on only if memory is short.",
    ),
    # --- preference objectives (P1-P3): after a demo's recipe, before the SFT rows of the same fields
    demo("learning_rate"),
    Rule(
        "P1",
        "beta",
        lambda c: c.objective == "dpo",
        const(0.1),
        "DPO's strength beta = {v:g}, the DPO paper's usual value and TRL's default: higher keeps the "
        "adapter closer to the base, lower lets the preference pull harder.",
    ),
    Rule(
        "P1",
        "beta",
        lambda c: c.objective == "orpo",
        const(0.1),
        "ORPO weighs its preference term by beta = {v:g} beside learning the chosen answer (TRL's default).",
    ),
    Rule("P1", "beta", always, const(0.1), "Used by dpo/orpo only; this plan learns answers (sft)."),
    Rule(
        "P2",
        "learning_rate",
        lambda c: c.objective == "dpo",
        lambda c: _lr(c) / 10,
        "DPO compares two answers against the frozen base and drifts fast: a tenth of the SFT rate, {v:g}.",
    ),
    Rule(
        "P2",
        "learning_rate",
        lambda c: c.objective == "orpo",
        lambda c: _lr(c) / 3,
        "ORPO also learns the chosen answer like SFT, so it keeps more of the SFT rate: a third, {v:g}.",
    ),
    Rule(
        "P3",
        "epochs",
        lambda c: c.objective != "sft" and c.large_data,
        const(1),
        "{c.rows:,} pairs: one pass; preference runs overfit their pairs quickly.",
    ),
    Rule(
        "P3",
        "epochs",
        lambda c: c.objective != "sft",
        const(2),
        "Preference pairs: 2 passes at most; the margin on training pairs keeps growing after held-out "
        "accuracy has stopped.",
    ),
    # --- learning rate and epochs -------------------------------------------------
    Rule(
        "L1",
        "learning_rate",
        lambda c: c.plan["method"] == "full",
        _lr,
        "Full fine-tuning moves every weight: a small learning rate, {v:g}.",
    ),
    Rule(
        "L1",
        "learning_rate",
        _small_model_adapter,
        _lr,
        f"A model under {SMALL_MODEL_B}B parameters takes a higher adapter learning rate: {{v:g}}, "
        "5x the usual 2e-4 (measured on SmolLM2-135M: 3e-4 was still short of the task after 3 passes).",
    ),
    Rule(
        "L1",
        "learning_rate",
        always,
        _lr,
        "Adapters take a learning rate 2-5x that of full fine-tuning: {v:g} for r = {c.plan[r]}.",
    ),
    Rule(
        "U1",
        "epochs",
        lambda c: c.rows is None,
        const(2),
        "Dataset size not given: 2 passes is a safe start; watch the eval loss.",
    ),
    Rule(
        "U1", "epochs", lambda c: c.small_data, const(3), "A small dataset needs a few passes to be learned: 3 epochs."
    ),
    Rule("U2", "epochs", lambda c: not c.large_data, const(2), "A medium dataset: 2 passes; more tends to overfit."),
    Rule("U2", "epochs", always, const(1), "{c.rows:,} examples are enough in one pass; more passes tend to overfit."),
    # the held-out loss is measured every save_steps; early stopping (plan.patience) acts on it
    Rule(
        "E1",
        "save_steps",
        lambda c: c.rows is not None,
        _eval_every,
        "Evaluate and checkpoint every {v} steps (about a quarter of a pass over the data): training stops "
        "once the held-out loss is flat for 3 evaluations, so the epochs above are a ceiling.",
    ),
    Rule(
        "E1",
        "save_steps",
        always,
        const(20),
        "Evaluate and checkpoint every 20 steps; training stops once the held-out loss is flat for 3 evaluations.",
    ),
    # --- warnings (every one that applies is shown) -------------------------------
    Rule(
        "M4",
        "note",
        lambda c: c.rows is not None and c.rows < TINY_DATA,
        const(None),
        "Only {c.rows} examples: few-shot prompting or prompt tuning may serve as well; "
        "try a prompt with a few examples before training.",
    ),
    Rule(
        "M3",
        "note",
        lambda c: c.plan.get("method") == "qlora",
        const(None),
        "The 4-bit base costs a little quality, most visibly on long reasoning chains.",
    ),
    Rule(
        "M2",
        "note",
        lambda c: c.device == "cpu",
        const(None),
        "Training on the CPU is slow{c.time_text}; it suits small models and small datasets (or a quick trial).",
    ),
    Rule(
        "R4",
        "note",
        lambda c: c.plan.get("method") != "full" and c.plan.get("r", 0) >= MAX_RANK,
        const(None),
        "At r = 64 and above most of LoRA's savings are gone; full fine-tuning is worth a look if the budget allows.",
    ),
]

# Checks of a plan a user set by hand (the review's overrides, the CLI): every one that applies
# is shown next to the estimate. The recommender never breaks these, so they are not in RULES.
PLAN_CHECKS: list[Rule] = [
    Rule(
        "R6",
        "note",
        lambda c: (
            c.plan.get("method") != "full" and c.target_width is not None and c.plan.get("r", 0) > c.target_width
        ),
        const(None),
        "Rank {c.plan[r]:,} is above {c.target_width:,}, the width of the narrowest layer it adapts "
        "({c.narrowest}): an adapter B x A on a layer of in x out features has at most min(in, out) "
        "independent directions, so a higher rank adds parameters, memory and file size but no "
        "capacity. Use r of {c.target_width:,} or less (R1-R4 give 4 to 64).",
    ),
]


# The range a setting's rule recommends: a typed value far outside it (e.g. a learning rate of 1e9) is
# accepted, as the user may know better, but named with its rule and range (PLAN_CHECKS), and the
# diagnosis after a run moves such a value back inside in one step.
@dataclass(frozen=True)
class Range:
    rule: str
    low: float
    high: float
    why: str
    recommended: tuple[float, float] | None = None  # where the rules' own values lie

    def holds(self, value: float) -> bool:
        return self.low <= value <= self.high


RANGES: dict[str, Range] = {
    "learning_rate": Range(
        "L1", 1e-6, 1e-2, "adapters train at 1e-4 to 2e-3, full fine-tuning near 2e-5", recommended=(1e-4, 2e-3)
    ),
    "dropout": Range("D1", 0.0, 0.3, "0.05, or 0.1 for small data; more erases what the adapter learns"),
    "epochs": Range("U2", 0.1, 20, "1 to 3 passes; many more overfit"),
    "warmup_ratio": Range("L1", 0.0, 0.3, "a few percent of the steps"),
    "batch_size": Range("G1", 1, 512, "4 to 16 examples per step"),
    "grad_accum": Range("G1", 1, 256, f"enough to reach ~{EFFECTIVE_BATCH} examples per update"),
}


def _out_of_range(field_name: str) -> Rule:
    rng = RANGES[field_name]
    return Rule(
        rng.rule,
        "note",
        lambda c: isinstance(c.plan.get(field_name), (int, float)) and not rng.holds(c.plan[field_name]),
        const(None),
        f"{field_name.replace('_', ' ').capitalize()} {{c.plan[{field_name}]:g}} is far outside "
        f"{rng.low:g} to {rng.high:g}, the range rule {rng.rule} recommends ({rng.why}): the run will "
        "most likely learn nothing or diverge.",
    )


PLAN_CHECKS += [_out_of_range(f) for f in RANGES]

# The fields the table decides, in the order it decides them.
FIELDS: list[str] = list(dict.fromkeys(r.field for r in RULES if r.field != "note"))


def choose(ctx: RuleContext, only: set[str] | None = None) -> dict[str, tuple[Any, str, str]]:
    """Walk RULES; the first row that applies sets its field: field → (value, rule id, reason).

    Choices are written into ctx.plan as they are made, so later rows can read them.
    `only` re-decides a few fields (e.g. alpha after r changed) and leaves the rest alone.
    """
    chosen: dict[str, tuple[Any, str, str]] = {}
    for rule in RULES:
        if rule.field == "note" or rule.field in chosen or (only is not None and rule.field not in only):
            continue
        if rule.when(ctx):
            value = rule.value(ctx)
            ctx.plan[rule.field] = value
            chosen[rule.field] = (value, rule.id, rule.reason(ctx, value))
    return chosen


def applicable_notes(ctx: RuleContext) -> list[tuple[str, str]]:
    """Every warning row that applies: (rule id, text)."""
    return [(r.id, r.reason(ctx, None)) for r in RULES if r.field == "note" and r.when(ctx)]
