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
    return (
        base,
        make_tiny_adapter(base, root / "a", seed=1, scale=20.0),
        make_tiny_adapter(base, root / "b", seed=2, scale=20.0),
    )


def _value(update):
    return update.get("value") if isinstance(update, dict) else update


def _greedy(base_dir, adapter_dir, prompt: str, tokens: int) -> str:
    """The answer without streaming or batching: HF generate, PEFT loaded the ordinary way."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(base_dir))
    model = AutoModelForCausalLM.from_pretrained(str(base_dir), dtype=torch.float32)
    model = (PeftModel.from_pretrained(model, str(adapter_dir)) if adapter_dir else model).eval()
    text = tok.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True)
    ids = tok(text, return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=tokens, do_sample=False, pad_token_id=tok.pad_token_id)
    return tok.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True)


def test_compare_streams_the_base_and_each_adapter(tiny):
    from engine.adapters import host as host_mod
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
    host = host_mod.shared(str(base.resolve()))
    base_loads, disk_loads = host_mod.BASE_LOADS[str(base.resolve())], host.disk_loads

    # the same prompt again, not merged: the three answer together in one batch, nothing is loaded again
    again = list(playground.compare(str(base.resolve()), ["alpha", "beta"], "Hello there", "", 8, 0.0, 1.0, False))
    labels = [b["label"] for b in again[-1][1:4]]
    assert all("one batch with 2 others" in label and "first token" in label for label in labels), labels
    assert "loaded from disk" not in again[-1][2]["label"]
    assert (host_mod.BASE_LOADS[str(base.resolve())], host.disk_loads) == (base_loads, disk_loads)
    answers = [b["value"] for b in again[-1][1:4]]
    assert answers == [b["value"] for b in boxes[:3]]  # greedy, merged or not
    # streamed in one batch, each answer is the one its model gives alone, unstreamed
    assert answers == [_greedy(base, folder, "Hello there", 8) for folder in (None, a, b)]
    assert len(set(answers)) == 3

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
    # the first words replace an earlier message at once; then what is scored, before it runs
    assert said[0].endswith("Composing t, d (ties)…</div>")
    assert [m[m.rindex("Scoring") :] for m in said if "Scoring" in m] == [
        "Scoring t alone on ticket; d alone on isodate; the composition on ticket and isodate; the base on ticket "
        "and isodate (144 held-out rows)…</div>"
    ]
    html = said[-1]
    assert "Saved 'mix'" in html and "Skill retention" in html and "ticket" in html and "isodate" in html
    # a second composition of the same sources: their figures and the base's are known
    said = [unescape(m) for m, _ in playground.compose(["t", "d"], "0.5, 0.5", "linear", None, "mix-b", True)]
    assert any(
        "Scoring the composition on ticket and isodate (48 held-out rows); 4 of 6 figures reused" in m for m in said
    )
    html, _ = list(playground.compose(["t", "d"], "half,half", "linear", None, "mix2", False))[-1]
    assert "weights" in html.lower() and "give numbers" in html
    assert playground.held_out_choices(["t"])[0][1] == "ticket|0"
    prompt, system = playground.pick_held_out("ticket|0")
    assert prompt and system == "File the request as a ticket."
