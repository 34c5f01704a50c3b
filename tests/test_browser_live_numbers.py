"""The review's numbers after an edit (a box typed in, a dropdown's choice) come from the page's own
endpoint (ui/web/live_numbers.py), painted before Gradio's event for the edit has sent its request, and
they are the numbers of the plan edited: the figures `headline()` gives for it, the same as Gradio's path
shows once it settles. A refused value paints no numbers. Timings are bench/bench_ui.py's (item 4), never
asserted here.

The harness (a server on a free port, a tiny local model, Debian's chromium) is tests/test_browser.py's.
"""

from __future__ import annotations

import re

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from engine.estimate.combined import headline
from engine.plan import TrainingPlan
from tests.test_browser import app, launch_browser, plot_points, wait_for  # noqa: F401 - `app` is a fixture
from ui.web import live_numbers, review, steps, wizard

GPU = "RTX 4090"
TILE = re.compile(r'<div class="lp-tile-v">([^<]*)</div><div class="lp-tile-k">([^<]*)</div>')

# In the page: each new text of the tiles after an edit (None: no tiles), with how many of the edit's requests,
# ours and Gradio's, had come back by then (the browser's resource timing lists a request once it is done).
WATCH = """() => {
  performance.setResourceTimingBufferSize(100000);
  performance.clearResourceTimings();
  const done = (part) => performance.getEntriesByType('resource').filter(e => e.name.includes(part)).length;
  const tiles = document.querySelector('#summary-tiles');
  const text = () => tiles.querySelector('.lp-tiles')?.innerText ?? null;
  let last = text();
  const seen = window.__lpSeen = [];
  new MutationObserver(() => {
    const now = text();
    if (now === last) return;
    last = now;
    seen.push({tiles: now, ours: done('lorapilot/review-numbers'), gradio: done('/gradio_api/run/predict')});
  }).observe(tiles, {subtree: true, childList: true, characterData: true});
}"""
SETTLED = (
    "() => performance.getEntriesByType('resource').filter(e => e.name.includes('/gradio_api/run/predict')).length"
)
TILES = """() => Object.fromEntries([...document.querySelectorAll('#summary-tiles .lp-tile')]
                 .map(t => [t.querySelector('.lp-tile-k').innerText.toLowerCase(),
                            t.querySelector('.lp-tile-v').innerText]))"""


def _tiles(summary_html: str) -> dict[str, str]:
    return {k.lower(): v for v, k in TILE.findall(summary_html)}


def _context(model: str) -> tuple[dict, dict]:
    """The page's plan context and data check, as its earlier steps made them (demo skill, RTX 4090)."""
    skill = steps.skill_choices()[0][1]  # the page's first demo skill, checked on entering step 2
    data = steps.check_data_view("demo", skill, None, model, TrainingPlan.model_fields["seq_len"].default)
    answers = {
        "model": model,
        "difficulty": "simple",
        "dataset": data["dataset"],
        "rows": data["rows"],
        "hw_kind": "gpu",
        "gpu": GPU,
        "budget": None,
        "name": "",
    }
    return wizard.context_from(**answers), data


def test_the_endpoint_answers_what_gradios_numbers_event_answers_for_the_same_edit(tmp_path):
    from tests.tiny import make_tiny_model

    ctx, data = _context(str(make_tiny_model(tmp_path / "tiny")))
    lengths, share = data["lengths"], data["label_share"]
    _, plan = review.recommend_for(ctx)
    form = review.form_of(plan)
    shown = wizard.update_numbers(ctx, lengths, share, {}, **form)
    key = re.search(r'data-lp-plan="([0-9a-f]+)"', shown[1]).group(1)
    server = FastAPI(routes=live_numbers.routes(wizard.update_numbers))
    client = TestClient(server)

    # the box's text as typed; a rank of 2r + 0.4 is 2r on both paths, as Gradio's control rounds it
    edited = client.post(live_numbers.PATH, json={"key": key, "values": {"r": f"{plan.r * 2}.4"}})
    assert edited.status_code == 200
    expected = wizard.update_numbers(ctx, lengths, share, form, **{**form, "r": plan.r * 2})
    assert edited.json() == dict(zip(live_numbers.PANES, expected[:4], strict=True))  # one function, one truth
    assert f'data-lp-plan="{key}"' not in edited.json()["summary"]  # the edited plan has its own key

    refused = client.post(live_numbers.PATH, json={"key": key, "values": {"r": "0"}}).json()
    assert "lp-tile" not in refused["summary"] and "Rank (r)" in refused["main_error"]
    assert client.post(live_numbers.PATH, json={"key": "0" * 32, "values": {}}).status_code == 404  # not made up


