"""``clbench sweep FILE.toml``: grid search on a few seeds, then the selected config on the rest.

1. every configuration of the grid runs on ``grid_seeds``;
2. for each (method, dataset) the configuration with the best mean *validation*
   AP over those seeds is selected (complete configurations first; ties keep the
   first in grid order);
3. the selected configuration runs on ``final_seeds`` (seeds it already ran are
   resumed, not re-run);
4. MLflow marks it: its parent run gets ``clbench.selected = true``, the selection
   in ``clbench.selection`` and ``clbench.report_seeds = <final seeds>`` (its
   aggregate metrics are over the final seeds); the others get ``false``.

A sweep file::

    experiment = "begin-grid"          # MLflow experiment (default: sweep-<file stem>)
    methods = ["finetune", "ewc"]
    datasets = ["cora"]
    grid_seeds = "0-2"                 # "0-2", "0,1,2" or [0, 1, 2]
    final_seeds = "0-9"
    plugins = []                       # optional --plugin files/modules

    [protocol]                         # optional: tasks = "3x2", graph, metric,
    split_seed = 0                     #   split_seed, class_order, data_dir, device

    [params]                           # fixed for every method and grid point
    epochs = 1000

    [grid]                             # crossed for every method
    lr = [1e-3, 5e-3, 1e-2]
    dropout = [0.0, 0.25, 0.5]
    weight_decay = [0.0, 5e-4]

    [method.ewc.grid]                  # a method's own grid (and [method.ewc.params])
    lam = [100.0, 1000.0]
"""

from __future__ import annotations

import csv
import itertools
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from clbench.errors import ClbenchError, clip, quote
from clbench.orchestrate import (
    Backend,
    Job,
    Plan,
    Reporter,
    Summary,
    expand_jobs,
    plan_jobs,
    run_jobs,
)
from clbench.parsing import (
    MAX_SEEDS,
    check_seed,
    parse_int_list,
    parse_seeds,
    parse_tasks,
    slug,
)

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

_TOP_KEYS = {"experiment", "methods", "datasets", "grid_seeds", "final_seeds", "plugins",
             "protocol", "params", "grid", "method"}
_PROTOCOL_KEYS = {"tasks", "graph", "metric", "split_seed", "class_order", "data_dir", "device"}


@dataclass
class SweepSpec:
    """A parsed sweep file."""

    path: Path
    experiment: str
    methods: list[str]
    datasets: list[str]
    grid_seeds: list[int]
    final_seeds: list[int]
    plugins: list[str] = field(default_factory=list)
    protocol: dict[str, Any] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)
    grid: dict[str, list[Any]] = field(default_factory=dict)
    method_params: dict[str, dict[str, Any]] = field(default_factory=dict)
    method_grid: dict[str, dict[str, list[Any]]] = field(default_factory=dict)

    def method_tables(self, method: str) -> tuple[dict[str, Any], dict[str, list[Any]]]:
        """A method's own (params, grid) tables, found under its name or its canonical name."""
        from clbench.methods import METHODS
        from clbench.registry import normalize_name

        canon = normalize_name(METHODS.canonical(method))
        params: dict[str, Any] = {}
        grid: dict[str, list[Any]] = {}
        for name in set(self.method_params) | set(self.method_grid):
            if name in METHODS and normalize_name(METHODS.canonical(name)) == canon:
                params.update(self.method_params.get(name, {}))
                grid.update(self.method_grid.get(name, {}))
        return params, grid

    def grid_points(self, method: str) -> tuple[list[dict[str, Any]], list[str]]:
        """Every combination of the shared and the method's grid (with the fixed params),
        and the keys that vary."""
        mparams, mgrid = self.method_tables(method)
        grid = {**self.grid, **mgrid}
        keys = list(grid)
        fixed = {**self.params, **mparams}
        points = [{**fixed, **dict(zip(keys, combo, strict=True))}
                  for combo in itertools.product(*(grid[k] for k in keys))]
        return points, [k for k in keys if len(grid[k]) > 1]


_SCALARS = (str, int, float, bool)


def _where(path: Path) -> str:
    return f"sweep file {clip(path)}"


def _type_error(path: Path, key: str, what: str, value: Any) -> ClbenchError:
    return ClbenchError(f"{_where(path)}: {key} must be {what}, got {quote(value)}")


def _table(raw: Any, path: Path, key: str) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise _type_error(path, key, "a table", raw)
    return dict(raw)


