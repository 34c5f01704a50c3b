"""DATABASE_URL as users write it: plain postgresql:// (psycopg 3), postgresql+psycopg2://, and a
URL whose driver is not installed, which is one line naming the driver and how to install it.

The PostgreSQL server is real (tests/postgres.py); the missing driver is pg8000, which LoRA
Pilot does not install (constraints.txt pins what is installed, tests/test_constraints.py checks).
"""

from __future__ import annotations

import importlib.util
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import text

from engine.errors import UserError
from engine.plan import TrainingPlan
from jobs import database_driver, db, store
from jobs.tables import Job

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("driver", [None, "psycopg", "psycopg2"])
def test_the_store_runs_on_postgresql_with_the_plain_url_and_with_each_installed_driver(
    postgres_server, monkeypatch, driver
):
    url = postgres_server.new_database(driver)
    assert url.startswith("postgresql://" if driver is None else f"postgresql+{driver}://")
    monkeypatch.setenv("DATABASE_URL", url)
    try:
        job = store.insert_job(Job(name="on postgres", plan_json=TrainingPlan().model_dump_json()))
        assert store.get_job(job.id).name == "on postgres"
        with db.db_engine().connect() as conn:
            assert conn.dialect.driver == (driver or "psycopg")
            assert conn.execute(text("select count(*) from job")).scalar() == 1
    finally:
        db.dispose(url)


def _app(*args, url: str):
    env = {**os.environ, "DATABASE_URL": url, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, str(ROOT / "app.py"), *args], env=env, capture_output=True, text=True, timeout=120
    )


def test_a_url_whose_driver_is_not_installed_is_one_line_in_the_cli_and_at_app_start():
    assert importlib.util.find_spec("pg8000") is None, "this test needs a driver that is not installed"
    url = "postgresql+pg8000://lp:secret@127.0.0.1:5432/jobs"
    expected = (
        "error: DATABASE_URL: postgresql+pg8000:// needs the Python driver pg8000, which is not installed; "
        "install it with `pip install 'pg8000'`, or write postgresql:// for psycopg 3, which "
        "`pip install 'lorapilot[postgres]'` installs"
    )
    for args in (["jobs"], ["--port", "1"]):  # a command, and the wizard's start (refused before it listens)
        p = _app(*args, url=url)
        assert (p.returncode, p.stderr.strip(), p.stdout) == (2, expected, ""), args


def test_a_server_that_is_not_there_is_one_line_that_hides_the_password():
    with socket.socket() as s:  # a loopback port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    p = _app("jobs", url=f"postgresql://lp:secret@127.0.0.1:{port}/jobs")
    assert p.returncode == 2 and p.stdout == "", p.stderr
    line = p.stderr.strip()
    assert len(line.splitlines()) == 1 and "internal" not in line and "secret" not in line, line
    assert line.startswith(f"error: DATABASE_URL: cannot open postgresql://lp:***@127.0.0.1:{port}/jobs (")
    assert "start the database server or fix the URL" in line


def test_each_kind_of_bad_url_is_one_line_naming_what_to_write():
    assert database_driver.check("sqlite:////tmp/x.db") is None and database_driver.check("postgresql://h/db") is None
    with pytest.raises(
        UserError,
        match=r"^DATABASE_URL: mysql:// needs the Python driver mysqldb, .* "
        r"`pip install 'mysqlclient'`$",
    ):
        database_driver.check("mysql://u@h/db")
    with pytest.raises(UserError, match="'nosuchdb://u:\\*\\*\\*@h/db' names a database or driver SQLAlchemy does"):
        database_driver.check("nosuchdb://u:secret@h/db")  # and the password is not printed
    with pytest.raises(UserError, match="'not a url' is not a database URL"):
        database_driver.check("not a url")
