"""Diagnosis after a run (and a live hint during it): what the curves and scores show, and
the tuning guidelines' remedies as concrete plan changes.

The readings are HEURISTICS' "how to see the symptoms":
- unstable: a NaN, a train loss that ends above where it started, a spike of several times
  the running loss, or a gradient norm far above its median → U4 (lower the learning rate,
  lower alpha / r as A2 has it (A4), warm up);
- overfitting: the eval loss rising over several evaluations while the train loss keeps
  falling, or a train/eval gap that keeps widening while the eval loss does not improve →
  U2 (lower r, dropout 0.1 (D2), stop where the eval loss was lowest, more data);
- underperforming: little gain of the adapter over the base on the held-out rows, or (with
  nothing held out) a train loss that plateaus high → U1 (raise r, add target modules, a 2-5x
  learning rate (L1), more epochs).
- preference runs (dpo/orpo), from the rewards curve the job keeps in its evaluation
  (engine.evaluate.preference.curve) and the held-out preference accuracy: accuracy stuck near
  50% or margins that stop growing short of a learned preference → P2/P1 (a higher learning rate,
  a lower beta, more passes); the rewards of both answers falling together (the model lowers the
  chosen answer too, only less) → P1/P2 (a higher beta, a lower learning rate, or ORPO, which
  keeps learning the chosen answer).
Each finding lists its remedies in the guideline's order, one plan change each, and cites
its evidence (steps and numbers). Instability comes first and silences "underperforming"
(whose remedy, a higher learning rate, would make it worse); so does overfitting. A run with
no finding is "good".
"""

from __future__ import annotations

import itertools
import math
import statistics
from dataclasses import dataclass, field

from engine.advice import rules
from engine.plan import MAX_RANK, MIN_RANK, alpha_for

SPIKE = 3.0  # a train loss this many times the running median is a spike...
SPIKE_MIN_RISE = 0.25  # ...if it is also this much higher in absolute terms (nats)
GRAD_FAR = 10.0  # a gradient norm this many times its running median is "far above"...
GRAD_MIN_RISE = 0.05  # ...when the loss rises at once by at least this much (nats): near 0, blips are noise
RISE = 0.05  # eval loss this much above its best counts as rising
MIN_EVALS = 3  # evaluations needed before overfitting can be read
MIN_GAIN = 0.10  # the adapter should lower held-out loss by at least this share...
F1_GAIN_OK = 10.0  # ...unless its answers gained this many F1 points
PLATEAU_FLAT = 0.02  # last third of the train loss changing less than this share is a plateau
PLATEAU_HIGH = 0.5  # and one still above this share of the first loss is high
COIN_TOSS = 60.0  # held-out preference accuracy (%) at or below this, and...
COIN_GAIN = 10.0  # ...within this many points of the base's, is a preference not learned
LEARNED = 90.0  # held-out preference accuracy (%) from which flat margins are fine


@dataclass(frozen=True)
class Finding:
    rule: str
    finding: str  # unstable | overfitting | underperforming
    evidence: str  # what the curves or scores show (the same for every remedy of a finding)
    remedy: str  # the guideline's remedy in words
    change: dict = field(default_factory=dict)  # plan field -> new value ({} when no plan field expresses it)

    def to_json(self) -> dict:
        return {
            "rule": self.rule,
            "finding": self.finding,
            "evidence": self.evidence,
            "remedy": self.remedy,
            "change": dict(self.change),
        }


def diagnose(metrics: list[dict], evaluation: dict | None, plan, finished: bool = True) -> list[Finding]:
    """Findings, most urgent first; `finished=False` reads only what a running job already shows.

    A NaN, a divergence or a loss spike comes first and alone: nothing else can be read from
    a broken run. A gradient-norm outlier that clipping absorbed (the loss did not spike) is a
    weaker sign, listed after a clear overfitting curve rather than hiding it.
    """
    broken = _broken(metrics)
    if broken:
        return _u4(plan, *broken)
    found = []
    if getattr(plan, "objective", "sft") != "sft" and finished:
        found += _preference(evaluation or {}, plan)
    overfit = _overfitting(metrics)
    if overfit:
        found += _u2(plan, metrics, *overfit)
    grad = _grad_outlier(metrics)
    if grad:
        found += _u4(plan, grad, False)
    if not found and finished and getattr(plan, "objective", "sft") == "sft":
        weak = _underperforming(metrics, evaluation)
        if weak:
            found += _u1(plan, weak)
    return found


