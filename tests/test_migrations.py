"""Upgrades keep the jobs: the store migrates an older database with Alembic when it opens.

Databases of earlier schemas are made here exactly as earlier versions left them: by
running only revision 0001 (the schema before migrations grew), or by 0001 without
Alembic's version table (what `create_all` made before migrations existed).
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlmodel import SQLModel

from engine.errors import UserError
from engine.plan import TrainingPlan
from jobs import db, dispatcher, schema, store
from tests.jobwait import finished, plan, tiny_files, wait_for
from ui.cli.main import run as cli

OLD_JOB = """INSERT INTO job (name, plan_json, status, created_at, queued_at, queue_seq, step, total_steps,
    progress, error, artifact_dir, cancel_requested, measured_peak_bytes)
    VALUES ('from last month', :plan, 'succeeded', '2026-10-01 09:00:00.000000', '2026-10-01 09:00:00.000000',
    1, 30, 30, 1.0, NULL, :folder, FALSE, 123456)"""


def _old_database(home, revision_table: bool = True, url: str | None = None):
    """The store's database (SQLite in $LORAPILOT_HOME by default) at revision 0001 with one finished job."""
    engine = sa.create_engine(url or f"sqlite:///{home / 'lorapilot.db'}")
    with engine.begin() as conn:
        command.upgrade(schema.config(conn), schema.FIRST)
        conn.execute(
            sa.text(OLD_JOB),
            {"plan": TrainingPlan.build(dataset="old.jsonl").model_dump_json(), "folder": str(home / "jobs" / "1")},
        )
        conn.execute(sa.text("INSERT INTO metric (job_id, step, loss) VALUES (1, 10, 2.5), (1, 20, 1.5)"))
        if not revision_table:
            conn.execute(sa.text("DROP TABLE alembic_version"))
    engine.dispose()


def _revision() -> str:
    with db.db_engine().connect() as conn:
        return schema.current(conn)


def _cli_json(capsys, *args):
    assert cli(list(args)) == 0
    return json.loads(capsys.readouterr().out)


@pytest.mark.usefixtures("database")
def test_a_new_database_is_created_at_the_newest_revision_matching_the_models():
    assert store.list_jobs() == []
    assert _revision() == schema.head()
    with db.db_engine().connect() as conn:
        # a column added to a model without a revision (or the reverse) shows up here
        assert compare_metadata(MigrationContext.configure(conn), SQLModel.metadata) == []


def test_a_postgres_database_of_the_first_revision_is_upgraded_and_keeps_its_jobs(
    lorapilot_home, postgres_server, monkeypatch, capsys
):
    url = postgres_server.new_database()  # the SQLite case, with a job run after the upgrade, is below
    monkeypatch.setenv("DATABASE_URL", url)
    _old_database(lorapilot_home, url=url)
    listed = _cli_json(capsys, "jobs", "--json")
    assert [(j["id"], j["name"], j["status"]) for j in listed] == [(1, "from last month", "succeeded")]
    assert _revision() == schema.head()


@pytest.mark.slow
def test_a_database_of_the_previous_revision_opens_lists_shows_and_runs_new_jobs(lorapilot_home, tmp_path, capsys):
    _old_database(lorapilot_home)
    listed = _cli_json(capsys, "jobs", "--json")
    assert [(j["id"], j["name"], j["status"]) for j in listed] == [(1, "from last month", "succeeded")]
    shown = _cli_json(capsys, "show", "1", "--json")
    assert shown["step"] == 30 and shown["measured_peak_bytes"] == 123456 and shown["stalled_since"] is None
    assert [(m["step"], m["loss"]) for m in shown["metrics"]] == [(10, 2.5), (20, 1.5)]
    assert _revision() == schema.head()

    job = dispatcher.submit(plan(tiny_files(tmp_path), max_steps=2))
    done = wait_for(job.id, finished)
    assert done.status == "succeeded", done.error
    assert done.heartbeat_at is not None and done.step_seconds > 0  # columns the migration added
    assert [j.id for j in store.list_jobs()] == [2, 1]


def test_an_unversioned_database_from_before_migrations_is_stamped_and_upgraded(lorapilot_home, capsys):
    _old_database(lorapilot_home, revision_table=False)
    assert [j.name for j in store.list_jobs()] == ["from last month"]
    assert _revision() == schema.head()
    assert _cli_json(capsys, "show", "1", "--json")["status"] == "succeeded"


def test_a_database_too_old_to_upgrade_is_refused_in_one_line(lorapilot_home, capsys):
    engine = sa.create_engine(f"sqlite:///{lorapilot_home / 'lorapilot.db'}")
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE job (id INTEGER PRIMARY KEY, name VARCHAR, plan_json VARCHAR)"))
    engine.dispose()
    with pytest.raises(UserError, match="too old to upgrade"):
        db.db_engine()
    assert cli(["jobs"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: database: ") and "lacks" in err and err.count("\n") == 1


def test_processes_starting_at_once_on_a_new_database_migrate_it_once(lorapilot_home):
    code = "from jobs import store; print(len(store.list_jobs()))"
    procs = [
        subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(4)
    ]
    results = [p.communicate(timeout=300) for p in procs]
    assert [(p.returncode, out.strip()) for p, (out, _) in zip(procs, results)] == [(0, "0")] * 4, results
    assert _revision() == schema.head()
