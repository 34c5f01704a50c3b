"""A sweep's Optuna study: where it is stored, how it samples and prunes, and how its trials read.

Storage: Optuna's RDBStorage on the product's own database, so a sweep survives a restart
like a job does. Not in the job tables' schema, though: RDBStorage keeps its schema version
in Alembic's default `alembic_version` table, the very table jobs.schema versions the job
store with, so sharing one would make each side read the other's revision as its own. On
SQLite the study lives in a file beside the job database (`lorapilot-optuna.db`); on
PostgreSQL in the same database under its own schema, `optuna` (through the connection's
search_path), so a second server is never needed.

Sampling: TPE, seeded from the plan's seed. Pruning (`ClearlyWorse`): a trial reports its
held-out loss at every evaluation; it is pruned when that loss is not finite, or more than
`MARGIN` above the median of the other trials' losses at the same step. Held-out loss falls
as a run learns whatever the metric ranked on, so pruning reads losses for every metric.
"""

from __future__ import annotations

import contextlib
import math
import statistics
import threading
from pathlib import Path

from sqlalchemy import text
from sqlalchemy.engine import make_url

from engine.errors import UserError
from jobs import db, store

MARGIN = 0.2  # "clearly worse": 20% above the median of the other trials at the same step
TPE_STARTUP = 4  # random trials before TPE models the space (Optuna's default, 10, outlasts most budgets)
SCHEMA = "optuna"  # PostgreSQL: the study's tables live in this schema of the product's database
STATES = {"COMPLETE": "complete", "PRUNED": "pruned", "FAIL": "failed", "RUNNING": "running", "WAITING": "queued"}

_storages: dict[str, object] = {}
_lock = threading.Lock()


def study_name(sweep_id: int) -> str:
    return f"sweep-{int(sweep_id)}"


def storage():
    """The RDBStorage beside the job store (see the module docstring), one per URL and process."""
    import optuna

    url = make_url(db.database_url())
    key = url.render_as_string(hide_password=False)
    with _lock:
        if key in _storages:
            return _storages[key]
        if url.get_backend_name() == "sqlite":
            if not url.database or url.database == ":memory:":
                raise UserError(
                    "DATABASE_URL",
                    "sweeps need a database file or server; an in-memory SQLite database does not outlive the process",
                )
            path = Path(url.database)
            target = url.set(database=str(path.with_name(path.stem + "-optuna" + (path.suffix or ".db"))))
            kwargs = {"connect_args": {"timeout": 30}}
        elif url.get_backend_name() == "postgresql":
            with db.db_engine().begin() as conn:
                conn.execute(text(f"CREATE SCHEMA IF NOT EXISTS {SCHEMA}"))
            target, kwargs = url, {"connect_args": {"options": f"-csearch_path={SCHEMA}"}, "pool_pre_ping": True}
        else:
            raise UserError("DATABASE_URL", f"sweeps run on SQLite or PostgreSQL, not {url.get_backend_name()}")
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        made = optuna.storages.RDBStorage(target.render_as_string(hide_password=False), engine_kwargs=kwargs)
        _storages[key] = made
        return made


def create(sweep_id: int, direction: str, seed: int):
    import optuna

    return optuna.create_study(
        study_name=study_name(sweep_id), storage=storage(), direction=direction, sampler=sampler(seed), pruner=pruner()
    )


def load(sweep_id: int, seed: int = 0):
    import optuna

    return optuna.load_study(
        study_name=study_name(sweep_id), storage=storage(), sampler=sampler(seed), pruner=pruner()
    )


def delete(sweep_id: int) -> None:
    import optuna

    with contextlib.suppress(KeyError):
        optuna.delete_study(study_name=study_name(sweep_id), storage=storage())


def sampler(seed: int):
    import optuna

    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=TPE_STARTUP)


def distribution(dim):
    """The Optuna distribution of an engine.advice.space dimension (what `Dim.suggest` asks for)."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    if dim.choices:
        return CategoricalDistribution(list(dim.choices))
    if dim.integer:
        return IntDistribution(int(dim.low), int(dim.high), log=dim.log)
    return FloatDistribution(float(dim.low), float(dim.high), log=dim.log)


def add_finished(study, job, point: dict, dims: dict, value: float) -> None:
    """A job that already ran the plan becomes trial 0, complete, with its held-out losses: the
    search starts from what it measured instead of training the same plan again."""
    import optuna

    losses = {m.step: m.eval_loss for m in store.job_metrics(job.id) if m.eval_loss is not None}
    study.add_trial(
        optuna.trial.create_trial(
            params=point,
            distributions={f: distribution(d) for f, d in dims.items()},
            value=value,
            intermediate_values=losses,
            user_attrs={"job_id": job.id, "start": f"job {job.id}"},
        )
    )


# --- pruning ---------------------------------------------------------------------------------
def worse_by(value: float, others: list[float]) -> str | None:
    """Why a held-out loss is clearly worse than the other trials' at the same step, or None."""
    if not math.isfinite(value):
        return f"held-out loss {value} is not a number"
    others = [v for v in others if math.isfinite(v)]
    if not others:
        return None
    median = statistics.median(others)
    if value > median * (1 + MARGIN):
        return (
            f"held-out loss {value:.4f} is {value / median - 1:.0%} above the median of the other trials "
            f"at this step ({median:.4f}; pruned beyond {MARGIN:.0%})"
        )
    return None


def others_at(study, step: int, number: int) -> list[float]:
    from optuna.trial import TrialState

    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))
    return [t.intermediate_values[step] for t in done if t.number != number and step in t.intermediate_values]


def pruner():
    import optuna

    class ClearlyWorse(optuna.pruners.BasePruner):
        """Optuna's pruner interface over `worse_by`: losses are compared whatever the study's direction."""

        def prune(self, study, trial) -> bool:
            step = trial.last_step
            if step is None:
                return False
            return worse_by(trial.intermediate_values[step], others_at(study, step, trial.number)) is not None

    return ClearlyWorse()


# --- reading trials ------------------------------------------------------------------------------
def trial_json(t) -> dict:
    # a queued trial has no params yet, only the values it was enqueued with (trial 0: the plan's)
    params = dict(t.params) or dict(t.system_attrs.get("fixed_params") or {})
    return {
        "number": t.number,
        "job_id": t.user_attrs.get("job_id"),
        "params": params,
        "value": t.value,
        "state": STATES.get(t.state.name, t.state.name.lower()),
        "reason": t.user_attrs.get("reason"),
    }


def best(study) -> dict | None:
    """The best complete trial, as `sweep show --json` has it; None before one completes."""
    from optuna.trial import TrialState

    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not done:
        return None
    pick = min if study.direction.name == "MINIMIZE" else max
    t = pick(done, key=lambda t: t.value)
    return {"number": t.number, "job_id": t.user_attrs.get("job_id"), "value": t.value}
