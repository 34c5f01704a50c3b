"""The layout's rules, read from the source (nothing is imported or run).

Data flows ui → jobs → engine: engine imports neither jobs nor ui, jobs imports no ui;
the product (engine, jobs, ui, app.py) never imports tests or bench, and tests never
import bench; every `__init__.py` is a docstring only, so imports name the module they use.
Imports inside functions count too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("engine", "jobs", "ui", "tests", "bench")

FORBIDDEN = {  # top-level package of the importing file -> packages it must not import
    "engine": {"jobs", "ui", "tests", "bench"},
    "jobs": {"ui", "tests", "bench"},
    "ui": {"tests", "bench"},
    "app.py": {"tests", "bench"},
    "tests": {"bench"},
}


def _files(package: str) -> list[Path]:
    path = ROOT / package
    return [path] if path.is_file() else sorted(path.rglob("*.py"))


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, absolute module name) for every import in the file."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against the file's package
                base = path.relative_to(ROOT).parent.parts[: len(path.relative_to(ROOT).parent.parts) - node.level + 1]
                found.append((node.lineno, ".".join([*base, node.module] if node.module else base)))
            else:
                found.append((node.lineno, node.module))
    return found


@pytest.mark.parametrize("source", sorted(FORBIDDEN))
def test_imports_follow_the_data_flow(source):
    bad = []
    for path in _files(source):
        for line, module in _imports(path):
            if module.split(".")[0] in FORBIDDEN[source]:
                bad.append(f"{path.relative_to(ROOT)}:{line} imports {module}")
    assert not bad, "\n".join(bad)


def test_init_files_hold_a_docstring_only():
    bad = []
    for package in PACKAGES:
        for path in (ROOT / package).rglob("__init__.py"):
            body = ast.parse(path.read_text(encoding="utf-8")).body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                body = body[1:]
            if body:
                bad.append(f"{path.relative_to(ROOT)}:{body[0].lineno}")
    assert not bad, "re-exports or code in: " + ", ".join(bad)


def test_the_check_itself_sees_imports_inside_functions(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text("def f():\n    from jobs import store\n    import ui.web.html\n", encoding="utf-8")
    assert [m for _, m in _imports(sample)] == ["jobs", "ui.web.html"]
