"""The playground and library handlers, called as Gradio calls them (no browser; see test_browser_playground)."""

from __future__ import annotations

import zipfile
from html import unescape

import pytest

from tests.tiny import make_tiny_model
from tests.tiny_adapters import make_tiny_adapter


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("pg")
    base = make_tiny_model(root / "base")
    return base, make_tiny_adapter(base, root / "a", seed=1), make_tiny_adapter(base, root / "b", seed=2)


def _value(update):
    return update.get("value") if isinstance(update, dict) else update


def test_compare_streams_the_base_and_each_adapter(tiny):
    from jobs import library
    from ui.web import playground

    base, a, b = tiny
    library.import_adapter(a, name="alpha")
    library.import_adapter(b, name="beta")
    assert [v for _, v in playground.adapter_choices(str(base.resolve()))] == ["alpha", "beta"]
    steps = list(playground.compare(str(base.resolve()), ["alpha", "beta"], "Hello there", "", 8, 0.0, 1.0, True))
    assert len(steps) > 3  # streamed: several updates, not one at the end
    final = steps[-1]
    assert "3 answers" in final[0]
    boxes = final[1:]
    assert [b["visible"] for b in boxes] == [True, True, True, False, False]
    labels = [b["label"] for b in boxes[:3]]
    assert labels[0].startswith("Base model · switch") and "Adapter alpha" in labels[1] and "merged in" in labels[1]
    assert "loaded from disk" in labels[1] and "first token" in labels[2]
    # the same prompt again: adapters are already loaded, no disk load
    again = list(playground.compare(str(base.resolve()), ["alpha", "beta"], "Hello there", "", 8, 0.0, 1.0, False))
    assert "loaded from disk" not in again[-1][2]["label"]
    assert [b["value"] for b in again[-1][1:4]] == [b["value"] for b in boxes[:3]]  # greedy, merged or not

    empty = list(playground.compare(str(base.resolve()), ["alpha"], "  ", "", 8, 0.0, 1.0, False))
    assert "type a prompt" in empty[-1][0] and "Traceback" not in empty[-1][0]


def test_library_page_import_rename_delete_merge(tiny, tmp_path):
    from jobs import library
    from ui.web import library_page

    _, a, _ = tiny
    bad = tmp_path / "notes.zip"
    with zipfile.ZipFile(bad, "w") as zf:
        zf.writestr("notes.txt", "hello")
    status = library_page.import_zip(str(bad), "")[0]
    assert "holds no adapter_config.json" in status and library.list_adapters() == []

    good = tmp_path / "skill.zip"
    with zipfile.ZipFile(good, "w") as zf:
        for f in a.iterdir():
            zf.write(f, arcname=f.name)
    status, table, pick, _ = library_page.import_zip(str(good), "mine")
    assert "Imported 'mine'" in unescape(status) and "mine" in table and "mine" in str(pick["choices"])
    assert "renamed" in library_page.rename("mine", "ours")[0].lower()
    assert "Yes, delete" in unescape(library_page.ask_delete("ours")[0])
    status, file_update = library_page.merge("ours")
    assert "Merged model" in status and file_update["value"].endswith(".zip")
    assert "Deleted 'ours'" in unescape(library_page.delete("ours")[0])
    assert library.list_adapters() == []


def test_compose_form_saves_and_scores(tiny):
    from jobs import library
    from ui.web import playground

    _, a, b = tiny
    for path, name, skill in ((a, "t", "ticket"), (b, "d", "isodate")):
        library.import_adapter(path, name=name, skill=skill)
    said = [unescape(message) for message, _ in playground.compose(["t", "d"], "0.5, 0.5", "ties", 0.5, "mix", True)]
    # the first words replace an earlier message at once; each scoring pass is said as it starts
    assert said[0].endswith("Composing t, d (ties)…</div>")
    passes = [m for m in said if "held-out rows…" in m]
    assert len(passes) == 6 and "Scoring the composition on ticket: pass 2 of 6, 24 held-out rows…" in passes[1]
    html = said[-1]
    assert "Saved 'mix'" in html and "Skill retention" in html and "ticket" in html and "isodate" in html
    html, _ = list(playground.compose(["t", "d"], "half,half", "linear", None, "mix2", False))[-1]
    assert "weights" in html.lower() and "give numbers" in html
    assert playground.held_out_choices(["t"])[0][1] == "ticket|0"
    prompt, system = playground.pick_held_out("ticket|0")
    assert prompt and system == "File the request as a ticket."
