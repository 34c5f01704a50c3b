"""What the wizard refuses, and how it says so: the review's invalid fields, the plans that
cannot fit, the settings that work against the user.

A field out of range gets one line in place (inside the panel that holds it), and every
chart is replaced by a placeholder naming that field, so no figure describes a plan other
than the one on screen. A plan that does not fit the device is launched only with an
explicit override whose label says what will happen.
"""

from __future__ import annotations

from engine import units
from engine.advice.checks import plan_warnings
from engine.errors import UserError
from engine.estimate.combined import memory_for
from ui.web import charts, html, review

CHARTS = (("Memory", 360), ("Trainable parameters", 320), ("Memory vs sequence length", 320))


def field_messages(exc: Exception) -> tuple[str, str]:
    """(message in the main settings panel, message in the Advanced panel) for a bad field."""
    if not isinstance(exc, UserError):
        return "", ""
    line = html.notice(f"{review.label(exc.field)}: {exc.message}", "error")
    if exc.field in review.ADVANCED_FIELDS:
        return "", line
    if exc.field in review.MAIN_FIELDS:
        return line, ""
    return "", ""


def invalid_view(exc: Exception) -> list:
    """[verdict, memory, summary, params, main message, advanced message] for a plan that is not valid."""
    what = review.label(exc.field) if isinstance(exc, UserError) else "the plan"
    placeholder = f"Fix {what} to see the estimate"
    main, advanced = field_messages(exc)
    verdict = (
        html.notice(exc.message, "error", title=f"{what}:") if isinstance(exc, UserError) else html.error_notice(exc)
    )
    return [
        verdict,
        charts.empty(CHARTS[0][0], placeholder, CHARTS[0][1]),
        "",
        charts.empty(CHARTS[1][0], placeholder, CHARTS[1][1]),
        main,
        advanced,
    ]


def sweep_placeholder(exc: Exception):
    what = review.label(exc.field) if isinstance(exc, UserError) else "the plan"
    return charts.empty(CHARTS[2][0], f"Fix {what} to see the estimate", CHARTS[2][1])


def warnings_html(plan) -> str:
    """The plan checks that apply (e.g. a rank above the layers' width), each with its rule."""

    try:
        found = plan_warnings(plan)
    except UserError:
        return ""
    return "".join(html.notice(text, "warn", title=f"[{rule}]") for rule, text in found)


def misfit(plan) -> str | None:
    """None when the plan fits (or no budget is known); else what launching anyway will do."""

    mem = memory_for(plan)
    if mem.fits is not False:
        return None
    need, have = units.human_bytes(mem.device_bytes), units.human_bytes(mem.budget_bytes)
    if plan.gpu == "cpu":
        return (
            f"Launch anyway: it needs about {need} and this machine has {have} of RAM, so the job will "
            "most likely be killed for lack of memory (or the machine will swap until it stalls); "
            "the job page then shows it as failed."
        )
    return (
        f"Launch anyway: it needs about {need} of GPU memory and the budget is {have}, so the job will "
        "most likely stop with CUDA out of memory at its first steps; the job page then shows it as failed."
    )


def launch_refusal(plan, override: bool) -> str | None:
    """The notice that stops a launch, or None when the plan may start."""
    consequence = misfit(plan)
    if consequence is None or override:
        return None
    return html.notice(
        "this plan needs more memory than it would run in. Change a setting in step 4 (the "
        "verdict there names the one that fixes it), or tick 'Launch anyway' above to try "
        "regardless.",
        "error",
        title="Not launched:",
    )
