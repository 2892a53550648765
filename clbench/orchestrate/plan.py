"""Where each job of a command stands before it runs: done (a FINISHED MLflow run),
saved (a result JSON written but not logged) or to run (:func:`plan_jobs`; what
``--dry-run`` prints), and how long a run typically takes (:func:`typical_run_seconds`,
and for a method with no run yet, :func:`relative_run_costs`; together
:func:`estimated_run_seconds`), which sets the order jobs are dispatched in
(:func:`longest_first`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clbench.orchestrate.results import read_saved_result, result_path, results_folder
from clbench.spec import RunSpec

#: The method every other one's cost is measured against (every sweep file runs it).
COST_REFERENCE = "finetune"


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


#: The protocol values that set how long a run takes, beyond the method and dataset:
#: costs are compared between runs that agree on them when there are such runs.
COST_PROTOCOL_KEYS = ("schedule", "epochs")


def cost_protocol(protocol: Mapping[str, Any]) -> tuple:
    """The values of :data:`COST_PROTOCOL_KEYS` in a resolved protocol."""
    return tuple(protocol.get(k) for k in COST_PROTOCOL_KEYS)


def relative_run_costs(results_dir: str | Path, experiment: str,
                       jobs: Iterable[RunSpec] = (),
                       reference: str = COST_REFERENCE) -> dict[str, float]:
    """Each method's run time as a multiple of ``reference``'s, from the saved results of
    the *other* experiments under ``results_dir``: per (experiment, dataset) where both
    ran, the ratio of their median run times; per method, the median of those ratios.

    For estimates of a method with no run yet in ``experiment``: its cost can be several
    times another method's (a condensation, or a quadratic program per step), and how
    many times depends on the protocol (a plateau stop or a fixed number of epochs).
    So when some of those results share ``jobs``' schedule and epoch budget
    (:data:`COST_PROTOCOL_KEYS`), only they count. Files that do not parse as results
    are skipped."""
    import json
    import statistics

    wanted = {cost_protocol(job.protocol.resolved()) for job in jobs}
    own = results_folder(results_dir, experiment)
    # (protocol matches, folder, method, dataset) -> run seconds
    seen: dict[tuple[bool, str, str, str], list[float]] = {}
    for folder in sorted(own.parent.glob("*")) if own.parent.is_dir() else ():
        if folder == own or not folder.is_dir():
            continue
        for path in folder.glob("*__seed*.json"):
            try:
                data = json.loads(path.read_text())
                seconds = float(data["timing"]["total_seconds"])
                match = cost_protocol(data["protocol"]) in wanted
                key = (match, folder.name, str(data["method"]), str(data["dataset"]))
            except (OSError, ValueError, TypeError, KeyError, AttributeError):
                continue
            if seconds > 0:
                seen.setdefault(key, []).append(seconds)
    ratios: dict[bool, dict[str, list[float]]] = {True: {}, False: {}}
    for (match, folder, method, dataset), times in seen.items():
        base = seen.get((match, folder, reference, dataset))
        if base:
            ratios[match].setdefault(method, []).append(
                statistics.median(times) / statistics.median(base))
    alike, other = ratios[True], ratios[False]
    return {m: statistics.median(alike.get(m) or other[m]) for m in {*alike, *other}}


def estimated_run_seconds(method: str, dataset: str,
                          seconds: Mapping[tuple[str, str | None], float],
                          relative: Mapping[str, float] | None = None
                          ) -> tuple[float | None, str]:
    """How long one run of ``method`` on ``dataset`` is expected to take, and how that was
    estimated: ``""`` (the median of its own runs, :func:`typical_run_seconds`), ``"†"``
    (:data:`COST_REFERENCE`'s median on the dataset times the method's relative cost,
    :func:`relative_run_costs`), ``"*"`` (the median of every method on the dataset) or
    no estimate (``None``)."""
    typical = seconds.get((method, dataset))
    if typical is not None:
        return typical, ""
    reference = seconds.get((COST_REFERENCE, dataset))
    if reference is not None and relative and method in relative:
        return reference * relative[method], "†"
    if (dataset, None) in seconds:
        return seconds[(dataset, None)], "*"
    return None, ""


def longest_first(jobs: Sequence[RunSpec], children: Iterable[Any],
                  saved: Iterable[tuple[RunSpec, Mapping[str, Any]]] = (),
                  relative: Callable[[], Mapping[str, float]] | None = None
                  ) -> list[RunSpec]:
    """``jobs`` in the order to dispatch them: the longest expected first (a stable sort,
    so jobs with the same estimate keep the command's order; jobs without an estimate
    come first, as they may be long). A pool that starts its longest jobs first ends
    with short ones, so fewer workers wait idle at the end for the last long job.
    ``relative`` is called only when some job has no run of its own to estimate from."""
    seconds = typical_run_seconds(children, saved)
    costs: Mapping[str, float] = {}
    if relative is not None and any((j.method, j.dataset) not in seconds for j in jobs):
        costs = relative()
    expected = {}
    for j in jobs:
        estimate = estimated_run_seconds(j.method, j.dataset, seconds, costs)[0]
        expected[(j.method, j.dataset)] = float("inf") if estimate is None else estimate
    return sorted(jobs, key=lambda j: -expected[(j.method, j.dataset)])
