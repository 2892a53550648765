"""The ``clbench`` command line (built with Typer).

Bad input exits with status 2 and one line on stderr; a finished run prints the
accuracy matrix and the metrics, and ``--json`` writes everything to a file.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text
from typer.core import TyperGroup

from clbench.errors import ClbenchError, clip, quote

console = Console()
err_console = Console(stderr=True)


def print_error(message: object) -> None:
    """``error: <message>`` on stderr, on one line. The message is plain text, never
    Rich markup: it quotes user input (names, paths, values) verbatim, each word cut to
    300 characters (a 5,000-character name is not echoed whole)."""
    text = " ".join(clip(word, 300) for word in str(message).split())
    err_console.print(Text.assemble(("error:", "bold red"), " ", text), highlight=False,
                      soft_wrap=True)


class ClbenchGroup(TyperGroup):
    """Typer's command group, reporting a :class:`ClbenchError` raised by any command as
    its one-line message with exit status 2, so the console entry point, ``python -m
    clbench`` and Typer's ``CliRunner`` all see bad input the same way."""

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except ClbenchError as exc:
            print_error(exc)
            raise typer.Exit(2) from None


app = typer.Typer(
    cls=ClbenchGroup,
    add_completion=False,
    no_args_is_help=False,
    help="clbench: continual-learning benchmarks on graphs (Task-IL node classification).",
    pretty_exceptions_enable=False,
)


def render_result(result: dict) -> None:
    R = np.asarray(result["R_test"])
    T = R.shape[0]
    sc = result["scenario"]
    table = Table(title=escape(f"{result['method']} on {result['dataset']} (seed "
                               f"{result['seed']}): test {sc['metric']}, R[i][j] = task j "
                               f"after training task i"))
    table.add_column("after task", justify="right")
    for j in range(T):
        table.add_column(f"T{j} {sc['task_classes'][j]}", justify="right")
    for i in range(T):
        table.add_row(str(i), *(f"{R[i, j]:.3f}" for j in range(T)))
    console.print(table)
    m = result["metrics"]
    console.print("  ".join(f"{k} {v:+.4f}" if k != "AP" else f"{k} {v:.4f}" for k, v in m.items()))
    if sc["dropped_classes"]:
        console.print(f"dropped classes (not in any task): {sc['dropped_classes']}")
    t = result["timing"]
    console.print(
        f"time {t['total_seconds']:.1f}s (train per task: "
        f"{', '.join(f'{s:.1f}' for s in t['task_train_seconds'])}s), "
        f"peak RSS {result['peak_rss_mb']:.0f} MiB, "
        f"extra storage {result['extra_storage_bytes']} B"
    )


# --------------------------------------------------------------------------- orchestration
class RichReporter:
    """One bar over jobs (stderr) and a line per finished job with its AP/AF (stdout).

    Each line ends with the count of jobs ended so far, ``[k/n]``: the bar is not drawn
    when stderr is not a terminal (a sweep logging to a file), and the lines are then the
    only sign of how far the command has got.
    """

    def __init__(self, quiet: bool = False) -> None:
        self.progress = Progress(TextColumn("{task.description}"), BarColumn(),
                                 MofNCompleteColumn(), TimeElapsedColumn(),
                                 console=err_console, disable=quiet)
        self.bar = None
        self.total = 0
        self.ended = 0

    def start(self, total: int, skipped, recovered) -> None:
        if skipped:
            console.print(f"skipping {len(skipped)} job(s) that already have a FINISHED run "
                          f"(--force reruns them)", highlight=False)
        self.total, self.ended = total, 0
        if total:
            self.progress.start()
            self.bar = self.progress.add_task("jobs", total=total)

    def _line(self, text: str) -> None:
        self.ended += 1
        console.print(f"{text}  [{self.ended}/{self.total}]", highlight=False, soft_wrap=True)
        if self.bar is not None:
            self.progress.advance(self.bar)

    def job_finished(self, job, result: dict, recovered: bool = False) -> None:
        m = result["metrics"]
        t = result.get("timing", {}).get("total_seconds", float("nan"))
        how = "  (recovered from its saved result)" if recovered else f"  {t:.1f}s"
        self._line(f"[green]done[/]   {escape(job.label)}  AP {m['AP']:.4f}  "
                   f"AF {m['AF']:+.4f}{how}")

    def job_failed(self, job, error: str) -> None:
        self._line(f"[red]FAILED[/] {escape(job.label)}  {escape(error)}")

    def stop(self) -> None:
        self.progress.stop()

    def stopping(self, killed: int, parents: int) -> None:
        err_console.print(f"stopping: marking {killed} unfinished run(s) KILLED and closing "
                          f"{parents} parent run(s) in MLflow (finished results are kept)",
                          highlight=False)


