"""UI logic in-process: handlers given inputs, the figures and messages they return.

No browser and no server here (tests/test_browser.py does that). Figures are checked
through their traces, and every one is passed through plotly's own validation.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from engine import units
from engine.errors import UserError
from engine.plan import TrainingPlan
from ui.cli.serve import check_exposure, parse_auth
from ui.network import is_loopback
from ui.web import charts, html, jobs_page, review, steps

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from tests.tiny import make_tiny_model

    return str(make_tiny_model(tmp_path_factory.mktemp("tiny") / "model"))


def _bar_total(fig) -> float:
    return sum(t["y"][0] for t in fig.data if t["type"] == "bar")


# --- charts: pure figure builders ---------------------------------------------------------


def test_memory_chart_stacks_every_term_against_the_budget():
    terms = {"base_weights": 2 * units.GIB, "adapter": 0.5 * units.GIB, "activations": 1.5 * units.GIB}
    fig = charts.memory_breakdown(
        terms, budget_bytes=3 * units.GIB, fits=False, reserved_bytes=4.5 * units.GIB, device_bytes=5 * units.GIB
    )
    fig.to_plotly()  # valid Plotly
    names = [t["name"] for t in fig.data]
    assert names[:3] == ["base weights", "adapter", "activations"]
    assert "allocator headroom" in names and "CUDA context" in names
    assert _bar_total(fig) == pytest.approx(5.0)  # the top of the bar is the device total
    assert fig.layout["shapes"][0]["y0"] == pytest.approx(3.0)  # budget line
    assert "does not fit" in fig.layout["title"]["text"]


def test_loss_chart_has_train_eval_and_lr_series():
    rows = [
        {"step": 1, "loss": 4.0, "learning_rate": 1e-4},
        {"step": 2, "loss": 3.0, "eval_loss": 3.5, "learning_rate": 2e-4},
    ]
    fig = charts.loss_chart(rows, total_steps=10)
    fig.to_plotly()
    train, evals, lr = fig.data
    assert train["y"] == [4.0, 3.0] and evals["x"] == [2] and lr["yaxis"] == "y2"
    assert fig.layout["xaxis"]["range"] == [0, 10]
    assert "3.000 at step 2" in fig.layout["title"]["text"]


def test_histogram_marks_the_cut_and_figures_serialise():
    fig = charts.token_histogram([0, 50, 100, 150], [3, 5, 2], seq_len=100, truncated_share=0.2)
    fig.to_plotly()
    assert fig.data[0]["marker"]["color"][-1] == charts.MISFIT_COLOUR  # the bin past seq_len
    assert "20.0% cut at 100" in fig.layout["title"]["text"]
    assert json.loads(fig.to_json())["layout"]["shapes"][0]["x0"] == 100
    charts.empty("x", "nothing").to_plotly()


def test_human_units():
    assert units.human_bytes(3 * units.GIB) == "3.00 GiB"
    assert units.human_seconds(3725) == "1 h 02 min"
    assert units.human_count(4_194_304) == "4.19M"


# --- step 1 and 2 handlers ------------------------------------------------------------------


def test_model_facts_for_a_catalog_model_and_a_clear_error():
    facts, ok = steps.model_facts("llama-3.1-8b")
    assert ok and "LlamaForCausalLM" in facts and "q_proj" in facts
    err, ok = steps.model_facts("no-such/model-anywhere")
    assert not ok and "lp-error" in err and "Traceback" not in err


def test_bad_upload_gives_row_numbered_problems(tmp_path, tiny):
    bad = tmp_path / "bad.jsonl"
    good = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
    bad.write_text("\n".join([json.dumps(good), json.dumps(good | {"x": 1}), "{not json", json.dumps(good)]))
    view = steps.check_data_view("upload", None, str(bad), tiny, 128)
    assert not view["ok"]
    assert "row 3" in view["summary"] or "line 3" in view["summary"]
    assert "bad.jsonl" in view["summary"] and "-bad.jsonl" not in view["summary"]  # the user's name, not our copy
    assert "Traceback" not in view["summary"]


def test_good_upload_is_copied_under_a_safe_name(tmp_path, tiny, lorapilot_home):
    src = tmp_path / "my data; rm -rf ~.jsonl"
    rows = [
        {"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}]}
        for i in range(6)
    ]
    src.write_text("\n".join(json.dumps(r) for r in rows))
    view = steps.check_data_view("upload", None, str(src), tiny, 64)
    assert view["ok"] and view["rows"] == 6
    dest = Path(view["dataset"])
    assert dest.parent == lorapilot_home / "uploads" and " " not in dest.name and ";" not in dest.name
    view["histogram"].to_plotly()
    assert "<pre" in view["examples"]


def test_upload_limits(tmp_path, monkeypatch):
    big = tmp_path / "big.jsonl"
    big.write_bytes(b"x" * (2 * 1024**2))
    monkeypatch.setenv("LORAPILOT_MAX_UPLOAD_MB", "1")
    with pytest.raises(UserError, match="limit is 1 MB"):
        steps.safe_upload(str(big))
    exe = tmp_path / "run.sh"
    exe.write_text("echo")
    with pytest.raises(UserError, match="not accepted"):
        steps.safe_upload(str(exe))


# --- step 4: recommendation and the live estimate -----------------------------------------------


def _plan(**kw) -> TrainingPlan:
    return TrainingPlan.build(**{"model": "llama-3.1-8b", "dataset": "demo:ticket", "gpu": "RTX 4090", **kw})


def test_estimate_view_reflects_the_plan():
    small = review.estimate_view(_plan(r=8, targets="q_proj,v_proj"))
    large = review.estimate_view(_plan(r=16, targets="q_proj,v_proj"))
    for fig in (small["memory"], small["params"]):
        fig.to_plotly()
    assert "adapter file" in small["summary"] and "estimated time" in small["summary"]
    est = small["estimate"]
    assert sum(small["params"].data[0]["x"]) == est.trainable_params  # horizontal bars: values on x
    assert sum(large["params"].data[0]["x"]) == 2 * est.trainable_params  # params are linear in r
    assert _bar_total(small["memory"]) == pytest.approx(est.memory.device_bytes / units.GIB, rel=1e-6)
    assert set(small["params"].data[0]["y"]) == {"q_proj", "v_proj"}
    # the review charts only show: no toolbar over their titles, no automargin second layout pass
    assert small["params"]["config"]["displayModeBar"] is False
    assert not any(
        ax.get("automargin")
        for fig in (small["memory"], small["params"])
        for k, ax in fig.layout.items()
        if k.startswith(("xaxis", "yaxis"))
    )


def test_a_small_plan_under_a_large_budget_stays_visible():
    # 0.7 GiB under a 23.5 GiB line was a sliver: the axis follows the plan and the budget is named
    fig = charts.memory_breakdown(
        {"base_weights": 0.5 * units.GIB, "activations": 0.2 * units.GIB}, budget_bytes=23.5 * units.GIB, fits=True
    )
    assert fig.layout["yaxis"]["range"][1] < 1.0 and not fig.layout["shapes"]
    assert "budget 23.5 GiB, above this scale: the plan uses 3% of it" in fig.layout["annotations"][0]["text"]
    near = charts.memory_breakdown({"base_weights": 2 * units.GIB}, budget_bytes=3 * units.GIB, fits=True)
    assert near.layout["shapes"] and near.layout["yaxis"]["range"][1] > 3


def test_numbers_come_apart_from_the_charts_and_use_the_checked_lengths():
    plan = _plan(seq_len=2048, max_steps=5)
    plain = review.numbers_view(plan)
    assert set(plain) == {"estimate", "verdict", "summary"} and "with your data" not in plain["summary"]
    lengths = tuple(60 + i % 40 for i in range(200))  # rows of 60..99 tokens: batches far below seq_len
    view = review.numbers_view(plan, lengths)
    mem = view["estimate"].memory
    assert mem.expected.padded_length < 100 and units.human_bytes(mem.expected.device_bytes) in view["summary"]
    assert "with this data" in view["verdict"]
    # the charts stay on the worst case, which the fit is judged on
    assert _bar_total(review.charts_view(plan, lengths)["memory"]) == pytest.approx(mem.device_bytes / units.GIB)


def test_misfit_names_the_knob_that_fixes_it():
    view = review.estimate_view(_plan(method="full"))
    assert "does not fit" in view["memory"].layout["title"]["text"]
    assert "To fit:" in view["verdict"] and "full fine-tuning → LoRA" in view["verdict"]  # the ladder's order


def test_sweep_has_three_methods_and_the_cheaper_one_is_lower():
    fig = review.sweep_view(_plan())
    fig.to_plotly()
    by = {t["name"]: t["y"] for t in fig.data}
    assert set(by) == {"full", "LoRA", "QLoRA"}
    # QLoRA saves the weights' memory; its residual stream and MLP flow run in fp32 (PEFT's k-bit
    # preparation), so at 4k-8k tokens without checkpointing its activations overtake that saving
    assert all(q < f for q, f in zip(by["QLoRA"][:5], by["full"][:5]))
    assert by["QLoRA"][0] < by["LoRA"][0] and by["QLoRA"][-1] > by["LoRA"][-1]
    assert by["LoRA"] == sorted(by["LoRA"])  # memory grows with the sequence length
    # short tick labels, so seven fit side by side in a narrow chart; the plan's value is named
    assert fig.layout["xaxis"]["ticktext"] == ["128", "256", "512", "1k", "2k", "4k", "8k"]
    assert "this plan 512" in fig.layout["xaxis"]["title"]["text"]


def test_recommendation_fills_every_field_with_a_reason():
    ctx = {"model": "llama-3.1-8b", "difficulty": "hard", "dataset": "demo:ticket", "gpu": "RTX 4090"}
    rec, plan = review.recommend_for(ctx)
    out = review.reasons_html(rec)
    assert plan.model == "llama-3.1-8b" and plan.dataset == "demo:ticket"
    for field in ("method", "r", "learning_rate"):
        assert review.label(field) in out
    assert 'class="lp-rule"' in out


def test_form_controls_come_from_the_plan_help():
    assert review.field_kind("method") == ("choice", ("lora", "qlora", "full"))
    assert review.field_kind("max_steps")[0] == "int" and review.field_kind("grad_ckpt")[0] == "bool"
    control = review.make_control("dropout")
    assert control.info == TrainingPlan.help("dropout")


def test_form_values_round_trip_and_bad_values_name_the_field():
    plan = _plan(r=32, max_steps=10)
    again = review.plan_from_values(
        {"model": plan.model, "dataset": plan.dataset, "gpu": plan.gpu}, review.values_of(plan)
    )
    assert again == plan
    values = review.values_of(plan)
    values[review.FORM_FIELDS.index("r")] = 2.5
    with pytest.raises(UserError) as exc:
        review.plan_from_values({"model": plan.model}, values)
    assert exc.value.field == "r"


def test_wizard_context_requires_checked_data():
    from ui.web.wizard import context_from

    with pytest.raises(UserError, match="check the data"):
        context_from("default", "simple", None, None, "cpu", None, None, "")
    ctx = context_from("default", "simple", "demo:ticket", 240, "vram", None, 12, "")
    assert ctx["budget_gb"] == 12 and ctx["gpu"] is None


# --- launch and the job page ----------------------------------------------------------------------


def test_launch_creates_a_job_row_and_the_page_reads_it(tiny, monkeypatch):
    monkeypatch.setenv("LORAPILOT_MAX_CONCURRENT", "0")  # queue only: training is tested elsewhere
    from jobs import store

    plan = TrainingPlan.build(model=tiny, dataset="demo:ticket", gpu="cpu", max_steps=2, seq_len=128)
    job_id, notice = steps.launch(plan)
    assert job_id is not None and "queued" in notice
    assert store.get_job(job_id).status == "queued"
    view = jobs_page.job_view(job_id)
    assert "Job #" in view["header"] and "queued" in view["header"]
    assert view["download"] is None and view["running"]
    assert "Waiting" in view["failure"] and "Waiting" in view["header"]
    assert f"#{job_id}" in jobs_page.jobs_table()
    outputs = jobs_page.render(job_id)
    assert jobs_page.render(job_id, outputs[-1], force=False)[0] == jobs_page.gr.skip()  # unchanged → no redraw
    ok, message = jobs_page.cancel(job_id)
    assert ok and store.get_job(job_id).status == "cancelled"


def test_launch_refuses_bad_data_without_a_row(tmp_path, tiny):
    from jobs import store

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"messages": []}\n{oops\n')
    job_id, notice = steps.launch(TrainingPlan.build(model=tiny, dataset=str(bad), gpu="cpu"))
    assert job_id is None and "lp-error" in notice and store.list_jobs() == []


def test_failed_job_shows_the_plain_reason_and_metrics(tiny, monkeypatch):
    monkeypatch.setenv("LORAPILOT_MAX_CONCURRENT", "0")  # resume only re-queues; no worker starts
    from jobs import store

    plan = TrainingPlan.build(model=tiny, dataset="demo:ticket", gpu="cpu")
    job = store.insert_job(
        store.Job(
            name="x",
            plan_json=plan.model_dump_json(),
            status="failed",
            error="ran out of memory at step 3; turn on gradient checkpointing",
        )
    )
    for step, loss in ((1, 3.0), (2, 2.0)):
        store.record_metrics(job.id, {"step": step, "loss": loss, "learning_rate": 1e-4})
    view = jobs_page.job_view(job.id)
    assert "Why it failed" in view["failure"] and "gradient checkpointing" in view["failure"]
    assert view["loss"].data[0]["y"] == [3.0, 2.0]
    assert "python app.py train" in view["cli"] and "--dataset demo:ticket" in view["cli"]
    assert "LoraConfig" in view["python"] and "SFTTrainer" in view["python"]
    assert jobs_page.resume(job.id) == (True, f"Job {job.id} resumes from step 0.")
    assert jobs_page.resume(job.id)[0] is False  # already queued: a plain message, no exception
    err = jobs_page.job_view(999)
    assert "no job with id 999" in err["header"]


def test_notices_escape_user_text():
    out = html.error_notice(UserError("dataset", "<script>alert(1)</script> row 3"))
    assert "<script>" not in out and "&lt;script&gt;" in out and "Data:" in out


# --- serve: safe by default ------------------------------------------------------------------------


def test_exposure_rules():
    assert is_loopback("127.0.0.1") and is_loopback("localhost") and is_loopback("::1")
    assert not is_loopback("0.0.0.0") and not is_loopback("example.org")
    check_exposure("127.0.0.1", None, share=False)
    check_exposure("0.0.0.0", ("a", "b"), share=False)
    with pytest.raises(UserError, match="without credentials"):
        check_exposure("0.0.0.0", None, share=False)
    assert parse_auth("me:pa:ss") == ("me", "pa:ss")
    with pytest.raises(UserError):
        parse_auth("nopassword")


def test_serve_on_the_network_without_credentials_refuses_in_one_line():
    env = {**__import__("os").environ, "LORAPILOT_AUTH": ""}
    proc = subprocess.run(
        [sys.executable, "app.py", "--host", "0.0.0.0", "--port", "7999"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: host:") and "--auth" in lines[0]


def test_app_builds_without_heavy_imports():
    code = (
        "import sys; from ui.web import server; server.build_app(); "
        "print([m for m in ('torch', 'transformers', 'peft', 'trl') if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "[]"
