"""A reference to compare against: published numbers per (method, dataset), read from a
CSV."""

from __future__ import annotations

import csv
from pathlib import Path

from clbench.compare.rows import TABLE_METRICS
from clbench.errors import ClbenchError


def load_reference(path: str | Path) -> dict[tuple[str, ...], dict[str, float]]:
    """``(method, dataset) -> {"AP": .., "AF": ..}`` from a CSV with columns
    ``method,dataset,AP[,AF][,setting]`` (other columns are ignored; values on a 0-1
    scale). A number is of the Task-IL setting unless its ``setting`` is ``class``: a
    Class-IL number is keyed ``(method, dataset, "class")`` and shown beside Class-IL rows
    only.

    Method and dataset names are resolved like everywhere else (``bare`` is
    ``finetune``); names clbench does not know are kept as written.
    """
    path = Path(path)
    try:
        with open(path, newline="") as fh:
            reader = csv.DictReader(fh)
            fields = [f.strip() for f in reader.fieldnames or []]
            missing = [f for f in ("method", "dataset", "AP") if f not in fields]
            if missing:
                raise ClbenchError(f"reference {path} needs the column(s) "
                                   f"{', '.join(missing)} (method,dataset,AP[,AF])")
            out: dict[tuple[str, ...], dict[str, float]] = {}
            for n, raw in enumerate(reader, start=2):
                row = {(k or "").strip(): (v or "").strip() for k, v in raw.items()}
                if not row.get("method"):
                    continue
                values = {}
                for metric in TABLE_METRICS:
                    text = row.get(metric, "")
                    if text == "":
                        continue
                    try:
                        values[metric] = float(text)
                    except ValueError:
                        raise ClbenchError(f"reference {path} line {n}: {metric} must be a "
                                           f"number, got {text!r}") from None
                    if not 0.0 <= abs(values[metric]) <= 1.0:
                        raise ClbenchError(f"reference {path} line {n}: {metric} = {text} is "
                                           f"not on a 0-1 scale")
                if "AP" not in values:
                    raise ClbenchError(f"reference {path} line {n}: no AP value")
                setting = row.get("setting") or "task"
                if setting not in ("task", "class"):
                    raise ClbenchError(f"reference {path} line {n}: setting must be task or "
                                       f"class, got {setting!r}")
                key = (_canonical_method(row["method"]), _canonical_dataset(row["dataset"]))
                out[key if setting == "task" else (*key, setting)] = values
    except FileNotFoundError:
        raise ClbenchError(f"reference file not found: {path}") from None
    if not out:
        raise ClbenchError(f"reference {path} has no rows")
    return out


def _canonical_method(name: str) -> str:
    from clbench.methods import METHODS

    try:
        return METHODS.canonical(name)
    except ClbenchError:
        return name


def _canonical_dataset(name: str) -> str:
    from clbench.datasets import DATASETS

    try:
        return DATASETS.canonical(name)
    except ClbenchError:
        return name
