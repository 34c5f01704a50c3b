"""The review's numbers painted without Gradio's front end (issue 25: ≤ 150 ms from an edit to the
new numbers on screen).

Gradio answers a change of setting in about 10 ms on the server, but its front end takes some 200 ms
more to put the numbers on screen: every event updates the loading state of each output by walking the
whole page's component tree, and the numbers' update then schedules the charts' request and Plotly's
redraw in the same task, before the browser paints. So an edit of a setting also goes straight here:
the page posts the key of the plan its tiles show with the settings it can see, and paints the answer
(assets/live_numbers.js). The answer comes from the function Gradio's own event calls
(`ui.web.wizard.update_numbers`): the same verdict, tiles and refusal lines, so when Gradio's answer
lands a moment later its HTML is the same and its morph of the page changes nothing. The charts stay
on Gradio's path.

The key names a snapshot of what the numbers depend on and the page does not hold (the earlier
steps' answers, the checked data's token lengths, the last valid form): an HMAC of the snapshot with
a secret of this process, so the same plan has the same key on either path and a key cannot be made
up. It is written into the tiles (`data-lp-plan`) and is good for the last `KEEP` plans shown.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import hmac
import json
import secrets
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, HTTPException
from pydantic import BaseModel, Field

from engine.paths import ASSETS
from ui.web import html, review

PATH = "/lorapilot/review-numbers"  # relative in the page (assets/live_numbers.js), same origin
SCRIPT = ASSETS / "live_numbers.js"
KEEP = 512  # plans (keys) remembered; a page whose key was forgotten waits for Gradio's answer
_SECRET = secrets.token_bytes(32)


@dataclass(frozen=True)
class Snapshot:
    """What the review's numbers are a function of, besides the form the page shows."""

    ctx: dict
    lengths: tuple[int, ...] | None
    label_share: float | None
    form: dict[str, Any]  # the plan's form, by field name: the last valid values


_plans: OrderedDict[str, Snapshot] = OrderedDict()
# one copy of each data check's token lengths (a file's can be long), shared by its plans' snapshots
_lengths: OrderedDict[str, tuple[int, ...]] = OrderedDict()
_lock = threading.Lock()


def remember(ctx: Mapping, lengths, label_share: float | None, form: Mapping[str, Any]) -> str:
    """The key of this plan's numbers, kept for the endpoint."""
    lengths = tuple(lengths) if lengths else None
    data = hashlib.sha256(json.dumps(lengths).encode()).hexdigest()
    blob = json.dumps([dict(ctx), data, label_share, dict(form)], sort_keys=True, default=str)
    key = hmac.new(_SECRET, blob.encode(), hashlib.sha256).hexdigest()[:32]
    with _lock:
        lengths = _lengths.setdefault(data, lengths)
        _lengths.move_to_end(data)
        while len(_lengths) > 16:
            _lengths.popitem(last=False)
        _plans[key] = Snapshot(dict(ctx), lengths, label_share, dict(form))
        _plans.move_to_end(key)
        while len(_plans) > KEEP:
            _plans.popitem(last=False)
    return key


def recall(key: str) -> Snapshot | None:
    with _lock:
        return _plans.get(key)


def tagged(summary: str, key: str) -> str:
    """The tiles' HTML carrying the key of the plan they show."""
    return f'<div class="lp-live" data-lp-plan="{html.escape(key)}">{summary}</div>'


# update_numbers' answer: [verdict, tiles, main panel's line, Advanced panel's line, last valid form]
Numbers = Callable[..., list]
PANES = ("verdict", "summary", "main_error", "advanced_error")


class Ask(BaseModel):
    key: str = Field(max_length=64)
    # the settings the page shows, by plan field: box text, a checkbox's state
    values: dict[str, str | bool | int | float | None] = Field(default_factory=dict, max_length=64)


@functools.cache
def _control(field: str):
    """The field's Gradio control, outside any page: what hands its value to the handlers."""
    return review.make_control(field, render=False)


def as_gradio_sends(field: str, shown: str | bool | float | None):
    """A setting as the page shows it, as Gradio hands it to `update_numbers`: a number box's text parsed
    (empty or not a number: None) and then the control's own preprocessing, so both paths see one value
    (a rank typed as 8.4 is 8 on both). Raises for a value the control refuses (a choice not offered)."""
    if review.field_kind(field)[0] in ("int", "float") and isinstance(shown, str):
        try:
            shown = float(shown) if shown.strip() else None
        except ValueError:
            shown = None
    return _control(field).preprocess(shown)


def answer(numbers: Numbers, ask: Ask) -> dict[str, str] | None:
    """The panes' HTML for the plan `ask.key` names with the page's settings on top; None for a key not
    (or no longer) known."""
    snap = recall(ask.key)
    if snap is None:
        return None
    form = dict(snap.form)
    for field, shown in ask.values.items():
        if field in review.FORM_FIELDS:
            with contextlib.suppress(Exception):  # Gradio would not send it either: its answer paints
                form[field] = as_gradio_sends(field, shown)
    shown = numbers(snap.ctx, snap.lengths, snap.label_share, snap.form, **form)
    return dict(zip(PANES, shown[: len(PANES)], strict=True))


def routes(numbers: Numbers) -> list:
    """The endpoint, as routes for the app Gradio serves (ui/web/server.py)."""
    router = APIRouter()

    @router.post(PATH)
    def review_numbers(ask: Ask) -> dict[str, str]:
        # a plain function: FastAPI runs it on its thread pool, beside Gradio's handlers
        found = answer(numbers, ask)
        if found is None:
            raise HTTPException(status_code=404, detail="unknown plan key")
        return found

    return list(router.routes)


# js= of Gradio's own numbers event for an edit: it waits (at most 500 ms) until the script has painted the
# endpoint's answer, then sends the same values; without the script it goes at once.
AFTER_PAINT_JS = "(...values) => (window.lorapilot?.afterPaint?.() ?? Promise.resolve()).then(() => values)"


def head() -> str:
    """The page's script, for `launch(head=...)`."""
    return f"<script>{SCRIPT.read_text(encoding='utf-8')}</script>"
