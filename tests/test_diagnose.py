"""The diagnosis on synthetic curves (fast): each symptom of HEURISTICS' "how to see the
symptoms", its evidence, its remedies in the guideline's order, and no finding on a clean run."""

from __future__ import annotations

import math

from engine.advice import diagnose
from engine.plan import TrainingPlan

HEURISTIC_IDS = set(
    "M1 M2 M3 M4 M5 R1 R2 R3 R4 R5 A1 A2 A3 A4 D1 D2 D3 T1 T2 T3 T4 T5 B1 L1 G1 S1 B2 E1 O1 U1 U2 U3 U4".split()
)


def curve(n=40, eval_every=5, train=lambda s: 2.0 * 0.95**s + 0.5, ev=None, grad=lambda s: 1.0):
    rows = []
    for s in range(1, n + 1):
        rows.append(
            {
                "step": s,
                "loss": train(s),
                "grad_norm": grad(s),
                "learning_rate": 2e-4,
                "eval_loss": ev(s) if ev and s % eval_every == 0 else None,
            }
        )
    return rows


def clean_eval(s):
    return 2.2 * 0.96**s + 0.7


GOOD_EVAL = {"rows": 20, "base": {"loss": 2.5, "f1": 10.0}, "adapter": {"loss": 1.1, "f1": 60.0}}


def test_a_clean_run_is_not_flagged():
    plan = TrainingPlan.build(r=16, alpha=32)
    found = diagnose.diagnose(curve(ev=clean_eval), GOOD_EVAL, plan)
    assert found == []
    assert diagnose.verdict(found, finished=True) == "good"
    # noise on the train loss and a big first gradient are normal, not instability
    noisy = curve(
        ev=clean_eval,
        train=lambda s: 2.0 * 0.95**s + 0.5 + 0.1 * (s % 3),
        grad=lambda s: 30.0 if s == 1 else 1.0 + 0.3 * (s % 4),
    )
    assert diagnose.diagnose(noisy, GOOD_EVAL, plan) == []


def test_eval_loss_rising_while_train_falls_is_overfitting_with_u2_remedies_in_order():
    plan = TrainingPlan.build(r=32, alpha=64, dropout=0.0, epochs=10)
    rows = curve(ev=lambda s: 1.5 - 0.02 * s if s <= 15 else 1.2 + 0.05 * (s - 15))
    found = diagnose.diagnose(rows, None, plan)
    assert [f.finding for f in found] == ["overfitting"] * 4
    assert [f.rule for f in found] == ["U2", "D2", "U2", "U2"]
    assert found[0].change == {"r": 16, "alpha": 32}
    assert found[1].change == {"dropout": 0.1}
    assert found[2].change == {"epochs": 3.8}  # stop where the eval loss was lowest: step 15 of 40
    assert found[3].change == {}  # more data: no plan field
    assert "step 15" in found[0].evidence and "1.200" in found[0].evidence and "step 40" in found[0].evidence
    plan2, changes = diagnose.apply(plan, found, ["U2"])
    assert (plan2.r, plan2.alpha, plan2.dropout, plan2.epochs) == (16, 32, 0.0, 3.8)
    assert changes == {"r": 16, "alpha": 32, "epochs": 3.8}


def test_overfitting_on_a_max_steps_plan_cuts_the_steps():
    plan = TrainingPlan.build(r=8, alpha=16, dropout=0.1, max_steps=40)
    rows = curve(ev=lambda s: 1.5 - 0.02 * s if s <= 20 else 1.1 + 0.04 * (s - 20))
    found = diagnose.diagnose(rows, None, plan)
    assert [(f.rule, f.change) for f in found] == [("U2", {"r": 4, "alpha": 8}), ("U2", {"max_steps": 20}), ("U2", {})]


def test_one_bump_of_the_eval_loss_is_not_overfitting():
    plan = TrainingPlan.build()
    rows = curve(ev=lambda s: clean_eval(s) + (0.3 if s == 35 else 0.0))
    assert diagnose.diagnose(rows, GOOD_EVAL, plan) == []


def test_nan_and_divergence_are_unstable_with_u4_remedies():
    plan = TrainingPlan.build(r=8, alpha=32, learning_rate=5e-2, warmup_ratio=0.0, lr_scheduler="constant")
    rows = curve(train=lambda s: 2.0 if s < 10 else float("nan"))
    found = diagnose.diagnose(rows, None, plan)
    assert [f.finding for f in found] == ["unstable"] * 3
    assert [f.rule for f in found] == ["U4", "A4", "U4"]
    assert "nan at step 10" in found[0].evidence
    assert found[0].change == {"learning_rate": 0.005}  # 10x lower after a NaN
    assert found[1].change == {"alpha": 8}  # alpha = r (A2)
    assert found[2].change == {"warmup_ratio": 0.1, "lr_scheduler": "constant_with_warmup"}

    frozen = curve(train=lambda s: 3.0 if s < 5 else 5.991, grad=lambda s: 2.0 if s < 5 else 0.0)
    found = diagnose.diagnose(frozen, None, plan)
    assert found[0].finding == "unstable" and "collapsed from 2 to 0 at step 5" in found[0].evidence
    converged = curve(train=lambda s: 0.0 if s > 5 else 1.0, grad=lambda s: 0.0 if s > 5 else 1.0)
    assert diagnose.diagnose(converged, None, plan) == []  # a loss of 0 is learned, not frozen

    rising = curve(train=lambda s: 2.0 + 0.2 * s)
    found = diagnose.diagnose(rising, None, plan)
    assert found[0].finding == "unstable" and "ended above where it started" in found[0].evidence


