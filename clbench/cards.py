"""Method config cards: ``methods/<name>.toml``, or a trainer class's ``card`` attribute.

A card holds a method's typed defaults (``[params]``), the allowed values of string
parameters (``[choices]``), intervals of numeric ones (``[bounds]``), one line of help
per parameter (``[help]``), per-setting overrides (``[setting.class]``: defaults that differ
in Class-IL), per-dataset overrides (``[datasets.<name>]``) and, for a
parameter added after runs were recorded without it, the value those runs had
(``[absent]``: a run record that lacks the key means that value), and the incremental
settings the method supports (``settings = ["task", "class"]``; without it, Task-IL
only, with ``settings_note`` saying why a setting is left out), and the backbones it
runs on (``backbones = ["gcn", "gat"]``, with ``backbones_note``; without it, any
``--model``: a method that only changes the loss or the optimizer step). This module
only reads cards; :mod:`clbench.config` resolves a run's parameters from them. It does
not import the method registry, so the trainer may use it.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from clbench.errors import ClbenchError
from clbench.parsing import Interval
from clbench.spec import PROTOCOL_DEFAULTS, SETTINGS

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


def cards_dir() -> Path:
    """Where the method cards live: inside the wheel, or the repo's ``methods/``."""
    packaged = Path(__file__).parent / "_cards" / "methods"
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parent.parent / "methods"


@dataclass(frozen=True)
class MethodCard:
    """A method's config card."""

    name: str
    summary: str = ""
    params: dict[str, Any] = field(default_factory=dict)
    choices: dict[str, tuple] = field(default_factory=dict)
    bounds: dict[str, Interval] = field(default_factory=dict)
    help: dict[str, str] = field(default_factory=dict)
    datasets: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: defaults that differ in a setting (``{"class": {"lamb": 1.0}}``), applied before
    #: the per-dataset ones
    setting_params: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: parameters added after runs were recorded without them: the value that reproduces
    #: those runs. A run at that value leaves the key out of its config (so it keeps the
    #: identity and record of the runs made before the key existed), and a record without
    #: the key is read back with that value (:func:`clbench.resolve.resolve_record`).
    absent: dict[str, Any] = field(default_factory=dict)
    #: the incremental settings (:data:`clbench.spec.SETTINGS`) the method runs in; a
    #: card that declares none is Task-IL only (the setting every method was written for)
    settings: tuple[str, ...] = ("task",)
    #: why the method leaves a setting out (shown when a run asks for it)
    settings_note: str = ""
    #: the backbones (``--model`` names) the method runs on; empty: any backbone
    backbones: tuple[str, ...] = ()
    #: why the method runs on those backbones only (shown when a run asks for another)
    backbones_note: str = ""
    path: Path | None = None

    def defaults(self, setting: str = "task", dataset: str | None = None) -> dict[str, Any]:
        """The card's defaults in ``setting`` on ``dataset``: ``[params]``, then
        ``[setting.<setting>]``, then ``[datasets.<dataset>]`` (later wins)."""
        from clbench.registry import normalize_name

        on_dataset = self.datasets.get(normalize_name(dataset), {}) if dataset else {}
        return {**self.params, **self.setting_params.get(setting, {}), **on_dataset}

    @classmethod
    def from_dict(cls, name: str, raw: dict, path: Path | None = None,
                  numeric: dict[str, Any] | None = None) -> MethodCard:
        """``numeric``: the shared defaults a ``[bounds]`` entry may also name."""
        from clbench.registry import normalize_name

        where = f"config card of {name!r}" + (f" ({path})" if path else "")
        return cls(
            name=name,
            summary=str(raw.get("summary", "")),
            params=dict(raw.get("params", {})),
            choices={k: tuple(v) for k, v in raw.get("choices", {}).items()},
            bounds=_card_bounds(raw, where, numeric or {}),
            help=dict(raw.get("help", {})),
            datasets={normalize_name(k): dict(v) for k, v in raw.get("datasets", {}).items()},
            absent=_card_absent(raw, where),
            settings=_card_settings(raw, where),
            setting_params=_card_setting_params(raw, where),
            settings_note=str(raw.get("settings_note", "")),
            backbones=_card_backbones(raw, where),
            backbones_note=str(raw.get("backbones_note", "")),
            path=path,
        )


def _card_bounds(raw: dict, where: str, shared: dict[str, Any]) -> dict[str, Interval]:
    """A card's ``[bounds]``: an interval per numeric hyperparameter."""
    defaults = {**shared, **raw.get("params", {})}
    bounds = {}
    for key, text in raw.get("bounds", {}).items():
        default = defaults.get(key)
        if isinstance(default, bool) or not isinstance(default, int | float):
            raise ClbenchError(f"{where}: [bounds] {key} names no numeric hyperparameter")
        bounds[key] = Interval.parse(text, f"{where} [bounds] {key}")
    return bounds


