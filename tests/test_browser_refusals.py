"""A real browser tries what cannot run; the wizard refuses it in place and says why (issue 9, §4).

Same setup as test_browser.py: the app in its own process on a loopback port, a tiny local
model preselected, Debian's chromium driven by Playwright. Nothing trains here: the one
launch attempted is refused before a job exists.
"""

from __future__ import annotations

import sqlite3

import pytest

from tests.test_browser import app, page, plot_title, shots, wait_for  # noqa: F401 - fixtures and helpers

pytestmark = [pytest.mark.browser, pytest.mark.slow]

HUGE_R = 5_000_000  # on the tiny model (layers 32-128 wide): terabytes of adapter states, far above any RAM


def _set(pg, elem_id: str, value) -> None:
    box = pg.locator(f"#{elem_id} input")
    box.fill(str(value))
    box.press("Tab")


def _toasts(pg) -> list[str]:
    return pg.locator(".toast-body").all_inner_texts()


def _jobs(home) -> int:
    db = home / "lorapilot.db"
    if not db.exists():
        return 0
    with sqlite3.connect(db) as conn:
        try:
            return conn.execute("select count(*) from job").fetchone()[0]
        except sqlite3.OperationalError:  # no table yet: no job
            return 0


@pytest.mark.timeout(900)
def test_review_refuses_out_of_range_values_and_a_plan_that_cannot_fit(app, page, shots):  # noqa: F811
    page.goto(app["url"])
    page.wait_for_selector("#model-facts .lp-ok")

    # Review reached by its tab, not by Next: the preselected demo skill is the data.
    page.get_by_role("tab", name="4 · Review").click()
    page.wait_for_selector("#reasons .lp-reasons", timeout=120_000)
    wait_for(lambda: "fits" in page.inner_text("#verdict"), what="a verdict against this machine's RAM")
    assert "check the data in step 2 first" not in page.inner_text("body")
    good_title = wait_for(lambda: plot_title(page, "mem-plot"), what="the memory chart")
    assert "fits" in good_title

    # Rank -3: one line in place, no bare 'Error', no chart of another plan beside it.
    page.click("#overrides > button, #overrides .label-wrap")
    recommended_r = page.locator("#f-r input").input_value()
    _set(page, "f-r", -3)
    wait_for(
        lambda: "Rank (r): must be a whole number of 1 or more" in page.inner_text("#main-error"),
        what="the rank's message in place",
    )
    assert page.inner_text("#verdict").count("must be a whole number") == 1
    assert "Rank (r):" in page.inner_text("#verdict")
    wait_for(lambda: plot_title(page, "mem-plot") == "Memory", what="the memory chart cleared")
    assert "Fix Rank (r) to see the estimate" in page.inner_text("#mem-plot")
    assert "Fix Rank (r)" in page.inner_text("#params-plot")
    wait_for(lambda: "Fix Rank (r)" in page.inner_text("#sweep-plot"), what="the sweep cleared")
    assert not _toasts(page) and "Error" not in page.inner_text("#mem-plot")
    page.screenshot(path=shots / "r1-rank-negative.png", full_page=True)

    # An Advanced field out of range: its message appears in the Advanced panel.
    page.click("#advanced > button, #advanced .label-wrap")
    _set(page, "f-r", recommended_r)
    wait_for(lambda: page.inner_text("#main-error").strip() == "", what="the rank's message gone")
    wait_for(lambda: plot_title(page, "mem-plot") == good_title, what="the charts back")
    _set(page, "f-warmup_ratio", 5)
    wait_for(
        lambda: "Warmup ratio: must be at least 0 and below 1" in page.inner_text("#advanced-error"),
        what="the warmup message in the Advanced panel",
    )
    _set(page, "f-warmup_ratio", 0.03)
    wait_for(lambda: page.inner_text("#advanced-error").strip() == "", what="the warmup message gone")

    # A rank no machine can hold, above the width of every layer: flagged with its rules.
    _set(page, "f-r", HUGE_R)
    wait_for(lambda: "does not fit" in page.inner_text("#verdict"), what="the misfit verdict")
    verdict = page.inner_text("#verdict")
    assert "this machine's RAM" in verdict
    assert "[R6]" in verdict and "width of the narrowest layer" in verdict
    assert not _toasts(page)
    page.screenshot(path=shots / "r2-rank-huge.png", full_page=True)

    # Launch: not without the explicit override, whose label says what would happen.
    page.get_by_role("tab", name="5 · Launch").click()
    page.wait_for_selector("#launch-anyway", state="visible")
    label = page.inner_text("#launch-anyway")
    assert "Launch anyway" in label and "RAM" in label and "killed for lack of memory" in label
    page.click("#launch")
    page.wait_for_selector("#launch-notice .lp-error")
    assert "Not launched" in page.inner_text("#launch-notice")
    assert _jobs(app["home"]) == 0
    page.screenshot(path=shots / "r3-launch-refused.png", full_page=True)


@pytest.mark.timeout(600)
def test_upload_messages_speak_the_wizards_language_and_a_rejected_file_clears_the_last(
    app,  # noqa: F811 - the fixtures imported above
    page,  # noqa: F811
    shots,  # noqa: F811
    tmp_path,
):
    csv = tmp_path / "questions.csv"
    csv.write_text("question,answer\nWhat is 2+2?,4\nCapital of France?,Paris\n")
    png = tmp_path / "picture.png"
    png.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 64)
    page.goto(app["url"])
    page.wait_for_selector("#model-facts .lp-ok")
    page.get_by_role("tab", name="2 · Task and data").click()
    page.get_by_label("My own file").check()
    page.locator("#upload input[type=file]").set_input_files(str(csv))
    wait_for(lambda: "question, answer" in page.inner_text("#data-summary"), timeout=120, what="the CSV checked")
    notice = page.inner_text("#data-summary .lp-error")
    assert "question, answer" in notice and "--columns" not in notice
    assert "rename your file's columns" in notice
    page.screenshot(path=shots / "r4-csv-columns.png", full_page=True)

    page.click("#upload button[aria-label=Clear]")  # as a user does before choosing another file
    wait_for(lambda: "question, answer" not in page.inner_text("#data-summary"), what="the CSV's message gone")
    page.locator("#upload input[type=file]").set_input_files(str(png))
    wait_for(
        lambda: "'.png' files are not accepted" in page.inner_text("#data-summary"),
        timeout=120,
        what="the .png refused in place",
    )
    summary = page.inner_text("#data-summary")
    assert "picture.png" in summary and ".jsonl" in summary and "question, answer" not in summary
    assert not _toasts(page)
    assert "Traceback" not in page.inner_text("body")
    page.screenshot(path=shots / "r5-png-rejected.png", full_page=True)