def test_a_loss_spike_and_an_exploding_gradient_are_unstable():
    plan = TrainingPlan.build(learning_rate=3e-4, warmup_ratio=0.1)
    spike = curve(ev=clean_eval, train=lambda s: 6.0 if s == 20 else 2.0 * 0.95**s + 0.5)
    found = diagnose.diagnose(spike, GOOD_EVAL, plan)
    assert found[0].finding == "unstable" and "spiked to 6.000 at step 20" in found[0].evidence
    assert found[0].change == {"learning_rate": 0.0001}  # 3x lower for a spike
    # a gradient norm far above its median while the loss falls fast is learning...
    fast = curve(ev=clean_eval, grad=lambda s: 80.0 if s == 25 else 1.0)
    assert diagnose.diagnose(fast, GOOD_EVAL, plan) == []
    # ...and with the loss rising it is instability
    grad = curve(
        ev=clean_eval,
        grad=lambda s: 80.0 if s == 25 else 1.0,
        train=lambda s: 2.0 * 0.95**s + 0.5 + (0.4 if s == 26 else 0.0),
    )
    found = diagnose.diagnose(grad, GOOD_EVAL, plan)
    assert "gradient norm reached 80 at step 25, 80x the median 1 of the steps before it" in found[0].evidence
    assert [f.rule for f in found] == ["U4", "A4"]  # warm-up already 0.1
    # listed after a clear overfitting curve, not instead of it
    both = curve(
        ev=lambda s: 1.5 - 0.02 * s if s <= 15 else 1.2 + 0.05 * (s - 15),
        grad=lambda s: 80.0 if s == 25 else 1.0,
        train=lambda s: 2.0 * 0.95**s + (0.9 if s == 25 else 0.5),
    )
    assert [f.finding for f in diagnose.diagnose(both, None, plan)] == ["overfitting"] * 4 + ["unstable"] * 2


def test_little_gain_over_the_base_is_underperforming_with_u1_remedies():
    plan = TrainingPlan.build(r=8, alpha=16, targets="q_proj,v_proj", learning_rate=1e-4, epochs=2)
    weak = {"rows": 20, "base": {"loss": 2.0, "f1": 30.0}, "adapter": {"loss": 1.9, "f1": 31.0}}
    found = diagnose.diagnose(curve(ev=clean_eval), weak, plan)
    assert [f.rule for f in found] == ["U1", "U1", "L1", "U1"]
    assert [f.change for f in found] == [
        {"r": 16, "alpha": 32},
        {"targets": "attention"},
        {"learning_rate": 0.0003},
        {"epochs": 3.0},
    ]
    assert "1.900" in found[0].evidence and "2.000" in found[0].evidence
    # a large gain in the answers outweighs a small loss gain
    answers = {"rows": 20, "base": {"loss": 2.0, "f1": 30.0}, "adapter": {"loss": 1.9, "f1": 70.0}}
    assert diagnose.diagnose(curve(ev=clean_eval), answers, plan) == []
    # with nothing held out, a high plateau of the train loss is the sign
    flat = curve(train=lambda s: 3.0 if s > 10 else 3.5 - 0.05 * s)
    assert diagnose.diagnose(flat, None, plan)[0].finding == "underperforming"


def test_a_running_job_gets_live_hints_but_no_underperforming_verdict_yet():
    plan = TrainingPlan.build(r=16)
    weak = {"rows": 20, "base": {"loss": 2.0}}
    assert diagnose.diagnose(curve(n=10, ev=clean_eval), weak, plan, finished=False) == []
    assert diagnose.verdict([], finished=False) is None
    rows = curve(ev=lambda s: 1.5 - 0.02 * s if s <= 15 else 1.2 + 0.05 * (s - 15))
    assert diagnose.diagnose(rows, None, plan, finished=False)[0].finding == "overfitting"


def test_every_remedy_cites_a_heuristics_rule_and_changes_only_plan_fields():
    plan = TrainingPlan.build(r=8, alpha=32, dropout=0.0, targets="attention", warmup_ratio=0.0)
    cases = [
        curve(train=lambda s: math.inf if s == 5 else 2.0),
        curve(ev=lambda s: 1.5 - 0.02 * s if s <= 15 else 1.2 + 0.05 * (s - 15)),
    ]
    weak = {"rows": 20, "base": {"loss": 2.0}, "adapter": {"loss": 1.95}}
    found = [f for rows in cases for f in diagnose.diagnose(rows, None, plan)]
    found += diagnose.diagnose(curve(ev=clean_eval), weak, plan)
    assert {f.finding for f in found} == {"unstable", "overfitting", "underperforming"}
    for f in found:
        assert f.rule in HEURISTIC_IDS
        assert set(f.change) <= set(TrainingPlan.model_fields)
        plan.updated(**f.change)  # every change is a valid plan
        assert set(f.to_json()) >= {"rule", "finding", "evidence", "change"}
