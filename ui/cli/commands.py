"""Every command of the CLI: the module that registers and runs it, and its line in `--help`.

`python app.py --help` lists the commands from this table alone, and a command's module is
imported only when that command runs: the job store's libraries (SQLAlchemy, Alembic) and the
API's (FastAPI) take longer to load than most commands take to run. A module registers its
commands with these help lines (`help_for`), so each line has one home.
"""

from __future__ import annotations

# command -> (module with `register(subparsers)` and the handler, one line for --help), in --help order
COMMANDS: dict[str, tuple[str, str]] = {
    "serve": ("ui.cli.serve", "Open the wizard in the browser (http://127.0.0.1:7860 by default)."),
    "estimate": ("ui.cli.estimate", "Trainable parameters, adapter size, memory and time for a plan."),
    "recommend": ("ui.cli.estimate", "Recommended settings, each with its reason, fitted to a budget."),
    "check-data": ("ui.cli.data", "Check a dataset: format, rows, problems, token lengths."),
    "train": ("ui.cli.jobs", "queue a training job from a plan file and/or plan flags"),
    "jobs": ("ui.cli.jobs", "list jobs, newest first"),
    "show": ("ui.cli.jobs", "one job: status, estimate vs measured memory, metrics, log tail"),
    "cancel": ("ui.cli.jobs", "cancel a queued job, or stop a running one at its next step"),
    "resume": ("ui.cli.jobs", "continue an interrupted or cancelled job from its last checkpoint"),
    "export": (
        "ui.cli.jobs",
        "write the job's zip (the adapter; the whole model for method full) and print its path, "
        "print its plan as code (--as python|yaml|cli), or write GGUF files for llama.cpp/Ollama/"
        "LM Studio checked by llama.cpp (--as gguf)",
    ),
    "demo": ("ui.cli.jobs", "train the embedded default model on a demo skill"),
    "next": ("ui.cli.runs", "queue the next run of a job with its advice applied (linked by parent_id)"),
    "compare": ("ui.cli.runs", "two or more jobs side by side: plan differences, before/after, verdict"),
    "adapters": ("ui.cli.adapters", "the adapter library: list (default), import, rename, delete, retention"),
    "generate": ("ui.cli.adapters", "an adapter's answer to a prompt (and the base's with --base)"),
    "merge": ("ui.cli.adapters", "merge an adapter into its base: a standalone Hugging Face model folder"),
    "compose": ("ui.cli.adapters", "combine adapters of one base into a new library adapter"),
    "serve-recipe": ("ui.cli.recipe", "Print the vLLM command that serves these adapters on a GPU box."),
    "sweep": (
        "ui.cli.sweep",
        "search for better settings around a plan: trials ranked on held-out data (also: sweep show|cancel|resume ID)",
    ),
    "sweeps": ("ui.cli.sweep", "list sweeps, newest first"),
}


def help_for(command: str) -> str:
    return COMMANDS[command][1]