@pytest.mark.browser
@pytest.mark.slow
@pytest.mark.timeout(900)
def test_an_edit_paints_its_plans_numbers_first_from_the_endpoint_and_a_refused_value_paints_none(app):  # noqa: F811
    from playwright.sync_api import sync_playwright

    ctx, data = _context(app["model"])
    _, plan = review.recommend_for(ctx)

    def expected(**edit) -> tuple[dict, dict]:
        edited = review.plan_from_values(ctx, {**review.form_of(plan), **edit})
        view = review.numbers_view(edited, data["lengths"], data["label_share"])
        head = review.headline_tiles(headline(view["estimate"]), edited.seq_len)
        return _tiles(view["summary"]), {k.lower(): v for k, v in head.items()}

    with sync_playwright() as p:
        browser = launch_browser(p)
        page = browser.new_page(viewport={"width": 1360, "height": 900})
        page.set_default_timeout(60_000)
        page.goto(app["url"])
        page.wait_for_selector("#model-facts .lp-ok")
        page.click("#next1")
        page.wait_for_selector("#data-summary .lp-tiles", timeout=120_000)
        page.click("#next2")
        page.get_by_label("A GPU from the list").check()
        page.locator("#gpu input").click()
        page.keyboard.type(GPU)
        page.keyboard.press("Enter")
        page.click("#next3")
        page.wait_for_selector("#reasons .lp-reasons")
        wait_for(lambda: plot_points(page, "mem-plot") > 0, what="charts")
        page.click("#overrides > button, #overrides .label-wrap")
        assert int(page.input_value("#f-r input")) == plan.r  # the page's plan is the one computed here

        def edit(field: str, value: str) -> list[dict]:
            """Type `value` into the box; wait for Gradio's two requests (numbers, charts) to come back."""
            page.focus(f"#f-{field} input")  # leaving the last box asks Gradio for the numbers: not this edit's
            page.wait_for_timeout(1000)
            page.evaluate(WATCH)
            page.fill(f"#f-{field} input", value)
            wait_for(lambda: page.evaluate(SETTLED) >= 2, what="Gradio's numbers and charts for the edit")
            page.wait_for_timeout(300)  # their answers applied
            return page.evaluate("() => window.__lpSeen")

        edits = {}
        for field, value in (("r", plan.r * 2), ("batch_size", plan.batch_size + 1)):
            edits[field] = value
            seen = edit(field, str(value))
            tiles, head = expected(**edits)
            # painted once, from the endpoint, before Gradio's request for the edit had even come back
            assert len(seen) == 1 and seen[0]["ours"] >= 1 and seen[0]["gradio"] == 0, seen
            shown = page.evaluate(TILES)  # and Gradio's path, settled, shows the same: no second truth
            assert shown == tiles, (field, shown, tiles)
            assert head.items() <= shown.items(), (head, shown)  # the headline figures of the plan edited

        # a dropdown's choice fires no input event; leaving the box sends it, and paints first all the same
        page.focus("#f-method input")  # opens its options; leaving r asks Gradio for numbers: not this edit's
        page.wait_for_timeout(1000)
        page.evaluate(WATCH)
        page.get_by_role("option", name="qlora", exact=True).click()
        wait_for(lambda: page.evaluate(SETTLED) >= 2, what="Gradio's numbers and charts for the choice")
        page.wait_for_timeout(300)
        seen = page.evaluate("() => window.__lpSeen")
        assert page.input_value("#f-method input") == "qlora"
        tiles, head = expected(**edits, method="qlora")
        assert len(seen) == 1 and seen[0]["ours"] >= 1 and seen[0]["gradio"] == 0, seen
        assert page.evaluate(TILES) == tiles and head.items() <= tiles.items()
        edits["method"] = "qlora"

        # a refused value: the refusal in place, and at no moment numbers (of any plan) in the tiles
        seen = edit("r", "0")
        assert seen and all(s["tiles"] is None for s in seen), seen
        assert page.locator("#summary-tiles .lp-tile").count() == 0
        assert "Rank (r)" in page.inner_text("#main-error")
        # a valid value again: that plan's numbers
        seen = edit("r", str(plan.r))
        tiles, _ = expected(**{**edits, "r": plan.r})
        assert seen[0]["ours"] >= 1 and seen[0]["gradio"] == 0, seen
        assert page.evaluate(TILES) == tiles
        assert page.inner_text("#main-error").strip() == ""
        browser.close()
