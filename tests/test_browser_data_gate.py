"""In a real browser: a data check that fails keeps the wizard on step 2 and names the row, and
Review says the data is missing instead of reasoning about it (issue 21, section 2).

Same setup as test_browser.py: the app in its own process on a loopback port, a tiny local
model preselected, Debian's chromium driven by Playwright. Nothing trains.
"""

from __future__ import annotations

import time

import pytest

from tests.test_browser import app, page, shots, wait_for  # noqa: F401 - fixtures and helpers

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def _selected_tab(pg) -> str:
    return pg.locator("#wizard-steps [role=tab][aria-selected=true]").first.inner_text().strip()


def test_a_one_line_file_stops_the_wizard_at_step_two(app, page, shots, tmp_path):  # noqa: F811
    one = tmp_path / "one line.txt"
    one.write_text("Just one line of text.\n")
    page.goto(app["url"])
    page.wait_for_selector("#model-facts .lp-ok")
    assert page.inner_text("#model-facts").startswith("Weights: on this machine")
    page.get_by_role("tab", name="2 · Task and data").click()
    page.get_by_label("My own file").check()
    page.locator("#upload input[type=file]").set_input_files(str(one))
    notice = page.wait_for_selector("#data-summary .lp-error", timeout=120_000).inner_text()
    assert "one line.txt" in notice and "the whole file" in notice and "has 1 example (line 1)" in notice, notice
    assert "None" not in page.inner_text("#data-summary")

    page.click("#next2")
    time.sleep(1.5)  # long enough for a tab change to have happened, were there one
    assert _selected_tab(page) == "2 · Task and data"
    page.screenshot(path=shots / "d1-one-line-stops.png", full_page=True)

    page.get_by_role("tab", name="4 · Review").click()
    wait_for(
        lambda: "no data has passed its check yet" in page.inner_text("#reasons"),
        what="Review saying the data is missing",
    )
    body = page.inner_text("body")
    assert "1 examples" not in body and "Traceback" not in body
    page.screenshot(path=shots / "d2-review-says-data-missing.png", full_page=True)
