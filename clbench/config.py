"""Hyperparameters: protocol defaults, per-method config cards, ``--param`` overrides.

Resolution order (later wins)::

    PROTOCOL_DEFAULTS  <  card [params]  <  card [datasets.<name>]  <  --param key=value

A card is ``methods/<name>.toml`` (shipped inside the wheel as
``clbench/_cards/methods``). A third-party method without a card file may carry
the same structure as a class attribute ``card = {"params": {...}}``. Every key
has a typed default; a ``--param`` value is parsed to that type, keys listed
under ``[choices]`` must take one of the listed values, keys listed under
``[bounds]`` must lie in the given interval (``"[0, 1)"``, ``"(0, inf)"``), and
every float must be finite.
"""

from __future__ import annotations

import math
import re
import sys
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from clbench.errors import ClbenchError, UnknownNameError, clip, quote

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

#: The interval each protocol setting must lie in (a card's ``[bounds]`` adds its
#: method's). ``hidden`` and ``layers`` are capped so that a typo fails before a model
#: too large for any memory is allocated.
PROTOCOL_BOUNDS: dict[str, str] = {
    "hidden": "[1, 8192]", "layers": "[1, 32]", "dropout": "[0, 1)", "lr": "(0, inf)",
    "weight_decay": "[0, inf)", "epochs": "[1, inf)", "patience": "[0, inf)",
    "min_lr_ratio": "[0, 1)",
}

#: Seeds (``--seed``, ``--seeds``, ``--split-seed``) lie in ``[0, SEED_LIMIT)``: numpy's range.
SEED_LIMIT = 2**32
#: The most seeds one ``--seeds`` list (or a sweep's seed list) may name.
MAX_SEEDS = 10_000

_INTERVAL = re.compile(r"\s*([\[(])\s*([^,\s]+)\s*,\s*([^\])\s]+)\s*([\])])\s*")


@dataclass(frozen=True)
class Interval:
    """A range of allowed values, written ``"[lo, hi]"``; ``(`` or ``)`` leaves an end
    out, ``-inf``/``inf`` leave it open."""

    lo: float
    hi: float
    lo_closed: bool = True
    hi_closed: bool = True

    @classmethod
    def parse(cls, text: object, where: str) -> Interval:
        m = _INTERVAL.fullmatch(text) if isinstance(text, str) else None
        try:
            lo, hi = float(m.group(2)), float(m.group(3))  # type: ignore[union-attr]
        except (AttributeError, ValueError):
            raise ClbenchError(f"{where}: expected an interval like \"[0, 1)\", "
                               f"got {quote(text)}") from None
        if math.isnan(lo) or math.isnan(hi) or lo > hi:
            raise ClbenchError(f"{where}: {quote(text)} is not an interval")
        return cls(lo, hi, m.group(1) == "[", m.group(4) == "]")  # type: ignore[union-attr]

    def __contains__(self, value: object) -> bool:
        if not isinstance(value, int | float) or isinstance(value, bool):
            return False
        above = value >= self.lo if self.lo_closed else value > self.lo
        below = value <= self.hi if self.hi_closed else value < self.hi
        return above and below

    def __str__(self) -> str:
        lo, hi = f"{self.lo:g}", f"{self.hi:g}"
        if math.isinf(self.hi) and not math.isinf(self.lo):
            return f"{'>=' if self.lo_closed else '>'} {lo}"
        if math.isinf(self.lo) and not math.isinf(self.hi):
            return f"{'<=' if self.hi_closed else '<'} {hi}"
        return f"in {'[' if self.lo_closed else '('}{lo}, {hi}{']' if self.hi_closed else ')'}"


def check_seed(seed: object, option: str = "--seed") -> int:
    """``seed`` as an int in ``[0, SEED_LIMIT)``, else a :class:`ClbenchError`."""
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ClbenchError(f"{option} must be an integer, got {quote(seed)}")
    if not 0 <= seed < SEED_LIMIT:
        raise ClbenchError(f"{option} must be in [0, 2**32), got {clip(seed, 20)}")
    return seed


_PROTOCOL_INTERVALS = {k: Interval.parse(v, f"PROTOCOL_BOUNDS[{k!r}]")
                       for k, v in PROTOCOL_BOUNDS.items()}


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
    path: Path | None = None

    @classmethod
    def from_dict(cls, name: str, raw: dict, path: Path | None = None) -> MethodCard:
        from clbench.registry import normalize_name

        where = f"config card of {name!r}" + (f" ({path})" if path else "")
        return cls(
            name=name,
            summary=str(raw.get("summary", "")),
            params=dict(raw.get("params", {})),
            choices={k: tuple(v) for k, v in raw.get("choices", {}).items()},
            bounds=_card_bounds(raw, where),
            help=dict(raw.get("help", {})),
            datasets={normalize_name(k): dict(v) for k, v in raw.get("datasets", {}).items()},
            path=path,
        )


def _card_bounds(raw: dict, where: str) -> dict[str, Interval]:
    """A card's ``[bounds]``: an interval per numeric hyperparameter."""
    defaults = {**PROTOCOL_DEFAULTS, **raw.get("params", {})}
    bounds = {}
    for key, text in raw.get("bounds", {}).items():
        default = defaults.get(key)
        if isinstance(default, bool) or not isinstance(default, int | float):
            raise ClbenchError(f"{where}: [bounds] {key} names no numeric hyperparameter")
        bounds[key] = Interval.parse(text, f"{where} [bounds] {key}")
    return bounds


@cache
def _read_card_file(path: Path) -> dict:
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except ValueError as exc:  # TOMLDecodeError, UnicodeDecodeError, an oversized int
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
            raise ClbenchError(f"--param expects key=value, got {quote(item)}")
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
    return sorted(load_card(method).params)
