"""The recommender: its rules table, the recommendations it makes and how it fits a budget.

Catalog models only (configs ship in assets/), so nothing is downloaded. GB here is GiB,
as in the GPU catalog.
"""

import pytest

from engine.advice.recommend import recommend
from engine.advice.rules import FIELDS, RULE_IDS, RULES, RuleContext
from engine.advice.rules import choose as decide
from engine.errors import UserError
from engine.plan import DIFFICULTIES, TrainingPlan
from engine.units import GIB

SETTINGS = [
    "method",
    "r",
    "alpha",
    "dropout",
    "targets",
    "batch_size",
    "grad_accum",
    "seq_len",
    "grad_ckpt",
    "learning_rate",
    "epochs",
]


def ctx(**kw) -> RuleContext:
    values = dict(
        params_b=8.0,
        context=131072,
        target_names=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        difficulty="balanced",
        rows=5000,
        device="gpu",
        budget_gb=80,
    )
    values.update(kw)
    return RuleContext(**values)


# --- the table ------------------------------------------------------------------------


def test_every_rule_id_is_explained_in_the_repository():
    from pathlib import Path

    page = (Path(__file__).resolve().parent.parent / "docs" / "rules.md").read_text(encoding="utf-8")
    explained = {line.split("|")[1].strip() for line in page.splitlines() if line.startswith("| ")}
    assert explained >= RULE_IDS, sorted(RULE_IDS - explained)


def test_every_row_cites_a_heuristics_rule_and_every_setting_has_a_fallback():
    assert {r.id for r in RULES} <= RULE_IDS
    assert set(SETTINGS) <= set(FIELDS)
    for field in FIELDS:
        last = [r for r in RULES if r.field == field][-1]
        assert last.when(ctx(rows=None, budget_gb=1, device="gpu")), f"{field} has no fallback row"


@pytest.mark.parametrize(
    "c",
    [
        ctx(),
        ctx(device="cpu", budget_gb=None),
        ctx(rows=None),
        ctx(rows=100, difficulty="simple", budget_gb=8),
        ctx(params_b=70, budget_gb=24, difficulty="very_hard", rows=50_000),
    ],
)
def test_table_sets_every_field_with_a_reason_in_plain_words(c):
    chosen = decide(c)
    assert set(chosen) == set(FIELDS)
    for field, (_value, rule, text) in chosen.items():
        assert rule in RULE_IDS
        assert text and "{" not in text and "\n" not in text, (field, text)
    # the values make a valid plan
    TrainingPlan.build(**{f: v for f, (v, _, _) in chosen.items()})


def test_difficulties_are_described_with_examples():
    assert list(DIFFICULTIES) == ["simple", "balanced", "hard", "very_hard"]
    assert "tone" in DIFFICULTIES["simple"].description
    assert "summar" in DIFFICULTIES["balanced"].description
    assert "law" in DIFFICULTIES["hard"].description and "medicine" in DIFFICULTIES["hard"].description
    assert "new language" in DIFFICULTIES["very_hard"].description


def test_rank_follows_difficulty_and_alpha_is_twice_r():
    ranks = {d: decide(ctx(difficulty=d))["r"] for d in DIFFICULTIES}
    assert 4 <= ranks["simple"][0] <= 8 and ranks["simple"][1] == "R1"
    assert 8 <= ranks["balanced"][0] <= 16 and ranks["balanced"][1] == "R2"
    assert 16 <= ranks["hard"][0] <= 32 and ranks["hard"][1] == "R3"
    assert ranks["very_hard"][0] >= 64 and ranks["very_hard"][1] == "R4"
    for d in DIFFICULTIES:
        chosen = decide(ctx(difficulty=d))
        assert chosen["alpha"][0] == 2 * chosen["r"][0] and chosen["alpha"][1] == "A1"


def test_dataset_size_drives_dropout_epochs_and_the_tiny_data_warning():
    from engine.advice.recommend import notes

    small, large = decide(ctx(rows=300)), decide(ctx(rows=200_000))
    assert small["dropout"][:2] == (0.1, "D2") and large["dropout"][:2] == (0.05, "D1")
    assert small["epochs"][0] > large["epochs"][0] == 1
    tiny = ctx(rows=300)
    decide(tiny)
    assert any(n.rule == "M4" and "prompt" in n.text for n in notes(tiny))
    assert not any(n.rule == "M4" for n in notes(ctx(rows=5000)))


def test_seq_len_is_capped_by_the_model_context():
    assert decide(ctx(context=256))["seq_len"][0] == 256
    assert decide(ctx())["seq_len"][0] == 512


def test_learning_rate_by_method_and_rank():
    assert decide(ctx())["learning_rate"][:2] == (2e-4, "L1")
    full = decide(ctx(params_b=1.2, difficulty="very_hard", rows=50_000, budget_gb=80))
    assert full["method"][:2] == ("full", "M1") and full["learning_rate"][0] == 2e-5
    assert decide(ctx(difficulty="very_hard", rows=500))["learning_rate"][0] < 2e-4