def _seeds(raw: Any, path: Path, key: str) -> list[int]:
    """``"0-4"``, ``"0,2"``, ``3`` or ``[0, 1, 2]``, each seed in ``[0, 2**32)``."""
    if isinstance(raw, str):
        return parse_seeds(raw, f"{_where(path)}: {key}")
    values = [raw] if isinstance(raw, int) and not isinstance(raw, bool) else raw
    if (not isinstance(values, list) or not values
            or not all(isinstance(s, int) and not isinstance(s, bool) for s in values)):
        raise _type_error(path, key, 'like "0-4" or a non-empty list of integers', raw)
    if len(values) > MAX_SEEDS:
        raise ClbenchError(f"{_where(path)}: {key} names more than {MAX_SEEDS:,} seeds")
    return list(dict.fromkeys(check_seed(s, f"{_where(path)}: {key}") for s in values))


def _strings(raw: Any, path: Path, key: str, *, empty_ok: bool = False) -> list[str]:
    """A string or a list of non-empty strings (non-empty unless ``empty_ok``)."""
    values = [raw] if isinstance(raw, str) else raw
    if (not isinstance(values, list) or not (values or empty_ok)
            or not all(isinstance(x, str) and x.strip() for x in values)):
        what = "a list of non-empty strings" if empty_ok else "a non-empty list of names"
        raise _type_error(path, key, what, raw)
    return [x.strip() for x in values]


def _params(raw: Any, path: Path, key: str) -> dict[str, Any]:
    """A table of key = number, string or boolean."""
    table = _table(raw, path, f"[{key}]")
    for k, v in table.items():
        if not isinstance(v, _SCALARS):
            raise _type_error(path, f"[{key}] {k}", "a number, string or boolean", v)
    return table


def _grid(raw: Any, path: Path, key: str) -> dict[str, list[Any]]:
    """A table of key = [values] (or one value)."""
    out = {}
    for k, v in _table(raw, path, f"[{key}]").items():
        values = v if isinstance(v, list) else [v]
        if not values:
            raise ClbenchError(f"{_where(path)}: [{key}] {k} has no values")
        if not all(isinstance(x, _SCALARS) for x in values):
            raise _type_error(path, f"[{key}] {k}", "a list of numbers, strings or booleans",
                              v)
        out[k] = values
    return out


def _protocol(raw: Any, path: Path) -> dict[str, Any]:
    """The ``[protocol]`` table, every value type-checked (``tasks`` and
    ``class_order`` parsed)."""
    protocol = _table(raw, path, "[protocol]")
    bad = set(protocol) - _PROTOCOL_KEYS
    if bad:
        raise ClbenchError(f"{_where(path)}: unknown [protocol] key(s) "
                           f"{', '.join(quote(k) for k in sorted(bad))}; "
                           f"valid: {', '.join(sorted(_PROTOCOL_KEYS))}")
    for key, value in protocol.items():
        name = f"{_where(path)}: [protocol] {key}"
        if key == "tasks":
            if isinstance(value, bool) or not isinstance(value, int | str):
                raise _type_error(path, "[protocol] tasks", 'like 3 or "3x2"', value)
            parse_tasks(str(value), name)
        elif key == "split_seed":
            check_seed(value, name)
        elif key == "class_order":
            if isinstance(value, str):
                protocol[key] = parse_int_list(value, name)
            elif not isinstance(value, list) or not all(
                    isinstance(c, int) and not isinstance(c, bool) for c in value):
                raise _type_error(path, "[protocol] class_order",
                                  'a list of integers (or "3,0,1")', value)
            else:
                parse_int_list(",".join(map(str, value)), name)
        elif not isinstance(value, str):
            raise _type_error(path, f"[protocol] {key}", "a string", value)
    return protocol


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise ClbenchError(f"sweep file not found: {clip(path)}") from None
    except IsADirectoryError:
        raise ClbenchError(f"{_where(path)} is a directory, not a TOML file") from None
    except UnicodeDecodeError as exc:
        raise ClbenchError(f"{_where(path)} is not UTF-8 text (byte {exc.start} is "
                           f"{exc.object[exc.start:exc.start + 1]!r})") from None
    except (OSError, ValueError) as exc:
        raise ClbenchError(f"cannot read {_where(path)}: "
                           f"{getattr(exc, 'strerror', None) or exc}") from None
    try:
        return tomllib.loads(text)
    except ValueError as exc:  # TOMLDecodeError, or an integer too long to convert
        raise ClbenchError(f"{_where(path)} is not valid TOML: {clip(exc, 200)}") from None


