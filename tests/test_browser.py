"""A real browser walks a new user through the wizard, launches, watches, downloads.

The app runs as its own process on a free loopback port with a temporary
LORAPILOT_HOME and a tiny local model preselected through LORAPILOT_DEFAULT_MODEL
(so training takes seconds on a CPU). Playwright drives Debian's chromium
(Playwright's own browser download cannot work offline). Screenshots of every step
go to $LORAPILOT_SCREENSHOTS (default: <tmp>/screenshots) for a human to look at.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

pytestmark = [pytest.mark.browser, pytest.mark.slow]

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(home: Path, model: str | None = None, port: int | None = None, timeout: float = 120):
    """Start `python app.py` in its own process group; returns (process, url, seconds to listening)."""
    port = port or free_port()
    env = {
        **os.environ,
        "LORAPILOT_HOME": str(home),
        "GRADIO_ANALYTICS_ENABLED": "False",
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "LORAPILOT_AUTH": "",
    }
    if model:
        env["LORAPILOT_DEFAULT_MODEL"] = model
    log = open(home / "server.log", "ab")
    start = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "app.py", "--port", str(port)],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    while time.monotonic() - start < timeout:
        if proc.poll() is not None:
            raise RuntimeError("server exited:\n" + (home / "server.log").read_text()[-3000:])
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return proc, f"http://127.0.0.1:{port}", time.monotonic() - start
        time.sleep(0.05)
    stop_server(proc)
    raise RuntimeError("server did not listen in time")


def stop_server(proc) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


def launch_browser(playwright):
    return playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    if not Path(CHROMIUM).exists():
        pytest.skip("Debian chromium is not installed (`make test` installs it: its system-packages step)")
    pytest.importorskip("playwright")
    from engine.data.demo import records
    from tests.tiny import make_tiny_model

    home = tmp_path_factory.mktemp("lp-home")
    texts = [m["content"] for r in records("ticket", "train")[:80] for m in r["messages"]]
    model = make_tiny_model(home / "tiny-model", vocab_texts=texts)
    proc, url, _ = start_server(home, model=str(model))
    yield {"url": url, "home": home, "model": str(model)}
    stop_server(proc)
    # a job's worker runs in its own session and outlives the app by design; stop ours
    import sqlite3

    db = home / "lorapilot.db"
    if db.exists():
        with sqlite3.connect(db) as conn:
            pids = [row[0] for row in conn.execute("select pid from job where status = 'running' and pid is not null")]
        for pid in pids:
            with contextlib.suppress(OSError):
                os.killpg(pid, signal.SIGTERM)


@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> Path:
    folder = Path(os.environ.get("LORAPILOT_SCREENSHOTS") or tmp_path_factory.mktemp("screenshots"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture()
def page(app):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = launch_browser(p)
        context = browser.new_context(viewport={"width": 1360, "height": 900}, accept_downloads=True)
        pg = context.new_page()
        pg.set_default_timeout(60_000)
        yield pg
        browser.close()


def plot_points(page, elem_id: str, trace: int = 0) -> int:
    return page.evaluate(
        """([id, i]) => { const el = document.querySelector('#' + id + ' .js-plotly-plot');
                          return el && el.data && el.data[i] ? (el.data[i].x || []).length : -1; }""",
        [elem_id, trace],
    )


def plot_title(page, elem_id: str) -> str:
    return page.evaluate(
        """(id) => { const el = document.querySelector('#' + id + ' .js-plotly-plot');
                                      return el && el.layout ? el.layout.title.text : ''; }""",
        elem_id,
    )


def wait_for(predicate, timeout: float = 60, every: float = 0.2, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.timeout(1800)  # a real (tiny) training run on a shared CPU
def test_new_user_walks_the_wizard_launches_and_downloads(app, page, shots, tmp_path):
    page.goto(app["url"])
    page.wait_for_selector("#model-facts .lp-ok")  # the preselected model resolves
    assert "LlamaForCausalLM" in page.inner_text("#model-facts")
    page.screenshot(path=shots / "1-base-model.png", full_page=True)

    page.click("#next1")  # the demo skill is preselected and checked when the step opens
    page.wait_for_selector("#data-summary .lp-tiles", timeout=120_000)
    assert "240" in page.inner_text("#data-summary")
    wait_for(lambda: plot_points(page, "token-hist") > 0, what="token histogram")
    page.screenshot(path=shots / "2-task-and-data.png", full_page=True)

    page.click("#next2")
    page.wait_for_selector("#hw-kind")
    page.screenshot(path=shots / "3-hardware.png", full_page=True)

    page.click("#next3")
    page.wait_for_selector("#reasons .lp-reasons")
    wait_for(lambda: plot_points(page, "mem-plot") > 0 and plot_points(page, "sweep-plot") > 0, what="charts")
    assert "Rule" in page.inner_text("#reasons")
    page.screenshot(path=shots / "4-review.png", full_page=True)

    # a change of rank re-estimates: the trainable-parameter chart's title moves
    before = plot_title(page, "params-plot")
    page.click("#overrides > button, #overrides .label-wrap")
    r_box = page.locator("#f-r input")
    old_r = int(r_box.input_value())
    r_box.fill(str(old_r * 2))
    r_box.press("Tab")
    wait_for(lambda: plot_title(page, "params-plot") not in ("", before), what="estimate after a change")
    r_box.fill(str(old_r))
    r_box.press("Tab")
    wait_for(lambda: plot_title(page, "params-plot") == before, what="estimate back to the recommendation")
    page.screenshot(path=shots / "4b-review-change.png", full_page=True)

    page.click("#next4")
    page.wait_for_selector("#launch-summary .lp-facts")
    page.screenshot(path=shots / "5-launch.png", full_page=True)

    page.click("#launch")
    page.wait_for_selector("#job-header .lp-jobtitle")
    assert "?job=" in wait_for(lambda: "?job=" in page.url and page.url, what="job URL")
    # the loss chart gains points while the job runs
    first = wait_for(lambda: max(plot_points(page, "loss-plot"), 0), timeout=240, what="first loss point")
    wait_for(lambda: plot_points(page, "loss-plot") > first, timeout=240, what="more loss points")
    page.screenshot(path=shots / "6-job-running.png", full_page=True)

    # the job survives a page refresh: everything is read from the database
    page.reload()
    page.wait_for_selector("#job-header .lp-jobtitle")
    wait_for(lambda: plot_points(page, "loss-plot") > 0, what="loss points after refresh")

    page.wait_for_selector("#download", state="visible", timeout=1_400_000)
    assert "succeeded" in page.inner_text("#job-header").lower()
    page.screenshot(path=shots / "7-job-finished.png", full_page=True)
    with page.expect_download() as info:
        page.click("#download")
    zip_path = tmp_path / "adapter.zip"
    info.value.save_as(zip_path)
    names = set(zipfile.ZipFile(zip_path).namelist())
    assert {
        "adapter_model.safetensors",
        "adapter_config.json",
        "plan.yaml",
        "README.md",
        "metrics.csv",
        "loss.png",
    } <= names
    cfg = json.loads(zipfile.ZipFile(zip_path).read("adapter_config.json"))
    assert cfg.get("r")

    page.click("#export-code > button, #export-code .label-wrap")
    page.get_by_role("tab", name="Command line").click()
    assert "python app.py train" in page.inner_text("#code-cli")
    page.screenshot(path=shots / "8-export-code.png", full_page=True)


def test_bad_upload_shows_the_row_numbered_error(app, page, shots, tmp_path):
    bad = tmp_path / "bad data.jsonl"
    good = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
    bad.write_text("\n".join([json.dumps(good), json.dumps(good), "{this is not json", json.dumps(good)]) + "\n")
    page.goto(app["url"])
    page.wait_for_selector("#model-facts .lp-ok")
    page.get_by_role("tab", name="2 · Task and data").click()
    page.get_by_label("My own file").check()
    page.locator("#upload input[type=file]").set_input_files(str(bad))
    notice = page.wait_for_selector("#data-summary .lp-error", timeout=120_000)
    text = notice.inner_text()
    assert "3" in text and ("row 3" in text or "line 3" in text), text
    assert "Traceback" not in page.inner_text("body")
    page.screenshot(path=shots / "9-bad-upload.png", full_page=True)


def test_review_fits_a_narrow_window(app, shots):
    """At 800 px the review's columns stack: the reasons table keeps its Rule column in view,
    the sequence-length labels stay apart and no toolbar sits on a chart title."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = launch_browser(p)
        page = browser.new_page(viewport={"width": 800, "height": 900})
        page.set_default_timeout(60_000)
        page.goto(app["url"])
        page.wait_for_selector("#model-facts .lp-ok")
        page.click("#next1")
        page.wait_for_selector("#data-summary .lp-tiles", timeout=120_000)
        page.click("#next2")
        page.click("#next3")
        page.wait_for_selector("#reasons .lp-reasons")
        wait_for(lambda: plot_points(page, "sweep-plot") > 0 and plot_points(page, "params-plot") > 0, what="charts")
        page.wait_for_function("() => document.querySelectorAll('#sweep-plot .xtick text').length >= 7")
        page.screenshot(path=shots / "4-review-800px.png", full_page=True)

        rule = page.locator("#reasons th", has_text="Rule")
        rule.scroll_into_view_if_needed()
        box = rule.bounding_box()
        assert box and box["x"] >= 0 and box["x"] + box["width"] <= 800, box
        # nothing is drawn over it: the topmost element at its centre is the header cell itself
        on_top = page.evaluate(
            """([x, y]) => { const el = document.elementFromPoint(x, y);
                                               return el ? el.closest('th')?.innerText || el.tagName : null; }""",
            [box["x"] + box["width"] / 2, box["y"] + box["height"] / 2],
        )
        assert on_top == "Rule", on_top
        assert page.locator("#reasons .lp-rule").first.is_visible()
        # the columns stacked: the estimate column starts below the reasons panel
        reasons, verdict = page.locator("#reasons").bounding_box(), page.locator("#verdict").bounding_box()
        assert verdict["y"] >= reasons["y"] + reasons["height"], (reasons, verdict)
        # the sequence-length tick labels do not run together
        ticks = page.evaluate("""() => [...document.querySelectorAll('#sweep-plot .xtick text')]
                                 .map(t => { const r = t.getBoundingClientRect(); return [r.left, r.right]; })
                                 .sort((a, b) => a[0] - b[0])""")
        assert all(a[1] <= b[0] for a, b in zip(ticks, ticks[1:])), ticks
        # no Plotly toolbar on the review's charts (it covered their titles)
        assert page.locator("#mem-plot .modebar, #params-plot .modebar, #sweep-plot .modebar").count() == 0
        browser.close()
