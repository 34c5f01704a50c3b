"""A stalled job is noticed, shown with its log tail, and can be cancelled.

The worker is made to hang on purpose (engine.train.faults: it sleeps forever inside a
step, as a hung data loader or a deadlock would): alive, running, and making no step.
"""

from __future__ import annotations

import json
import signal
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import pytest

from engine.errors import UserError
from engine.train import faults
from jobs import dispatcher, stall, store
from tests.jobwait import finished, plan, tiny_files, wait_for
from ui.cli.main import run as cli

T0 = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)


def _job(**kw):
    values = {"status": "running", "started_at": T0, "heartbeat_at": None, "step_seconds": None}
    return SimpleNamespace(**{**values, **kw})


def test_thresholds_follow_the_jobs_own_pace_with_a_floor(monkeypatch):
    monkeypatch.delenv(stall.ENV, raising=False)
    beat = T0 + timedelta(minutes=5)
    slow = _job(heartbeat_at=beat, step_seconds=60.0)  # 20 of its steps: 20 minutes
    assert stall.stalled_since(slow, beat + timedelta(minutes=19)) is None
    assert stall.stalled_since(slow, beat + timedelta(minutes=21)) == beat
    fast = _job(heartbeat_at=beat, step_seconds=0.1)  # the floor, 10 minutes, not 2 seconds
    assert stall.stalled_since(fast, beat + timedelta(minutes=9)) is None
    assert stall.stalled_since(fast, beat + timedelta(minutes=11)) == beat
    loading = _job()  # before the first step: 30 minutes from the start, downloads take time
    assert stall.stalled_since(loading, T0 + timedelta(minutes=29)) is None
    assert stall.stalled_since(loading, T0 + timedelta(minutes=31)) == T0
    # a resumed job: the heartbeat from before its restart does not count
    resumed = _job(started_at=beat, heartbeat_at=T0, step_seconds=0.1)
    assert stall.stalled_since(resumed, beat + timedelta(minutes=20)) is None
    assert stall.stalled_since(_job(status="cancelled"), T0 + timedelta(days=1)) is None
    monkeypatch.setenv(stall.ENV, "90")
    assert stall.stalled_since(fast, beat + timedelta(seconds=91)) == beat
    assert "no step finished for 1m31s" in stall.describe(fast, beat + timedelta(seconds=91))
    monkeypatch.setenv(stall.ENV, "soon")
    with pytest.raises(UserError, match=f"{stall.ENV}: 'soon' is not a number"):
        stall.threshold_s(fast)


@pytest.mark.slow
@pytest.mark.usefixtures("no_worker_left_behind")
def test_a_hung_worker_shows_stalled_with_its_log_and_cancel_stops_it(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(faults.HANG, "2")  # a deliberate hang inside step 3
    job = dispatcher.submit(plan(tiny_files(tmp_path), max_steps=8, save_steps=2))
    monkeypatch.delenv(faults.HANG)
    monkeypatch.setenv(stall.ENV, "3")  # read by this process, which judges the heartbeat
    hung = wait_for(job.id, lambda j: (j.step >= 2 and stall.stalled_since(j) is not None) or finished(j))
    assert hung.status == "running" and hung.step == 2, hung.error
    assert dispatcher.worker_alive(hung.pid, hung.id)  # alive, yet no step: only the heartbeat tells

    assert cli(["show", str(job.id)]) == 0
    shown = capsys.readouterr().out
    assert "STALLED    stalled since " in shown and "no step finished for" in shown
    assert "hanging inside step 3 on purpose" in shown  # the log tail, under it
    assert cli(["show", str(job.id), "--json"]) == 0
    since = json.loads(capsys.readouterr().out)["stalled_since"]
    assert datetime.fromisoformat(since) == hung.heartbeat_at.replace(tzinfo=UTC)
    assert cli(["jobs"]) == 0 and "running (stalled)" in capsys.readouterr().out
    from ui.web import jobs_page

    view = jobs_page.job_view(job.id)
    assert "Stalled since" in view["header"] and "hanging inside step 3" in view["log"]

    # The default grace (120 s) is for a worker that reaches its next step; this one never will.
    cancelled = dispatcher.cancel(job.id, wait=True)
    assert cancelled.status == "cancelled" and "killed" in cancelled.error, cancelled.error
    assert not dispatcher.worker_alive(hung.pid, hung.id)
    assert f"sending {signal.SIGKILL.name}" in store.log_tail(job.id)

    resumed = dispatcher.resume(job.id)  # nothing lost: it continues from the checkpoint at step 2
    assert resumed.step == 2
    done = wait_for(job.id, finished)
    assert done.status == "succeeded", done.error
    assert [m.step for m in store.job_metrics(job.id)] == list(range(1, 9))