def load_sweep(path: str | Path) -> SweepSpec:
    """Read and validate a sweep file: every key's type and every seed now; names and
    parameters when the jobs are expanded (:func:`grid_jobs`), still before anything runs."""
    path = Path(path)
    raw = _read_toml(path)
    unknown = set(raw) - _TOP_KEYS
    if unknown:
        raise ClbenchError(f"{_where(path)}: unknown key(s) "
                           f"{', '.join(quote(k) for k in sorted(unknown))}; "
                           f"valid: {', '.join(sorted(_TOP_KEYS))}")
    for key in ("methods", "datasets", "grid_seeds", "final_seeds"):
        if key not in raw:
            raise ClbenchError(f"{_where(path)} needs {key!r}")
    experiment = raw.get("experiment", f"sweep-{path.stem}")
    if not isinstance(experiment, str) or not experiment.strip():
        raise _type_error(path, "experiment", "a non-empty string", experiment)
    method_params: dict[str, dict[str, Any]] = {}
    method_grid: dict[str, dict[str, list[Any]]] = {}
    for name, table in _table(raw.get("method", {}), path, "[method]").items():
        if not isinstance(table, dict) or set(table) - {"params", "grid"}:
            raise ClbenchError(f"{_where(path)}: [method.{clip(name)}] may only hold params "
                               "and grid tables")
        method_params[name] = _params(table.get("params", {}), path, f"method.{name}.params")
        method_grid[name] = _grid(table.get("grid", {}), path, f"method.{name}.grid")
    plugins = _strings(raw.get("plugins", []), path, "plugins", empty_ok=True)
    return SweepSpec(
        path=path,
        experiment=experiment,
        methods=_strings(raw["methods"], path, "methods"),
        datasets=_strings(raw["datasets"], path, "datasets"),
        grid_seeds=_seeds(raw["grid_seeds"], path, "grid_seeds"),
        final_seeds=_seeds(raw["final_seeds"], path, "final_seeds"),
        plugins=[str((path.parent / p).resolve()) if p.endswith(".py") else p for p in plugins],
        protocol=_protocol(raw.get("protocol", {}), path),
        params=_params(raw.get("params", {}), path, "params"),
        grid=_grid(raw.get("grid", {}), path, "grid"),
        method_params=method_params,
        method_grid=method_grid,
    )


def _protocol_kwargs(spec: SweepSpec) -> dict[str, Any]:
    p = spec.protocol
    num_tasks, per_task = parse_tasks(str(p["tasks"])) if "tasks" in p else (None, None)
    return {
        "num_tasks": num_tasks, "classes_per_task": per_task,
        "class_order": p.get("class_order"), "split_seed": int(p.get("split_seed", 0)),
        "graph": p.get("graph", "full"), "metric": p.get("metric", "accuracy"),
        "data_dir": p.get("data_dir"), "device": p.get("device", "cpu"),
    }


def _label(point: Mapping[str, Any], varying: Sequence[str]) -> str:
    return " ".join(f"{k}={point[k]}" for k in varying if k in point)


def grid_jobs(spec: SweepSpec) -> tuple[list[Job], dict[tuple, str], dict[tuple, int]]:
    """All grid jobs; a label per parent group; each group's grid order (for ties)."""
    from clbench.methods import METHODS

    kwargs = _protocol_kwargs(spec)
    jobs: list[Job] = []
    labels: dict[tuple, str] = {}
    order: dict[tuple, int] = {}
    unknown = [m for m in set(spec.method_params) | set(spec.method_grid) if m not in METHODS]
    if unknown:
        raise ClbenchError(f"{_where(spec.path)}: [method.{clip(unknown[0])}] names an "
                           "unknown method")
    for method in spec.methods:
        canon = METHODS.canonical(method)
        points, varying = spec.grid_points(canon)
        for i, point in enumerate(points):
            new = [replace(j, note=_label(point, varying))
                   for j in expand_jobs([canon], spec.datasets, spec.grid_seeds, params=point,
                                        plugins=spec.plugins, **kwargs)]
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


def logged_val_aps(groups: Mapping[tuple, str], children: Sequence[Any],
                   grid_seeds: Sequence[int]) -> dict[tuple, dict[int, float]]:
    """Validation AP per grid seed of each group's latest finished child run, for the
    groups' parent run ids ``groups[group]``."""
    from clbench import tracking as tr

    out: dict[tuple, dict[int, float]] = {}
    for group, parent_id in groups.items():
        mine = [c for c in children if c.parent_id == parent_id]
        chosen = tr.select_seed_runs(mine, set(grid_seeds))
        out[group] = {s: c.metrics["val_AP"] for s, c in chosen.items() if "val_AP" in c.metrics}
    return out


