"""LoRA Pilot: `python app.py` opens the wizard; `python app.py COMMAND ...` is the CLI."""

import atexit
import os
import sys
import threading

from ui.cli.main import run


def main(argv: list[str] | None = None) -> int:
    return run(sys.argv[1:] if argv is None else argv)


def end_process(code: int) -> None:
    """Exit with `code`. After a command that loaded torch and transformers, the interpreter's own
    teardown (freeing their modules, after every exit handler has run) took 1.1-1.2 s on 2 cores:
    there the exit does what the interpreter does first (join the threads that are not daemons, run
    the exit handlers, flush the output) and then ends the process without that teardown."""
    if "torch" not in sys.modules:
        sys.exit(code)
    for thread in threading.enumerate():
        if thread is not threading.current_thread() and not thread.daemon:
            thread.join()
    atexit._run_exitfuncs()  # CPython's own call at shutdown
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except BrokenPipeError:
        pass  # the reader went away: run() has said how it ends
    os._exit(code)


if __name__ == "__main__":
    end_process(main())
