"""The command line: one parser, with each group of commands registered by its own module.

Every command module (ui.cli.commands lists them) exposes `register(subparsers)`, adding its
subcommands with `set_defaults(handler=fn)`; a handler takes the parsed namespace and returns
an exit code. Only the module of the command being run is imported. A `UserError` anywhere
becomes one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from engine import paths
from engine.errors import UserError
from ui.cli.commands import COMMANDS


class _Parser(argparse.ArgumentParser):
    """argparse, but a bad flag is one `error:` line naming it, like every other user error, and
    no prefix matching: `--lr` once silently meant `--lr-scheduler`. Subparsers are built from this
    class too (argparse's `add_parser` uses the parent's class), so the rule holds for every command.
    """

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        self.exit(2, f"error: {self.prog.split()[-1]}: {message} (see --help)\n")


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The whole parser; with `command`, only that command's module is imported and the other
    commands are listed by name and help line (ui.cli.commands) for --help and error messages."""
    parser = _Parser(
        prog="lorapilot",
        description="LoRA Pilot: recommend, estimate, run and evaluate LoRA / QLoRA fine-tuning.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    loaded: set[str] = set()
    for name, (module, help_line) in COMMANDS.items():
        if command is None or COMMANDS.get(command, ("",))[0] == module:
            if module not in loaded:
                importlib.import_module(module).register(sub)
                loaded.add(module)
        else:
            sub.add_parser(name, help=help_line)
    return parser


def run(argv: list[str]) -> int:
    try:
        return _run(argv)
    except BrokenPipeError:
        # The reader went away (`show 1 | head`): a normal end for a command's output, not a bug.
        # Python's recipe (docs: signal, "Note on SIGPIPE"): point stdout at devnull so the
        # interpreter's last flush does not raise again, and exit like a command SIGPIPE stopped.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 128 + 13


def _run(argv: list[str]) -> int:
    if not argv or argv[0].startswith("--host") or argv[0].startswith("--port") or argv[0] == "--share":
        argv = ["serve", *argv]  # `python app.py [--host H] [--port P]` opens the wizard
    parser = build_parser(argv[0] if argv[0] in COMMANDS else "")
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help and usage errors end here; their output may meet a closed pipe too
        sys.stdout.flush()
        return exc.code if isinstance(exc.code, int) else 0 if exc.code is None else 2
    try:
        paths.home()  # every command needs a writable home; say so before anything else fails
        code = int(args.handler(args) or 0)
        sys.stdout.flush()  # a closed pipe shows here, where it is caught, not at interpreter exit
        return code
    except BrokenPipeError:
        raise  # not a bug: run() ends quietly
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # a bug, but a user still gets one line, not a traceback
        if os.environ.get("LORAPILOT_DEBUG"):
            raise
        print(
            f"error: internal: {type(exc).__name__}: {str(exc)[:300]} (a bug in LoRA Pilot; "
            "rerun with LORAPILOT_DEBUG=1 for the traceback)",
            file=sys.stderr,
        )
        return 1
