"""Every test runs against its own LoRA Pilot home, so nothing touches ~/.lorapilot."""

import os

import pytest

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# No resident worker (jobs.resident) unless a test asks for one: one per temporary home would outlive its test.
os.environ.setdefault("LORAPILOT_RESIDENT", "0")


@pytest.fixture(scope="session", autouse=True)
def session_home(tmp_path_factory):
    """Module-scoped fixtures are built before any test's own home exists: give them one too, with
    the same injected CPU, so nothing they load depends on the machine (or touches ~/.lorapilot)."""
    patch = pytest.MonkeyPatch()
    patch.setenv("LORAPILOT_HOME", str(tmp_path_factory.mktemp("session-home")))
    patch.delenv("DATABASE_URL", raising=False)
    cpu_without_bf16()
    yield
    patch.undo()


@pytest.fixture(autouse=True)
def lorapilot_home(tmp_path, monkeypatch):
    home = tmp_path / "lorapilot-home"
    home.mkdir()
    monkeypatch.setenv("LORAPILOT_HOME", str(home))
    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.delenv("LORAPILOT_RAY_ADDRESS", raising=False)  # jobs run locally unless a test says otherwise
    cpu_without_bf16()  # tests never depend on the CPU they run on; tests/test_hardware.py varies it
    return home


def cpu_without_bf16(**numbers):
    """Inject a CPU calibration (default: fp32 only, like an AVX2 CPU) instead of measuring this one."""
    from engine.estimate import hardware

    values = dict(
        key=hardware.cache_key(), cpu="Test CPU", threads=2, bf16_flags=[], fp32_tflops=0.1, bf16_tflops=0.001
    )
    hardware.save(hardware.Calibration(**{**values, **numbers}))


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
        from jobs import db

        db.dispose(url)  # close pooled connections so the server can be stopped cleanly
    else:
        yield None
