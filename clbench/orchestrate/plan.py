"""Where each job of a command stands before it runs: done (a FINISHED MLflow run),
saved (a result JSON written but not logged) or to run (:func:`plan_jobs`; what
``--dry-run`` prints), and how long a run typically takes (:func:`typical_run_seconds`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clbench.orchestrate.results import read_saved_result, result_path
from clbench.spec import RunSpec


@dataclass
class Plan:
    """Where each job of a command stands before it runs (what ``--dry-run`` prints)."""

    done: list[RunSpec] = field(default_factory=list)
    """Jobs with a FINISHED MLflow run: skipped."""
    saved: list[tuple[RunSpec, dict[str, Any]]] = field(default_factory=list)
    """Jobs whose result JSON was written but not logged: logged without training."""
    todo: list[RunSpec] = field(default_factory=list)
    """Jobs that train."""
    jobs: list[RunSpec] = field(default_factory=list)
    """All of them, in the command's order."""


def plan_jobs(jobs: Iterable[RunSpec], children: Iterable[Any], results_dir: str | Path,
              experiment: str, *, force: bool = False) -> Plan:
    """Sort ``jobs`` into done / saved / to run, given the experiment's child runs
    (:class:`~clbench.tracking.RunRecord`) and the result JSONs under ``results_dir``."""
    finished = set() if force else {rec.key for rec in children if rec.finished}
    plan = Plan(jobs=list(jobs))
    for job in plan.jobs:
        if job.key in finished:
            plan.done.append(job)
            continue
        saved = None if force else read_saved_result(
            result_path(results_dir, experiment, job), job)
        if saved is not None:
            plan.saved.append((job, saved))
        else:
            plan.todo.append(job)
    return plan


def typical_run_seconds(children: Iterable[Any],
                        saved: Iterable[tuple[RunSpec, Mapping[str, Any]]] = ()
                        ) -> dict[tuple[str, str | None], float]:
    """Median duration of one run (its ``time_total_seconds``: training and evaluation,
    not queueing) per (method, dataset), and per ``(dataset, None)`` over all methods,
    from finished MLflow child runs and saved results; for time estimates."""
    import statistics

    seen: dict[tuple[str, str | None], list[float]] = {}

    def add(method: str, dataset: str, seconds: Any) -> None:
        if isinstance(seconds, (int, float)) and seconds > 0:
            seen.setdefault((method, dataset), []).append(float(seconds))
            seen.setdefault((dataset, None), []).append(float(seconds))

    for rec in children:
        if rec.finished:
            add(rec.method, rec.dataset, rec.metrics.get("time_total_seconds"))
    for job, result in saved:
        add(job.method, job.dataset, result.get("timing", {}).get("total_seconds"))
    return {k: statistics.median(v) for k, v in seen.items()}

