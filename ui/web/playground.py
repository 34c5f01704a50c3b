"""The playground tab: one base, several adapters, one prompt, answers side by side as they stream.

The base model is loaded once per process (engine.adapters.host.shared) and the adapters
are attached to it with PEFT; the base and every adapter answer together, in one batch,
and the label above an answer says how long a first load from disk took and when, after
the click, its first token came. "Merged" folds each adapter into the weights before it
answers (PEFT merge_adapter) and takes it out again (unmerge_adapter) at the next switch,
so there the answers come in turn. The compose form combines adapters into a new library
entry on the same host and can score how much of each source skill the mix keeps.
"""

from __future__ import annotations

import queue
import threading
import time
from types import SimpleNamespace

import gradio as gr

from engine.adapters import batch
from engine.adapters.compose import COMBINATIONS
from engine.data import demo
from engine.errors import UserError
from jobs import library, workbench
from ui.web import html

SLOTS = 5  # the base + up to 4 adapters side by side


# --- choices ------------------------------------------------------------------------------
def base_choices() -> list[str]:
    return workbench.bases()


def adapter_choices(base: str | None) -> list[tuple[str, str]]:
    out = []
    for a in library.list_adapters():
        if base and not workbench.same_base(a.base_model, base):
            continue
        detail = ", ".join(x for x in (a.skill, f"r {a.r}", a.method if a.method != "lora" else "") if x)
        out.append((f"{a.name} ({detail})", a.name))
    return out


def held_out_choices(names: list[str] | None) -> list[tuple[str, str]]:
    """Test-split prompts of the selected adapters' demo skills ('skill|index' values)."""

    out = []
    for skill in dict.fromkeys(library.find(n).skill for n in names or [] if _exists(n)):
        if skill in demo.SKILLS:
            for i, row in enumerate(demo.records(skill, "test")[:12]):
                out.append((f"{skill}: {row['messages'][-2]['content']}", f"{skill}|{i}"))
    return out


def _exists(name: str) -> bool:
    try:
        library.find(name)
        return True
    except UserError:
        return False


def pick_held_out(choice: str | None):
    if not choice:
        return gr.skip(), gr.skip()
    skill, index = choice.split("|")
    messages = demo.records(skill, "test")[int(index)]["messages"]
    return messages[-2]["content"], messages[0]["content"] if messages[0]["role"] == "system" else ""


# --- the comparison ------------------------------------------------------------------------
def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms" if seconds < 10 else f"{seconds:.1f} s"


def compare(base, names, prompt, system, max_new_tokens, temperature, top_p, merged):
    """Generator: yields [status, *SLOTS answer boxes] while the answers stream in.

    The base and the adapters answer together, in one mixed-adapter batch (engine.adapters.batch), so
    every answer's first token comes one prefill after the click. "Merged" folds one adapter at a time
    into the weights, so there the answers come one after another."""

    boxes = [gr.update(visible=False, value="", label="")] * SLOTS
    try:
        names = list(names or [])
        if not (prompt or "").strip():
            raise UserError("prompt", "type a prompt or pick a held-out one")
        if len(names) > SLOTS - 1:
            raise UserError("adapters", f"pick at most {SLOTS - 1} adapters to compare side by side")
        entries = [library.find(n) for n in names]
        base = base or (entries[0].base_model if entries else "default")
        started = time.perf_counter()
        yield [html.notice(f"Loading {base} and {len(entries)} adapter(s)…", "info")] + boxes
        loads: dict = {}
        host = workbench.host_for(entries, base_model=base, timings=loads)
        prep = time.perf_counter() - started
        messages = ([{"role": "system", "content": system.strip()}] if (system or "").strip() else []) + [
            {"role": "user", "content": prompt.strip()}
        ]
        settings = dict(max_new_tokens=int(max_new_tokens), temperature=float(temperature), top_p=float(top_p))
        order = [None, *[e.name for e in entries]]
        answers = _one_by_one if merged else _together
        texts, labels = [""] * SLOTS, [""] * SLOTS
        for texts, labels in answers(host, order, messages, settings, loads, started):
            yield [gr.skip()] + _boxes(texts, labels, len(order))
        done = (
            f"{len(order)} answers from one base ({base}); base and adapters loaded in {_ms(prep)}. "
            f"Loaded adapters: {', '.join(host.loaded()) or 'none'} (at most {host.max_loaded})."
        )
        yield [html.notice(done, "ok")] + _boxes(texts, labels, len(order))
    except Exception as exc:
        yield [html.error_notice(exc)] + [gr.skip()] * SLOTS


def _title(name: str | None) -> str:
    return "Base model" if name is None else f"Adapter {name}"


