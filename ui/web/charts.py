"""Plotly figure builders: pure functions from engine/job data to figures.

Each builder returns a `Figure`: the Plotly figure as plain JSON data (`data` traces
and a `layout`), the exact thing plotly.js draws. Building `plotly.graph_objects`
validates every property and costs ~45 ms a chart, which would blow the 50 ms budget
of a live estimate update; plain dicts cost well under 1 ms. `Figure.to_plotly()`
gives the validated `go.Figure` (the tests use it to prove every spec is valid Plotly).
Sizes arrive in bytes and are shown in GiB, as the estimator and the GPU catalog count them.

The review step redraws its charts on every change, so they are kept light for the
browser: fixed margins (Plotly's automargin lays a chart out twice), no toolbar (nothing
to zoom in a bar of memory, and it sat on the titles), legends clear of the titles.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping

import plotly.graph_objects as go

from engine.units import GIB, human_bytes, human_count

# One palette for the whole app (colour-blind-safe, Okabe-Ito order).
PALETTE = ["#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#999999"]
METHOD_COLOURS = {"full": "#D55E00", "lora": "#0072B2", "qlora": "#009E73"}
METHOD_NAMES = {"full": "full", "lora": "LoRA", "qlora": "QLoRA"}
FIT_COLOUR, MISFIT_COLOUR, GREY = "#009E73", "#D55E00", "#6b7280"
_AXIS = {"gridcolor": "#EBF0F8", "linecolor": "#d8dee9", "zerolinecolor": "#EBF0F8"}
# Plotly config for charts that only show: gr.Plot passes a figure's "config" to plotly.js
STATIC = {"displayModeBar": False, "responsive": True}


class Figure(dict):
    """A Plotly figure as JSON data; gr.Plot renders it through `to_json()`."""

    @property
    def data(self) -> list[dict]:
        return self["data"]

    @property
    def layout(self) -> dict:
        return self["layout"]

    def to_json(self) -> str:
        return json.dumps(self, separators=(",", ":"))

    def to_plotly(self):
        return go.Figure({"data": self.data, "layout": self.layout})


def _figure(data: list[dict], title: str, height: int = 320, config: dict | None = None, **layout) -> Figure:
    base = {
        "title": {"text": title, "x": 0.01, "xanchor": "left", "font": {"size": 15}},
        "height": height,
        "margin": {"l": 56, "r": 24, "t": 48, "b": 44},
        "paper_bgcolor": "white",
        "plot_bgcolor": "white",
        "font": {"family": "Inter, system-ui, sans-serif", "size": 12, "color": "#2a3f5f"},
        "legend": {
            "orientation": "h",
            "yanchor": "bottom",
            "y": 1.0,
            "x": 1,
            "xanchor": "right",
            "font": {"size": 11},
        },
        "xaxis": dict(_AXIS),
        "yaxis": dict(_AXIS),
        "hoverlabel": {"font": {"size": 12}},
    }
    for key, value in layout.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            base[key] = {**base[key], **value}
        else:
            base[key] = value
    return Figure(data=data, layout=base, **({"config": config} if config else {}))


def _hline(y: float, colour: str, text: str, dash: str = "dash") -> tuple[dict, dict]:
    shape = {
        "type": "line",
        "xref": "paper",
        "x0": 0,
        "x1": 1,
        "y0": y,
        "y1": y,
        "line": {"color": colour, "dash": dash, "width": 2},
    }
    note = {
        "text": text,
        "xref": "paper",
        "x": 0,
        "y": y,
        "yanchor": "bottom",
        "xanchor": "left",
        "showarrow": False,
        "font": {"size": 11, "color": colour},
    }
    return shape, note


def _vline(x: float, colour: str, text: str, dash: str = "dash") -> tuple[dict, dict]:
    shape = {
        "type": "line",
        "yref": "paper",
        "y0": 0,
        "y1": 1,
        "x0": x,
        "x1": x,
        "line": {"color": colour, "dash": dash, "width": 1.5},
    }
    note = {
        "text": text,
        "yref": "paper",
        "y": 1,
        "x": x,
        "xanchor": "left",
        "yanchor": "bottom",
        "showarrow": False,
        "font": {"size": 11, "color": colour},
    }
    return shape, note


def empty(title: str, message: str, height: int = 320) -> Figure:
    """A placeholder that says why there is nothing to draw yet."""
    note = {
        "text": message,
        "showarrow": False,
        "x": 0.5,
        "y": 0.5,
        "xref": "paper",
        "yref": "paper",
        "font": {"size": 13, "color": GREY},
    }
    return _figure(
        [], title, height, config=STATIC, annotations=[note], xaxis={"visible": False}, yaxis={"visible": False}
    )


FAR_BUDGET = 4  # a budget this many times the plan is named above the bar instead of drawn as a line


def memory_breakdown(
    terms: Mapping[str, float],
    budget_bytes: float | None,
    fits: bool | None,
    reserved_bytes: float | None = None,
    device_bytes: float | None = None,
) -> Figure:
    """One bar of memory stacked by term (GB) against the budget line.

    `terms` is ordered (base weights first); the allocator's headroom and the CUDA
    context are drawn as extra segments, so the top of the bar is what the device holds.
    """
    x = ["this plan"]
    data = [
        {
            "type": "bar",
            "name": name.replace("_", " "),
            "x": x,
            "y": [value / GIB],
            "marker": {"color": PALETTE[i % len(PALETTE)]},
            "hovertemplate": "%{fullData.name}: %{y:.3f} GiB<extra></extra>",
        }
        for i, (name, value) in enumerate(terms.items())
    ]
    top = sum(terms.values())
    for name, level, colour in (
        ("allocator headroom", reserved_bytes, "#d1d5db"),
        ("CUDA context", device_bytes, "#9ca3af"),
    ):
        if level and level > top:
            data.append(
                {
                    "type": "bar",
                    "name": name,
                    "x": x,
                    "y": [(level - top) / GIB],
                    "marker": {"color": colour},
                    "hovertemplate": name + ": %{y:.3f} GiB<extra></extra>",
                }
            )
            top = level
    shapes, notes = [], []
    # a budget far above the plan would squash the bar to a sliver: scale to the plan, name the budget
    far = bool(budget_bytes) and budget_bytes > FAR_BUDGET * top
    if budget_bytes and not far:
        shape, note = _hline(
            budget_bytes / GIB, FIT_COLOUR if fits else MISFIT_COLOUR, f"budget {budget_bytes / GIB:.1f} GiB"
        )
        shapes, notes = [shape], [note]
    elif far:
        notes = [
            {
                "text": f"budget {budget_bytes / GIB:.1f} GiB, above this scale: the plan uses "
                f"{top / budget_bytes:.0%} of it",
                "xref": "paper",
                "yref": "paper",
                "x": 0.5,
                "y": 0.98,
                "showarrow": False,
                "font": {"color": FIT_COLOUR, "size": 12},
            }
        ]
    title = f"Memory: {human_bytes(top)}"
    if fits is not None:
        title += " — fits" if fits else " — does not fit"
    ymax = (top if far else max(top, budget_bytes or 0)) / GIB * (1.3 if far else 1.15) or 1
    return _figure(
        data,
        title,
        340,
        config=STATIC,
        barmode="stack",
        bargap=0.45,
        shapes=shapes,
        annotations=notes,
        yaxis={"title": {"text": "GiB"}, "range": [0, ymax]},
        legend={"orientation": "v", "y": 1, "x": 1.02, "xanchor": "left", "yanchor": "top", "traceorder": "reversed"},
        margin={"l": 56, "r": 160, "t": 44, "b": 30},
    )


def params_by_module(by_module_type: Mapping[str, int], total_params: int | None = None) -> Figure:
    """Trainable parameters per module type (q_proj, v_proj, ...), largest first."""
    if not by_module_type:
        return empty("Trainable parameters by module", "No trainable modules")
    items = sorted(by_module_type.items(), key=lambda kv: kv[1])  # largest on top: Plotly draws y upwards
    names, values = [k for k, _ in items], [v for _, v in items]
    title = f"Trainable: {human_count(sum(values))}"
    if total_params:
        title += f" ({100 * sum(values) / total_params:.2f}%)"
    # horizontal bars: module names read level at any width, no rotated labels
    bar = {
        "type": "bar",
        "orientation": "h",
        "y": names,
        "x": values,
        "marker": {"color": PALETTE[0]},
        "text": [human_count(v) for v in values],
        "textposition": "auto",
        "cliponaxis": False,
        "hovertemplate": "%{y}: %{x:,} parameters<extra></extra>",
    }
    left = 12 + 7 * max(len(n) for n in names)  # room for the longest module name
    return _figure(
        [bar],
        title,
        300,
        config=STATIC,
        showlegend=False,
        margin={"l": left, "r": 16, "t": 44, "b": 40},
        xaxis={"title": {"text": "parameters"}, "rangemode": "tozero", "nticks": 4},
    )


def memory_sweep(
    series: Mapping[str, Iterable[tuple[float, float]]],
    budget_bytes: float | None,
    current_x: float | None = None,
    x_label: str = "sequence length (tokens)",
    caption: str | None = None,
) -> Figure:
    """Memory (GB) against a knob (sequence length or batch) for each method; `caption`, a line under
    the title that explains the curves."""
    data = []
    for method, points in series.items():
        pts = list(points)
        data.append(
            {
                "type": "scatter",
                "mode": "lines+markers",
                "name": METHOD_NAMES.get(method, method),
                "x": [p[0] for p in pts],
                "y": [p[1] / GIB for p in pts],
                "line": {"color": METHOD_COLOURS.get(method, PALETTE[4]), "width": 2.5},
                "hovertemplate": METHOD_NAMES.get(method, method) + " at %{x}: %{y:.2f} GiB<extra></extra>",
            }
        )
    shapes, notes = [], []
    if budget_bytes:
        s, n = _hline(budget_bytes / GIB, GREY, f"budget {budget_bytes / GIB:.1f} GiB")
        shapes.append(s), notes.append(n)
    if current_x:
        # the line marks the plan; its value goes in the axis title, where no budget label can hide it
        shapes.append(_vline(current_x, "#9ca3af", "", dash="dot")[0])
        x_label += f" · this plan {current_x:g}"
    if caption:
        notes.append(
            {
                "text": caption,
                "xref": "paper",
                "yref": "paper",
                "x": 0,
                "y": 1.02,
                "xanchor": "left",
                "yanchor": "bottom",
                "align": "left",
                "showarrow": False,
                "font": {"size": 10, "color": GREY},
            }
        )
    xs = [p for t in data for p in t["x"]] + ([current_x] if current_x else [])
    span = [math.log10(min(xs)) - 0.05, math.log10(max(xs)) + 0.05] if xs else None
    ticks = sorted({p for t in data for p in t["x"]})
    # short labels (1k, not 1024) so seven of them fit side by side in a narrow chart
    return _figure(
        data,
        "Memory by " + x_label.split(" (")[0].split(" ·")[0],
        320,
        config=STATIC,
        shapes=shapes,
        annotations=notes,
        margin={"l": 48, "r": 16, "t": 84 if caption else 44, "b": 84},
        legend={"orientation": "h", "x": 0, "xanchor": "left", "y": -0.3, "yanchor": "top"},
        xaxis={
            "title": {"text": x_label},
            "type": "log",
            "range": span,
            "tickangle": 0,
            "tickvals": ticks,
            "ticktext": [_short(t) for t in ticks],
        },
        yaxis={"title": {"text": "GiB"}, "rangemode": "tozero"},
    )


def _short(n: float) -> str:
    return f"{n / 1024:g}k" if n >= 1024 and n % 1024 == 0 else f"{n:g}"


def token_histogram(edges: list[float], counts: list[int], seq_len: int, truncated_share: float | None) -> Figure:
    """Token lengths of the examples, with the sequence-length cut marked."""
    if not counts:
        return empty("Token lengths", "No examples to measure", 280)
    centres = [(a + b) / 2 for a, b in zip(edges[:-1], edges[1:])]
    widths = [b - a for a, b in zip(edges[:-1], edges[1:])]
    bar = {
        "type": "bar",
        "x": centres,
        "y": list(counts),
        "width": widths,
        "marker": {
            "color": [MISFIT_COLOUR if c > seq_len else PALETTE[0] for c in centres],
            "line": {"width": 0.5, "color": "white"},
        },
        "hovertemplate": "%{x:.0f} tokens: %{y} examples<extra></extra>",
    }
    shape, note = _vline(seq_len, MISFIT_COLOUR, f"seq_len {seq_len}")
    title = "Token lengths"
    if truncated_share is not None:
        title += f" — {100 * truncated_share:.1f}% cut at {seq_len}"
    return _figure(
        [bar],
        title,
        280,
        config=STATIC,
        showlegend=False,
        shapes=[shape],
        annotations=[note],
        xaxis={"title": {"text": "tokens per example"}},
        yaxis={"title": {"text": "examples"}},
    )


def loss_chart(rows: Iterable[Mapping], total_steps: int | None = None) -> Figure:
    """Train loss, eval loss and learning rate (right axis) against the step."""
    rows = list(rows)

    def series(key):
        pts = [(r["step"], r[key]) for r in rows if r.get(key) is not None]
        return [p[0] for p in pts], [p[1] for p in pts]

    (sx, sy), (ex, ey), (lx, ly) = series("loss"), series("eval_loss"), series("learning_rate")
    data = [
        {
            "type": "scatter",
            "mode": "lines+markers",
            "name": "train loss",
            "x": sx,
            "y": sy,
            "line": {"color": PALETTE[0], "width": 2.5},
            "marker": {"size": 5},
        },
        {
            "type": "scatter",
            "mode": "lines+markers",
            "name": "eval loss",
            "x": ex,
            "y": ey,
            "line": {"color": PALETTE[1], "width": 2.5},
            "marker": {"size": 8, "symbol": "diamond"},
        },
        {
            "type": "scatter",
            "mode": "lines",
            "name": "learning rate",
            "x": lx,
            "y": ly,
            "yaxis": "y2",
            "line": {"color": "#9ca3af", "width": 1.5, "dash": "dot"},
        },
    ]
    title = f"Loss: {sy[-1]:.3f} at step {sx[-1]}" if sy else "Loss — waiting for the first step"
    return _figure(
        data,
        title,
        360,
        margin={"r": 80},
        xaxis={"title": {"text": "step"}, "range": [0, max([total_steps or 0, 1] + sx + ex)]},
        yaxis={"title": {"text": "loss"}, "rangemode": "tozero"},
        yaxis2={
            "overlaying": "y",
            "side": "right",
            "showgrid": False,
            "title": {"text": "learning rate"},
            "tickformat": ".1e",
            "rangemode": "tozero",
        },
    )


def overlay_loss_chart(runs: Iterable[Mapping]) -> Figure:
    """Several runs' train loss (solid) and eval loss (dashed, diamonds) on one set of axes.

    Each run is {"id", "name", "metrics": [{"step", "loss", "eval_loss"}]} (jobs.runs.compare).
    """
    data = []
    for i, run in enumerate(runs):
        colour, label = PALETTE[i % len(PALETTE)], f"#{run['id']} {run.get('name') or ''}".strip()
        for key, dash, mode, suffix in (
            ("loss", "solid", "lines", "train"),
            ("eval_loss", "dash", "lines+markers", "eval"),
        ):
            pts = [(m["step"], m[key]) for m in run["metrics"] if m.get(key) is not None]
            data.append(
                {
                    "type": "scatter",
                    "mode": mode,
                    "name": f"{label} {suffix}",
                    "legendgroup": label,
                    "x": [p[0] for p in pts],
                    "y": [p[1] for p in pts],
                    "line": {"color": colour, "width": 2, "dash": dash},
                    "marker": {"size": 7, "symbol": "diamond"},
                }
            )
    if not data:
        return empty("Loss curves", "Pick two or more jobs", 360)
    return _figure(
        data,
        "Loss curves, overlaid",
        360,
        xaxis={"title": {"text": "step"}},
        yaxis={"title": {"text": "loss"}, "rangemode": "tozero"},
    )
