"""A real PostgreSQL server for the tests, started from Debian's binaries in a temporary folder.

`make test` installs the `postgresql` package (as it installs chromium); nothing is installed
here. The server runs as an unprivileged user (initdb refuses root: as root we run it as the
`postgres` account the package creates), listens on 127.0.0.1 only, trusts local connections,
and is thrown away with its folder when the test session ends.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import pytest


def _bin_dir() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(found[-1]).parent if found else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PostgresServer:
    def __init__(self):
        bin_dir = _bin_dir()
        if bin_dir is None:
            pytest.fail(
                "PostgreSQL binaries not found under /usr/lib/postgresql; `make test` installs "
                "Debian's postgresql package (apt-get install postgresql)"
            )
        self.bin = bin_dir
        self.root = Path(tempfile.mkdtemp(prefix="lorapilot-pg-"))
        self.port = _free_port()
        self._as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        if self._as_user:
            shutil.chown(self.root, "postgres")
        self.data = self.root / "data"

    def _run(self, *args: str) -> None:
        subprocess.run([*self._as_user, *args], check=True, capture_output=True, timeout=120)

    def start(self) -> None:
        self._run(
            str(self.bin / "initdb"), "-D", str(self.data), "-U", "postgres", "-A", "trust", "--no-sync", "-E", "UTF8"
        )
        # fsync off: a crash loses a throwaway test database, nothing else; it keeps the suite fast.
        options = (
            f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off "
            "-c synchronous_commit=off -c full_page_writes=off -c max_connections=200"
        )
        self._run(
            str(self.bin / "pg_ctl"),
            "-D",
            str(self.data),
            "-l",
            str(self.root / "server.log"),
            "-o",
            options,
            "-w",
            "-t",
            "60",
            "start",
        )

    def stop(self) -> None:
        try:
            self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def url(self, database: str = "postgres", driver: str | None = None) -> str:
        """The plain postgresql:// URL a user writes (psycopg 3 in SQLAlchemy 2.1), or one naming `driver`."""
        scheme = f"postgresql+{driver}" if driver else "postgresql"
        return f"{scheme}://postgres@127.0.0.1:{self.port}/{database}"

    def new_database(self, driver: str | None = None) -> str:
        """A fresh, empty database per test, so tests never see each other's rows."""
        import psycopg

        name = f"t_{uuid.uuid4().hex[:12]}"
        for attempt in range(50):  # the server may still be finishing its start-up
            try:
                conn = psycopg.connect(
                    host="127.0.0.1", port=self.port, user="postgres", dbname="postgres", autocommit=True
                )
                break
            except psycopg.OperationalError:
                if attempt == 49:
                    raise
                time.sleep(0.1)
        with conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name, driver)
