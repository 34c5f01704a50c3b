"""A real browser (Debian chromium) in the wizard with preference pairs: the task step asks what
the data teaches, a file of pairs switches it to preferences, the data check reports the pairs,
and the review recommends with the preference rows (P1-P3). Fixtures as in tests/test_browser.py."""

from __future__ import annotations

import json

import pytest

from tests.test_browser import app, page, shots  # noqa: F401 - pytest fixtures

pytestmark = [pytest.mark.browser, pytest.mark.slow]

DPO = "Preferences: each example pairs a better and a worse answer (DPO)"


def test_a_file_of_pairs_switches_the_task_to_preferences_and_the_review_follows(app, page, shots, tmp_path):  # noqa: F811
    data = tmp_path / "pairs.jsonl"
    data.write_text(
        "".join(
            json.dumps(
                {
                    "prompt": f"Printer {i} is jammed.",
                    "chosen": "Sorry, we will fix it.",
                    "rejected": "Not my problem.",
                }
            )
            + "\n"
            for i in range(12)
        )
    )
    page.goto(app["url"])
    page.wait_for_selector("#model-facts .lp-ok")
    page.get_by_role("tab", name="2 · Task and data").click()
    assert "teach by comparison" in page.inner_text("#objective-help")  # both kinds explained, with an example
    assert page.get_by_label("Answers: each example shows the right answer").is_checked()
    page.get_by_label("My own file").check()
    page.locator("#upload input[type=file]").set_input_files(str(data))
    page.wait_for_selector("#data-summary .lp-tiles", timeout=120_000)
    summary = page.inner_text("#data-summary")
    assert "preference" in summary and "12 pairs, 0 with identical answers" in summary, summary
    page.wait_for_function(
        "() => [...document.querySelectorAll('#objective input')].some(i => i.checked && i.value === 'dpo')",
        timeout=30_000,
    )
    assert page.get_by_label(DPO).is_checked()
    page.screenshot(path=shots / "p1-preference-data.png", full_page=True)

    page.click("#next2")
    page.click("#next3")
    page.wait_for_selector("#reasons .lp-reasons", timeout=120_000)
    reasons = page.inner_text("#reasons")
    assert "P2" in reasons and "DPO" in reasons, reasons
    page.screenshot(path=shots / "p2-preference-review.png", full_page=True)
