"""Skill retention: how much of each source skill a composed adapter keeps.

For every source adapter with a known demo skill, the held-out exact match of the base,
of the source alone, and of the composition, on that skill's test split. Scored through
one AdapterHost, so the base is loaded once for the whole table.
"""

from __future__ import annotations

from engine.data import demo


def score(host, adapter: str | None, skill: str, rows: int | None = None) -> float:
    """Held-out exact match (%) of `adapter` (None: the base); `rows` limits the split to its first rows."""

    records = demo.records(skill, "test")[:rows] if rows else None
    with host.using(adapter) as model:
        return float(demo.evaluate(model, host.tokenizer, skill, records=records))


def table(host, composed: str, sources: list[tuple[str, str | None]], progress=None) -> list[dict]:
    """Rows {skill, source, base, alone, composed, kept}; `sources` is [(host name, skill or None)].

    `kept` is composed / alone in percent (None when the source alone scores 0). `progress(text)` hears
    each scoring pass before it runs, in words ("scoring the composition on isodate (2 of 6)…").
    """
    scored = [(name, skill) for name, skill in sources if skill]
    passes, done = 3 * len(scored), 0

    def run(adapter: str | None, what: str, skill: str) -> float:
        nonlocal done
        done += 1
        if progress is not None:
            progress(
                f"scoring {what} on {skill}: pass {done} of {passes}, {len(demo.records(skill, 'test'))} "
                "held-out rows…"
            )
        return score(host, adapter, skill)

    rows = []
    for name, skill in scored:
        alone = run(name, f"{name} alone", skill)
        mixed = run(composed, "the composition", skill)
        base = run(None, "the base", skill)
        rows.append(
            {
                "skill": skill,
                "source": name,
                "base": base,
                "alone": alone,
                "composed": mixed,
                "kept": round(100.0 * mixed / alone, 1) if alone else None,
            }
        )
    return rows
