"""The one exception type a user ever sees.

Every bad input (a flag, a file, a row, a model id) becomes a `UserError` that
names the field and what would be accepted. The CLI and the UI print its message
and nothing else; a traceback is a bug.
"""


class UserError(Exception):
    """A problem with what the user asked for, phrased for that user."""

    def __init__(self, field: str, message: str):
        self.field = field
        self.message = message
        super().__init__(f"{field}: {message}")


def first_line(exc: BaseException, limit: int = 200) -> str:
    """An exception as one short reason: the first line of its message, else its class name."""
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:limit]


def one_of(values) -> str:
    """'a, b or c' — for messages that list what is accepted."""
    values = [str(v) for v in values]
    if len(values) <= 1:
        return "".join(values)
    return ", ".join(values[:-1]) + " or " + values[-1]