def _together(host, order, messages, settings, loads, started):
    """All answers in one batch; each label says when its first token came after the click."""
    texts, labels, first = [""] * SLOTS, [""] * SLOTS, {}
    notes = [
        ", ".join(
            ([f"loaded from disk {_ms(loads[name])}"] if name is not None and loads.get(name) else [])
            + [f"one batch with {len(order) - 1} other{'s' if len(order) > 2 else ''}" if len(order) > 1 else "alone"]
        )
        for name in order
    ]
    pieces = batch.stream(
        host,
        messages,
        order,
        max_tokens=settings["max_new_tokens"],
        temperature=settings["temperature"],
        top_p=settings["top_p"],
    )
    for arrived in pieces:
        for slot, text in arrived:
            first.setdefault(slot, time.perf_counter() - started)
            texts[slot] += text
            labels[slot] = f"{_title(order[slot])} · {notes[slot]} · first token {_ms(first[slot])}"
        yield texts, labels
    for slot, name in enumerate(order):
        labels[slot] = labels[slot] or f"{_title(name)} · {notes[slot]} · no text (EOS at once)"
    yield texts, labels


def _one_by_one(host, order, messages, settings, loads, started):
    """Each answer after the last, its adapter merged into the weights first (merge_adapter)."""
    texts, labels = [""] * SLOTS, [""] * SLOTS
    for slot, name in enumerate(order):
        t0 = time.perf_counter()
        switch = host.activate(name)
        note = f"switch {_ms(switch)}"
        if name is not None and loads.get(name):
            note = f"loaded from disk {_ms(loads[name])}, " + note
        if name is not None:
            note += f", merged in {_ms(host.set_merged(True))}"
        first = None
        for chunk in host.generate(messages, adapter=name, **settings):
            if first is None:
                first = time.perf_counter() - t0
            texts[slot] += chunk
            labels[slot] = f"{_title(name)} · {note} · first token {_ms(first)}"
            yield texts, labels
        labels[slot] = labels[slot] or f"{_title(name)} · {note} · no text (EOS at once)"
    yield texts, labels


def _boxes(texts, labels, shown):
    return [gr.update(visible=i < shown, value=texts[i], label=labels[i] or " ") for i in range(SLOTS)]


# --- compose -------------------------------------------------------------------------------------
def compose(names, weights_text, combination, density, name, score):
    """Generator: yields [message, sources] as the composition and its scoring go, in words; the first
    yield replaces any earlier message (an old name error must not stay up during a long run)."""
    try:
        try:
            weights = [float(w) for w in (weights_text or "").split(",") if w.strip()]
        except ValueError:
            raise UserError(
                "weights", f"got {weights_text!r}; give numbers separated by commas, e.g. 0.5,0.5"
            ) from None
        yield html.notice(f"Composing {', '.join(names or [])} ({combination})…", "info"), gr.skip()
        entry = workbench.compose(
            list(names or []),
            weights,
            combination,
            (name or "").strip(),
            density=float(density) if density and combination in ("ties", "dare_ties") else None,
        )
        text = html.notice(f"Saved '{entry.name}' in the library: {entry.description}, rank {entry.r}.", "ok")
        if score:
            # the scoring runs on its own thread so each pass's words reach the page as it starts
            said: queue.Queue = queue.Queue()
            result: dict = {}

            def work():
                try:
                    result["rows"] = workbench.retention(entry.id, progress=said.put)
                except Exception as exc:  # shown below, in one line
                    result["error"] = exc
                finally:
                    said.put(None)

            threading.Thread(target=work, name="retention", daemon=True).start()
            while (line := said.get()) is not None:
                yield text + html.notice(line[0].upper() + line[1:], "info"), gr.skip()
            if "error" in result:
                raise result["error"]
            text += retention_table(result["rows"])
        yield text, gr.update(choices=adapter_choices(None))
    except Exception as exc:
        yield html.error_notice(exc), gr.skip()


def retention_table(rows: list[dict]) -> str:
    if not rows:
        return html.notice("No source has a demo skill with a held-out split, so there is nothing to score.", "info")
    body = [
        (
            r["skill"],
            r["source"],
            f"{r['base']:.0f}%",
            f"{r['alone']:.0f}%",
            f"{r['composed']:.0f}%",
            "—" if r["kept"] is None else f"{r['kept']:.0f}%",
        )
        for r in rows
    ]
    return "<h4>Skill retention (held-out exact match)</h4>" + html.table(
        ["Skill", "Source adapter", "Base", "Source alone", "Composed", "Kept"], body, cls="lp-table lp-retention"
    )