def _render_aggregates(summary, title: str) -> None:
    table = Table(title=title)
    for col in ("method", "dataset", "seeds", "AP", "AF", "INT"):
        table.add_column(col, justify="left" if col in ("method", "dataset") else "right")
    for (method, dataset, _), agg in sorted(summary.aggregates.items()):
        def cell(name: str, agg=agg) -> str:
            v = agg.get(name)
            return "-" if v is None else f"{v['mean']:.4f} ± {v['std']:.4f}"
        n = agg.get("AP", {}).get("n", 0)
        table.add_row(escape(method), escape(dataset), str(n), cell("AP"), cell("AF"),
                      cell("INT"))
    console.print(table)


def _resolve_uri(tracking_uri: str | None) -> str:
    from clbench.tracking import resolve_tracking_uri

    return resolve_tracking_uri(tracking_uri)


def _sqlite_store(uri: str) -> bool | None:
    """Whether the SQLite file of ``uri`` exists (None for other stores); a path the
    file system refuses (e.g. a name too long) is an error."""
    from clbench.tracking import sqlite_file

    path = sqlite_file(uri)
    try:
        return None if path is None else path.exists()
    except OSError as exc:
        raise ClbenchError(f"--tracking-uri {clip(uri)}: {exc.strerror or exc}") from None


def _open_tracking(tracking_uri: str | None, experiment: str, must_exist: bool = False,
                   load_data=None):
    """Resolve the store and fail fast (exit 2) if it is unusable (or, ``must_exist``,
    a SQLite store that is not there yet: for commands that only read).

    ``load_data()`` (the datasets' loading) runs after that check, or before it when the
    check would create a new SQLite store: a dataset that fails to load then leaves no
    store behind."""
    from clbench.tracking import (
        Tracker,
        check_tracking_uri,
        require_existing_store,
        resolve_tracking_uri,
    )

    uri = resolve_tracking_uri(tracking_uri)
    new_store = _sqlite_store(uri) is False
    if must_exist:
        require_existing_store(uri)
    if load_data is not None and new_store:
        load_data()
    check_tracking_uri(uri)
    if load_data is not None and not new_store:
        load_data()
    return uri, lambda: Tracker(uri, experiment)


def _existing_tracker(tracking_uri: str | None, experiment: str):
    """The store's URI and the experiment's tracker, or None if the experiment (or the
    SQLite file) does not exist yet: a dry run creates nothing."""
    from mlflow.tracking import MlflowClient

    from clbench.tracking import Tracker, check_tracking_uri, resolve_tracking_uri

    uri = resolve_tracking_uri(tracking_uri)
    if _sqlite_store(uri) is False:
        return uri, None
    check_tracking_uri(uri)
    if MlflowClient(tracking_uri=uri).get_experiment_by_name(experiment) is None:
        return uri, None
    return uri, Tracker(uri, experiment, create=False)


