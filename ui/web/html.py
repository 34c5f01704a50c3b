"""Small HTML fragments the pages share: notices, fact tables, cards, badges.

Everything a user or a file supplied is escaped here, so no page can be broken (or
scripted) by a model id, a file name or a log line. Styling lives in assets/style.css.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from html import escape

from engine.errors import UserError


def notice(message: str, kind: str = "error", title: str | None = None) -> str:
    """A styled box: kind is error, warn, ok or info."""
    head = f"<strong>{escape(title)}</strong> " if title else ""
    return f'<div class="lp-notice lp-{kind}">{head}{escape(message)}</div>'


def error_notice(exc: Exception) -> str:
    """The one way an exception reaches the page: a UserError's own words, or a plain apology."""
    if isinstance(exc, UserError):
        return notice(exc.message, "error", title=_field_title(exc.field) + ":")
    return notice(
        f"Something went wrong ({type(exc).__name__}: {str(exc)[:200]}). The details are in the server log.",
        "error",
        title="Unexpected problem:",
    )


def _field_title(field: str) -> str:
    return {"model": "Base model", "dataset": "Data", "gpu": "GPU", "budget_gb": "GPU memory"}.get(
        field, field.replace("_", " ").capitalize()
    )


def facts_table(rows: Iterable[tuple[str, object]], cls: str = "lp-facts") -> str:
    body = "".join(f"<tr><th>{escape(str(k))}</th><td>{escape(str(v))}</td></tr>" for k, v in rows)
    return f'<table class="{cls}">{body}</table>'


def table(
    headers: list[str], rows: Iterable[Iterable[object]], cls: str = "lp-table", raw_cols: Iterable[int] = ()
) -> str:
    """A plain table; columns in raw_cols are trusted HTML built by us (badges, links)."""
    raw = set(raw_cols)
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    body = "".join(
        "<tr>" + "".join(f"<td>{c if i in raw else escape(str(c))}</td>" for i, c in enumerate(row)) + "</tr>"
        for row in rows
    )
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def code_spans(text: str) -> str:
    """Escaped text whose `backticked` parts show as code (messages written for the terminal)."""
    parts = escape(text).split("`")
    if len(parts) % 2 == 0:  # an unpaired backtick: leave the text as it is
        return escape(text)
    return "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(parts))


def badge(status: str, text: str | None = None) -> str:
    """A status pill; `text` replaces the status's own word (e.g. "finished, but worse than the base")."""
    css = "worse" if text and text != status and status == "succeeded" else status
    return f'<span class="lp-badge lp-{escape(css)}">{escape(text or status)}</span>'


def progress_bar(fraction: float | None) -> str:
    pct = max(0.0, min(1.0, fraction or 0.0)) * 100
    return (
        f'<div class="lp-progress" role="progressbar" aria-valuenow="{pct:.0f}">'
        f'<div style="width:{pct:.1f}%"></div></div>'
    )


def stat_tiles(items: Mapping[str, str]) -> str:
    tiles = "".join(
        f'<div class="lp-tile"><div class="lp-tile-v">{escape(v)}</div><div class="lp-tile-k">{escape(k)}</div></div>'
        for k, v in items.items()
    )
    return f'<div class="lp-tiles">{tiles}</div>'


def model_cards(models) -> str:
    """Catalog cards: size, architecture, context, licence."""
    cards = []
    for m in models:
        context = getattr(m, "context", 0)
        ctx = f"{context // 1024}k" if context and context >= 1024 else str(context or "?")
        cards.append(
            f'<div class="lp-card" role="button" tabindex="0" data-key="{escape(m.key)}" '
            f'title="Use {escape(m.name)}"><div class="lp-card-title">{escape(m.name)}</div>'
            f'<div class="lp-card-key" title="{escape(m.describes()) if hasattr(m, "describes") else ""}">'
            f"{escape(m.key)} · {escape(getattr(m, 'variant', ''))}</div>"
            f'<div class="lp-card-meta"><span>{_size(m.params_b)} params</span><span>{escape(m.architecture)}</span>'
            f"<span>{escape(ctx)} context</span></div>"
            f'<div class="lp-card-lic">{escape(m.licence)}</div></div>'
        )
    return f'<div class="lp-cards">{"".join(cards)}</div>'


def _size(params_b: float) -> str:
    return f"{params_b:.1f}B" if params_b >= 1 else f"{params_b * 1000:.0f}M"