def _card_absent(raw: dict, where: str) -> dict[str, Any]:
    """A card's ``[absent]``: each key a parameter of ``[params]``, with a value of its type."""
    params = raw.get("params", {})
    out = dict(raw.get("absent", {}))
    for key, value in out.items():
        if key not in params or type(value) is not type(params[key]):
            raise ClbenchError(f"{where}: [absent] {key} must name a parameter of [params] "
                               "and have its type")
    return out


def _card_settings(raw: dict, where: str) -> tuple[str, ...]:
    """A card's ``settings``: a non-empty list of :data:`clbench.spec.SETTINGS`."""
    value = raw.get("settings", ["task"])
    if (not isinstance(value, list) or not value
            or any(v not in SETTINGS for v in value)):
        raise ClbenchError(f"{where}: settings must be a non-empty list of "
                           f"{', '.join(map(repr, SETTINGS))}")
    return tuple(dict.fromkeys(value))


def _card_setting_params(raw: dict, where: str) -> dict[str, dict[str, Any]]:
    """A card's ``[setting.<name>]`` tables: for a setting the method runs in, parameters
    of ``[params]`` with values of their type."""
    params, out = raw.get("params", {}), {}
    settings = _card_settings(raw, where)
    for name, table in raw.get("setting", {}).items():
        if name not in settings or not isinstance(table, dict):
            raise ClbenchError(f"{where}: [setting.{name}] must name a setting of "
                               f"settings ({', '.join(settings)})")
        for key, value in table.items():
            if key not in params or type(value) is not type(params[key]):
                raise ClbenchError(f"{where}: [setting.{name}] {key} must name a parameter "
                                   "of [params] and have its type")
        out[name] = dict(table)
    return out


def _card_backbones(raw: dict, where: str) -> tuple[str, ...]:
    """A card's ``backbones``: a non-empty list of backbone names, or absent (any)."""
    from clbench.registry import normalize_name

    value = raw.get("backbones", [])
    if not isinstance(value, list) or any(not isinstance(v, str) or not v for v in value) \
            or ("backbones" in raw and not value):
        raise ClbenchError(f"{where}: backbones must be a non-empty list of model names "
                           "(leave it out for any backbone)")
    return tuple(dict.fromkeys(normalize_name(v) for v in value))


@cache
def _read_card_file(path: Path) -> dict:
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except ValueError as exc:  # TOMLDecodeError, UnicodeDecodeError, an oversized int
        raise ClbenchError(f"config card {path} is not valid TOML: {exc}") from exc


def card_file(name: str) -> Path | None:
    """The card file of the method registered as ``name``, if it has one."""
    path = cards_dir() / f"{name}.toml"
    return path if path.is_file() else None


def read_card(name: str, trainer_cls: type | None = None,
              numeric: dict[str, Any] | None = None) -> MethodCard:
    """The card of the method registered as ``name``: its file if there is one, else the
    ``card`` attribute of ``trainer_cls`` (empty without either)."""
    path = card_file(name)
    if path is not None:
        return MethodCard.from_dict(name, _read_card_file(path), path, numeric)
    return MethodCard.from_dict(name, getattr(trainer_cls, "card", None) or {}, None, numeric)


def class_card(trainer_cls: type) -> MethodCard:
    """The card of a trainer class, read as a run reads it (a ``[bounds]`` entry may name a
    protocol hyperparameter, e.g. ``lr``): a registered method's file or ``card``
    attribute, else the class's ``card`` attribute (empty without one)."""
    name = getattr(trainer_cls, "method_name", None)
    if name is not None:
        return read_card(name, trainer_cls, PROTOCOL_DEFAULTS)
    return MethodCard.from_dict(trainer_cls.__name__, getattr(trainer_cls, "card", None) or {},
                                None, PROTOCOL_DEFAULTS)


def declared_settings(trainer_cls: type) -> tuple[tuple[str, ...], str]:
    """The incremental settings a trainer class's card declares, and its note on them
    (a class without a card: Task-IL only)."""
    card = class_card(trainer_cls)
    return card.settings, card.settings_note


def declared_params(trainer_cls: type, setting: str = "task") -> dict[str, Any]:
    """The default hyperparameters a trainer class's card declares for ``setting`` ({}
    without a card).

    A run passes every resolved hyperparameter to the trainer; this fills in those a
    caller who builds a trainer by hand leaves out."""
    return class_card(trainer_cls).defaults(setting)
