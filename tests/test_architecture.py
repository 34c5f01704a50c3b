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


def _module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _import_graph(paths: list[Path], root: Path = ROOT) -> dict[str, set[str]]:
    """module -> the product modules it imports (at the top or inside a function). `from a import b`
    counts as an import of a.b when b is a module, else of a."""
    modules = {_module_name(p, root): p for p in paths}
    graph = {}
    for name, path in modules.items():
        edges = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    package = name.split(".")[: len(name.split(".")) - node.level + (path.name == "__init__.py")]
                    base = ".".join([*package, *([base] if base else [])])
                targets = [
                    f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names
                ]
            else:
                continue
            for target in targets:
                while target and target not in modules:  # a submodule's attribute: its module
                    target = target.rpartition(".")[0]
                if target and target != name:
                    edges.add(target)
        graph[name] = edges
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan's algorithm)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_product_has_no_import_cycles():
    graph = _import_graph([p for package in ("engine", "jobs", "ui", "app.py") for p in _files(package)])
    report = []
    for component in _cycles(graph):
        edges = [f"{a} -> {b}" for a in component for b in sorted(graph[a]) if b in component]
        report.append(" <-> ".join(component) + ": " + "; ".join(edges))
    assert not report, "import cycles:\n" + "\n".join(report)


def test_the_cycle_check_finds_a_cycle_hidden_in_a_function(tmp_path):
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "a.py").write_text("from pkg import b\n", encoding="utf-8")
    (tmp_path / "pkg" / "b.py").write_text("def f():\n    from pkg.a import thing\n", encoding="utf-8")
    (tmp_path / "pkg" / "c.py").write_text("from pkg import a\n", encoding="utf-8")
    graph = _import_graph(sorted((tmp_path / "pkg").glob("*.py")), root=tmp_path)
    assert graph == {"pkg.a": {"pkg.b"}, "pkg.b": {"pkg.a"}, "pkg.c": {"pkg.a"}}
    assert _cycles(graph) == [["pkg.a", "pkg.b"]]


def test_the_cli_table_names_every_command_its_modules_register():
    """`--help` lists commands from ui.cli.commands without importing their modules: the table and
    what the modules register must be the same commands."""
    import argparse
    import importlib

    from ui.cli.commands import COMMANDS

    registered = {}
    for module in dict.fromkeys(m for m, _ in COMMANDS.values()):
        sub = argparse.ArgumentParser().add_subparsers()
        importlib.import_module(module).register(sub)
        registered.update({name: module for name in sub.choices})
    assert registered == {name: module for name, (module, _) in COMMANDS.items()}


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
