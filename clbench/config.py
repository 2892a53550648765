"""Hyperparameters: protocol defaults, per-method config cards, ``--param`` overrides.

Resolution order (later wins)::

    PROTOCOL_DEFAULTS  <  card [params]  <  card [datasets.<name>]  <  --param key=value

A card is ``methods/<name>.toml`` (shipped inside the wheel as
``clbench/_cards/methods``). A third-party method without a card file may carry
the same structure as a class attribute ``card = {"params": {...}}``. Every key
has a typed default; a ``--param`` value is parsed to that type, and keys listed
under ``[choices]`` must take one of the listed values.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from clbench.errors import ClbenchError, UnknownNameError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

#: Settings every method shares (BeGin's defaults).
PROTOCOL_DEFAULTS: dict[str, Any] = {
    "model": "gcn",          # backbone: gcn | sage | gat
    "hidden": 256,           # hidden width of each GNN layer
    "layers": 3,             # number of GNN layers
    "dropout": 0.0,          # dropout after each GNN layer
    "batch_norm": True,      # BatchNorm after each GNN layer
    "optimizer": "adam",     # adam | sgd
    "lr": 1e-3,              # learning rate
    "weight_decay": 0.0,     # L2 weight decay of the optimizer
    "epochs": 1000,          # maximum epochs per task
    "patience": 20,          # ReduceLROnPlateau patience (epochs, on val loss)
    "min_lr_ratio": 0.002,   # the task stops when lr reaches lr * min_lr_ratio
}

PROTOCOL_CHOICES: dict[str, tuple[str, ...]] = {"optimizer": ("adam", "sgd")}

#: Lower bounds (inclusive) and upper bounds (exclusive) checked on resolution.
BOUNDS: dict[str, tuple[float | None, float | None]] = {
    "hidden": (1, None), "layers": (1, None), "dropout": (0.0, 1.0), "lr": (0.0, None),
    "weight_decay": (0.0, None), "epochs": (1, None), "patience": (0, None),
    "min_lr_ratio": (0.0, 1.0),
}


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
    help: dict[str, str] = field(default_factory=dict)
    datasets: dict[str, dict[str, Any]] = field(default_factory=dict)
    path: Path | None = None

    @classmethod
    def from_dict(cls, name: str, raw: dict, path: Path | None = None) -> MethodCard:
        from clbench.registry import normalize_name

        return cls(
            name=name,
            summary=str(raw.get("summary", "")),
            params=dict(raw.get("params", {})),
            choices={k: tuple(v) for k, v in raw.get("choices", {}).items()},
            help=dict(raw.get("help", {})),
            datasets={normalize_name(k): dict(v) for k, v in raw.get("datasets", {}).items()},
            path=path,
        )


@cache
def _read_card_file(path: Path) -> dict:
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise ClbenchError(f"config card {path} is not valid TOML: {exc}") from exc


def load_card(method: str) -> MethodCard:
    """The card of a registered method (file first, then the class's ``card``)."""
    from clbench.methods import METHODS

    name = METHODS.canonical(method)
    path = cards_dir() / f"{name}.toml"
    if path.is_file():
        return MethodCard.from_dict(name, _read_card_file(path), path)
    raw = getattr(METHODS.get(name), "card", None) or {}
    return MethodCard.from_dict(name, raw)


def card_defaults(trainer_cls: type) -> dict[str, Any]:
    """Default method hyperparameters of a trainer class ({} if it is not registered)."""
    name = getattr(trainer_cls, "method_name", None)
    if name is None:
        return dict((getattr(trainer_cls, "card", None) or {}).get("params", {}))
    return dict(load_card(name).params)


def parse_assignments(items: list[str] | tuple[str, ...]) -> dict[str, str]:
    """``["lr=0.01", "lam=100"]`` -> ``{"lr": "0.01", "lam": "100"}``."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ClbenchError(f"--param expects key=value, got {item!r}")
        out[key.strip()] = value.strip()
    return out


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
                f"parameter {key!r} expects {type(default).__name__}, got {value!r}"
            ) from None
    if isinstance(default, bool) and not isinstance(value, bool):
        raise ClbenchError(f"parameter {key!r} expects bool, got {value!r}")
    if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if type(value) is not type(default):
        raise ClbenchError(
            f"parameter {key!r} expects {type(default).__name__}, got {value!r}"
        )
    return value


def resolve_params(
    method: str, dataset: str | None = None, overrides: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Every hyperparameter of ``method`` on ``dataset``, typed and validated."""
    from clbench.models import MODELS
    from clbench.registry import normalize_name

    card = load_card(method)
    defaults = {**PROTOCOL_DEFAULTS, **card.params}
    choices = {**PROTOCOL_CHOICES, **card.choices}
    layers = [card.params]
    if dataset is not None:
        layers.append(card.datasets.get(normalize_name(dataset), {}))
    layers.append(overrides or {})
    resolved = dict(PROTOCOL_DEFAULTS)
    for layer in layers:
        for key, value in layer.items():
            if key not in defaults:
                raise UnknownNameError(
                    f"unknown parameter {key!r} for method {card.name!r}. "
                    f"Valid keys: {', '.join(sorted(defaults))}"
                )
            resolved[key] = _coerce(key, value, defaults[key])
    for key, allowed in choices.items():
        if key in resolved and resolved[key] not in allowed:
            raise ClbenchError(
                f"parameter {key!r} must be one of {', '.join(map(str, allowed))}; "
                f"got {resolved[key]!r}"
            )
    for key, (lo, hi) in BOUNDS.items():
        v = resolved[key]
        if (lo is not None and v < lo) or (hi is not None and v >= hi) or (
            key == "lr" and v <= 0
        ):
            rng = f"[{lo}, {hi})" if hi is not None else f">= {lo}" if key != "lr" else "> 0"
            raise ClbenchError(f"parameter {key!r} must be {rng}; got {v!r}")
    resolved["model"] = MODELS.canonical(resolved["model"])
    return resolved


def method_param_keys(method: str) -> list[str]:
    return sorted(load_card(method).params)
