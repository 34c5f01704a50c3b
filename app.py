"""LoRA Pilot: `python app.py` opens the wizard; `python app.py COMMAND ...` is the CLI."""

import sys

from ui.cli.main import run


def main(argv: list[str] | None = None) -> int:
    return run(sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    sys.exit(main())