# --- layout ----------------------------------------------------------------------------------------
def build() -> SimpleNamespace:
    ui = SimpleNamespace()
    gr.Markdown(
        "Pick a base and adapters, type a prompt: the base and each adapter answer side by side. "
        "The base stays loaded; adapters switch on it."
    )
    with gr.Row():
        ui.base = gr.Dropdown(
            label="Base model",
            choices=["default"],
            value="default",
            allow_custom_value=True,
            elem_id="pg-base",
            scale=1,
        )
        ui.adapters = gr.Dropdown(label="Adapters", choices=[], multiselect=True, elem_id="pg-adapters", scale=2)
    ui.held_out = gr.Dropdown(
        label="Or pick a held-out prompt of the adapters' skills", choices=[], elem_id="pg-held-out"
    )
    ui.system = gr.Textbox(label="System prompt (optional)", lines=1, elem_id="pg-system")
    ui.prompt = gr.Textbox(label="Prompt", lines=3, elem_id="pg-prompt", placeholder="Ask something…")
    with gr.Accordion("Generation settings", open=False, elem_id="pg-settings"):
        with gr.Row():
            ui.max_new = gr.Slider(1, 512, value=64, step=1, label="Max new tokens", elem_id="pg-max-new")
            ui.temperature = gr.Slider(0, 2, value=0, step=0.05, label="Temperature (0 = greedy)")
            ui.top_p = gr.Slider(0.05, 1, value=1, step=0.05, label="Top-p")
        ui.merged = gr.Checkbox(
            label="Merge each adapter into the weights before it answers (merge_adapter; unmerged at the next switch)",
            value=False,
            elem_id="pg-merged",
        )
    ui.go = gr.Button("Compare answers", variant="primary", elem_id="pg-go")
    ui.status = gr.HTML(elem_id="pg-status")
    with gr.Row(equal_height=True):
        ui.answers = [
            gr.Textbox(visible=False, lines=8, interactive=False, elem_id=f"pg-answer-{i}", elem_classes=["lp-answer"])
            for i in range(SLOTS)
        ]

    with gr.Accordion("Compose skills", open=False, elem_id="pg-compose"):
        gr.Markdown(
            "Combine adapters of one base into a new one (PEFT add_weighted_adapter). linear, ties and "
            "dare_ties need adapters of one rank; cat and svd take any ranks."
        )
        with gr.Row():
            ui.c_sources = gr.Dropdown(
                label="Adapters to compose", choices=[], multiselect=True, elem_id="c-sources", scale=2
            )
            ui.c_weights = gr.Textbox(label="Weights", value="0.5,0.5", elem_id="c-weights")
        with gr.Row():
            ui.c_combination = gr.Dropdown(
                label="Combination", choices=list(COMBINATIONS), value="linear", elem_id="c-combination"
            )
            ui.c_density = gr.Number(label="Density (ties, dare_ties)", value=0.5, elem_id="c-density")
            ui.c_name = gr.Textbox(label="New adapter name", elem_id="c-name")
        ui.c_score = gr.Checkbox(label="Score skill retention on each source's held-out split", value=True)
        ui.c_go = gr.Button("Compose", elem_id="c-go")
        ui.c_result = gr.HTML(elem_id="c-result")

    def refresh(base):
        bases = base_choices()
        if base not in bases or not adapter_choices(base):  # land on a base that has adapters
            base = next((b for b in bases if adapter_choices(b)), bases[0])
        return (
            gr.update(choices=bases, value=base),
            gr.update(choices=adapter_choices(base)),
            gr.update(choices=adapter_choices(None)),
        )

    ui.refresh = refresh
    ui.refresh_outputs = [ui.base, ui.adapters, ui.c_sources]
    ui.base.change(lambda b: gr.update(choices=adapter_choices(b), value=[]), ui.base, ui.adapters)
    ui.adapters.change(lambda n: gr.update(choices=held_out_choices(n), value=None), ui.adapters, ui.held_out)
    ui.held_out.change(pick_held_out, ui.held_out, [ui.prompt, ui.system])
    # a message belongs to the input it is about: a new prompt (typed or picked) clears the last one
    for changed in (ui.prompt.input, ui.held_out.input):
        changed(lambda: "", None, ui.status, show_progress="hidden")
    for changed in (ui.c_name.input, ui.c_sources.input, ui.c_weights.input, ui.c_combination.input):
        changed(lambda: "", None, ui.c_result, show_progress="hidden")
    ui.go.click(
        compare,
        [ui.base, ui.adapters, ui.prompt, ui.system, ui.max_new, ui.temperature, ui.top_p, ui.merged],
        [ui.status, *ui.answers],
        show_progress="hidden",
    )
    ui.c_go.click(
        compose,
        [ui.c_sources, ui.c_weights, ui.c_combination, ui.c_density, ui.c_name, ui.c_score],
        [ui.c_result, ui.c_sources],
        show_progress="hidden",
    )  # the result box says how far, in words
    return ui
