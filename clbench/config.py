"""Hyperparameters: protocol defaults, per-method config cards, ``--param`` overrides.

Resolution order (later wins)::

    Protocol defaults  <  card [params]  <  card [setting.<setting>]
                       <  card [datasets.<name>]  <  --param key=value

A card is ``methods/<name>.toml`` (shipped inside the wheel as
``clbench/_cards/methods``; :mod:`clbench.cards`). A third-party method without a card
file may carry the same structure as a class attribute ``card = {"params": {...}}``.
Every key has a typed default; a ``--param`` value is parsed to that type, keys listed
under ``[choices]`` must take one of the listed values, keys listed under ``[bounds]``
must lie in the given interval (``"[0, 1)"``, ``"(0, inf)"``), and every float must be
finite. :func:`clbench.resolve.resolve_run` uses this to build a run's spec.
"""

from __future__ import annotations

import math
from typing import Any

from clbench.cards import MethodCard, card_file, read_card
from clbench.errors import ClbenchError, UnknownNameError, quote
from clbench.parsing import Interval
from clbench.spec import LOSS_WEIGHTS, OPTIMIZER_STATES, PROTOCOL_DEFAULTS, SCHEDULES

PROTOCOL_CHOICES: dict[str, tuple[str, ...]] = {"optimizer": ("adam", "sgd"),
                                                "schedule": SCHEDULES,
                                                "loss_weights": LOSS_WEIGHTS,
                                                "optimizer_state": OPTIMIZER_STATES}

#: The interval each protocol setting must lie in (a card's ``[bounds]`` adds its
#: method's). ``hidden`` and ``layers`` are capped so that a typo fails before a model
#: too large for any memory is allocated.
PROTOCOL_BOUNDS: dict[str, str] = {
    "hidden": "[1, 8192]", "layers": "[1, 32]", "dropout": "[0, 1)", "lr": "(0, inf)",
    "weight_decay": "[0, inf)", "epochs": "[1, inf)", "patience": "[0, inf)",
    "min_lr_ratio": "[0, 1)",
}

_PROTOCOL_INTERVALS = {k: Interval.parse(v, f"PROTOCOL_BOUNDS[{k!r}]")
                       for k, v in PROTOCOL_BOUNDS.items()}


def load_card(method: str) -> MethodCard:
    """The card of a registered method (file first, then the class's ``card``): the
    trainer class is imported only for a method without a card file."""
    from clbench.methods import METHODS

    name = METHODS.canonical(method)
    trainer = None if card_file(name) is not None else METHODS.get(name)
    return read_card(name, trainer, PROTOCOL_DEFAULTS)


def _coerce(key: str, value: Any, default: Any) -> Any:
    if isinstance(value, str) and not isinstance(default, str):
        text = value.strip()
        try:
            if isinstance(default, bool):
                low = text.lower()
                if low in ("1", "true", "yes", "on"):
                    return True
                if low in ("0", "false", "no", "off"):
                    return False
                raise ValueError
            if isinstance(default, int):
                return int(text)
            if isinstance(default, float):
                return float(text)
        except ValueError:
            raise ClbenchError(
                f"parameter {quote(key)} expects {type(default).__name__}, got {quote(value)}"
            ) from None
    if isinstance(default, bool) and not isinstance(value, bool):
        raise ClbenchError(f"parameter {quote(key)} expects bool, got {quote(value)}")
    if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if type(value) is not type(default):
        raise ClbenchError(
            f"parameter {quote(key)} expects {type(default).__name__}, got {quote(value)}"
        )
    return value


def resolve_params(
    method: str, dataset: str | None = None, overrides: dict[str, Any] | None = None,
    setting: str = "task",
) -> dict[str, Any]:
    """Every hyperparameter of ``method`` on ``dataset`` in ``setting``, typed and
    validated."""
    from clbench.backbones import MODELS

    card = load_card(method)
    defaults = {**PROTOCOL_DEFAULTS, **card.params}
    choices = {**PROTOCOL_CHOICES, **card.choices}
    layers = [card.defaults(setting, dataset), overrides or {}]
    resolved = dict(PROTOCOL_DEFAULTS)
    for layer in layers:
        for key, value in layer.items():
            if key not in defaults:
                raise UnknownNameError(
                    f"unknown parameter {quote(key)} for method {card.name!r}. "
                    f"Valid keys: {', '.join(sorted(defaults))}"
                )
            resolved[key] = _coerce(key, value, defaults[key])
    for key, allowed in choices.items():
        if key in resolved and resolved[key] not in allowed:
            raise ClbenchError(
                f"parameter {quote(key)} must be one of {', '.join(map(str, allowed))}; "
                f"got {quote(resolved[key])}"
            )
    check_ranges(resolved, {**_PROTOCOL_INTERVALS, **card.bounds})
    resolved["model"] = MODELS.canonical(resolved["model"])
    return resolved


def check_ranges(params: dict[str, Any], bounds: dict[str, Interval]) -> None:
    """Every float in ``params`` is finite and every key of ``bounds`` in its interval."""
    for key, value in params.items():
        if isinstance(value, float) and not math.isfinite(value):
            raise ClbenchError(f"parameter {quote(key)} must be a finite number; got {value!r}")
    for key, interval in bounds.items():
        if key in params and params[key] not in interval:
            raise ClbenchError(f"parameter {quote(key)} must be {interval}; "
                               f"got {quote(params[key])}")


def method_param_keys(method: str) -> list[str]:
    """The names of a method's own hyperparameters (its card's ``[params]``), sorted."""
    return sorted(load_card(method).params)
