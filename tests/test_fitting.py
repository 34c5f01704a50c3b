"""One memory ladder: the recommender, the review step's hint and the out-of-memory advice
all step down engine.advice.fitting.LADDER in the same order."""

from engine.advice import fitting
from engine.advice.recommend import recommend
from engine.plan import TrainingPlan
from engine.train import failures
from ui.web import review

NAMES = [rung.name for rung in fitting.LADDER]


def test_ladder_order_is_cheapest_in_quality_first():
    assert NAMES == [
        "gradient checkpointing",
        "smaller micro-batch",
        "adapters instead of full",
        "4-bit base",
        "8-bit optimizer",
        "fewer target modules",
        "lower r",
        "shorter sequences",
    ]
    assert [r.name for r in fitting.LADDER if not r.automatic] == ["shorter sequences"]  # cuts examples


def test_out_of_memory_advice_lists_the_ladders_steps_in_its_order():
    plan = TrainingPlan.build(model="llama-3.1-8b", gpu="RTX 4090", method="full", batch_size=4, seq_len=1024)
    steps = fitting.first_steps(plan, fitting.Where.of(plan))
    knobs = failures.memory_knobs(plan, on_gpu=True)
    assert [k.split(" (set ")[0] for k in knobs[:-1]] == [s.what for s in steps]
    assert steps[0].changes == {"grad_ckpt": True} and steps[-1].changes == {"seq_len": 512}
    assert not any(s.changes.get("method") == "qlora" for s in steps)  # full goes to LoRA first
    msg = failures.explain(RuntimeError("CUDA out of memory"), plan, step=3)
    positions = [msg.index(s.what) for s in steps]
    assert positions == sorted(positions)


def test_review_hint_walks_the_same_ladder_and_fits():
    plan = TrainingPlan.build(model="llama-3.1-8b", dataset="demo:ticket", gpu="RTX 4090", method="full")
    found = fitting.fix(plan)
    assert found is not None
    steps, mem = found
    assert mem.fits and mem.device_bytes <= mem.budget_bytes
    where = fitting.Where.of(plan)
    order, current = [], plan
    for step in steps:  # every step is the first rung that still applies to the plan so far
        rungs = [i for i, r in enumerate(fitting.LADDER) if r.step(current, where) == step]
        assert rungs, step
        order.append(rungs[0])
        current = current.updated(**step.changes)
    assert order == sorted(order)
    assert review.fixing_knob(plan).startswith("To fit: " + steps[0].what)


def test_recommender_adjustments_follow_the_ladder():
    rec = recommend("llama-3.1-8b", "hard", budget_gb=12, dataset_rows=20_000)
    whats = [a.split(" (")[0] for a in rec.adjustments]
    prefixes = {
        "gradient checkpointing": 0,
        "micro-batch": 1,
        "full fine-tuning": 2,
        "4-bit base": 3,
        "optimizer": 4,
        "target modules": 5,
        "r ": 6,
    }
    order = [next(i for p, i in prefixes.items() if w.startswith(p)) for w in whats]
    assert order and order == sorted(order)
    assert not any(w.startswith("sequence length") for w in whats)  # never cut examples on its own
