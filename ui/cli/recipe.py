"""`serve-recipe ADAPTER...`: the command that serves these adapters with vLLM on a GPU box.

Each ADAPTER is a library adapter (name or id) or a folder saved by PEFT. Adapters vLLM cannot
load as they are (DoRA, modules_to_save, unsupported targets, ...) are listed with the reason and
the fix, and left out of the command. Exit 0 when every adapter is in the command, 2 when not.
"""

from __future__ import annotations

from pathlib import Path

from engine.errors import UserError

ENGINES = ("vllm",)


def register(sub) -> None:
    p = sub.add_parser("serve-recipe", help="Print the vLLM command that serves these adapters on a GPU box.",
                       description=__doc__.split("\n\n")[1].replace("\n", " "))
    p.add_argument("adapters", nargs="+", metavar="ADAPTER", help="library adapter name or id, or an adapter folder")
    p.add_argument("--engine", default="vllm", help="serving engine (only vllm for now)")
    p.set_defaults(handler=run)


def resolve(ref: str) -> tuple[str, Path]:
    """(name, folder) of an adapter given as a folder or as a library name/id."""
    folder = Path(ref).expanduser()
    if (folder / "adapter_config.json").is_file():
        return folder.resolve().name, folder.resolve()
    try:
        from jobs import library
    except ImportError:  # the library arrives with the workbench; until then only folders work
        raise UserError("adapter", f"{ref} is not an adapter folder (no adapter_config.json in it)") from None
    adapter = library.find(ref)
    return adapter.name, Path(adapter.path)


def run(ns) -> int:
    from engine.adapters import recipe

    if ns.engine not in ENGINES:
        raise UserError("engine", f"got {ns.engine!r}; LoRA Pilot writes recipes for {', '.join(ENGINES)}")
    adapters = [resolve(ref) for ref in ns.adapters]
    names = [n for n, _ in adapters]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise UserError("adapters", f"{', '.join(dupes)} named twice; each adapter needs its own name in vLLM")
    result = recipe.build(adapters)
    print(result.text())
    return 2 if any(i.blocking for i in result.issues) else 0