def select(val_aps: Mapping[tuple, Mapping[int, float]], labels: Mapping[tuple, str],
           order: Mapping[tuple, int], grid_seeds: Sequence[int],
           parents: Mapping[tuple, str] | None = None) -> list[Selection]:
    """Pick each (method, dataset)'s configuration by mean validation AP on the grid seeds
    (``val_aps[group][seed]``): configurations with every grid seed first, then the higher
    mean, then the earlier in grid order."""
    n_seeds = len(set(grid_seeds))
    by_pd: dict[tuple[str, str], list[tuple]] = {}
    for group, per_seed in val_aps.items():
        vals = list(per_seed.values())
        if not vals:
            continue
        mean = sum(vals) / len(vals)
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
    if on_stage:
        on_stage("grid", len(jobs))
    tracker.set_experiment_tags({tr.TAG_SWEEP_FILE: str(spec.path)})
    grid_groups = {j.group for j in jobs}
    grid = run_jobs(jobs, tracker, backend, results_dir=results_dir, force=force,
                    reporter=reporter, parent_labels=labels,
                    report_seeds={g: spec.grid_seeds for g in grid_groups})
    result = SweepResult(tracker.experiment_name, grid, [])
    if grid.interrupted:
        return result
    val_aps = logged_val_aps(grid.parents, tracker.children(), spec.grid_seeds)
    result.selections = select(val_aps, labels, order, spec.grid_seeds, grid.parents)
    selected = {(s.method, s.dataset, s.config_hash) for s in result.selections}
    for group, parent_id in grid.parents.items():
        tracker.set_tags(parent_id, {tr.TAG_SELECTED: "true" if group in selected else "false"})
    for s in result.selections:
        tracker.set_tags(s.parent_id, {tr.TAG_SELECTION: (
            f"best mean val AP {s.mean_val_ap:.4f} over grid seeds "
            f"{tr.seeds_text(spec.grid_seeds)} among {s.candidates} configuration(s)")})
        tracker.set_experiment_tags({
            f"{tr.TAG_SELECTED_PREFIX}{s.method}.{slug(s.dataset)}":
            f"{s.config_hash} ({s.label})" if s.label else s.config_hash})
    final_jobs = final_jobs_of(jobs, selected, spec)
    if on_stage:
        on_stage("final", len(final_jobs))
    if final_jobs:
        result.final = run_jobs(final_jobs, tracker, backend, results_dir=results_dir,
                                force=force, reporter=reporter, parent_labels=labels,
                                report_seeds={g: spec.final_seeds for g in selected})
    write_selection(result, Path(results_dir) / f"sweep-{slug(spec.experiment)}.csv")
    return result


def final_jobs_of(grid: Sequence[Job], selected: set[tuple], spec: SweepSpec) -> list[Job]:
    """The selected groups' jobs on the final seeds."""
    return [replace(j, seed=seed) for j in grid
            if j.group in selected and j.seed == spec.grid_seeds[0]
            for seed in spec.final_seeds]


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
    found = tracker.find_parents() if tracker is not None else {}
    groups = dict.fromkeys(j.group for j in jobs)
    val_aps = {g: {} for g in groups} | logged_val_aps(
        {g: found[g].run_id for g in groups if g in found}, children, spec.grid_seeds)
    for job, result in grid.saved:
        if "AP" in result.get("val_metrics", {}):
            val_aps[job.group][job.seed] = result["val_metrics"]["AP"]
    waiting = {(j.method, j.dataset) for j in grid.todo}
    plan.selections = select({g: v for g, v in val_aps.items() if g[:2] not in waiting},
                             labels, order, spec.grid_seeds)
    selected = {(s.method, s.dataset, s.config_hash) for s in plan.selections}
    plan.final = plan_jobs(final_jobs_of(jobs, selected, spec), children, results_dir,
                           spec.experiment, force=force)
    logged_by_grid = {j.key for j, _ in grid.saved}  # the grid stage logs these first
    plan.final.done += [j for j, _ in plan.final.saved if j.key in logged_by_grid]
    plan.final.saved = [(j, r) for j, r in plan.final.saved if j.key not in logged_by_grid]
    new_seeds = len(set(spec.final_seeds) - set(spec.grid_seeds))
    plan.final_after_grid = {pd: new_seeds for pd in dict.fromkeys(
        (j.method, j.dataset) for j in jobs) if pd in waiting}
    return plan


def write_selection(result: SweepResult, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    aggregates = result.final.aggregates if result.final else {}
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["method", "dataset", "config_hash", "config", "grid_mean_val_AP",
                    "grid_seeds_used", "candidates", "final_AP_mean", "final_AP_std",
                    "final_AF_mean", "final_AF_std", "final_n", "parent_run_id"])
        for s in result.selections:
            agg = aggregates.get((s.method, s.dataset, s.config_hash), {})
            ap, af = agg.get("AP", {}), agg.get("AF", {})
            w.writerow([s.method, s.dataset, s.config_hash, s.label, s.mean_val_ap, s.n_seeds,
                        s.candidates, ap.get("mean", ""), ap.get("std", ""), af.get("mean", ""),
                        af.get("std", ""), ap.get("n", ""), s.parent_id])
    return path
