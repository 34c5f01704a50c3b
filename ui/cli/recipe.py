"""`serve-recipe ADAPTER...`: the command that serves these adapters with vLLM on a GPU box.

Each ADAPTER is a library adapter (name or id) or a folder saved by PEFT. Adapters vLLM cannot
load as they are (DoRA, modules_to_save, unsupported targets, ...) are listed with the reason and
the fix, and left out of the command. Exit 0 when every adapter is in the command, 2 when not.
"""

from __future__ import annotations

from engine.errors import UserError
from jobs import workbench
from ui.cli import commands

ENGINES = ("vllm",)


def register(sub) -> None:
    p = sub.add_parser(
        "serve-recipe", help=commands.help_for("serve-recipe"), description=__doc__.split("\n\n")[1].replace("\n", " ")
    )
    p.add_argument("adapters", nargs="+", metavar="ADAPTER", help="library adapter name or id, or an adapter folder")
    p.add_argument("--engine", default="vllm", help="serving engine (only vllm for now)")
    p.set_defaults(handler=run)


def run(ns) -> int:
    if ns.engine not in ENGINES:
        raise UserError("engine", f"got {ns.engine!r}; LoRA Pilot writes recipes for {', '.join(ENGINES)}")
    result = workbench.serve_recipe(ns.adapters)
    print(result.text())
    return 2 if any(i.blocking for i in result.issues) else 0
