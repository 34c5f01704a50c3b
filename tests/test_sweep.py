"""Search for better settings: the space from the rules, bad input in one line, and real sweeps
(Optuna studies whose trials are worker processes training a tiny model, tests/tiny.py)."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlmodel import SQLModel

from engine.advice import space
from engine.errors import UserError
from engine.plan import TrainingPlan
from engine.train import faults
from jobs import db, dispatcher, library, schema, store, sweep, sweep_driver, sweep_study
from tests.jobwait import tiny_files, wait_for
from ui.cli.main import run as cli


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return tiny_files(tmp_path_factory.mktemp("tiny"))


def _plan(tiny, **kw) -> TrainingPlan:
    """A few steps, held-out loss every 2 of them on 5 held-out rows, no generation (ranked by loss).

    The head trains too (modules_to_save): the tiny model's adapters alone barely move its loss,
    whose final norm and small tied embeddings keep it near log(vocabulary) whatever they do; with
    its own head it learns in a few steps (held-out loss 5.99 -> 4.45 at step 2, measured)."""
    values = dict(
        model=tiny["model"],
        dataset=tiny["dataset"],
        gpu="cpu",
        batch_size=2,
        seq_len=48,
        eval_split=0.2,
        eval_generations=0,
        max_steps=6,
        save_steps=2,
        warmup_ratio=0,
        patience=0,
        learning_rate=1e-2,
        modules_to_save=["lm_head"],
    )
    return TrainingPlan.build(**{**values, **kw})


# --- the space ---------------------------------------------------------------------------------
def test_the_default_space_comes_from_the_rules_around_the_plan():
    plan = TrainingPlan.build(r=8, alpha=16, learning_rate=1e-3, targets="all-linear", dropout=0.05)
    dims = space.build(plan, params_b=0.135)
    assert dims["r"].choices == (4, 8, 16)  # a step below and above (R5)
    assert dims["alpha_ratio"].choices == (1, 2, 4)  # A2, A1, A3
    assert (dims["learning_rate"].low, dims["learning_rate"].high, dims["learning_rate"].log) == (2e-4, 3e-3, True)
    assert dims["targets"].choices == ("attention", "all-linear")
    assert dims["dropout"].choices == (0.0, 0.05, 0.1)
    big = space.build(plan.updated(learning_rate=2e-4), params_b=70)["learning_rate"]
    assert (big.low, big.high) == (2e-5, 5e-4)  # L1: a larger model, lower rates
    assert list(space.build(plan.updated(method="full"), params_b=0.135)) == ["learning_rate"]


def test_the_space_always_contains_the_plan_itself():
    plan = TrainingPlan.build(r=12, alpha=36, learning_rate=5e-2, targets="q_proj,v_proj", dropout=0.2)
    dims = space.build(plan, params_b=0.135, overrides=space.parse(["r=4,8"], plan))
    point = space.start_point(plan, dims)
    assert point == {"r": 12, "alpha_ratio": 3, "learning_rate": 5e-2, "targets": "q_proj,v_proj", "dropout": 0.2}
    assert 12 in dims["r"].choices and "q_proj,v_proj" in dims["targets"].choices
    assert dims["learning_rate"].high == 5e-2
    assert space.apply(plan, {**point, "r": 4, "alpha_ratio": 2}).alpha == 8  # alpha follows r


def test_space_overrides_parse_lists_ranges_and_module_lists():
    plan = TrainingPlan()
    dims = space.parse(
        ["r=4,8,16", "learning_rate=1e-4..1e-2", "targets=attention|q_proj,v_proj", "epochs=1..3"], plan
    )
    assert dims["r"].choices == (4, 8, 16)
    assert (dims["learning_rate"].low, dims["learning_rate"].high, dims["learning_rate"].log) == (1e-4, 1e-2, True)
    assert dims["targets"].choices == ("attention", "q_proj,v_proj")
    assert (dims["epochs"].low, dims["epochs"].log) == (1.0, False)
    alpha = space.build(plan, 0.135, space.parse(["alpha=8,32"], plan))
    assert "alpha_ratio" not in alpha and alpha["alpha"].choices == (8.0, 32.0, 16.0)


@pytest.mark.parametrize(
    "spec, field, words",
    [
        ("colour=red", "space", "is not a plan field"),
        ("r=", "r", "empty space"),
        ("r=4,,8", "r", "empty value"),
        ("r=4,x", "r", "not a whole number"),
        ("dropout=0.1,1.5", "dropout", "below 1"),
        ("learning_rate=1e-2..1e-4", "learning_rate", "low end"),
        ("dataset=a.jsonl", "dataset", "cannot be searched"),
        ("r4", "space", "FIELD=VALUES"),
    ],
)
def test_a_bad_space_is_one_error_naming_the_field(spec, field, words):
    with pytest.raises(UserError) as err:
        space.parse([spec], TrainingPlan())
    assert err.value.field == field and words in err.value.message


def test_what_mattered_names_the_settings_by_their_share():
    text = space.what_mattered({"learning_rate": 0.7, "r": 0.25, "dropout": 0.03, "targets": 0.02}, "loss")
    assert text == (
        "The learning rate mattered most (70% of the variation in held-out loss), then the rank (r) "
        "(25%); the dropout or the target modules hardly mattered."
    )


# --- bad input on the command line ---------------------------------------------------------------
@pytest.mark.parametrize(
    "args, starts",
    [
        (["--trials", "2", "--space", "r="], "error: r: empty space"),
        (["--trials", "2", "--space", "colour=red"], "error: space: 'colour' is not a plan field"),
        (["--trials", "0"], "error: trials: got 0"),
        (["--budget-minutes", "0"], "error: budget_minutes: got 0"),
        ([], "error: budget: give a number of trials"),
        (["--trials", "2", "--eval-split", "0"], "error: eval_split: is 0"),
        (["--trials", "2", "--metric", "exact_match"], "error: metric: exact_match needs answers"),
    ],
)
def test_bad_sweep_input_is_one_error_line_exit_2_and_nothing_created(tiny, args, starts, capsys):
    flags = [
        "--model",
        tiny["model"],
        "--dataset",
        tiny["dataset"],
        "--gpu",
        "cpu",
        "--eval-split",
        "0.2",
        "--eval-generations",
        "0",
    ]
    assert cli(["sweep", *flags, *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith(starts) and err.count("\n") == 1, err
    assert sweep.list_sweeps() == [] and store.list_jobs() == []


def test_show_of_an_unknown_sweep_is_one_error_line(capsys):
    assert cli(["sweep", "show", "7"]) == 2
    assert capsys.readouterr().err == "error: sweep: no sweep with id 7; `python app.py sweeps` lists them\n"


# --- storage --------------------------------------------------------------------------------------
@pytest.mark.usefixtures("database")
def test_the_study_lives_beside_the_job_tables_without_touching_their_schema(tiny):
    """Optuna's RDBStorage versions its tables in Alembic's `alembic_version`, as the job store does:
    on SQLite it gets its own file, on PostgreSQL its own schema, so neither reads the other's revision."""
    row = sweep.create(_plan(tiny), trials=2, start=False)
    with db.db_engine().connect() as conn:
        assert schema.current(conn) == schema.head()
        assert compare_metadata(MigrationContext.configure(conn), SQLModel.metadata) == []
    sweep_study._storages.clear()  # as a new process would: the study is read back from the database
    trials = sweep.detail(sweep.get(row.id))["trials"]
    assert [(t["number"], t["state"]) for t in trials] == [(0, "queued")]
    assert trials[0]["params"] == space.start_point(_plan(tiny), sweep.space_of(row))