def _hours(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    return f"{seconds / 3600:.1f} h" if seconds >= 5400 else f"{seconds / 60:.0f} min"


def _render_plan(title: str, plan, seconds: dict, after_grid: dict | None = None,
                 order: Sequence[tuple[str, str]] = ()) -> tuple[int, float, int, int]:
    """Print a stage's jobs per (method, dataset) (rows in ``order``, then in the plan's);
    return (jobs to train, their estimated seconds, how many of them have no estimate,
    saved results)."""
    keys = dict.fromkeys([*order, *((j.method, j.dataset) for j in plan.jobs),
                          *(after_grid or {})])
    rows = {k: [0, 0, 0] for k in keys}
    for i, jobs in enumerate((plan.done, [j for j, _ in plan.saved], plan.todo)):
        for job in jobs:
            rows[(job.method, job.dataset)][i] += 1
    for key, n in (after_grid or {}).items():
        rows[key][2] += n
    table = Table(title=title)
    for col in ("method", "dataset", "finished", "saved", "to run", "per run", "left"):
        table.add_column(col, justify="left" if col in ("method", "dataset") else "right",
                         no_wrap=True)
    todo = unknown = 0
    total = 0.0
    borrowed = False
    for (method, dataset), (done, saved, left) in rows.items():
        if not done + saved + left:
            continue
        typical = seconds.get((method, dataset))
        mark = ""
        if typical is None and (dataset, None) in seconds:
            typical, mark, borrowed = seconds[(dataset, None)], "*", True
        todo += left
        if typical is not None:
            total += left * typical
        elif left:
            unknown += left
        table.add_row(escape(method), escape(dataset), str(done), str(saved), str(left),
                      "-" if typical is None else _hours(typical) + mark,
                      "-" if typical is None or not left else _hours(left * typical) + mark)
    if rows:
        table.caption = ("saved: result JSON written, not yet logged (logged without "
                         "training); per run: median of the finished runs"
                         + ("; *: of other methods on the dataset" if borrowed else "")
                         + ("; a grid still running: the final seeds not among the grid "
                            "seeds" if after_grid else ""))
    console.print(table)
    return todo, total, unknown, len(plan.saved)


def _print_estimate(stages: list[tuple[int, float, int, int]], runner) -> None:
    """The closing line of a dry run: jobs to train and the time they need."""
    from clbench.orchestrate import LocalBackend

    todo, total, unknown, saved = (sum(s[i] for s in stages) for i in range(4))
    if not todo:
        console.print("nothing to train: " + (
            f"running the command logs the {saved} saved result(s)" if saved else
            "every job has a finished run"), highlight=False)
        return
    line = f"to train: {todo} job(s)"
    if todo > unknown:
        line += f"; ~{_hours(total)} of run time" + (
            f" for {todo - unknown} of them" if unknown else "")
        if isinstance(runner, LocalBackend):
            line += f", ~{_hours(total / runner.jobs)} of wall time at --jobs {runner.jobs}"
    if unknown:
        line += f"; {unknown} without a finished run to estimate from"
    console.print(line, highlight=False, soft_wrap=True)


def _plan_sweep(spec, tracking_uri: str | None, runner, results_dir: Path, force: bool
                ) -> None:
    """``clbench sweep --dry-run``: each stage's jobs and the time left."""
    from clbench.orchestrate import typical_run_seconds
    from clbench.orchestrate.sweep import plan_sweep

    uri, tracker = _existing_tracker(tracking_uri, spec.experiment)
    plan = plan_sweep(spec, tracker, results_dir=results_dir, force=force)
    console.print(f"sweep {spec.path} -> MLflow experiment {spec.experiment!r} at {uri} "
                  "(dry run: nothing runs or is logged)", markup=False, highlight=False,
                  soft_wrap=True)
    saved = [*plan.grid.saved, *plan.final.saved]
    seconds = typical_run_seconds(plan.children, saved)
    stages = [_render_plan("grid: every configuration on the grid seeds", plan.grid, seconds)]
    if plan.selections:
        table = Table(title="selected (by mean validation AP on the grid seeds)")
        for col in ("method", "dataset", "config", "grid val AP"):
            table.add_column(col)
        for sel in plan.selections:
            table.add_row(escape(sel.method), escape(sel.dataset),
                          escape(sel.label or sel.config_hash), f"{sel.mean_val_ap:.4f}")
        console.print(table)
    stages.append(_render_plan(
        "final: the selected configurations on the final seeds", plan.final, seconds,
        after_grid=plan.final_after_grid, order=[(j.method, j.dataset) for j in plan.grid.jobs]))
    _print_estimate(stages, runner)


def _finish(summaries: list, results_dir: Path, experiment: str, uri: str) -> None:
    """Print where things are; exit 130 when interrupted, 1 when a job failed."""
    from clbench.orchestrate import results_folder

    console.print(f"MLflow experiment {experiment!r} at {uri} (browse: clbench ui); "
                  f"results: {results_folder(results_dir, experiment)}", markup=False,
                  highlight=False, soft_wrap=True)
    abandoned = sum(len(s.abandoned) for s in summaries)
    if abandoned:
        console.print(f"closed {abandoned} MLflow run(s) that an earlier command left RUNNING "
                      "when it was stopped (marked KILLED)", highlight=False)
    failed = [line for s in summaries for line in s.failure_lines()]
    if any(s.interrupted for s in summaries):
        killed = sum(len(s.killed) for s in summaries)
        kept = sum(len(s.finished) for s in summaries)
        err_console.print(f"interrupted: {kept} finished job(s) kept, {killed} run(s) marked "
                          f"KILLED", highlight=False)
        raise typer.Exit(130)
    if failed:
        err_console.print(f"[bold red]{len(failed)} job(s) failed:[/]", highlight=False)
        for line in failed:
            err_console.print(f"  {line}", markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(1)


JobsOpt = Annotated[int | None, typer.Option(
    "--jobs", "-j", help="Parallel jobs on this machine (loky workers; -1 = all cores).")]
BackendOpt = Annotated[str | None, typer.Option(
    help="loky (local processes, default) or dask (an existing dask.distributed cluster).")]
SchedulerOpt = Annotated[str | None, typer.Option(
    help="Dask scheduler address for --backend dask, e.g. tcp://10.0.0.5:8786.")]
TrackingOpt = Annotated[str | None, typer.Option(
    help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db "
         "in the working directory).")]
ForceOpt = Annotated[bool, typer.Option(
    "--force", help="Rerun jobs that already have a FINISHED run.")]
ResultsOpt = Annotated[Path, typer.Option(
    help="Where each finished job's result JSON is saved (under runs/).")]
DryRunOpt = Annotated[bool, typer.Option(
    "--dry-run", help="Show which jobs are finished, saved or still to run, with an "
                      "estimate of the time left; run and log nothing.")]


@app.command()
def run(
    method: Annotated[str | None, typer.Option(
        "--method", "-m", help="Method name, or several comma-separated. Default: piggyback.")]
        = None,
    dataset: Annotated[str, typer.Option("--dataset", "-d",
                       help="Dataset name or .pt/.npz graph file; several comma-separated.")]
        = "synthetic",
    seed: Annotated[int | None, typer.Option(
        help="Training seed (also draws the class order). Default 0.")] = None,
    seeds: Annotated[str | None, typer.Option(
        help="Several seeds, e.g. 0-9 or 0,2,5-7 (runs through the orchestrator).")] = None,
    tasks: Annotated[str | None, typer.Option(
        help="Number of tasks, or TASKSxCLASSES (e.g. 3x2). Default: the dataset card.")] = None,
    epochs: Annotated[int | None, typer.Option(
        help="Maximum epochs per task. Default: 1000 (the protocol's epochs).")] = None,
    model: Annotated[str | None, typer.Option(
        help="Backbone: gcn, sage or gat. Default: gcn.")] = None,
    param: Annotated[list[str] | None, typer.Option(
        "--param", "-p", help="Hyperparameter override key=value, or method.key=value for one "
                              "method only (repeatable).")] = None,
    class_order: Annotated[str | None, typer.Option(
        help="Explicit class order, comma-separated (default: permutation from --seed).")] = None,
    graph: Annotated[str, typer.Option(
        help="full: whole graph in every task (BeGin); task: each task's induced subgraph "
             "(CGLB).")] = "full",
    metric: Annotated[str, typer.Option(
        help="Per-task score: accuracy or balanced_accuracy.")] = "accuracy",
    data_dir: Annotated[str | None, typer.Option(
        help="Data root (default: $CLBENCH_DATA, else ./datasets).")] = None,
    split_seed: Annotated[int, typer.Option(
        help="Seed of random train/val/test splits (kept apart from --seed).")] = 0,
    device: Annotated[str, typer.Option(help="torch device.")] = "cpu",
    plugin: Annotated[list[str] | None, typer.Option(
        help="Python file or module that registers methods/datasets (repeatable).")] = None,
    json_out: Annotated[Path | None, typer.Option(
        "--json", help="Write the full result (R matrices, metrics, config, timings) here "
                       "(a list of results for several jobs).")] = None,
    jobs: JobsOpt = None,
    backend: BackendOpt = None,
    scheduler: SchedulerOpt = None,
    tracking_uri: TrackingOpt = None,
    experiment: Annotated[str | None, typer.Option(
        help="MLflow experiment name (default: clbench).")] = None,
    force: ForceOpt = False,
    track: Annotated[bool, typer.Option(
        "--track", help="Log a single run to MLflow too (implied by the options above).")]
        = False,
    results_dir: ResultsOpt = Path("results"),
    dry_run: DryRunOpt = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")] = False,
) -> None:
    """Run Task-IL experiments: one, or a grid of methods x datasets x seeds.

    A single run (one method, dataset and --seed, no tracking option) prints its
    accuracy matrix and metrics. Several methods, datasets or --seeds, or any of
    --jobs/--backend/--tracking-uri/--experiment/--force/--track, go through the
    orchestrator: parallel jobs, MLflow runs, resume, result JSONs under results/runs/.
    """
    from clbench.experiment import run_experiment
    from clbench.parsing import (
        check_seed,
        parse_assignments,
        parse_int_list,
        parse_names,
        parse_seeds,
        parse_tasks,
    )
    from clbench.plugins import load_plugin
    from clbench.resolve import default_method, resolve_run

    for p in plugin or []:
        load_plugin(p)
    _check_given(tracking_uri=tracking_uri, experiment=experiment, data_dir=data_dir)
    _check_output_file(json_out, "--json")
    num_tasks, per_task = parse_tasks(tasks)
    params: dict = parse_assignments(param or [])
    if epochs is not None:
        if epochs < 1:
            raise ClbenchError(f"--epochs must be at least 1, got {epochs}")
        params["epochs"] = epochs
    if model is not None:
        params["model"] = model
    methods = parse_names(method, "--method") or [default_method()]
    datasets = parse_names(dataset, "--dataset")
    if seed is not None and seeds is not None:
        raise ClbenchError("give either --seed or --seeds, not both")
    seed_list = parse_seeds(seeds) if seeds is not None else [check_seed(seed or 0, "--seed")]
    check_seed(split_seed, "--split-seed")
    orchestrated = (len(methods) * len(datasets) * len(seed_list) > 1 or seeds is not None
                    or track or force or dry_run or any(v is not None for v in (
                        jobs, backend, scheduler, tracking_uri, experiment)))
    order = parse_int_list(class_order, "--class-order")
    if orchestrated:
        _run_grid(methods, datasets, seed_list, params=params, num_tasks=num_tasks,
                  per_task=per_task, class_order=order, graph=graph, metric=metric,
                  data_dir=data_dir, split_seed=split_seed, device=device,
                  plugins=list(plugin or []), json_out=json_out, jobs=jobs, backend=backend,
                  scheduler=scheduler, tracking_uri=tracking_uri,
                  experiment=experiment, force=force, results_dir=results_dir, quiet=quiet,
                  dry_run=dry_run)
        return
    # resolved before the progress bars: bad input gets its one line alone
    spec = resolve_run(methods[0], datasets[0], seed_list[0], num_tasks=num_tasks,
                       classes_per_task=per_task, class_order=order, params=params,
                       data_dir=data_dir, split_seed=split_seed, graph=graph, metric=metric,
                       device=device)
    from clbench.progress import RichProgress, TaskLines

    with RichProgress.bars(err_console, disable=quiet) as progress:
        lines = [] if console.is_terminal else [TaskLines(console)]  # a log file's progress
        result = run_experiment(spec, callbacks=[RichProgress(progress), *lines])
    render_result(result)
    if json_out is not None:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(result, indent=2))
        console.print(f"wrote {json_out}", markup=False)


def _check_given(**options: str | None) -> None:
    """Options given as an empty string are an error (not their default)."""
    for name, value in options.items():
        if value is not None and not value.strip():
            raise ClbenchError(f"--{name.replace('_', '-')} is empty")


def _check_output_file(path: Path | None, option: str) -> None:
    """Fail before anything runs when ``path`` cannot be written as a file: it is a
    directory, or one of its parents is a file."""
    if path is None:
        return
    try:
        if path.is_dir():
            raise ClbenchError(f"{option} {clip(path)} is a directory")
        parent = next((d for d in path.parents if d.exists()), None)
    except OSError as exc:  # e.g. a name too long for the file system
        raise ClbenchError(f"{option} {clip(path)}: {exc.strerror or exc}") from None
    if parent is not None and not parent.is_dir():
        raise ClbenchError(f"{option} {clip(path)}: {clip(parent)} is not a directory")


def _check_local_device(backend: str | None, jobs: int | None, scheduler: str | None,
                        device: str) -> None:
    """Jobs that run on this machine need ``device`` here (a Dask cluster's workers are
    checked when they run)."""
    from clbench.orchestrate import check_backend_options
    from clbench.resolve import check_device

    if check_backend_options(backend, jobs, scheduler)[0] == "loky":
        check_device(device)


def _check_output_dir(path: Path, option: str) -> None:
    """Fail before anything is read when ``path`` cannot be a directory to write into."""
    try:
        clash = next((d for d in (path, *path.parents) if d.exists() and not d.is_dir()),
                     None)
    except OSError as exc:  # e.g. a name too long for the file system
        raise ClbenchError(f"{option} {clip(path)}: {exc.strerror or exc}") from None
    if clash is not None:
        raise ClbenchError(f"{option} {clip(path)}: {clip(clash)} is not a directory")


def _plugin_paths(plugins: list[str]) -> list[str]:
    """Plugin files as absolute paths (workers may not share the working directory)."""
    from clbench.plugins import is_plugin_file

    return [str(Path(p).resolve()) if is_plugin_file(p) else p for p in plugins]


def _run_grid(methods, datasets, seeds, *, params, num_tasks, per_task, class_order, graph,
              metric, data_dir, split_seed, device, plugins, json_out, jobs, backend,
              scheduler, tracking_uri, experiment, force, results_dir, quiet,
              dry_run=False) -> None:
    from clbench.orchestrate import (
        LocalBackend,
        check_backend_options,
        expand_jobs,
        make_backend,
        prepare_datasets,
        run_jobs,
    )
    from clbench.tracking import DEFAULT_EXPERIMENT

    check_backend_options(backend, jobs, scheduler)
    job_list = expand_jobs(
        methods, datasets, seeds, params=params, num_tasks=num_tasks,
        classes_per_task=per_task, class_order=class_order, split_seed=split_seed,
        graph=graph, metric=metric, data_dir=data_dir, device=device,
        plugins=_plugin_paths(plugins),
    )
    _check_local_device(backend, jobs, scheduler, device)
    experiment = experiment or DEFAULT_EXPERIMENT
    if dry_run:
        from clbench.orchestrate import plan_jobs, typical_run_seconds

        runner = make_backend(backend, jobs, scheduler)
        uri, tracker = _existing_tracker(tracking_uri, experiment)
        children = tracker.children() if tracker else []
        plan = plan_jobs(job_list, children, results_dir, experiment, force=force)
        console.print(f"{len(job_list)} job(s) in MLflow experiment {experiment!r} at {uri} "
                      "(dry run: nothing runs or is logged)", markup=False, highlight=False,
                      soft_wrap=True)
        seconds = typical_run_seconds(children, plan.saved)
        _print_estimate([_render_plan("jobs", plan, seconds)], runner)
        return
    from clbench.orchestrate import check_results_dir

    _sqlite_store(_resolve_uri(tracking_uri))  # a refused path, before anything is made
    check_results_dir(results_dir, experiment, create=False)  # before anything starts
    runner = make_backend(backend, jobs, scheduler)
    runner.warm_up()  # workers import torch & co. while the store and the datasets open
    try:
        uri, open_tracker = _open_tracking(
            tracking_uri, experiment,
            load_data=(lambda: prepare_datasets(job_list))
            if isinstance(runner, LocalBackend) else None)
        tracker = open_tracker()
        console.print(f"{len(job_list)} job(s): {len(methods)} method(s) x {len(datasets)} "
                      f"dataset(s) x {len(seeds)} seed(s); {runner.describe()}",
                      markup=False, highlight=False, soft_wrap=True)
        summary = run_jobs(job_list, tracker, runner, results_dir=results_dir, force=force,
                           reporter=RichReporter(quiet))
    finally:
        runner.close()
    if len(job_list) == 1 and summary.finished:
        render_result(summary.finished[0][1])
    elif summary.aggregates:
        _render_aggregates(summary, escape(f"{experiment}: mean ± std over seeds"))
    if json_out is not None and summary.finished:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        payload = [r for _, r in summary.finished]
        json_out.write_text(json.dumps(payload[0] if len(job_list) == 1 else payload, indent=2))
        console.print(f"wrote {json_out}", markup=False)
    _finish([summary], results_dir, experiment, uri)


@app.command()
def sweep(
    file: Annotated[Path, typer.Argument(help="Sweep TOML file (see sweeps/example.toml).")],
    jobs: JobsOpt = None,
    backend: BackendOpt = None,
    scheduler: SchedulerOpt = None,
    tracking_uri: TrackingOpt = None,
    experiment: Annotated[str | None, typer.Option(
        help="MLflow experiment (default: the file's `experiment`, else sweep-<file stem>).")]
        = None,
    force: ForceOpt = False,
    results_dir: ResultsOpt = Path("results"),
    data_dir: Annotated[str | None, typer.Option(
        help="Data root (default: the file's protocol.data_dir, else $CLBENCH_DATA, else "
             "./datasets). Not part of any run's identity, so a sweep resumes from any "
             "root.")] = None,
    plugin: Annotated[list[str] | None, typer.Option(
        help="Python file or module that registers methods/datasets (repeatable).")] = None,
    dry_run: DryRunOpt = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")] = False,
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
    from clbench.orchestrate.sweepfile import load_sweep
    from clbench.plugins import load_plugin

    check_backend_options(backend, jobs, scheduler)
    _check_given(tracking_uri=tracking_uri, experiment=experiment, data_dir=data_dir)
    spec = load_sweep(file)
    spec.plugins = _plugin_paths([*spec.plugins, *(plugin or [])])
    for p in spec.plugins:
        load_plugin(p)
    if experiment:
        spec.experiment = experiment
    if data_dir:
        spec.protocol["data_dir"] = data_dir
    first, _, _ = grid_jobs(spec)  # validates every name and grid value before anything runs
    _check_local_device(backend, jobs, scheduler, spec.protocol.get("device", "cpu"))
    if dry_run:
        _plan_sweep(spec, tracking_uri, make_backend(backend, jobs, scheduler), results_dir,
                    force)
        return
    from clbench.orchestrate import check_results_dir

    _sqlite_store(_resolve_uri(tracking_uri))  # a refused path, before anything is made
    check_results_dir(results_dir, spec.experiment, create=False)  # before anything starts
    runner = make_backend(backend, jobs, scheduler)
    runner.warm_up()  # workers import torch & co. while the store and the datasets open

    def stage(name: str, n: int) -> None:
        what = ("grid: every configuration on the grid seeds" if name == "grid" else
                "final: the selected configurations on the final seeds")
        console.print(f"[bold]{what}[/] ({n} job(s))", highlight=False)

    try:
        uri, open_tracker = _open_tracking(
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
    _finish(summaries, results_dir, spec.experiment, uri)


@app.command()
def compare(
    experiment: Annotated[str, typer.Option(help="MLflow experiment to read.")] = "clbench",
    tracking_uri: TrackingOpt = None,
    out: Annotated[Path, typer.Option(help="Directory for the .md, .csv and .png.")]
        = Path("results"),
    all_configs: Annotated[bool, typer.Option(
        "--all-configs", help="In a sweep, show every configuration, not only the selected.")]
        = False,
    reference: Annotated[Path | None, typer.Option(
        help="CSV of published numbers (columns method,dataset,AP[,AF], 0-1 scale) shown "
             "beside each cell with the difference.")] = None,
    tolerance: Annotated[float, typer.Option(
        help="Target on |clbench AP - reference AP| (0-1 scale).")] = 0.02,
    notes: Annotated[Path | None, typer.Option(
        help="Markdown file appended to the table as its notes.")] = None,
    commit: Annotated[str | None, typer.Option(
        help="Git revision the runs used (default: the commit the runs logged, each version "
             "with its run count if they differ; if none logged one, `git rev-parse HEAD` "
             "now, said so).")]
        = None,
    run_command: Annotated[str | None, typer.Option(
        help="The exact command that produced the runs (default: reconstructed from the "
             "experiment's sweep-file tag).")] = None,
) -> None:
    """Table of AP and AF per method x dataset from MLflow (Markdown, CSV, bar chart).

    AP and AF as mean ± std with the seed count, written as Markdown, CSV and
    a grouped bar chart PNG, with the selected hyperparameters, commit, wall
    time and commands (and a reference, if given).
    """
    import shlex

    from clbench.compare import compare as do_compare
    from clbench.tracking import Tracker

    if not (math.isfinite(tolerance) and 0.0 <= tolerance <= 1.0):
        raise ClbenchError(f"--tolerance is on a 0-1 scale, got {tolerance}")
    _check_given(tracking_uri=tracking_uri, experiment=experiment)
    _check_output_dir(out, "--out")
    uri, _ = _open_tracking(tracking_uri, experiment, must_exist=True)
    command = shlex.join(["clbench", *sys.argv[1:]]) if sys.argv[1:2] == ["compare"] else ""
    report = do_compare(Tracker(uri, experiment, create=False), out, all_configs,
                        reference=reference, tolerance=tolerance, notes=notes, commit=commit,
                        run_command=run_command, compare_command=command)
    if not report.rows:
        raise ClbenchError(f"experiment {experiment!r} at {uri} has no finished runs to compare")
    datasets = list(dict.fromkeys(r.dataset for r in report.rows))
    table = Table(title=escape(f"{experiment}: AP / AF in % (mean ± std, n seeds)"))
    table.add_column("method")
    for d in datasets:
        table.add_column(escape(d), justify="right")
    cells = {(r.label, r.dataset): r for r in report.rows}
    for label in dict.fromkeys(r.label for r in report.rows):
        row = []
        for d in datasets:
            r = cells.get((label, d))
            if r is None:
                row.append("-")
                continue
            text = f"AP {r.cell('AP')}\nAF {r.cell('AF')} (n={len(r.seeds)})"
            delta = r.delta("AP")
            if delta is not None:
                text += f"\nref {r.reference['AP'] * 100:.1f}, Δ {delta * 100:+.1f}"
            row.append(text)
        table.add_row(escape(label), *row)
    console.print(table)
    for path in (report.markdown, report.csv, report.figure):
        console.print(f"wrote {path}", markup=False, highlight=False)


def ui_command(uri: str, host: str = "127.0.0.1", port: int = 5000) -> list[str]:
    """The ``mlflow ui`` command line serving the store at ``uri``."""
    import shutil

    exe = shutil.which("mlflow", path=str(Path(sys.executable).parent)) or shutil.which("mlflow")
    if exe is None:
        raise ClbenchError("the mlflow command is not installed (pip install mlflow)")
    return [exe, "ui", "--backend-store-uri", uri, "--host", host, "--port", str(port)]


@app.command()
def ui(
    tracking_uri: TrackingOpt = None,
    host: Annotated[str, typer.Option(help="Interface to bind (127.0.0.1: this machine only).")]
        = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port of the UI.")] = 5000,
) -> None:
    """Start the MLflow UI on the store clbench logs to (Ctrl-C stops it).

    The server and every process it starts stop with this command: on Ctrl-C or
    SIGTERM, and within seconds if the command itself is killed.
    """
    from clbench.serve import serve
    from clbench.tracking import resolve_tracking_uri

    uri = resolve_tracking_uri(tracking_uri)
    if uri.startswith(("http://", "https://")):
        console.print(f"{uri} is an MLflow server already: open it in a browser.", markup=False)
        return
    cmd = ui_command(uri, host, port)
    console.print(f"MLflow UI for {uri} at http://{host}:{port} (Ctrl-C stops it)",
                  highlight=False, soft_wrap=True, markup=False)
    raise typer.Exit(serve(cmd))


@app.command("list")
def list_(
    what: Annotated[str, typer.Argument(help="methods, datasets or models")] = "all",
    data_dir: Annotated[str | None, typer.Option(help="Data root to check for local files.")]
        = None,
    plugin: Annotated[list[str] | None, typer.Option(help="Plugin to load first.")] = None,
) -> None:
    """List methods (with hyperparameters), datasets (with sizes) and models."""
    from clbench.config import load_card
    from clbench.datasets import DATASETS, data_root
    from clbench.methods import METHODS
    from clbench.models import MODELS
    from clbench.plugins import load_plugin
    from clbench.resolve import check_data_dir
    from clbench.spec import PROTOCOL_DEFAULTS

    for p in plugin or []:
        load_plugin(p)
    _check_given(data_dir=data_dir)
    check_data_dir(data_dir)
    choices = ("all", "methods", "datasets", "models")
    if what not in choices:
        raise ClbenchError(f"unknown list {quote(what)}; choose one of {', '.join(choices)}")
    if what in ("all", "methods"):
        table = Table(title="methods (hyperparameter=default; override with --param)")
        table.add_column("method")
        table.add_column("aliases")
        table.add_column("hyperparameters")
        table.add_column("summary")
        for name in METHODS.names():
            card = load_card(name)
            hp = ", ".join(f"{k}={v}" for k, v in card.params.items()) or "-"
            table.add_row(escape(name), escape(", ".join(METHODS.aliases_of(name)) or "-"),
                          escape(hp), escape(card.summary))
        console.print(table)
        console.print("shared protocol parameters: "
                      + ", ".join(f"{k}={v}" for k, v in PROTOCOL_DEFAULTS.items()),
                      markup=False)
    if what in ("all", "datasets"):
        root = data_root(data_dir)
        try:
            from clbench.datasets.info import print_dataset_table
        except ImportError:
            table = Table(title=escape(f"datasets (data root: {root})"))
            for col in ("dataset", "nodes", "features", "classes", "default tasks", "local"):
                table.add_column(col)
            for name in DATASETS.names():
                c = DATASETS.get(name)
                table.add_row(escape(name), str(c.stats.get("nodes", "?")),
                              str(c.stats.get("features", "?")), str(c.stats.get("classes", "?")),
                              f"{c.num_tasks} x {c.classes_per_task}",
                              "yes" if c.is_local(root) else "no")
            console.print(table)
        else:
            print_dataset_table(root, console)
    if what in ("all", "models"):
        console.print("models: " + ", ".join(MODELS.names()), markup=False)


def main() -> None:
    """Console entry point: our errors exit 2 with one line (:class:`ClbenchGroup` reports
    those of the commands; this catches any raised outside them); click's usage errors (an
    unknown command or option, a value of the wrong type) exit 2 with click's own usage
    message, formatted by Typer (which vendors its own click since 0.2x, so its errors are
    not ``click.ClickException``s: letting Typer's standalone mode handle them is the one
    way that works across Typer versions)."""
    try:
        app()  # standalone mode: exits with the command's code (typer.Exit) or 0
    except ClbenchError as exc:
        print_error(exc)
        sys.exit(2)


if __name__ == "__main__":
    main()
