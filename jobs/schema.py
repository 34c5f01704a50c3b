"""The job store's schema, brought up to date by Alembic whenever the store opens.

Revisions live in jobs/migrations/versions/ (inside the package, so they install with it);
Alembic is configured here in code, so no alembic.ini is needed. `upgrade(engine)` runs
at the first `db.db_engine()` of each process:

- a database at the newest revision: one SELECT, nothing else;
- a new database: every revision in order (0001 is the schema LoRA Pilot shipped first);
- an unversioned database from before migrations existed (made by `create_all`): its
  tables are compared with the revisions it could match and stamped, then upgraded;
- concurrent starts (a UI, a CLI, several workers) take a lock, so one process migrates.

Adding a column: edit the SQLModel class in jobs/tables.py, then
`python -m jobs.schema revision "add job.foo"` writes the next revision from the diff;
read it, keep it dialect-neutral (SQLite and PostgreSQL), commit it.
"""

from __future__ import annotations

import sys
import tempfile
from contextlib import contextmanager, nullcontext
from functools import lru_cache
from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import Script, ScriptDirectory
from filelock import FileLock

from engine.errors import UserError
from jobs import tables

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
FIRST = "0001"
# The job table of revision 0001, to recognise a database made before migrations existed.
FIRST_JOB_COLUMNS = frozenset(
    {
        "id",
        "name",
        "plan_json",
        "status",
        "created_at",
        "queue_seq",
        "queued_at",
        "started_at",
        "finished_at",
        "pid",
        "device",
        "step",
        "total_steps",
        "progress",
        "eta_seconds",
        "error",
        "artifact_dir",
        "estimate_json",
        "estimated_peak_bytes",
        "measured_peak_bytes",
        "base_score",
        "adapter_score",
        "cancel_requested",
    }
)
_ADVISORY_LOCK_ID = 0x4C6F5261  # PostgreSQL: one migrator at a time, whatever the process


def config(connection=None) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["connection"] = connection
    return cfg


@lru_cache(maxsize=1)
def head() -> str:
    newest = ScriptDirectory.from_config(config()).get_current_head()
    assert newest is not None, "jobs/migrations/versions/ holds no revision"
    return newest


def current(connection) -> str | None:
    return MigrationContext.configure(connection).get_current_revision()


def upgrade(engine) -> None:
    """Bring the database behind `engine` to the newest revision (see the module docstring)."""
    with engine.connect() as conn:
        if current(conn) == head():
            return
    with _lock(engine), engine.begin() as conn:
        if current(conn) == head():  # another process migrated while we waited
            return
        _stamp_if_unversioned(conn, engine.url)
        command.upgrade(config(conn), "head")


def _stamp_if_unversioned(conn, url) -> None:
    inspector = sa.inspect(conn)
    present = set(inspector.get_table_names())
    if "alembic_version" in present or "job" not in present:
        return  # versioned, or empty: the revisions take it from here

    have = {t: {c["name"] for c in inspector.get_columns(t)} for t in present}
    if all(t.name in have and {c.name for c in t.columns} <= have[t.name] for t in tables.metadata.sorted_tables):
        command.stamp(config(conn), "head")  # create_all already made today's schema
    elif have["job"] >= FIRST_JOB_COLUMNS:
        command.stamp(config(conn), FIRST)
    else:
        missing = ", ".join(sorted(FIRST_JOB_COLUMNS - have["job"]))
        raise UserError(
            "database",
            f"{url.render_as_string(hide_password=True)} was made by a LoRA Pilot too old "
            f"to upgrade (its job table lacks {missing}); move the file aside and start again "
            "(job folders under $LORAPILOT_HOME/jobs are kept)",
        )


@contextmanager
def _lock(engine):
    if engine.dialect.name == "sqlite" and engine.url.database not in (None, "", ":memory:"):
        with FileLock(str(engine.url.database) + ".migrate.lock", timeout=120):
            yield
    elif engine.dialect.name == "postgresql":
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT pg_advisory_lock(:id)"), {"id": _ADVISORY_LOCK_ID})
            try:
                yield
            finally:
                conn.execute(sa.text("SELECT pg_advisory_unlock(:id)"), {"id": _ADVISORY_LOCK_ID})
    else:
        with nullcontext():
            yield


def new_revision(message: str) -> str:
    """Autogenerate the next revision from the models (against a scratch SQLite at head)."""
    with tempfile.TemporaryDirectory() as tmp:
        engine = sa.create_engine(f"sqlite:///{tmp}/scratch.db")
        upgrade(engine)
        with engine.begin() as conn:
            rev_id = f"{int(head()) + 1:04d}"
            script = command.revision(config(conn), message=message, autogenerate=True, rev_id=rev_id)
        engine.dispose()
    head.cache_clear()
    assert isinstance(script, Script)  # one revision, not a branch point
    return script.path


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] != "revision":
        print('usage: python -m jobs.schema revision "what changed"', file=sys.stderr)
        sys.exit(2)
    print(new_revision(sys.argv[2]))
