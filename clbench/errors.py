"""User-facing errors.

Every problem caused by the user's input (a name, a file, a task split) raises a
:class:`ClbenchError`. The CLI prints its message on one line and exits with
status 2; library users can catch it like any other exception.
"""

from __future__ import annotations


class ClbenchError(Exception):
    """An error the user can fix; its message says how."""


class UnknownNameError(ClbenchError, KeyError):
    """A method, dataset, model or option name that is not registered."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class DataError(ClbenchError):
    """A dataset file that is missing, corrupt or malformed."""


#: How much of a user's text (a name, a path, a value) an error message quotes.
CLIP = 80


def _text(value: object) -> str:
    try:
        return str(value)
    except ValueError:  # an int past Python's limit on digits to print
        return f"<an integer of {value.bit_length():,} bits>"  # type: ignore[attr-defined]


def _cut(text: object, limit: int) -> tuple[str, str]:
    text = _text(text)
    if len(text) <= limit:
        return text, ""
    return text[:limit], f"... ({len(text):,} characters)"


def clip(text: object, limit: int = CLIP) -> str:
    """``text`` shortened to ``limit`` characters for an error message: a 5,000-character
    name is reported by its start and its length, not echoed whole."""
    head, rest = _cut(text, limit)
    return head + rest


def quote(text: object, limit: int = CLIP) -> str:
    """A user's value for an error message, shortened as :func:`clip` does; strings are
    quoted and escaped like ``repr``, so control characters and newlines keep the message
    on one line."""
    head, rest = _cut(text, limit)
    return (repr(head) if isinstance(text, str) else head) + rest


def short_error(exc: BaseException, limit: int = 240, note: str = "") -> str:
    """``"<ExceptionType>: <message on one line, at most limit characters>"``, with
    ``note`` in parentheses after the message."""
    text = " ".join(str(exc).split())
    if note:
        text = f"{text} ({note})".strip()
    if not text:
        return type(exc).__name__
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return f"{type(exc).__name__}: {text}"