def test_method_by_budget():
    assert decide(ctx(budget_gb=8))["method"][:2] == ("qlora", "M4")
    assert decide(ctx(params_b=70, budget_gb=48))["method"][:2] == ("qlora", "M3")
    assert decide(ctx(budget_gb=80))["method"][:2] == ("lora", "M2")
    cpu = decide(ctx(device="cpu", budget_gb=None))
    assert cpu["method"][0] == "lora" and cpu["dtype"][0] == "fp32" and "slow" in cpu["method"][2]


def test_big_model_under_tight_memory_targets_q_and_v():
    assert decide(ctx(params_b=70, budget_gb=48))["targets"][:2] == ("q_proj,v_proj", "T4")
    assert decide(ctx(params_b=8, budget_gb=24))["targets"][:2] == ("all-linear", "T3")
    # a model without q_proj/v_proj (GPT-2's fused c_attn) gets its attention preset
    assert decide(ctx(params_b=70, budget_gb=48, target_names=["c_attn", "c_proj"]))["targets"][0] == "attention"


# --- recommendations on catalog models (need the estimator) ---------------------------

STEP_PREFIXES = {  # the first words of each fitting step's adjustment line, in engine.advice.fitting.LADDER order
    "gradient checkpointing": 0,
    "micro-batch": 1,
    "full fine-tuning": 2,
    "4-bit base": 3,
    "optimizer": 4,
    "target modules": 5,
    "r ": 6,
}


def step_index(adjustment: str) -> int:
    return next(i for prefix, i in STEP_PREFIXES.items() if adjustment.startswith(prefix))


def assert_reasons_cite_rules(rec):
    assert set(SETTINGS) <= set(rec.reasons)
    for field, reason in rec.reasons.items():
        assert reason.rule in RULE_IDS, (field, reason)
        assert reason.text and "\n" not in reason.text
    assert all(w.rule in RULE_IDS for w in rec.warnings)


def test_llama3_8b_balanced_on_a100_80gb_is_plain_lora():
    rec = recommend("llama-3.1-8b", "balanced", gpu="A100 80GB", dataset_rows=5000)
    p = rec.plan
    assert p.method == "lora" and rec.reasons["method"].rule == "M2"
    assert p.targets == "all-linear" and rec.reasons["targets"].rule == "T3"
    assert 8 <= p.r <= 16 and p.alpha == 2 * p.r
    assert p.effective_batch == 16
    assert p.learning_rate == pytest.approx(2e-4)
    assert rec.fits and rec.advice is None and rec.adjustments == []
    assert rec.estimate.memory.fits is True
    assert rec.estimate.time is not None and rec.estimate.time.seconds > 0
    assert_reasons_cite_rules(rec)


def test_8gb_budget_gets_qlora():
    rec = recommend("llama-3.1-8b", "balanced", budget_gb=8, dataset_rows=2000)
    assert rec.plan.method == "qlora" and rec.reasons["method"].rule == "M4"
    assert rec.plan.optimizer == "paged_adamw_8bit"
    assert any(w.rule == "M3" for w in rec.warnings)  # the quality cost is said
    assert_reasons_cite_rules(rec)


def test_70b_on_24gb_is_qlora_or_says_which_budget_would_do():
    rec = recommend("llama-3.3-70b", "balanced", gpu="RTX 4090", dataset_rows=5000)
    assert rec.plan.method == "qlora"
    if not rec.fits:
        from engine.model.catalog import find_gpu

        assert "GiB" in rec.advice
        # the GPU it names really has room for the smallest setup
        named = [g for g in ("A100 40GB", "RTX A6000", "L40S", "A100 80GB", "H100", "H200") if g in rec.advice]
        assert named, rec.advice
        assert find_gpu(named[0]).memory_gb > 24
    assert_reasons_cite_rules(rec)


def test_very_hard_uses_a_big_rank():
    rec = recommend("llama-3.1-8b", "very_hard", gpu="H100", dataset_rows=5000)
    assert rec.plan.r >= 64 and rec.reasons["r"].rule == "R4"
    assert rec.plan.alpha == 2 * rec.plan.r


def test_fitting_steps_come_in_the_stated_order_and_the_result_fits():
    rec = recommend("llama-3.1-8b", "hard", budget_gb=12, dataset_rows=20_000)
    assert rec.adjustments, "12 GB should not hold the first plan"
    order = [step_index(a) for a in rec.adjustments]
    assert order == sorted(order), rec.adjustments
    assert order[0] == 0 and rec.plan.grad_ckpt and rec.reasons["grad_ckpt"].rule == "G1"
    for line in rec.adjustments:  # each step says what changed, why, and memory before → after
        assert "→" in line and "GiB" in line and "budget 12 GiB" in line
    assert rec.fits and rec.estimate.memory.fits is True
    assert rec.estimate.memory.device_bytes <= 12 * GIB
    assert rec.plan.effective_batch == 16  # halving the micro-batch kept the effective batch
    assert_reasons_cite_rules(rec)


