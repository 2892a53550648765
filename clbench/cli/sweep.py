"""``clbench sweep FILE.toml``: grid search on the grid seeds, selection by validation
AP, the selected configurations on the final seeds."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from clbench.cli import options as opt
from clbench.cli.app import ClbenchCommand, app, console
from clbench.cli.stores import existing_tracker, open_tracking, resolve_uri, sqlite_store
from clbench.cli.views import RichReporter, finish, print_estimate, render_plan


def _plan_sweep(spec, tracking_uri: str | None, runner, results_dir: Path, force: bool
                ) -> None:
    """``clbench sweep --dry-run``: each stage's jobs and the time left."""
    from clbench.orchestrate import relative_run_costs, typical_run_seconds
    from clbench.orchestrate.sweep import plan_sweep

    uri, tracker = existing_tracker(tracking_uri, spec.experiment)
    plan = plan_sweep(spec, tracker, results_dir=results_dir, force=force)
    console.print(f"sweep {spec.path} -> MLflow experiment {spec.experiment!r} at {uri} "
                  "(dry run: nothing runs or is logged)", markup=False, highlight=False,
                  soft_wrap=True)
    saved = [*plan.grid.saved, *plan.final.saved]
    seconds = typical_run_seconds(plan.children, saved)
    relative = relative_run_costs(results_dir, spec.experiment,
                                  [*plan.grid.todo, *plan.final.todo])
    stages = [render_plan("grid: every configuration on the grid seeds", plan.grid, seconds,
                          relative=relative)]
    if plan.selections:
        table = Table(title="selected (by mean validation AP on the grid seeds)")
        for col in ("method", "dataset", "config", "grid val AP"):
            table.add_column(col)
        for sel in plan.selections:
            table.add_row(escape(sel.method), escape(sel.dataset),
                          escape(sel.label or sel.config_hash), f"{sel.mean_val_ap:.4f}")
        console.print(table)
    stages.append(render_plan(
        "final: the selected configurations on the final seeds", plan.final, seconds,
        after_grid=plan.final_after_grid, order=[(j.method, j.dataset) for j in plan.grid.jobs],
        relative=relative))
    print_estimate(stages, runner)


@app.command(cls=ClbenchCommand)
def sweep(
    file: Annotated[Path, typer.Argument(help="Sweep TOML file (see sweeps/example.toml).")],
    jobs: opt.JobsOpt = None,
    backend: opt.BackendOpt = None,
    scheduler: opt.SchedulerOpt = None,
    tracking_uri: opt.TrackingOpt = None,
    experiment: Annotated[str | None, typer.Option(
        help="MLflow experiment (default: the file's `experiment`, else sweep-<file stem>).")]
        = None,
    force: opt.ForceOpt = False,
    results_dir: opt.ResultsOpt = Path("results"),
    data_dir: Annotated[str | None, typer.Option(
        help="Data root (default: the file's protocol.data_dir, else $CLBENCH_DATA, else "
             "./datasets). Not part of any run's identity, so a sweep resumes from any "
             "root.")] = None,
    plugin: opt.PluginOpt = None,
    methods: Annotated[str | None, typer.Option(
        "--methods", help="Run only these of the file's methods (comma-separated). The "
        "configuration is selected per method and dataset, so the other methods can run "
        "later with the same result.")] = None,
    datasets: Annotated[str | None, typer.Option(
        "--datasets", help="Run only these of the file's datasets (comma-separated).")]
        = None,
    dry_run: opt.DryRunOpt = False,
    quiet: opt.QuietOpt = False,
) -> None:
    """Grid-search hyperparameters, select by validation AP, run the final seeds.

    The grid runs on the file's grid seeds; the configuration with the best mean
    validation AP per method x dataset then runs on the final seeds (marked in MLflow).
    """
    from clbench.orchestrate import (
        LocalBackend,
        check_backend_options,
        make_backend,
        prepare_datasets,
    )
    from clbench.orchestrate.sweep import grid_jobs, run_sweep
    from clbench.orchestrate.sweepfile import load_sweep, restrict
    from clbench.parsing import parse_names
    from clbench.plugins import load_plugin

    check_backend_options(backend, jobs, scheduler)
    opt.check_given(tracking_uri=tracking_uri, experiment=experiment, data_dir=data_dir)
    spec = load_sweep(file)
    spec.plugins = opt.plugin_paths([*spec.plugins, *(plugin or [])])
    for p in spec.plugins:
        load_plugin(p)
    spec = restrict(spec, parse_names(methods, "--methods") if methods is not None else None,
                    parse_names(datasets, "--datasets") if datasets is not None else None)
    if experiment:
        spec.experiment = experiment
    if data_dir:
        spec.protocol["data_dir"] = data_dir
    first, _, _ = grid_jobs(spec)  # validates every name and grid value before anything runs
    opt.check_local_device(backend, jobs, scheduler, spec.protocol.get("device", "cpu"))
    if dry_run:
        _plan_sweep(spec, tracking_uri, make_backend(backend, jobs, scheduler), results_dir,
                    force)
        return
    from clbench.orchestrate import check_results_dir

    sqlite_store(resolve_uri(tracking_uri))  # a refused path, before anything is made
    check_results_dir(results_dir, spec.experiment, create=False)  # before anything starts
    runner = make_backend(backend, jobs, scheduler)
    runner.warm_up()  # workers import torch & co. while the store and the datasets open

    def stage(name: str, n: int) -> None:
        what = {"grid": "grid: every configuration on the grid seeds",
                "ready": "with it, the final seeds of the grids already complete",
                "final": "final: the selected configurations on the final seeds"}[name]
        console.print(f"[bold]{what}[/] ({n} job(s))", highlight=False, soft_wrap=True)

    try:
        uri, open_tracker = open_tracking(
            tracking_uri, spec.experiment,
            load_data=(lambda: prepare_datasets(first))
            if isinstance(runner, LocalBackend) else None)
        tracker = open_tracker()
        console.print(f"sweep {file} -> MLflow experiment {spec.experiment!r}; "
                      f"{runner.describe()}", markup=False, highlight=False, soft_wrap=True)
        result = run_sweep(spec, tracker, runner, results_dir=results_dir, force=force,
                           reporter=RichReporter(quiet), on_stage=stage)
    finally:
        runner.close()
    if result.selections:
        table = Table(title=escape(f"{spec.experiment}: selected configurations"))
        for col in ("method", "dataset", "config", "grid val AP", "final AP", "final AF", "n"):
            table.add_column(col)
        finals = result.final.aggregates if result.final else {}
        for s in result.selections:
            agg = finals.get((s.method, s.dataset, s.config_hash), {})

            def cell(name: str, agg=agg) -> str:
                v = agg.get(name)
                return "-" if v is None else f"{v['mean']:.4f} ± {v['std']:.4f}"

            table.add_row(escape(s.method), escape(s.dataset), escape(s.label or s.config_hash),
                          f"{s.mean_val_ap:.4f}", cell("AP"), cell("AF"),
                          str(agg.get("AP", {}).get("n", 0)))
        console.print(table)
    summaries = [result.grid] + ([result.final] if result.final else [])
    finish(summaries, results_dir, spec.experiment, uri)
