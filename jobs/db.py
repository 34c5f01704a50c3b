"""Where the job store lives and how to talk to it: one engine per URL, sessions over it.

SQLite in WAL mode at $LORAPILOT_HOME/lorapilot.db by default (readers never block the
worker's writes; `busy_timeout` makes concurrent writers wait instead of failing), or any
SQLAlchemy URL in DATABASE_URL. The schema is brought up to date (jobs.schema) the first
time a process opens a database.
"""

from __future__ import annotations

import os
import threading
from contextlib import contextmanager

from sqlalchemy import Engine, event, make_url
from sqlalchemy.exc import OperationalError
from sqlmodel import Session, create_engine

from engine import paths
from engine.errors import UserError
from jobs import database_driver, schema

_engines: dict[str, Engine] = {}
_lock = threading.Lock()


def database_url() -> str:
    return os.environ.get("DATABASE_URL") or f"sqlite:///{paths.home() / 'lorapilot.db'}"


def _sqlite_pragmas(dbapi_conn, _record) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA busy_timeout=30000")  # first: the WAL switch itself may need to wait
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


def db_engine():
    """One SQLAlchemy engine per URL (tests switch LORAPILOT_HOME between runs), schema upgraded once."""
    url = database_url()
    with _lock:
        eng = _engines.get(url)
        if eng is not None:
            return eng
        database_driver.check(url)  # a driver that is not installed: one line naming it, not ModuleNotFoundError
        if url.startswith("sqlite"):
            eng = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})
            event.listen(eng, "connect", _sqlite_pragmas)
        else:
            eng = create_engine(url, pool_pre_ping=True)
        try:
            schema.upgrade(eng)  # Alembic: creates a new database, migrates an older one, keeps its jobs
        except OperationalError as exc:  # a server that is down, a wrong password, a database that is missing
            eng.dispose()
            raise _unreachable(url, exc) from None
        _engines[url] = eng
        return eng


def _unreachable(url: str, exc: OperationalError) -> UserError:
    shown = make_url(url).render_as_string(hide_password=True)
    reason = next((line.strip() for line in str(exc.orig or exc).splitlines() if line.strip()), type(exc).__name__)
    return UserError(
        "DATABASE_URL",
        f"cannot open {shown} ({reason[:200]}); start the database server or fix the URL, "
        "or unset DATABASE_URL to use the SQLite file in LORAPILOT_HOME",
    )


def forget_engines() -> None:
    """In a forked child: drop the parent's engines without closing their connections, which stay the parent's
    (SQLAlchemy's advice for os.fork: dispose(close=False))."""
    with _lock:
        for eng in _engines.values():
            eng.dispose(close=False)
        _engines.clear()


def dispose(url: str) -> None:
    """Close the pooled connections of one database (a test's throwaway server, say)."""
    with _lock:
        eng = _engines.pop(url, None)
    if eng is not None:
        eng.dispose()


@contextmanager
def session():
    with Session(db_engine(), expire_on_commit=False) as s:
        yield s
