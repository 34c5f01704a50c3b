"""A real browser in the playground: pick two adapters, type a prompt, see three streamed answers.

The app runs as its own process (tests/test_browser.py's helpers) on a temporary home whose
library holds two tiny adapters of a tiny base; Playwright drives Debian's chromium.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.test_browser import CHROMIUM, launch_browser, start_server, stop_server

pytestmark = [pytest.mark.browser, pytest.mark.slow]


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    if not Path(CHROMIUM).exists():
        pytest.skip("Debian chromium is not installed (`make test` installs it: its system-packages step)")
    pytest.importorskip("playwright")
    from tests.tiny import make_tiny_model
    from tests.tiny_adapters import make_tiny_adapter

    home = tmp_path_factory.mktemp("pg-home")
    model = make_tiny_model(home / "tiny-model")
    saved = os.environ.get("LORAPILOT_HOME")
    os.environ["LORAPILOT_HOME"] = str(home)  # the library rows go to the server's database
    try:
        from jobs import library

        library.import_adapter(make_tiny_adapter(model, home / "src-a", seed=1), name="ticket-bot")
        library.import_adapter(make_tiny_adapter(model, home / "src-b", seed=2), name="date-bot")
    finally:
        os.environ["LORAPILOT_HOME"] = saved or ""
    proc, url, _ = start_server(home, model=str(model))
    yield {"url": url}
    stop_server(proc)


@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> Path:
    folder = Path(os.environ.get("LORAPILOT_SCREENSHOTS") or tmp_path_factory.mktemp("screenshots"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def test_pick_two_adapters_type_a_prompt_see_three_answers(app, shots):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = launch_browser(p)
        page = browser.new_page(viewport={"width": 1360, "height": 900})
        page.set_default_timeout(120_000)
        page.goto(app["url"])
        page.wait_for_selector("#model-facts .lp-ok")  # the page has loaded (its load event picks a tab)
        page.get_by_role("tab", name="Adapters").click()
        page.wait_for_selector("#lib-table .lp-library")
        assert "ticket-bot" in page.inner_text("#lib-table") and "date-bot" in page.inner_text("#lib-table")
        page.screenshot(path=shots / "pg-1-library.png", full_page=True)

        page.get_by_role("tab", name="Playground").click()
        page.wait_for_function("() => !document.querySelector('#pg-base input').value.startsWith('default')")
        for name in ("ticket-bot", "date-bot"):
            page.click("#pg-adapters input")
            page.get_by_role("option", name=name).first.click()
        page.keyboard.press("Escape")
        page.fill("#pg-prompt textarea", "The printer in room 12 is broken, it is urgent.")
        page.click("#pg-go")
        page.wait_for_selector("#pg-status .lp-ok")
        status = page.inner_text("#pg-status")
        assert "3 answers" in status
        labels = [
            page.inner_text(f"#pg-answer-{i} label, #pg-answer-{i} [data-testid='block-label']") for i in range(3)
        ]
        joined = " | ".join(labels)
        assert "Base model" in labels[0] and "ticket-bot" in joined and "date-bot" in joined, joined
        assert all("first token" in label for label in labels), joined
        assert not page.locator("#pg-answer-3").is_visible()
        answers = [page.input_value(f"#pg-answer-{i} textarea") for i in range(3)]
        assert all(len(a) > 0 for a in answers), answers  # a random tiny model may well answer in whitespace
        assert "Traceback" not in page.inner_text("body")
        page.screenshot(path=shots / "pg-2-three-answers.png", full_page=True)
        browser.close()
