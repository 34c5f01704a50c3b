"""The page follows the user: the job just created is the one shown, the jobs list reads each job's
held-out before/after and early stop, a run worse than its base says so, one vLLM verdict.

Handlers are called as the page calls them, on real rows in a temporary database.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from engine.adapters import recipe
from engine.advice import diagnose
from engine.plan import TrainingPlan
from jobs import outcome, store
from jobs.tables import Job
from ui.web import html, jobs_page, library_page

ROOT = Path(__file__).resolve().parent.parent
PLAN = TrainingPlan.build(model="default", dataset="demo:ticket", gpu="cpu", max_steps=480)


def _job(name: str, status: str, step: int, total: int, before: float | None, after: float | None) -> Job:
    evaluation = {
        "rows": 24,
        "base": {"exact_match": before, "loss": 2.0},
        "adapter": {"exact_match": after, "loss": 1.0},
    }
    job = store.insert_job(Job(name=name, plan_json=PLAN.model_dump_json()))
    store.update_job(
        job.id, status=status, step=step, total_steps=total, progress=1.0, evaluation_json=json.dumps(evaluation)
    )
    return store.get_job(job.id)


def test_a_timer_tick_never_moves_the_page_back_to_the_job_it_started_on():
    first = _job("first", "succeeded", 30, 30, 0.0, 100.0)
    second = _job("second", "queued", 0, 0, None, None)
    # a launch renders the new job and selects it ...
    assert jobs_page.render(str(second.id))[1].constructor_args["value"] == str(second.id)
    # ... while a tick that read the old selection redraws that job but leaves the selection alone,
    # so the next tick draws the new job (it showed the old one for good before)
    tick = jobs_page.render(str(first.id), sig=None, force=False)
    assert "value" not in tick[1].constructor_args
    assert [c[1] for c in tick[1].constructor_args["choices"]] == [str(second.id), str(first.id)]


def test_the_jobs_list_shows_every_jobs_held_out_before_after_and_an_early_stop():
    worse = _job("lr far too low", "succeeded", 30, 30, 4.0, 0.0)
    early = _job("stopped", "succeeded", 140, 480, 10.0, 80.0)
    table = jobs_page.jobs_table()
    assert "stopped early at 140/480" in table and "100% 140/480" not in table
    assert "10% → 80%" in table and "4% → 0%" in table
    assert f'<span class="lp-badge lp-worse">{outcome.WORSE}</span>' in table
    assert outcome.status_text(early) == "succeeded" and outcome.status_text(worse) == outcome.WORSE
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run(
        [sys.executable, str(ROOT / "app.py"), "jobs"], env=env, capture_output=True, text=True, timeout=120
    ).stdout
    assert "stopped early at 140/480" in out and "10% -> 80%" in out and outcome.WORSE in out
    listed = json.loads(
        subprocess.run(
            [sys.executable, str(ROOT / "app.py"), "jobs", "--json"],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        ).stdout
    )
    by_id = {j["id"]: j for j in listed}
    assert by_id[early.id]["stopped_early"] and by_id[early.id]["held_out_exact_match"] == {
        "base": 10.0,
        "adapter": 80.0,
    }
    assert by_id[worse.id]["outcome"] == outcome.WORSE


def test_a_run_worse_than_its_base_is_not_good_and_the_advice_moves_a_far_off_rate_into_range_in_one_step():
    plan = PLAN.updated(learning_rate=1e-6)
    fell = {
        "rows": 24,
        "base": {"exact_match": 4.0, "loss": 2.0, "f1": 10.0},
        "adapter": {"exact_match": 0.0, "loss": 1.0, "f1": 30.0},
    }  # a lower loss alone does not make it good
    found = diagnose.diagnose([], fell, plan)
    assert diagnose.verdict(found, finished=True) == "underperforming"
    assert "exact match fell from 4% to 0%" in found[0].evidence
    lr = next(f for f in found if "learning_rate" in f.change)
    assert lr.change["learning_rate"] == 1e-4 and "1e-06 -> 0.0001" in lr.remedy
    # every answer the same string, no exact-match gain: not good either (an early stop that learnt a constant)
    same = {
        "rows": 24,
        "base": {"exact_match": 0.0, "loss": 2.0},
        "adapter": {"exact_match": 0.0, "loss": 1.0},
        "samples": [{"reference": r, "adapter": "[LOW] printer @ room 12"} for r in ("a", "b", "c")],
    }
    assert diagnose.verdict(diagnose.diagnose([], same, PLAN), finished=True) == "underperforming"
    # a usual rate is raised 3x as before
    assert (
        next(
            f for f in diagnose.diagnose([], fell, PLAN.updated(learning_rate=2e-4)) if "learning_rate" in f.change
        ).change["learning_rate"]
        == 6e-4
    )


def test_the_library_marks_an_adapter_worse_than_its_base():
    from jobs import library

    job = _job("worse", "succeeded", 30, 30, 4.0, 0.0)
    scores = {k: v for k, v in zip(("base", "adapter"), outcome.heldout(job))}
    library.add(
        library.Adapter(
            name="worse-one",
            base_model="default",
            path="/nowhere",
            method="lora",
            r=8,
            alpha=16,
            targets="q_proj",
            bytes=1,
            scores_json=json.dumps(scores),
            job_id=job.id,
        )
    )
    assert outcome.WORSE in library_page.library_table()


def test_one_vllm_verdict_from_the_architecture_the_library_knows():
    # a catalog base is no local folder: its architecture comes from what LoRA Pilot resolved
    assert recipe._base_config("llama-3.2-1b")["architectures"] == ["LlamaForCausalLM"]
    assert recipe._base_config("no-such-model-anywhere") is None
    shown = html.code_spans("merge it (PEFT `merge_and_unload()`) and pick the request's `model`")
    assert "`" not in shown and "<code>merge_and_unload()</code>" in shown


def test_a_message_goes_when_the_input_it_is_about_changes():
    # Wiring, read from the page's own config: typing a prompt or picking a held-out one clears the playground's
    # message; changing any Compose input clears Compose's; a changed plan or data clears the launch notice.
    from ui.web import server

    config = server.build_app().get_config_file()
    ids = {c["id"]: c["props"].get("elem_id") for c in config["components"]}
    clears = {
        (ids.get(t[0]), t[1], ids.get(d["outputs"][0]))
        for d in config["dependencies"]
        for t in d["targets"]
        if len(d["outputs"]) == 1
    }
    for trigger, output in (
        ("pg-prompt", "pg-status"),
        ("pg-held-out", "pg-status"),
        ("c-name", "c-result"),
        ("c-sources", "c-result"),
        ("run-name", "launch-notice"),
        ("f-learning_rate", "launch-notice"),
    ):
        assert (trigger, "input", output) in clears, (trigger, output)