def test_a_trial_whose_eta_does_not_fit_the_time_left_is_never_started(tiny):
    row = sweep.create(_plan(tiny), minutes=1, start=False)
    study = sweep_study.load(row.id)
    first = study.ask()  # trial 0 as a finished run leaves it: 50 s of wall time against a 1 s estimate
    space.suggest(first, sweep.space_of(row))
    study._storage.set_trial_user_attr(first._trial_id, "wall_seconds", 50.0)
    study._storage.set_trial_user_attr(first._trial_id, "eta_seconds", 1.0)
    study.tell(first, 3.0)
    sweep.update(row.id, elapsed_seconds=20.0)  # 40 s left: the next trial's ETA is its estimate + 49 s

    driver = sweep_driver.Driver(row.id)
    trial = driver.study.ask()
    assert driver.start(trial, space.suggest(trial, driver.dims)) is False  # the search ends here
    refused = sweep.detail(sweep.get(row.id))["trials"][1]
    # 40 s left when the test set it; the driver reads its clock after checking the trial's plan (seconds on a
    # loaded machine), so it finds 40 s or a little less: never more, and the 49 s trial never fits
    left = re.fullmatch(
        r"not started: its ETA \(49 s\) is more than the (\d+) s left of the time budget", refused["reason"]
    )
    assert refused["state"] == "failed" and left and 0 <= int(left[1]) <= 40, refused
    assert store.list_jobs() == []