def verdict(findings: list[Finding], finished: bool) -> str | None:
    """One word for the run: its first finding, 'good' once it succeeded without any, else None."""
    if findings:
        return findings[0].finding
    return "good" if finished else None


def apply(plan, findings: list[Finding], rules: list[str] | None = None):
    """The plan with the chosen findings' changes (all when `rules` is None); the first change to a field wins."""
    chosen = [f for f in findings if rules is None or f.rule in rules]
    changes: dict = {}
    for f in chosen:
        for key, value in f.change.items():
            changes.setdefault(key, value)
    return plan.updated(**changes), changes


# --- readings ---------------------------------------------------------------------------
def _series(metrics: list[dict], key: str) -> list[tuple[int, float]]:
    return [(int(m["step"]), float(m[key])) for m in metrics if m.get(key) is not None]


def _broken(metrics: list[dict]) -> tuple[str, bool] | None:
    """(evidence, severe): severe (NaN, divergence) calls for a 10x lower learning rate, a spike 3x."""
    losses, grads = _series(metrics, "loss"), _series(metrics, "grad_norm")
    bad = next(
        ((s, v, k) for k, pts in (("loss", losses), ("grad norm", grads)) for s, v in pts if not math.isfinite(v)),
        None,
    )
    if bad:
        return f"the {bad[2]} was {bad[1]} at step {bad[0]}", True
    frozen = _collapsed(losses, grads)
    if frozen:
        return frozen, True
    if len(losses) >= 4:
        first, tail = losses[0][1], [v for _, v in losses[-max(2, len(losses) // 4) :]]
        if statistics.mean(tail) > first:
            return (
                f"the train loss ended above where it started: {first:.3f} at step {losses[0][0]}, "
                f"{losses[-1][1]:.3f} at step {losses[-1][0]}"
            ), True
    spikes = [
        (s, v, statistics.median([p for _, p in losses[max(0, i - 5) : i]]))
        for i, (s, v) in enumerate(losses)
        if i >= 3
    ]
    spikes = [(s, v, ref) for s, v, ref in spikes if v > SPIKE * ref and v - ref > SPIKE_MIN_RISE]
    if spikes:
        s, v, ref = spikes[0]
        more = f" ({len(spikes)} spikes in all)" if len(spikes) > 1 else ""
        return (
            f"the train loss spiked to {v:.3f} at step {s}, {v / ref:.1f}x its running median {ref:.3f}{more}",
            False,
        )
    return None


def _collapsed(losses, grads) -> str | None:
    """A too-large update can saturate the network: the gradient vanishes and the loss freezes well above 0."""
    if len(grads) < 4 or len(losses) < 4:
        return None
    i = len(grads)
    while i > 0 and grads[i - 1][1] < 1e-6:
        i -= 1
    dead = grads[i:]
    tail = [v for s, v in losses if dead and s >= dead[0][0]]
    if len(dead) >= 3 and i > 0 and tail and max(tail) - min(tail) < 1e-3 and min(tail) > 0.1:
        return (
            f"the gradient norm collapsed from {grads[i - 1][1]:.3g} to 0 at step {dead[0][0]} and the loss froze "
            f"at {tail[-1]:.3f}: an update that large saturated the network"
        )
    return None


def _grad_outlier(metrics: list[dict]) -> str | None:
    """A gradient norm GRAD_FAR times the median of the few before it, with the loss rising at once.

    Against the running median, not the whole run's: a run that converges ends with tiny
    gradients, which would make any early, ordinary one look "far above"."""
    grads = [(s, v) for s, v in _series(metrics, "grad_norm") if math.isfinite(v)]
    loss_at = dict(_series(metrics, "loss"))
    steps = sorted(loss_at)

    def loss_rose(step):  # a large gradient while the loss falls fast is learning, not instability
        i = steps.index(step) if step in loss_at else -1
        return i > 0 and any(loss_at[s] > loss_at[steps[i - 1]] + GRAD_MIN_RISE for s in steps[i : i + 2])

    start = max(2, len(grads) // 10)  # a fresh adapter's first updates have large gradients
    far = []
    for i in range(max(start, 3), len(grads)):
        s, v = grads[i]
        ref = statistics.median(g for _, g in grads[max(0, i - 5) : i])
        if ref > 0 and v > GRAD_FAR * ref and loss_rose(s):
            far.append((s, v, ref))
    if not far:
        return None
    s, v, ref = max(far, key=lambda p: p[1] / p[2])
    return f"the gradient norm reached {v:.3g} at step {s}, {v / ref:.0f}x the median {ref:.3g} of the steps before it"


def _overfitting(metrics: list[dict]) -> tuple[str, int] | None:
    """(evidence, step of the lowest eval loss)."""
    evals = [(s, v) for s, v in _series(metrics, "eval_loss") if math.isfinite(v)]
    losses = _series(metrics, "loss")
    if len(evals) < MIN_EVALS or not losses:
        return None
    best_i = min(range(len(evals)), key=lambda i: evals[i][1])
    (best_s, best), after = evals[best_i], evals[best_i + 1 :]

    def train_near(step):  # mean train loss over the logged steps up to `step` since the previous eval
        prev = max([s for s, _ in evals if s < step], default=0)
        pts = [v for s, v in losses if prev < s <= step] or [v for s, v in losses if s <= step][-1:]
        return statistics.mean(pts) if pts else None

    t_best, t_last = train_near(best_s), train_near(evals[-1][0])
    falling = t_best is not None and t_last is not None and t_last < t_best
    if len(after) >= 2 and all(v > best for _, v in after) and after[-1][1] > best * (1 + RISE) and falling:
        return (
            f"the eval loss rose from {best:.3f} at step {best_s} to {after[-1][1]:.3f} at step {after[-1][0]} "
            f"over {len(after)} evaluations while the train loss fell from {t_best:.3f} to {t_last:.3f}"
        ), best_s
    gaps = [(s, v - train_near(s)) for s, v in evals[-MIN_EVALS:] if train_near(s) is not None]
    widening = len(gaps) == MIN_EVALS and gaps[0][1] > 0 and all(b[1] > a[1] for a, b in itertools.pairwise(gaps))
    if widening and evals[-1][1] > best * (1 + RISE / 2) and falling:
        return (
            f"the gap between eval and train loss widened from {gaps[0][1]:.3f} at step {gaps[0][0]} to "
            f"{gaps[-1][1]:.3f} at step {gaps[-1][0]}, while the eval loss stayed above its best "
            f"{best:.3f} (step {best_s})"
        ), best_s
    return None


def _no_answer_gain(evaluation: dict | None) -> str | None:
    """Held-out exact match that fell, or that gained nothing while the adapter gives one answer to every
    row: a lower loss alone does not make such a run good."""
    base, adapter = (evaluation or {}).get("base") or {}, (evaluation or {}).get("adapter") or {}
    before, after = base.get("exact_match"), adapter.get("exact_match")
    if before is None or after is None:
        return None
    if after < before:
        return f"held-out exact match fell from {before:.0f}% to {after:.0f}%: the adapter answers worse than the base"
    answers = [s.get("adapter") for s in (evaluation or {}).get("samples") or []]
    references = {s.get("reference") for s in (evaluation or {}).get("samples") or []}
    if after <= before and len(answers) >= 2 and len(set(answers)) == 1 and len(references) > 1:
        return (
            f"held-out exact match stayed at {after:.0f}% and the adapter gives the same answer to every sample "
            f"row ({answers[0]!r})"
        )
    return None


def _underperforming(metrics: list[dict], evaluation: dict | None) -> str | None:
    base, adapter = (evaluation or {}).get("base") or {}, (evaluation or {}).get("adapter") or {}
    worse = _no_answer_gain(evaluation)
    if worse:
        return worse
    if base.get("loss") is not None and adapter.get("loss") is not None:
        gain = (base["loss"] - adapter["loss"]) / base["loss"] if base["loss"] > 0 else 0.0
        f1 = (adapter["f1"] - base["f1"]) if None not in (adapter.get("f1"), base.get("f1")) else None
        if gain >= MIN_GAIN or (f1 is not None and f1 >= F1_GAIN_OK):
            return None
        rows = (evaluation or {}).get("rows")
        text = (
            f"on {rows} held-out rows the adapter's loss is {adapter['loss']:.3f} against the "
            f"base's {base['loss']:.3f} ({100 * gain:+.0f}% lower; at least {100 * MIN_GAIN:.0f}% is expected)"
        )
        if f1 is not None:
            text += f", token F1 {base['f1']:.0f} -> {adapter['f1']:.0f}"
        return text
    losses = _series(metrics, "loss")
    if len(losses) < 6:
        return None
    tail = losses[-max(3, len(losses) // 3) :]
    first, start, end = losses[0][1], tail[0][1], tail[-1][1]
    if first > 0 and abs(start - end) < PLATEAU_FLAT * start and end > PLATEAU_HIGH * first:
        return (
            f"the train loss plateaued at {end:.3f} from step {tail[0][0]} to {tail[-1][0]}, "
            f"{100 * end / first:.0f}% of its first value {first:.3f}"
        )
    return None


def _preference(evaluation: dict, plan) -> list[Finding]:
    """Readings of a dpo/orpo run: both rewards falling, accuracy at a coin toss, margins flat too early."""
    curve = [p for p in evaluation.get("curve") or [] if None not in (p.get("chosen"), p.get("rejected"))]
    base, adapter = evaluation.get("base") or {}, evaluation.get("adapter") or {}
    acc, base_acc = adapter.get("preference_accuracy"), base.get("preference_accuracy")
    if plan.objective == "dpo" and len(curve) >= 4:
        first, last = curve[0], curve[-1]
        if last["chosen"] < first["chosen"] - 0.05 and last["rejected"] < first["rejected"] - 0.05:
            return _p_falling(
                plan,
                f"the rewards of both answers fell: chosen {first['chosen']:+.3f} -> "
                f"{last['chosen']:+.3f}, rejected {first['rejected']:+.3f} -> {last['rejected']:+.3f} "
                f"(steps {first['step']} to {last['step']}): the chosen answer lost probability too",
            )
    if acc is not None and base_acc is not None and acc <= COIN_TOSS and acc - base_acc < COIN_GAIN:
        return _p_weak(plan, f"held-out preference accuracy {base_acc:.0f}% -> {acc:.0f}%: about a coin toss")
    margins = [p["margin"] for p in curve if p.get("margin") is not None]
    if len(margins) >= 6 and (acc is None or acc < LEARNED):
        third = margins[-max(2, len(margins) // 3) :]
        if max(margins) > 0 and max(third) - min(third) < 0.05 * max(abs(m) for m in margins):
            shown = f"{acc:.0f}%" if acc is not None else "unmeasured"
            return _p_weak(
                plan,
                f"the reward margin stopped growing at {third[-1]:.3f} over the last {len(third)} "
                f"logged steps, held-out preference accuracy {shown}",
            )
    return []


def _p_weak(plan, evidence: str) -> list[Finding]:
    lr = _sig(plan.learning_rate * 3)
    out = [
        Finding(
            "P2",
            "underperforming",
            evidence,
            f"raise the learning rate 3x: {plan.learning_rate:g} -> {lr:g}",
            {"learning_rate": lr},
        )
    ]
    if plan.objective == "dpo" and plan.beta > 0.02:
        beta = _sig(plan.beta / 2)
        out.append(
            Finding(
                "P1",
                "underperforming",
                evidence,
                f"let the preference pull harder: beta {plan.beta:g} -> {beta:g}",
                {"beta": beta},
            )
        )
    change = {"max_steps": plan.max_steps * 2} if plan.max_steps else {"epochs": plan.epochs + 1}
    out.append(
        Finding(
            "P3",
            "underperforming",
            evidence,
            "train longer: " + ", ".join(f"{k} {v:g}" for k, v in change.items()),
            change,
        )
    )
    return out


def _p_falling(plan, evidence: str) -> list[Finding]:
    beta, lr = _sig(plan.beta * 2), _sig(plan.learning_rate / 3)
    return [
        Finding(
            "P1", "unstable", evidence, f"keep closer to the base: beta {plan.beta:g} -> {beta:g}", {"beta": beta}
        ),
        Finding(
            "P2",
            "unstable",
            evidence,
            f"lower the learning rate 3x: {plan.learning_rate:g} -> {lr:g}",
            {"learning_rate": lr},
        ),
        Finding(
            "P1",
            "unstable",
            evidence,
            "use ORPO, which keeps learning the chosen answer while it prefers it",
            {"objective": "orpo", "learning_rate": _sig(plan.learning_rate * 10 / 3)},
        ),
    ]


# --- remedies, in the guidelines' order -----------------------------------------------
def _sig(x: float) -> float | int:
    """Two significant digits; whole numbers as ints (alpha 16, not 16.0)."""
    x = float(f"{x:.2g}")
    return int(x) if x.is_integer() else x


def _u4(plan, evidence: str, severe: bool) -> list[Finding]:
    factor = 10 if severe else 3
    lr = _sig(plan.learning_rate / factor)
    out = [
        Finding(
            "U4",
            "unstable",
            evidence,
            f"lower the learning rate {factor}x: {plan.learning_rate:g} -> {lr:g}",
            {"learning_rate": lr},
        )
    ]
    if plan.alpha > plan.r:
        out.append(
            Finding(
                "A4",
                "unstable",
                evidence,
                f"alpha / r is {plan.alpha / plan.r:g} (A3 calls 4 aggressive) "
                "and multiplies the update like a learning rate: set alpha = r (A2)",
                {"alpha": plan.r},
            )
        )
    if plan.warmup_ratio < 0.1:
        change: dict[str, float | str] = {"warmup_ratio": 0.1}
        if plan.lr_scheduler == "constant":
            change["lr_scheduler"] = "constant_with_warmup"
        out.append(
            Finding(
                "U4",
                "unstable",
                evidence,
                f"warm up over the first 10% of the steps (now {plan.warmup_ratio:g})",
                change,
            )
        )
    return out


def _u2(plan, metrics: list[dict], evidence: str, best_step: int) -> list[Finding]:
    out = []
    if plan.r > MIN_RANK:
        r = max(MIN_RANK, plan.r // 2)
        out.append(
            Finding(
                "U2",
                "overfitting",
                evidence,
                f"lower the rank {plan.r} -> {r} (alpha keeps alpha / r)",
                {"r": r, "alpha": _sig(alpha_for(plan, r))},
            )
        )
    if plan.dropout < 0.1:
        out.append(
            Finding(
                "D2",
                "overfitting",
                evidence,
                f"raise dropout {plan.dropout:g} -> 0.1, as for small or noisy data",
                {"dropout": 0.1},
            )
        )
    last = max((int(m["step"]) for m in metrics), default=0)
    if 0 < best_step < last:
        if plan.max_steps:
            change = {"max_steps": best_step}
        else:
            change = {"epochs": max(0.1, round(plan.epochs * best_step / last, 1))}
        out.append(
            Finding(
                "U2",
                "overfitting",
                evidence,
                f"train less: the eval loss was lowest at step {best_step} of {last}",
                change,
            )
        )
    out.append(
        Finding("U2", "overfitting", evidence, "add more (or more varied) training rows; no plan field does that", {})
    )
    return out


def _u1(plan, evidence: str) -> list[Finding]:
    out = []
    if plan.r < MAX_RANK:
        r = min(MAX_RANK, plan.r * 2)
        out.append(
            Finding(
                "U1",
                "underperforming",
                evidence,
                f"raise the rank {plan.r} -> {r} (alpha keeps alpha / r)",
                {"r": r, "alpha": _sig(alpha_for(plan, r))},
            )
        )
    wider = {"q_proj,v_proj": "attention", "attention": "all-linear", "mlp": "all-linear"}.get(plan.targets)
    if wider is None and plan.targets != "all-linear":
        wider = "all-linear"
    if wider:
        out.append(
            Finding(
                "U1",
                "underperforming",
                evidence,
                f"put adapters on more layers: {plan.targets} -> {wider}",
                {"targets": wider},
            )
        )
    low = rules.RANGES["learning_rate"].recommended[0] if plan.method != "full" else 0.0
    if plan.learning_rate * 3 < low:  # far below the range: back into it in one step, not 3x at a time
        lr = _sig(low)
        out.append(
            Finding(
                "L1",
                "underperforming",
                evidence,
                f"raise the learning rate {plan.learning_rate:g} -> "
                f"{lr:g}, the low end of the range adapters train in (L1)",
                {"learning_rate": lr},
            )
        )
    else:
        lr = _sig(plan.learning_rate * 3)
        out.append(
            Finding(
                "L1",
                "underperforming",
                evidence,
                f"raise the learning rate 3x: {plan.learning_rate:g} -> "
                f"{lr:g} (LoRA takes 2-5x that of full fine-tuning)",
                {"learning_rate": lr},
            )
        )
    change = {"max_steps": plan.max_steps * 2} if plan.max_steps else {"epochs": plan.epochs + 1}
    out.append(
        Finding(
            "U1",
            "underperforming",
            evidence,
            "train longer: " + ", ".join(f"{k} {v:g}" for k, v in change.items()),
            change,
        )
    )
    return out
