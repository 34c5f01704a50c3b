"""The same install next month: constraints.txt pins what the suite passed with.

An upgrade is a deliberate edit of constraints.txt; these tests check the file covers every
dependency, agrees with itself and pyproject.toml, is what the Makefile installs from, leaves
torch to TORCH_SPEC, and is exactly what this test run uses.
"""

from __future__ import annotations

import re
import tomllib
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent


def _pins() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            assert version, f"constraints.txt: '{line}' is not an exact pin (name==version)"
            assert canonicalize_name(name) not in pins, f"constraints.txt pins {name} twice"
            pins[canonicalize_name(name)] = version
    return pins


def _project_requirements() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return [Requirement(r) for r in project["dependencies"] + project["optional-dependencies"]["test"]]


def _applies(req: Requirement, extras=("",)) -> bool:
    return req.marker is None or any(req.marker.evaluate({"extra": e}) for e in extras)


def test_torch_is_left_to_torch_spec():
    pins = _pins()
    assert not [n for n in pins if n == "torch" or n.startswith(("nvidia-", "triton"))]


def test_every_dependency_and_theirs_is_pinned_consistently():
    pins = _pins()
    todo, seen = [(r, ("",)) for r in _project_requirements()], set()
    while todo:
        req, extras = todo.pop()
        name = canonicalize_name(req.name)
        key = (name, tuple(sorted(req.extras)))
        if not _applies(req, extras) or name == "torch" or key in seen:
            continue  # torch (and what it pulls in) follows TORCH_SPEC
        seen.add(key)
        assert name in pins, f"{req} is a dependency but constraints.txt does not pin it"
        assert req.specifier.contains(pins[name], prereleases=True), (
            f"constraints.txt pins {name}=={pins[name]}, which does not satisfy '{req}'"
        )
        todo += [(Requirement(r), tuple(sorted(req.extras)) or ("",)) for r in metadata.requires(name) or []]


def test_this_run_uses_the_pinned_versions():
    installed = {}
    for name in _pins():
        try:
            installed[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue  # another platform's dependency
    differ = {n: (v, _pins()[n]) for n, v in installed.items() if v != _pins()[n]}
    assert differ == {}, (
        "installed versions differ from constraints.txt (installed, pinned): "
        f"{differ}; upgrade deliberately by editing constraints.txt"
    )


def test_the_makefile_installs_the_project_from_the_constraints():
    makefile = (ROOT / "Makefile").read_text()
    installs = [line.strip() for line in makefile.splitlines() if re.search(r"\$\(PIP\) install .*-e ", line)]
    assert len(installs) == 2 and all("-c constraints.txt" in line for line in installs), installs
    torch_line = next(line for line in makefile.splitlines() if "$(TORCH_SPEC)" in line and "install" in line)
    assert "-c " not in torch_line  # a GPU build of torch must not be forced back to a pinned one
