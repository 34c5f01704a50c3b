"""Stop when the job has learned: early stopping on the held-out loss.

A small task is often learned long before its last epoch: the training loss sits near
zero while the steps go on. With `plan.patience` evaluations in a row that do not
improve the held-out loss, training stops; the trainer then loads the checkpoint with
the lowest held-out loss (`load_best_model_at_end`), which becomes the adapter, and the
reason is reported as a `note` event.

"Improve" means beat the best so far by a margin (MIN_GAIN of it, at least
MIN_GAIN_ABS): a loss creeping down by a thousandth of a nat is flat for a user, and
would otherwise keep a learned job running for nothing.
"""

from __future__ import annotations

MIN_GAIN = 0.02  # relative to the best held-out loss so far
MIN_GAIN_ABS = 1e-3


def enabled(plan, has_eval: bool) -> bool:
    return has_eval and plan.patience > 0


def trainer_args(plan, has_eval: bool) -> dict:
    """SFTConfig fields that keep the best checkpoint and load it at the end."""
    if not enabled(plan, has_eval):
        return {}
    return {"load_best_model_at_end": True, "metric_for_best_model": "eval_loss", "greater_is_better": False}


def settings(plan, has_eval: bool) -> dict | None:
    """The early-stopping rule a job runs with, as the record of what it resolved states it."""
    if not enabled(plan, has_eval):
        return None
    return {"patience": plan.patience, "min_gain": MIN_GAIN, "min_gain_abs": MIN_GAIN_ABS}


def improves(loss: float, best: float | None) -> bool:
    return best is None or loss < best - max(MIN_GAIN_ABS, MIN_GAIN * best)


def callback(patience: int):
    from transformers import TrainerCallback

    class EarlyStop(TrainerCallback):
        def __init__(self):
            self.patience, self.best, self.flat, self.reason = patience, None, 0, None

        def _see(self, loss: float) -> None:
            if improves(loss, self.best):
                self.best, self.flat = loss, 0
            else:
                self.flat += 1

        def on_train_begin(self, args, state, control, **kw):
            # after a resume, the evaluations so far still count
            self.best, self.flat = None, 0
            for entry in state.log_history:
                if "eval_loss" in entry:
                    self._see(entry["eval_loss"])

        def on_evaluate(self, args, state, control, metrics=None, **kw):
            loss = (metrics or {}).get("eval_loss")
            if loss is None:
                return
            self._see(loss)
            if self.flat >= self.patience and state.global_step < state.max_steps:
                control.should_training_stop = True
                self.reason = (
                    f"stopped at step {state.global_step} of {state.max_steps}: held-out loss flat for "
                    f"{self.flat} evaluations"
                )

    return EarlyStop()


def kept_note(state) -> str | None:
    """Which checkpoint became the adapter, when it is not the last step."""
    best = getattr(state, "best_global_step", None)
    if best and best != state.global_step and state.best_metric is not None:
        return f"kept the checkpoint of step {best} (lowest held-out loss, {state.best_metric:.4f}) as the adapter"
    return None
