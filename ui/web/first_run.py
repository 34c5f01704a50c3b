"""The first run on a fresh LORAPILOT_HOME: the embedded model's one-time conversion.

The server starts it in the background as soon as it listens (ui/web/server.warm_up);
a handler that needs the model's files (the data check tokenizes with it) waits here,
and says what is happening through `report(fraction, text)` (a gr.Progress in the page)
instead of a bare spinner.
"""

from __future__ import annotations

from collections.abc import Callable

from engine.model import default_model

POLL_S = 0.25  # how often the page's progress bar moves


def needs_wait(model: str | None) -> bool:
    return (model or "default").strip() == "default" and not default_model.ready()


def wait_for_model(model: str | None, report: Callable[[float | None, str], object]) -> None:
    """Return once `model` can be loaded; for the embedded default, wait out its conversion."""
    if not needs_wait(model):
        return

    default_model.prepare_in_background()  # a no-op when the server's warm-up already started it
    while not default_model.wait(POLL_S):
        report(*default_model.progress())
