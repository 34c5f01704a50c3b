"""`adapters`, `generate`, `merge`, `compose` as a script uses them (in-process: the same parser and handlers).

One real subprocess checks that `python app.py adapters --json` works end to end.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.tiny import make_tiny_model
from tests.tiny_adapters import make_tiny_adapter

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli-ad")
    base = make_tiny_model(root / "base")
    return {
        "base": base,
        "a": make_tiny_adapter(base, root / "a", seed=1),
        "b": make_tiny_adapter(base, root / "b", seed=2),
        "r8": make_tiny_adapter(base, root / "r8", r=8),
        "root": root,
    }


def run(capsys, *args):
    from ui.cli.main import run as main

    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def test_library_commands(tiny, capsys, tmp_path):
    code, out, _ = run(capsys, "adapters")
    assert code == 0 and "no adapters yet" in out
    code, out, _ = run(capsys, "adapters", "import", tiny["a"], "--name", "alpha")
    assert code == 0 and "imported 'alpha'" in out
    zipped = tmp_path / "beta.zip"
    with zipfile.ZipFile(zipped, "w") as zf:
        for f in tiny["b"].iterdir():
            zf.write(f, arcname=f.name)
    assert run(capsys, "adapters", "import", zipped)[0] == 0

    code, out, _ = run(capsys, "adapters", "--json")
    listed = json.loads(out)
    assert [a["name"] for a in listed] == ["alpha", "beta"]
    for key in ("id", "name", "base_model", "path", "r", "targets", "bytes", "job_id"):
        assert key in listed[0]
    assert listed[0]["targets"] == ["q_proj", "v_proj"] and listed[0]["r"] == 4 and listed[0]["job_id"] is None
    code, out, _ = run(capsys, "adapters")
    assert "alpha" in out and "beta" in out and "base " in out

    assert run(capsys, "adapters", "rename", "alpha", "gamma")[0] == 0
    code, _, err = run(capsys, "adapters", "delete", "gamma")  # stdin is not a terminal under pytest
    assert code == 2 and "add --yes" in err
    assert run(capsys, "adapters", "delete", "gamma", "--yes")[0] == 0
    code, _, err = run(capsys, "adapters", "delete", "gamma", "--yes")
    assert code == 2 and err.startswith("error: adapter: no adapter named or numbered 'gamma'; known: beta")

    for bad, message in ((tmp_path / "missing", "does not exist"), (tmp_path, "has no adapter_config.json")):
        code, _, err = run(capsys, "adapters", "import", bad)
        assert code == 2 and message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_generate_merge_compose(tiny, capsys, tmp_path):
    run(capsys, "adapters", "import", tiny["a"], "--name", "a1")
    run(capsys, "adapters", "import", tiny["b"], "--name", "b1")
    run(capsys, "adapters", "import", tiny["r8"], "--name", "wide")

    code, out, _ = run(
        capsys, "generate", "--adapter", "a1", "--prompt", "Hello", "--base", "--max-new-tokens", 6, "--json"
    )
    answer = json.loads(out)
    assert code == 0 and {"adapter", "base", "switch_seconds"} <= set(answer) and answer["adapter"] != answer["base"]
    code, out, _ = run(capsys, "generate", "--adapter", "a1", "--prompt", "Hello", "--max-new-tokens", 6)
    assert code == 0 and out.startswith("[a1] ") and out.strip().removeprefix("[a1] ") == answer["adapter"].strip()
    code, _, err = run(capsys, "generate", "--adapter", "a1", "--prompt", "Hello", "--top-p", 0)
    assert code == 2 and "top_p" in err

    out_dir = tmp_path / "merged"
    code, out, _ = run(capsys, "merge", "a1", "--out", out_dir, "--zip")
    assert code == 0 and (out_dir / "config.json").is_file() and (tmp_path / "merged.zip").is_file()
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(str(out_dir))  # plain transformers loads it

    code, out, _ = run(capsys, "compose", "a1", "b1", "--weights", "0.5,0.5", "--combination", "cat", "--name", "mix")
    assert code == 0 and "composed 'mix'" in out
    entry = [a for a in json.loads(run(capsys, "adapters", "--json")[1]) if a["name"] == "mix"][0]
    assert entry["r"] == 8 and entry["lineage"]["combination"] == "cat"
    code, _, err = run(
        capsys, "compose", "a1", "wide", "--weights", "0.5,0.5", "--combination", "linear", "--name", "bad"
    )
    assert code == 2 and "cat or svd accept different ranks" in err
    code, _, err = run(capsys, "compose", "a1", "b1", "--weights", "1", "--name", "bad")
    assert code == 2 and "one per adapter" in err
    assert not (Path(os.environ["LORAPILOT_HOME"]) / "adapters" / "bad").exists()


def test_adapters_json_in_a_real_process(tiny, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "app.py"), "adapters", "import", str(tiny["a"]), "--name", "x"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    proc = subprocess.run(
        [sys.executable, str(ROOT / "app.py"), "adapters", "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0 and json.loads(proc.stdout)[0]["name"] == "x"