def test_a_queued_sweep_cancels_at_once_and_can_resume(tiny, capsys):
    row = sweep.create(_plan(tiny), trials=2, start=False)
    assert cli(["sweep", "cancel", str(row.id)]) == 0
    assert sweep.get(row.id).status == "cancelled" and f"sweep {row.id} cancelled" in capsys.readouterr().out
    assert cli(["sweep", "cancel", str(row.id)]) == 2
    assert capsys.readouterr().err == (
        f"error: sweep: sweep {row.id} is cancelled; only a queued or running sweep can be cancelled\n"
    )
    assert sweep.resume(row.id, start=False).status == "queued"


# --- real sweeps --------------------------------------------------------------------------------
def _kill_tree(pid: int | None) -> None:
    if pid:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)


@pytest.fixture
def no_process_left_behind():
    yield
    for row in sweep.list_sweeps():
        if sweep.driver_alive(row.pid, row.id):
            _kill_tree(row.pid)
    for job in store.list_jobs(status="running"):
        if dispatcher.worker_alive(job.pid, job.id):
            _kill_tree(job.pid)


def _finished(row) -> bool:
    return row.status in ("succeeded", "failed", "cancelled", "interrupted")


def _wait_sweep(sweep_id, until, quiet_s: float = 240.0):
    """Like tests.jobwait.wait_for, for a sweep: fails only when nothing moves for `quiet_s`."""
    import time

    last, since = None, time.monotonic()
    while True:
        dispatcher._reap()
        row = sweep.get(sweep_id)
        if until(row):
            return row
        jobs = [(j.id, j.status, j.step) for j in store.list_jobs() if j.sweep_id == sweep_id]
        sign = (row.status, jobs)
        if sign != last:
            last, since = sign, time.monotonic()
        elif time.monotonic() - since > quiet_s:
            raise AssertionError(
                f"sweep {sweep_id} made no progress for {quiet_s:.0f}s: {row.status}; log:\n"
                + sweep.log_path(sweep_id).read_text()
            )
        time.sleep(0.2)


def _page_shows(home, sweep_id: int, screenshot) -> None:
    """The sweep page in a real browser (Debian's chromium, as tests/test_browser.py drives it)."""
    from playwright.sync_api import sync_playwright

    from tests.test_browser import launch_browser, plot_points, start_server, stop_server

    proc, url, _ = start_server(home)
    try:
        with sync_playwright() as p:
            browser = launch_browser(p)
            page = browser.new_page(viewport={"width": 1360, "height": 1000})
            page.set_default_timeout(90_000)
            page.goto(f"{url}/?sweep={sweep_id}")
            page.wait_for_selector("#what-mattered:has-text('mattered')")
            assert f"Sweep {sweep_id}: sums-search" in page.inner_text("#sweep-header")
            trials = page.inner_text("#sweep-trials").lower()  # badges are upper-cased by the style sheet
            assert "pruned" in trials and "complete" in trials
            page.wait_for_function("document.querySelector('#sweep-history .js-plotly-plot') !== null")
            assert plot_points(page, "sweep-history") >= 1  # Optuna's optimisation history, as Plotly drew it
            page.screenshot(path=str(screenshot), full_page=True)
            browser.close()
    finally:
        stop_server(proc)


