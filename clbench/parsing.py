"""Every text format clbench reads or writes, in one place, with no heavy imports.

Seeds (``"0-9"``, ``"0,3,5-7"``), comma-separated names, task splits (``"3x2"``),
class orders, ``key=value`` assignments, intervals (``"[0, 1)"``), what counts as a
user's graph file, slugs and folder names, and stable hashes of JSON payloads. Each
raises :class:`~clbench.errors.ClbenchError` with a one-line message naming the option.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from clbench.errors import ClbenchError, clip, quote

#: Seeds (``--seed``, ``--seeds``, ``--split-seed``) lie in ``[0, SEED_LIMIT)``: numpy's range.
SEED_LIMIT = 2**32
#: The most seeds one ``--seeds`` list (or a sweep's seed list) may name.
MAX_SEEDS = 10_000
#: A dataset name ending in one of these (any case), or holding a path separator, is a
#: user's graph file (:mod:`clbench.datasets.custom`), not a registered dataset.
GRAPH_FILE_SUFFIXES = (".pt", ".pth", ".npz")


def is_graph_file(name: str | os.PathLike) -> bool:
    """True when ``name`` names a user's graph file rather than a registered dataset."""
    text = os.fspath(name)
    return text.lower().endswith(GRAPH_FILE_SUFFIXES) or os.sep in text or "/" in text


# ----------------------------------------------------------------------------- seeds
def check_seed(seed: object, option: str = "--seed") -> int:
    """``seed`` as an int in ``[0, SEED_LIMIT)``, else a :class:`ClbenchError`."""
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ClbenchError(f"{option} must be an integer, got {quote(seed)}")
    if not 0 <= seed < SEED_LIMIT:
        raise ClbenchError(f"{option} must be in [0, 2**32), got {clip(seed, 20)}")
    return seed


def parse_seeds(text: str, option: str = "--seeds") -> list[int]:
    """``"0-9"`` -> 0..9; ``"0,3,5-7"`` -> [0, 3, 5, 6, 7] (order kept, duplicates dropped).

    Seeds lie in ``[0, 2**32)`` and one list names at most ``MAX_SEEDS``; ``option``
    names the setting in error messages.
    """
    seeds: dict[int, None] = {}
    for part in str(text).replace(" ", "").split(","):
        if not part:
            continue
        m = re.fullmatch(r"(-?\d+)(?:-(-?\d+))?", part)
        if m is None:
            raise ClbenchError(f"{option} expects e.g. 0-9 or 0,2,5-7; got {quote(text)}")
        if any(len(g) > 12 for g in m.groups(default="")):
            raise ClbenchError(f"{option}: seeds must be in [0, 2**32), got {quote(part)}")
        lo = check_seed(int(m.group(1)), option)
        hi = check_seed(int(m.group(2)), option) if m.group(2) is not None else lo
        if hi < lo:
            raise ClbenchError(f"{option} range {quote(part)} is empty (end before start)")
        if len(seeds) + hi - lo + 1 > MAX_SEEDS:
            raise ClbenchError(f"{option} names more than {MAX_SEEDS:,} seeds ({quote(part)})")
        seeds.update(dict.fromkeys(range(lo, hi + 1)))
    if not seeds:
        raise ClbenchError(f"{option} names no seed: {quote(text)}")
    return list(seeds)


def seeds_text(seeds: Iterable[int]) -> str:
    """The sorted, comma-separated form a set of seeds is stored in (an MLflow tag)."""
    return ",".join(str(s) for s in sorted(set(seeds)))


def parse_seed_list(text: str | None) -> set[int] | None:
    """The inverse of :func:`seeds_text` (None for no text)."""
    if not text:
        return None
    return {int(s) for s in text.split(",") if s.strip()}


# ----------------------------------------------------------------------------- lists
def parse_names(text: str | Sequence[str] | None, option: str = "the list") -> list[str]:
    """``"piggyback,ewc"`` -> ``["piggyback", "ewc"]``; ``None`` -> ``[]``. Given text
    that names nothing (``""``, ``",,"``) is an error, not a default."""
    if text is None:
        return []
    parts = text.split(",") if isinstance(text, str) else [p for t in text for p in t.split(",")]
    names = [p.strip() for p in parts if p.strip()]
    if not names:
        raise ClbenchError(f"{option} names nothing: {quote(text)}")
    return names


def parse_tasks(text: str | None, option: str = "--tasks") -> tuple[int | None, int | None]:
    """``"5"`` -> 5 tasks; ``"3x2"`` -> 3 tasks of 2 classes (each at least 1)."""
    if text is None:
        return None, None
    t, sep, c = str(text).strip().lower().partition("x")
    try:
        tasks, per_task = int(t), (int(c) if sep else None)
    except ValueError:
        raise ClbenchError(
            f"{option} expects a number of tasks or TASKSxCLASSES (e.g. 3x2), got {quote(text)}"
        ) from None
    if tasks < 1:
        raise ClbenchError(f"{option}: the number of tasks must be at least 1, got {quote(text)}")
    if per_task is not None and per_task < 1:
        raise ClbenchError(f"{option}: classes per task must be at least 1, got {quote(text)}")
    return tasks, per_task


def parse_int_list(text: str | None, option: str) -> list[int] | None:
    """``"3,0,1"`` -> ``[3, 0, 1]``: distinct non-negative integers (a class order)."""
    if text is None:
        return None
    try:
        values = [int(v) for v in str(text).replace(" ", "").split(",") if v]
    except ValueError:
        raise ClbenchError(f"{option} expects comma-separated integers, got {quote(text)}"
                           ) from None
    if not values:
        raise ClbenchError(f"{option} names no class: {quote(text)}")
    if min(values) < 0:
        raise ClbenchError(f"{option} lists a negative class: {clip(min(values), 20)}")
    seen: set[int] = set()
    for v in values:
        if v in seen:
            raise ClbenchError(f"{option} lists class {clip(v, 20)} twice")
        seen.add(v)
    return values


def parse_assignments(items: Sequence[str]) -> dict[str, str]:
    """``["lr=0.01", "lam=100"]`` -> ``{"lr": "0.01", "lam": "100"}``."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ClbenchError(f"--param expects key=value, got {quote(item)}")
        out[key.strip()] = value.strip()
    return out


# ----------------------------------------------------------------------------- intervals
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


# ----------------------------------------------------------------------------- names
def slug(text: str) -> str:
    """``text`` with every run of characters outside ``[A-Za-z0-9._-]`` replaced by ``-``."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", str(text)).strip("-") or "x"


def experiment_folder(experiment: str) -> str:
    """The results folder name of an experiment: a readable slug (at most 60
    characters, never ``.`` or ``..``) and 8 hex digits of the sha256 of the exact
    name, so that two names never share a folder (``a/b`` and ``a b`` both slug to
    ``a-b``) and no name leaves ``<results-dir>/runs``."""
    readable = slug(experiment)[:60].strip(".-") or "x"
    return f"{readable}-{hashlib.sha256(str(experiment).encode()).hexdigest()[:8]}"


def stable_hash(payload: Any, n: int = 12) -> str:
    """The first ``n`` hex digits of the sha256 of ``payload`` as canonical JSON."""
    text = json.dumps(payload, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:n]
