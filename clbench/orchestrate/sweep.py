"""``clbench sweep FILE.toml``: grid search on a few seeds, then the selected config on the rest.

1. every configuration of the grid runs on ``grid_seeds`` (a method's own, where its
   ``[method.<name>]`` table gives them);
2. for each (method, dataset) the configuration with the best mean *validation*
   AP over those seeds is selected (complete configurations first; ties keep the
   first in grid order);
3. the selected configuration runs on ``final_seeds`` (a method's own, where its
   ``[method.<name>]`` table gives them; seeds it already ran are resumed, not re-run).
   A (method, dataset) whose grid jobs all have a result when the sweep starts (a
   resumed sweep) is selected then, and its final seeds run beside the rest of the grid
   (:func:`ready_selections`): a long grid job of another method no longer keeps them
   waiting. The selection is made again after the grid, from the same results;
4. MLflow marks it: its parent run gets ``clbench.selected = true``, the selection
   in ``clbench.selection``, the grid seeds in ``clbench.grid_seeds`` and
   ``clbench.report_seeds = <final seeds>`` (its
   aggregate metrics are over the final seeds); the others get ``false``, and so do
   the method and dataset's parents from an earlier grid that the file no longer has
   (a grid changed, or a method's option added), so that only the current selection
   is reported.

The sweep file's format and its checks are in :mod:`clbench.orchestrate.sweepfile`.
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from clbench.errors import ClbenchError, clip
from clbench.orchestrate.backends import Backend
from clbench.orchestrate.loop import Reporter, Summary, run_jobs
from clbench.orchestrate.plan import Plan, plan_jobs
from clbench.orchestrate.sweepfile import SweepSpec
from clbench.parsing import parse_tasks, slug
from clbench.resolve import resolve_grid
from clbench.spec import RunSpec


def _protocol_kwargs(spec: SweepSpec) -> dict[str, Any]:
    """:func:`resolve_grid`'s settings: the preset, and only the task settings the file
    gives (the others: the preset's, else the defaults)."""
    p = spec.protocol
    out: dict[str, Any] = {"preset": spec.preset, "data_dir": p.get("data_dir"),
                           "device": p.get("device", "cpu")}
    if "tasks" in p:
        out["num_tasks"], out["classes_per_task"] = parse_tasks(str(p["tasks"]))
    for key in ("class_order", "graph", "metric", "setting", "split"):
        if key in p:
            out[key] = p[key]
    if "split_seed" in p:
        out["split_seed"] = int(p["split_seed"])
    return out


def _label(point: Mapping[str, Any], varying: Sequence[str]) -> str:
    return " ".join(f"{k}={point[k]}" for k in varying if k in point)


#: :func:`grid_jobs`'s output: the jobs, a label per parent group, each group's grid order.
GridJobs = tuple[list[RunSpec], dict[tuple, str], dict[tuple, int]]


def grid_jobs(spec: SweepSpec) -> GridJobs:
    """All grid jobs; a label per parent group; each group's grid order (for ties)."""
    from clbench.methods import METHODS

    kwargs = _protocol_kwargs(spec)
    jobs: list[RunSpec] = []
    labels: dict[tuple, str] = {}
    order: dict[tuple, int] = {}
    unknown = [m for m in set(spec.method_params) | set(spec.method_grid)
               | set(spec.method_final_seeds) | set(spec.method_grid_seeds)
               if m not in METHODS]
    if unknown:
        raise ClbenchError(f"sweep file {clip(spec.path)}: [method.{clip(unknown[0])}] "
                           "names an unknown method")
    for method in spec.methods:
        canon = METHODS.canonical(method)
        points, varying = spec.grid_points(canon)
        for i, point in enumerate(points):
            new = [replace(j, note=_label(point, varying))
                   for j in resolve_grid([canon], spec.datasets, spec.grid_seeds_of(canon),
                                         params=point, plugins=spec.plugins, **kwargs)]
            for j in new:
                labels.setdefault(j.group, _label(point, varying))
                order.setdefault(j.group, i)
            jobs.extend(new)
    return jobs, labels, order


@dataclass
class Selection:
    method: str
    dataset: str
    config_hash: str
    label: str
    mean_val_ap: float
    n_seeds: int
    parent_id: str
    candidates: int


@dataclass
class SweepResult:
    experiment: str
    grid: Summary
    selections: list[Selection]
    final: Summary | None = None

    @property
    def ok(self) -> bool:
        return self.grid.ok and (self.final is None or self.final.ok)


#: A method's grid seeds (:meth:`SweepSpec.grid_seeds_of`).
SeedsOf = Callable[[str], Sequence[int]]


def logged_val_aps(groups: Mapping[tuple, str], children: Sequence[Any],
                   grid_seeds: SeedsOf) -> dict[tuple, dict[int, float]]:
    """Validation AP per grid seed (``grid_seeds(method)``) of each group's latest finished
    child run, for the groups' parent run ids ``groups[group]``."""
    from clbench import tracking as tr

    out: dict[tuple, dict[int, float]] = {}
    for group, parent_id in groups.items():
        mine = [c for c in children if c.parent_id == parent_id]
        chosen = tr.select_seed_runs(mine, set(grid_seeds(group[0])))
        out[group] = {s: c.metrics["val_AP"] for s, c in chosen.items() if "val_AP" in c.metrics}
    return out


def select(val_aps: Mapping[tuple, Mapping[int, float]], labels: Mapping[tuple, str],
           order: Mapping[tuple, int], grid_seeds: SeedsOf,
           parents: Mapping[tuple, str] | None = None) -> list[Selection]:
    """Pick each (method, dataset)'s configuration by mean validation AP on its method's
    grid seeds (``val_aps[group][seed]``; ``grid_seeds(method)``): configurations with every
    grid seed first, then the higher mean, then the earlier in grid order."""
    by_pd: dict[tuple[str, str], list[tuple]] = {}
    for group, per_seed in val_aps.items():
        vals = list(per_seed.values())
        if not vals:
            continue
        mean = sum(vals) / len(vals)
        n_seeds = len(set(grid_seeds(group[0])))
        by_pd.setdefault(group[:2], []).append(
            ((len(vals) == n_seeds, mean, -order.get(group, 0)), group, mean, len(vals)))
    out = []
    for (method, dataset), cands in sorted(by_pd.items()):
        _, group, mean, n = max(cands, key=lambda c: c[0])
        out.append(Selection(method, dataset, group[2], labels.get(group, ""), mean, n,
                             (parents or {}).get(group, ""), len(cands)))
    return out


def run_sweep(spec: SweepSpec, tracker: Any, backend: Backend, *,
              results_dir: str | Path = "results", force: bool = False,
              reporter: Reporter | None = None,
              on_stage: Any = None) -> SweepResult:
    """Grid on the grid seeds, selection, final seeds, MLflow marks (see module docs)."""
    from clbench import tracking as tr

    jobs, labels, order = grid_jobs(spec)
    ready = set() if force else {
        (s.method, s.dataset, s.config_hash)
        for s in ready_selections(spec, tracker, (jobs, labels, order), results_dir)}
    early = final_jobs_of(jobs, ready, spec)
    if on_stage:
        on_stage("grid", len(jobs))
        if early:
            on_stage("ready", len(early))
    tracker.set_experiment_tags({tr.TAG_SWEEP_FILE: str(spec.path)})
    report = {g: spec.grid_seeds_of(g[0]) for g in {j.group for j in jobs}}
    report.update({g: spec.final_seeds_of(g[0]) for g in ready})
    grid = run_jobs([*jobs, *early], tracker, backend, results_dir=results_dir, force=force,
                    reporter=reporter, parent_labels=labels, report_seeds=report)
    result = SweepResult(tracker.experiment_name, grid, [])
    if grid.interrupted:
        return result
    val_aps = logged_val_aps(grid.parents, tracker.children(), spec.grid_seeds_of)
    result.selections = select(val_aps, labels, order, spec.grid_seeds_of, grid.parents)
    selected = {(s.method, s.dataset, s.config_hash) for s in result.selections}
    for group, parent_id in grid.parents.items():
        tracker.set_tags(parent_id, {tr.TAG_SELECTED: "true" if group in selected else "false"})
    unselect_earlier_grids(tracker, grid.parents)
    for s in result.selections:
        grid_seeds = tr.seeds_text(spec.grid_seeds_of(s.method))
        tracker.set_tags(s.parent_id, {
            tr.TAG_SELECTION: (f"best mean val AP {s.mean_val_ap:.4f} over grid seeds "
                               f"{grid_seeds} among {s.candidates} configuration(s)"),
            tr.TAG_GRID_SEEDS: grid_seeds})
        tracker.set_experiment_tags({
            f"{tr.TAG_SELECTED_PREFIX}{s.method}.{slug(s.dataset)}":
            f"{s.config_hash} ({s.label})" if s.label else s.config_hash})
    final_jobs = final_jobs_of(jobs, selected, spec)
    if on_stage:
        on_stage("final", len(final_jobs))
    if final_jobs:
        result.final = run_jobs(final_jobs, tracker, backend, results_dir=results_dir,
                                force=force, reporter=reporter, parent_labels=labels,
                                report_seeds={g: spec.final_seeds_of(g[0]) for g in selected})
    write_selection(result, Path(results_dir) / f"sweep-{slug(spec.experiment)}.csv",
                    keep_others=spec.restricted)
    return result


def ready_selections(spec: SweepSpec, tracker: Any,
                     grid: GridJobs,
                     results_dir: str | Path) -> list[Selection]:
    """The selections of the (method, dataset) pairs whose grid jobs (``grid``:
    :func:`grid_jobs`'s output) all have a result now (a finished run in MLflow, or a
    saved result), made as after the grid: the same validation APs and the same rule,
    so the grid cannot change them. What :func:`plan_sweep` selects, without planning
    the final jobs."""
    children = tracker.children()
    plan = plan_jobs(grid[0], children, results_dir, spec.experiment)
    return _complete_selections(spec, tracker, grid, plan, children)


def _complete_selections(spec: SweepSpec, tracker: Any | None,
                         grid: GridJobs,
                         plan: Plan, children: Sequence[Any]) -> list[Selection]:
    """The selection of every (method, dataset) with no grid job left in ``plan``, from
    the logged and the saved validation APs."""
    jobs, labels, order = grid
    found = tracker.find_parents() if tracker is not None else {}
    groups = dict.fromkeys(j.group for j in jobs)
    val_aps = {g: {} for g in groups} | logged_val_aps(
        {g: found[g].run_id for g in groups if g in found}, children, spec.grid_seeds_of)
    for job, result in plan.saved:
        if "AP" in result.get("val_metrics", {}):
            val_aps[job.group][job.seed] = result["val_metrics"]["AP"]
    waiting = {(j.method, j.dataset) for j in plan.todo}
    return select({g: v for g, v in val_aps.items() if g[:2] not in waiting},
                  labels, order, spec.grid_seeds_of)


def unselect_earlier_grids(tracker: Any, current: Mapping[tuple, str]) -> None:
    """Mark ``selected = false`` on every parent run of a (method, dataset) of
    ``current`` (this grid's group -> parent run id) that is not one of them: an earlier
    grid's selection, which would otherwise be reported beside the new one."""
    from clbench import tracking as tr

    ours = set(current.values())
    pairs = {group[:2] for group in current}
    for rec in tracker.parents():
        if (rec.run_id not in ours and (rec.method, rec.dataset) in pairs
                and rec.tags.get(tr.TAG_SELECTED) == "true"):
            tracker.set_tags(rec.run_id, {tr.TAG_SELECTED: "false"})


def final_jobs_of(grid: Sequence[RunSpec], selected: set[tuple], spec: SweepSpec
                  ) -> list[RunSpec]:
    """The selected groups' jobs on their methods' final seeds."""
    return [replace(j, seed=seed) for j in grid
            if j.group in selected and j.seed == spec.grid_seeds_of(j.method)[0]
            for seed in spec.final_seeds_of(j.method)]


@dataclass
class SweepPlan:
    """What ``clbench sweep`` would do now (``--dry-run``). ``final`` holds the final
    jobs of every (method, dataset) whose grid jobs all have a result (finished or saved),
    selected as the sweep will select; ``final_after_grid`` counts, for the others, the
    final jobs their selection will add."""

    grid: Plan
    selections: list[Selection] = field(default_factory=list)
    final: Plan = field(default_factory=Plan)
    final_after_grid: dict[tuple[str, str], int] = field(default_factory=dict)
    children: list[Any] = field(default_factory=list)


def plan_sweep(spec: SweepSpec, tracker: Any | None, *, results_dir: str | Path = "results",
               force: bool = False) -> SweepPlan:
    """Where the sweep stands, read from MLflow (``tracker``; None for an experiment that
    does not exist yet) and the saved results, without running or logging anything."""
    jobs, labels, order = grid_jobs(spec)
    children = tracker.children() if tracker is not None else []
    grid = plan_jobs(jobs, children, results_dir, spec.experiment, force=force)
    plan = SweepPlan(grid, children=children)
    plan.selections = _complete_selections(spec, tracker, (jobs, labels, order), grid,
                                           children)
    waiting = {(j.method, j.dataset) for j in grid.todo}
    selected = {(s.method, s.dataset, s.config_hash) for s in plan.selections}
    plan.final = plan_jobs(final_jobs_of(jobs, selected, spec), children, results_dir,
                           spec.experiment, force=force)
    logged_by_grid = {j.key for j, _ in grid.saved}  # the grid stage logs these first
    plan.final.done += [j for j, _ in plan.final.saved if j.key in logged_by_grid]
    plan.final.saved = [(j, r) for j, r in plan.final.saved if j.key not in logged_by_grid]
    plan.final_after_grid = {
        pd: len(set(spec.final_seeds_of(pd[0])) - set(spec.grid_seeds_of(pd[0])))
        for pd in dict.fromkeys((j.method, j.dataset) for j in jobs) if pd in waiting}
    return plan


def write_selection(result: SweepResult, path: Path, keep_others: bool = False) -> Path:
    """The selections and their final aggregates as CSV. ``keep_others`` (a sweep run for
    some of its file's methods or datasets): rows of other (method, dataset) pairs already
    in the file are kept, so the parts of a sweep add up to the whole file's CSV."""
    header = ["method", "dataset", "config_hash", "config", "grid_mean_val_AP",
              "grid_seeds_used", "candidates", "final_AP_mean", "final_AP_std",
              "final_AF_mean", "final_AF_std", "final_n", "parent_run_id"]
    aggregates = result.final.aggregates if result.final else {}
    rows = []
    for s in result.selections:
        agg = aggregates.get((s.method, s.dataset, s.config_hash), {})
        ap, af = agg.get("AP", {}), agg.get("AF", {})
        rows.append([s.method, s.dataset, s.config_hash, s.label, s.mean_val_ap, s.n_seeds,
                     s.candidates, ap.get("mean", ""), ap.get("std", ""), af.get("mean", ""),
                     af.get("std", ""), ap.get("n", ""), s.parent_id])
    if keep_others and path.is_file():
        new = {(r[0], r[1]) for r in rows}
        with open(path, newline="") as fh:
            old = list(csv.reader(fh))
        if old and old[0] == header:
            rows += [r for r in old[1:] if len(r) == len(header) and (r[0], r[1]) not in new]
        rows.sort(key=lambda r: (r[0], r[1]))
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows(rows)
    return path