@pytest.mark.slow
@pytest.mark.usefixtures("no_process_left_behind")
def test_a_sweep_starts_from_the_plan_prunes_a_bad_trial_and_publishes_the_best(
    tiny, capsys, lorapilot_home, tmp_path
):
    plan = _plan(tiny, name="sums-search")
    row = sweep.create(plan, trials=3, start=False)
    # trial 1 is arranged to be clearly bad, through Optuna's own queue: a learning rate 100,000x too high
    sweep_study.load(row.id).enqueue_trial({"learning_rate": 1000.0})
    sweep.spawn(row.id)
    done = _wait_sweep(row.id, _finished)
    assert done.status == "succeeded", sweep.log_path(row.id).read_text()

    assert cli(["sweep", "show", str(row.id), "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert (shown["id"], shown["metric"], shown["direction"]) == (row.id, "loss", "minimize")
    trials = shown["trials"]
    assert [t["number"] for t in trials] == [0, 1, 2]
    first = trials[0]
    assert first["state"] == "complete" and first["params"] == space.start_point(plan, sweep.space_of(row))
    assert json.loads(store.get_job(first["job_id"]).plan_json) == {
        **plan.model_dump(),
        "name": "sums-search · trial 0",
    }
    bad = trials[1]
    assert bad["params"]["learning_rate"] == 1000.0 and bad["state"] == "pruned", bad
    bad_job = store.get_job(bad["job_id"])
    # The prune is decided at step 2 and sent as a graceful cancel; a tiny job on an idle machine can
    # finish its last steps before the cancel lands (seen once), so the job is either stopped early or
    # done, and the trial is pruned either way (the decision, its step and reason are what a user reads).
    assert (bad_job.status, bad_job.step < plan.max_steps) in {("cancelled", True), ("succeeded", False)}, bad_job
    assert f"pruned by sweep {row.id} at step 2" in store.log_tail(bad_job.id, 200)
    assert bad_job.error.startswith("pruned at step 2: held-out loss")
    assert {store.get_job(t["job_id"]).sweep_id for t in trials} == {row.id}

    best = shown["best"]
    assert best["value"] <= first["value"]  # trial 0 is in the running: the best only matches or beats it
    assert best["value"] == min(t["value"] for t in trials if t["state"] == "complete")
    entry = library.find("sums-search")
    assert entry.job_id == best["job_id"] == done.best_job_id and shown["adapter"] == "sums-search"

    figures = sweep.figures(done)  # Optuna's Plotly figures and the sentence from its importances
    assert figures["history"].data and figures["what_mattered"].endswith(".")

    # "Try N variations" of the best job: it is trial 0 as it ran, measured, not trained again
    more = sweep.create(trials=3, from_job=best["job_id"], start=False)
    again = sweep.detail(more)["trials"]
    assert [(t["number"], t["state"], t["job_id"], t["value"]) for t in again] == [
        (0, "complete", best["job_id"], best["value"])
    ]

    if os.path.exists("/usr/bin/chromium"):  # `make test` installs it; the page needs nothing else
        _page_shows(lorapilot_home, row.id, tmp_path / "sweep-page.png")


@pytest.mark.slow
@pytest.mark.usefixtures("no_process_left_behind")
def test_a_sweep_killed_mid_trial_resumes_and_finishes_within_its_time_budget(tiny, monkeypatch, capsys):
    # Steps take at least 0.3 s until the kill, so the kill lands mid-trial however fast the machine.
    monkeypatch.setenv(faults.DELAY, "0.3")
    budget_minutes = 0.75
    row = sweep.create(_plan(tiny, max_steps=8), minutes=budget_minutes)
    monkeypatch.delenv(faults.DELAY)
    first = _wait_sweep(
        row.id,
        lambda r: _finished(r) or any(j.sweep_id == row.id and j.step >= 3 for j in store.list_jobs(status="running")),
    )
    assert first.status == "running", sweep.log_path(row.id).read_text()
    job = next(j for j in store.list_jobs(status="running") if j.sweep_id == row.id)
    _kill_tree(first.pid)  # the driver and the trial's worker both die, as in a power cut
    _kill_tree(job.pid)
    wait_for(job.id, lambda j: not dispatcher.worker_alive(j.pid, j.id))

    assert cli(["sweeps"]) == 0 and "interrupted" in capsys.readouterr().out
    assert cli(["sweep", "resume", str(row.id), "--wait"]) == 0, sweep.log_path(row.id).read_text()
    done = sweep.get(row.id)
    assert done.status == "succeeded"
    assert "resuming from checkpoint at step" in store.log_tail(job.id, 300)
    detail = sweep.detail(done)
    complete = [t for t in detail["trials"] if t["state"] == "complete"]
    assert complete and detail["trials"][0]["job_id"] == job.id and detail["trials"][0]["state"] == "complete"
    walls = [store.get_job(t["job_id"]) for t in detail["trials"] if t["job_id"]]
    longest = max((j.finished_at - j.started_at).total_seconds() for j in walls)
    assert done.elapsed_seconds <= budget_minutes * 60 + longest  # a trial starts only when its ETA fits
    # it stopped because the budget was spent, or because the next trial's ETA did not fit what was left
    last = detail["trials"][-1]
    assert done.elapsed_seconds >= budget_minutes * 60 or last["reason"].startswith("not started: its ETA"), detail
