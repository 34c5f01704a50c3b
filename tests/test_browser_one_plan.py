"""In Chromium: the review and the launch show one estimate, a number box without a number is refused in
place and goes back to the plan's value, and every launch opens the job it created (issue 21).

The harness (a server on a free port, a tiny local model, Debian's chromium) is tests/test_browser.py's.
"""

from __future__ import annotations

import pytest

from tests.test_browser import app, launch_browser, plot_points, wait_for  # noqa: F401 - `app` is a fixture

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def _tiles(page, selector: str) -> dict[str, str]:
    return page.evaluate(
        """(sel) => Object.fromEntries([...document.querySelectorAll(sel + ' .lp-tile')]
                            .map(t => [t.querySelector('.lp-tile-k').innerText.toLowerCase(),
                                       t.querySelector('.lp-tile-v').innerText]))""",
        selector,
    )


def _facts(page) -> dict[str, str]:
    return page.evaluate("""() => Object.fromEntries([...document.querySelectorAll('#launch-summary tr')]
                            .map(r => [...r.querySelectorAll('th, td')].map(c => c.innerText))
                            .filter(c => c.length == 2).map(([k, v]) => [k.toLowerCase(), v]))""")


@pytest.mark.timeout(1200)
def test_one_estimate_a_refused_number_and_every_launch_opens_its_job(app):  # noqa: F811
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = launch_browser(p)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.set_default_timeout(60_000)
        page.goto(app["url"])
        page.wait_for_selector("#model-facts .lp-ok")
        # a catalog card looks clickable, and a click picks its model
        page.click('.lp-card[data-key="qwen2.5-0.5b"]')
        wait_for(lambda: page.input_value("#model-box textarea, #model-box input") == "qwen2.5-0.5b", what="card pick")
        page.fill("#model-box textarea, #model-box input", app["model"])
        page.press("#model-box textarea, #model-box input", "Enter")
        page.wait_for_selector("#model-facts .lp-ok")
        page.click("#next1")
        page.wait_for_selector("#data-summary .lp-tiles", timeout=120_000)
        widths = [page.locator("#wizard-steps").bounding_box()["width"]]
        page.click("#next2")
        page.wait_for_selector("#hw-kind")
        widths.append(page.locator("#wizard-steps").bounding_box()["width"])
        page.click("#next3")
        page.wait_for_selector("#reasons .lp-reasons")
        widths.append(page.locator("#wizard-steps").bounding_box()["width"])
        assert max(widths) - min(widths) < 1, widths  # no width jump between steps
        wait_for(lambda: plot_points(page, "mem-plot") > 0, what="charts")
        page.wait_for_selector("#summary-tiles .lp-tile")
        review = _tiles(page, "#summary-tiles")
        time_key = next(k for k in review if k.startswith("estimated time"))
        assert "memory with your data" in review and any(k.startswith("worst case") for k in review)

        # "abc" in the learning rate: one line in place; leaving the box puts the plan's value back
        page.click("#overrides > button, #overrides .label-wrap")
        box = page.locator("#f-learning_rate input")
        shown = box.input_value()
        box.click()
        page.keyboard.press("Control+A")
        page.keyboard.type("abc")
        error = page.wait_for_selector("#main-error .lp-error")
        assert "Learning rate: is empty or not a number" in error.inner_text()
        assert f"the plan keeps {float(shown):g}" in error.inner_text()
        box.press("Tab")
        wait_for(lambda: box.input_value() == shown, what="the last valid value back in the box")
        # the value is back, so the plan is valid again: the message goes
        wait_for(lambda: page.inner_text("#main-error").strip() == "", what="the refusal gone")

        # the launch summary shows the review's figures, under the same names
        page.click("#next4")
        page.wait_for_selector("#launch-summary .lp-facts")
        wait_for(lambda: _facts(page).get(time_key), what="launch summary")
        facts = _facts(page)
        assert facts[time_key] == review[time_key]
        assert facts["memory with your data"] == review["memory with your data"]

        # two launches: each opens its own job, and a refresh tick never puts the first one back
        for expected in (1, 2):
            if expected == 2:
                page.locator("#main-tabs").get_by_role("tab", name="New fine-tune").click()
                assert "Job 1 queued" in page.inner_text("#launch-notice")
                page.click("#run-name textarea, #run-name input")
                page.keyboard.type("second run")  # the plan changes (typed: Playwright's fill is no input event)
                wait_for(lambda: page.inner_text("#launch-notice").strip() == "", what="the old notice gone")
            page.click("#launch")
            wait_for(
                lambda n=expected: f"#{n} ·" in page.inner_text("#job-header .lp-jobtitle"),
                timeout=120,
                what=f"job {expected} on the page",
            )
        page.wait_for_timeout(3500)  # several timer ticks
        assert "#2 ·" in page.inner_text("#job-header .lp-jobtitle")
        browser.close()
