"""The ``clbench`` command line (built with Typer).

Bad input exits with status 2 and one line on stderr; a finished run prints the
accuracy matrix and the metrics, and ``--json`` writes everything to a file.

One module per command (``run``, ``sweep``, ``compare``, ``ui``, ``list``), on the
application and consoles of :mod:`clbench.cli.app`; shared options and input checks in
:mod:`~clbench.cli.options`, the MLflow store in :mod:`~clbench.cli.stores`, what is
printed in :mod:`~clbench.cli.views`.
"""

from __future__ import annotations

import sys

from clbench.cli.app import app, console, err_console, print_error

# isort: off
# the commands register on the app when imported, in the order --help lists them
from clbench.cli import run, sweep, compare, ui, listing  # noqa: F401
# isort: on
from clbench.cli.ui import ui_command
from clbench.errors import ClbenchError

__all__ = ["app", "console", "err_console", "main", "print_error", "ui_command"]


def main() -> None:
    """Console entry point: our errors exit 2 with one line (:class:`ClbenchGroup` reports
    those of the commands; this catches any raised outside them); click's usage errors (an
    unknown command or option, a value of the wrong type) exit 2 with click's own usage
    message, formatted by Typer (which vendors its own click since 0.2x, so its errors are
    not ``click.ClickException``s: letting Typer's standalone mode handle them is the one
    way that works across Typer versions)."""
    try:
        app()  # standalone mode: exits with the command's code (typer.Exit) or 0
    except ClbenchError as exc:
        print_error(exc)
        sys.exit(2)
