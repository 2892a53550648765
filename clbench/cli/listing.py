"""``clbench list``: methods (with their hyperparameters), datasets, models and protocol
presets."""

from __future__ import annotations

from typing import Annotated

import typer
from rich import box
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from clbench.cli.app import ClbenchCommand, app, console
from clbench.cli.options import check_given
from clbench.errors import ClbenchError, quote


@app.command("list", cls=ClbenchCommand)
def list_(
    what: Annotated[str, typer.Argument(help="methods, datasets, models or presets")] = "all",
    data_dir: Annotated[str | None, typer.Option(help="Data root to check for local files.")]
        = None,
    plugin: Annotated[list[str] | None, typer.Option(help="Plugin to load first.")] = None,
) -> None:
    """List methods (with hyperparameters), datasets (with sizes), models and protocol
    presets (each value with the reference code it comes from)."""
    from clbench.backbones import MODELS
    from clbench.datasets import data_root
    from clbench.plugins import load_plugin
    from clbench.resolve import check_data_dir

    for p in plugin or []:
        load_plugin(p)
    check_given(data_dir=data_dir)
    check_data_dir(data_dir)
    choices = ("all", "methods", "datasets", "models", "presets")
    if what not in choices:
        raise ClbenchError(f"unknown list {quote(what)}; choose one of {', '.join(choices)}")
    if what in ("all", "methods"):
        print_methods()
    if what in ("all", "datasets"):
        from clbench.datasets.info import print_dataset_table

        print_dataset_table(data_root(data_dir), console)
    if what in ("all", "models"):
        console.print("models: " + ", ".join(MODELS.names()), markup=False)
    if what in ("all", "presets"):
        print_presets()


def print_presets() -> None:
    """Every protocol preset in full: each value and where it comes from, then what of
    the reference it does not reproduce."""
    from clbench.presets import PRESETS, describe

    for preset in PRESETS.values():
        console.print(Text.assemble((f"preset {preset.name}", "bold"), f": {preset.summary}"))
        table = Table(box=box.SIMPLE_HEAD, show_edge=False, padding=(0, 1))
        table.add_column("setting", no_wrap=True)
        table.add_column("value", no_wrap=True)  # numbers are never cut
        table.add_column(f"from ({preset.reference})", overflow="fold")
        for key in preset.values:
            table.add_row(key, escape(describe(preset, key)), escape(preset.where[key]))
        console.print(table)
        for gap in preset.gaps:
            console.print(f"  not reproduced: {gap}", markup=False, soft_wrap=True)
        console.print()


def print_methods() -> None:
    """Every method with its card: summary, and each hyperparameter's default, allowed
    values and help."""
    from clbench.config import PROTOCOL_BOUNDS, PROTOCOL_CHOICES, load_card
    from clbench.datasets import DATASETS
    from clbench.methods import METHODS
    from clbench.spec import PROTOCOL_DEFAULTS

    for name in METHODS.names():
        card = load_card(name)
        aliases = ", ".join(METHODS.aliases_of(name))
        head = name + (f" (alias {aliases})" if aliases else "")
        console.print(Text.assemble((head, "bold"), f": {card.summary}" if card.summary else ""))
        runs_in = " and ".join(_SETTING_NAMES.get(s, s) for s in card.settings)
        note = f" ({card.settings_note})" if card.settings_note else ""
        console.print(f"  settings: {runs_in}{note}", markup=False, soft_wrap=True)
        on = ", ".join(card.backbones) if card.backbones else "any"
        note = f" ({card.backbones_note})" if card.backbones_note else ""
        console.print(f"  backbones: {on}{note}", markup=False, soft_wrap=True)
        if not card.params:
            console.print("  no hyperparameters of its own", markup=False)
        else:
            table = Table(box=box.SIMPLE_HEAD, show_edge=False, padding=(0, 1))
            for col in ("parameter", "default", "allowed", "what it does"):
                table.add_column(col, overflow="fold")
            for key, default in card.params.items():
                allowed = (", ".join(map(str, card.choices[key])) if key in card.choices else
                           str(card.bounds[key]) if key in card.bounds
                           else type(default).__name__)
                table.add_row(escape(key), escape(_value(default)), escape(allowed),
                              escape(card.help.get(key, "")))
            console.print(table)
        for setting, values in card.setting_params.items():
            changed = ", ".join(f"{k}={_value(v)}" for k, v in values.items())
            console.print(f"  in {_SETTING_NAMES.get(setting, setting)}: {changed}",
                          markup=False, soft_wrap=True)
        for dataset, values in card.datasets.items():  # keys normalised: show the name
            name = DATASETS.canonical(dataset) if dataset in DATASETS else dataset
            changed = ", ".join(f"{k}={_value(v)}" for k, v in values.items())
            console.print(f"  on {name}: {changed}", markup=False, soft_wrap=True)
        console.print()
    shared = ", ".join(f"{k}={v}" for k, v in PROTOCOL_DEFAULTS.items())
    console.print(f"shared protocol parameters (every method; --param key=value): {shared}",
                  markup=False, soft_wrap=True)
    limits = {**{k: f"one of {', '.join(v)}" for k, v in PROTOCOL_CHOICES.items()},
              **PROTOCOL_BOUNDS}
    console.print("their allowed values: " + ", ".join(f"{k} {v}" for k, v in limits.items()),
                  markup=False, soft_wrap=True)


_SETTING_NAMES = {"task": "Task-IL", "class": "Class-IL"}


def _value(value: object) -> str:
    """A default as a user would type it (``1e+12``, not ``1000000000000.0``)."""
    return f"{value:g}" if isinstance(value, float) else str(value)
