"""DATABASE_URL, checked before anything connects: a URL whose driver is not installed is one line.

SQLAlchemy picks the Python driver from the URL (`postgresql://` means psycopg 3 in SQLAlchemy
2.1, `postgresql+psycopg2://` psycopg2, `postgresql+pg8000://` pg8000) and imports it only when
the engine is created, so a missing driver used to surface as "ModuleNotFoundError: No module
named 'psycopg' (a bug in LoRA Pilot…)". The check asks the dialect for its driver the way
`create_engine` does (`Dialect.import_dbapi`), with no connection, and says which package to install.
jobs.db runs it before creating an engine, so every command that opens the store, and the wizard's
start (which opens it to start queued jobs), says it in one line.
"""

from __future__ import annotations

import os

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError

from engine.errors import UserError

FIELD = "DATABASE_URL"
EXTRA = "pip install 'lorapilot[postgres]'"  # psycopg 3 and psycopg2, the drivers the project tests
# SQLAlchemy's driver name -> the pip package that provides it (the PostgreSQL extra's drivers first).
PACKAGES = {
    "psycopg": "psycopg[binary]",
    "psycopg2": "psycopg2-binary",
    "pg8000": "pg8000",
    "asyncpg": "asyncpg",
    "psycopg2cffi": "psycopg2cffi",
    "mysqldb": "mysqlclient",
    "pymysql": "PyMySQL",
    "mysqlconnector": "mysql-connector-python",
    "asyncmy": "asyncmy",
    "aiomysql": "aiomysql",
    "oracledb": "oracledb",
    "pyodbc": "pyodbc",
    "pymssql": "pymssql",
    "aiosqlite": "aiosqlite",
}
IN_EXTRA = ("psycopg", "psycopg2")


def check(url: str | None = None) -> None:
    """Raise a one-line UserError when DATABASE_URL (or `url`) is malformed, names an unknown
    database, or needs a driver that is not installed. The default SQLite store needs nothing."""
    url = url if url is not None else os.environ.get(FIELD)
    if not url:
        return
    try:
        parsed = make_url(url)
        dialect = parsed.get_dialect()
    except NoSuchModuleError:  # before ArgumentError, its base class
        raise UserError(
            FIELD,
            f"'{_safe(url)}' names a database or driver SQLAlchemy does not know; e.g. "
            "postgresql://user:password@host/db (psycopg 3) or postgresql+psycopg2://...",
        ) from None
    except ArgumentError:
        raise UserError(
            FIELD,
            f"'{_safe(url)}' is not a database URL; e.g. postgresql://user:password@host/db, "
            "or unset it for the SQLite store in $LORAPILOT_HOME",
        ) from None
    try:
        dialect.import_dbapi()
    except ImportError:
        driver = parsed.get_driver_name()
        package = PACKAGES.get(driver, driver)
        how = f"`{EXTRA}` (or `pip install '{package}'`)" if driver in IN_EXTRA else f"`pip install '{package}'`"
        if driver not in IN_EXTRA and parsed.get_backend_name() == "postgresql":
            how += f", or write postgresql:// for psycopg 3, which `{EXTRA}` installs"
        raise UserError(
            FIELD,
            f"{parsed.drivername}:// needs the Python driver {driver}, which is not installed; install it with {how}",
        ) from None


def _safe(url: str) -> str:
    """The URL as it may be printed: without its password."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url[:80]
