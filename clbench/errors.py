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
