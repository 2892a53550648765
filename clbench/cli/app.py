"""The Typer application, its consoles, and how an error reaches the user: one line
on stderr and exit status 2."""

from __future__ import annotations

import inspect
from typing import Any

import typer
from rich.console import Console
from rich.text import Text
from typer.core import TyperCommand, TyperGroup

from clbench.errors import ClbenchError, clip

console = Console()
err_console = Console(stderr=True)


def print_error(message: object) -> None:
    """``error: <message>`` on stderr, on one line. The message is plain text, never
    Rich markup: it quotes user input (names, paths, values) verbatim, each word cut to
    300 characters (a 5,000-character name is not echoed whole)."""
    text = " ".join(clip(word, 300) for word in str(message).split())
    err_console.print(Text.assemble(("error:", "bold red"), " ", text), highlight=False,
                      soft_wrap=True)


def plain_flags(params: list[Any]) -> list[Any]:
    """The parameters, with on/off flags (``--force``, ``--help``) given an empty
    metavar: Typer's help shows every option's type, ``--force <bool>`` included,
    which reads as if the flag took a value."""
    for param in params:
        if getattr(param, "is_flag", False) and param.metavar is None:
            param.metavar = ""
    return params


class ClbenchCommand(TyperCommand):
    """A command whose help shows flags without a type, listed in ``clbench --help`` by
    the first paragraph of its docstring as one line (Typer's Rich list keeps the
    docstring's line breaks, which then fall mid-sentence)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.short_help is None and self.help:
            self.short_help = " ".join(inspect.cleandoc(self.help).split("\n\n")[0].split())

    def get_params(self, ctx: Any) -> list[Any]:
        return plain_flags(super().get_params(ctx))


class ClbenchGroup(TyperGroup):
    """Typer's command group, reporting a :class:`ClbenchError` raised by any command as
    its one-line message with exit status 2, so the console entry point, ``python -m
    clbench`` and Typer's ``CliRunner`` all see bad input the same way."""

    def get_params(self, ctx: Any) -> list[Any]:
        return plain_flags(super().get_params(ctx))

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except ClbenchError as exc:
            print_error(exc)
            raise typer.Exit(2) from None


app = typer.Typer(
    cls=ClbenchGroup,
    add_completion=False,
    no_args_is_help=False,
    help="clbench: continual-learning benchmarks on graphs "
    "(Task-IL and Class-IL node classification).",
    pretty_exceptions_enable=False,
)