def test_nothing_fits_names_a_budget():
    rec = recommend("qwen2.5-72b", "very_hard", budget_gb=4, dataset_rows=5000)
    assert not rec.fits
    order = [step_index(a) for a in rec.adjustments]
    assert order == sorted(order) and 0 in order and 3 not in order  # already qlora: no 4-bit step
    assert rec.plan.targets in ("q_proj,v_proj",) and rec.plan.r == 4 and rec.plan.batch_size == 1
    assert "Nothing fits in 4 GiB" in rec.advice and "GiB" in rec.advice


def test_cpu_recommends_fp32_lora_and_says_it_is_slow():
    rec = recommend("smollm2-135m", "simple", gpu="cpu", dataset_rows=300)
    assert rec.plan.method == "lora" and rec.plan.dtype == "fp32"
    assert rec.fits and rec.adjustments == []
    assert rec.estimate.time is not None and rec.estimate.time.seconds > 0
    assert any("slow" in w.text for w in rec.warnings)
    assert any(w.rule == "M4" for w in rec.warnings)  # 300 examples: prompting may do
    assert rec.plan.dropout == 0.1
    assert rec.plan.batch_size == 8  # rows at once: a CPU's matmul needs them
    # 300 rows: no accumulation (dozens of updates per pass), a small model's higher adapter lr, r 8
    assert rec.plan.grad_accum == 1 and rec.reasons["grad_accum"].rule == "B2"
    assert rec.plan.learning_rate == pytest.approx(1e-3) and "under 1B" in rec.reasons["learning_rate"].text
    assert rec.plan.r == 8
    big = recommend("smollm2-135m", "simple", gpu="cpu", dataset_rows=5000)
    assert big.plan.effective_batch == 16 and big.reasons["grad_accum"].rule == "G1"
    gpu_8b = recommend("llama-3.1-8b", "simple", gpu="RTX 4090", dataset_rows=300)
    assert gpu_8b.plan.learning_rate == pytest.approx(2e-4)


def test_base_plan_fields_are_kept():
    base = TrainingPlan.build(name="my run", dataset="demo:sql", seq_len=256)
    rec = recommend("smollm2-135m", "balanced", gpu="T4", base=base)
    assert rec.plan.name == "my run" and rec.plan.dataset == "demo:sql"
    assert rec.plan.seq_len == 256 and rec.plan.gpu == "T4"


@pytest.mark.parametrize(
    "kwargs,field",
    [
        (dict(difficulty="extreme", gpu="T4"), "difficulty"),
        (dict(difficulty="simple", budget_gb=0), "budget_gb"),
        (dict(difficulty="simple", gpu="GTX 9999"), "gpu"),
        (dict(difficulty="simple"), "gpu"),
    ],
)
def test_bad_arguments_raise_user_errors(kwargs, field):
    with pytest.raises(UserError) as info:
        recommend("gpt2", **kwargs)
    assert info.value.field == field


def test_ample_memory_small_model_large_shift_is_full_fine_tuning():
    rec = recommend("llama-3.2-1b", "very_hard", gpu="H100", dataset_rows=50_000)
    assert rec.plan.method == "full" and rec.reasons["method"].rule == "M1"
    assert rec.plan.learning_rate == pytest.approx(2e-5)
    assert rec.reasons["r"].rule == "M1" and "Not used" in rec.reasons["r"].text
    assert rec.fits and rec.estimate.trainable_params == rec.estimate.total_params


def test_fitting_a_full_plan_switches_to_adapters_and_re_decides_their_settings():
    from engine.advice.recommend import fit
    from engine.advice.rules import choose as table

    c = ctx(params_b=3.2, difficulty="very_hard", rows=50_000, budget_gb=20)
    c.plan.update(method="full")
    chosen = table(c)
    values = {f: v for f, (v, _, _) in chosen.items()}
    values["method"] = "full"
    plan = TrainingPlan.build(
        model="llama-3.2-3b", budget_gb=20, dataset_rows=50_000, difficulty="very_hard", **values
    )
    reasons = {}
    fitted, adjustments, fits = fit(plan, c, reasons)
    order = [step_index(a) for a in adjustments]
    assert order == sorted(order) and 2 in order, adjustments
    assert fitted.method in ("lora", "qlora") and fits
    assert fitted.r >= 64 and reasons["r"].rule == "R4"  # the adapter settings now come from the table
    assert fitted.learning_rate > 2e-5 and reasons["learning_rate"].rule == "L1"
