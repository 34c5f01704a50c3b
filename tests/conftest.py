"""Every test runs against its own LoRA Pilot home, so nothing touches ~/.lorapilot."""

import os

import pytest

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(autouse=True)
def lorapilot_home(tmp_path, monkeypatch):
    home = tmp_path / "lorapilot-home"
    home.mkdir()
    monkeypatch.setenv("LORAPILOT_HOME", str(home))
    monkeypatch.delenv("DATABASE_URL", raising=False)
    return home


@pytest.fixture
def no_worker_left_behind():
    """A failing test must not leave a training process running on the shared machine."""
    yield
    import signal

    from jobs import dispatcher, store

    for job in store.list_jobs(status="running"):
        if dispatcher.worker_alive(job.pid, job.id):
            os.killpg(job.pid, signal.SIGKILL)


@pytest.fixture(scope="session")
def postgres_server():
    from tests.postgres import PostgresServer

    server = PostgresServer()
    server.start()
    yield server
    server.stop()


@pytest.fixture(params=["sqlite", "postgres"])
def database(request, monkeypatch):
    """Run a test once on SQLite (the default store) and once on a real PostgreSQL server."""
    if request.param == "postgres":
        url = request.getfixturevalue("postgres_server").new_database()
        monkeypatch.setenv("DATABASE_URL", url)
        yield url
        from jobs import store

        store.dispose(url)  # close pooled connections so the server can be stopped cleanly
    else:
        yield None
