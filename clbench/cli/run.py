"""``clbench run``: one experiment, or a grid of methods x datasets x seeds through the
orchestrator."""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape

from clbench.cli.app import ClbenchCommand, app, console, err_console
from clbench.cli.options import (
    BackendOpt,
    DryRunOpt,
    ForceOpt,
    JobsOpt,
    PluginOpt,
    QuietOpt,
    ResultsOpt,
    SchedulerOpt,
    TrackingOpt,
    check_given,
    check_local_device,
    check_output_file,
    plugin_paths,
)
from clbench.cli.stores import existing_tracker, open_tracking, resolve_uri, sqlite_store
from clbench.cli.views import (
    RichReporter,
    finish,
    print_estimate,
    render_aggregates,
    render_plan,
    render_result,
)
from clbench.errors import ClbenchError
from clbench.threads import configure_openmp, usable_cores

if TYPE_CHECKING:  # pragma: no cover
    from clbench.spec import RunSpec


@app.command(cls=ClbenchCommand)
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
    preset: Annotated[str | None, typer.Option(
        help="Protocol preset: begin (the defaults) or cglb (see clbench list presets); "
             "--param and the flags below override it.")] = None,
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
    graph: Annotated[str | None, typer.Option(
        help="full: whole graph in every task (BeGin, default); task: each task's induced "
             "subgraph (CGLB).")] = None,
    metric: Annotated[str | None, typer.Option(
        help="Per-task score: accuracy (default) or balanced_accuracy.")] = None,
    setting: Annotated[str | None, typer.Option(
        help="task: Task-IL (default), a node is classified among its task's classes; "
             "class: Class-IL, among every class seen so far (no task identity).")] = None,
    split: Annotated[str | None, typer.Option(
        help="dataset: the official split where the dataset has one (default); random: a "
             "stratified 60/20/20 split from --split-seed on every dataset (CGLB).")] = None,
    data_dir: Annotated[str | None, typer.Option(
        help="Data root (default: $CLBENCH_DATA, else ./datasets).")] = None,
    split_seed: Annotated[int | None, typer.Option(
        help="Seed of random train/val/test splits (kept apart from --seed). Default 0.")]
        = None,
    device: Annotated[str, typer.Option(help="torch device.")] = "cpu",
    threads: Annotated[int | None, typer.Option(
        help="torch threads per run, logged. Default: the usable cores for a single run "
             "alone, 1 for each orchestrated job (the thread count changes floating-point "
             "sums: --threads 1 gives a seed's numbers exactly as the orchestrator and the "
             "committed tables do).")] = None,
    plugin: PluginOpt = None,
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
    quiet: QuietOpt = False,
) -> None:
    """Run continual-learning experiments (Task-IL, or Class-IL with --setting class): one,
    or a grid of methods x datasets x seeds.

    A single run (one method, dataset and --seed, no tracking option) prints its
    accuracy matrix and metrics. Several methods, datasets or --seeds, or any of
    --jobs/--backend/--tracking-uri/--experiment/--force/--track, go through the
    orchestrator: parallel jobs, MLflow runs, resume, result JSONs under results/runs/.
    """
    from clbench.methods import METHODS
    from clbench.parsing import (
        check_seed,
        parse_assignments,
        parse_int_list,
        parse_names,
        parse_seeds,
        parse_tasks,
    )
    from clbench.plugins import load_plugin
    from clbench.resolve import default_method, resolve_grid, resolve_run, split_overrides

    for p in plugin or []:
        load_plugin(p)
    check_given(tracking_uri=tracking_uri, experiment=experiment, data_dir=data_dir)
    check_output_file(json_out, "--json")
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
    if split_seed is not None:
        check_seed(split_seed, "--split-seed")
    given = {"class_order": parse_int_list(class_order, "--class-order"),
             "split_seed": split_seed, "graph": graph, "metric": metric, "setting": setting,
             "split": split}
    tasks_kw: dict = {"preset": preset, **{k: v for k, v in given.items() if v is not None}}
    if tasks is not None:  # both, so that --tasks replaces a preset's split as a whole
        tasks_kw.update(num_tasks=num_tasks, classes_per_task=per_task)
    grid = GridOptions(jobs=jobs, backend=backend, scheduler=scheduler,
                       tracking_uri=tracking_uri, experiment=experiment, force=force,
                       results_dir=results_dir, quiet=quiet, dry_run=dry_run,
                       json_out=json_out)
    if track or seeds is not None or grid.orchestrated or len(methods) * len(datasets) * len(
            seed_list) > 1:
        grid.check()
        specs = resolve_grid(methods, datasets, seed_list, params=params, data_dir=data_dir,
                             device=device, threads=threads,
                             plugins=plugin_paths(list(plugin or [])), **tasks_kw)
        check_local_device(backend, jobs, scheduler, device)
        run_grid(specs, grid, shape=(len(methods), len(datasets), len(seed_list)))
        return
    # resolved before the progress bars: bad input gets its one line alone. A
    # ``method.key`` override means the same as in a grid (the method is the one run).
    method = METHODS.canonical(methods[0])
    shared, per = split_overrides(params, [method])
    # one run alone takes the usable cores (orchestrated jobs: one each). OpenMP reads its
    # wait policy when torch loads, and checking a device other than cpu loads torch: the
    # policy is chosen after every other check and before that one.
    cores: list[int] = []

    def choose_wait_policy() -> None:
        cores.append(threads or usable_cores())
        configure_openmp(cores[0])

    spec = resolve_run(method, datasets[0], seed_list[0], params={**shared, **per[method]},
                       data_dir=data_dir, device=device, threads=threads,
                       before_device=choose_wait_policy, **tasks_kw)
    spec = replace(spec, threads=cores[0])
    from clbench.experiment import run_experiment  # torch & co.: after every check
    from clbench.progress import RichProgress, TaskLines

    with RichProgress.bars(err_console, disable=quiet) as progress:
        lines = [] if console.is_terminal else [TaskLines(console)]  # a log file's progress
        result = run_experiment(spec, callbacks=[RichProgress(progress), *lines])
    render_result(result)
    if json_out is not None:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(result, indent=2))
        console.print(f"wrote {json_out}", markup=False)


@dataclass(frozen=True)
class GridOptions:
    """How a grid of runs is run and logged: ``clbench run``'s orchestrator options."""

    jobs: int | None = None
    backend: str | None = None
    scheduler: str | None = None
    tracking_uri: str | None = None
    experiment: str | None = None
    force: bool = False
    results_dir: Path = Path("results")
    quiet: bool = False
    dry_run: bool = False
    json_out: Path | None = None

    @property
    def orchestrated(self) -> bool:
        """Whether these options ask for the orchestrator even for a single run."""
        return self.force or self.dry_run or any(v is not None for v in (
            self.jobs, self.backend, self.scheduler, self.tracking_uri, self.experiment))

    def check(self) -> None:
        from clbench.orchestrate import check_backend_options

        check_backend_options(self.backend, self.jobs, self.scheduler)


def run_grid(specs: list[RunSpec], opts: GridOptions, shape: tuple[int, int, int]) -> None:
    """Run ``specs`` through the orchestrator (``shape``: methods, datasets, seeds)."""
    from clbench.orchestrate import (
        LocalBackend,
        check_results_dir,
        make_backend,
        plan_jobs,
        prepare_datasets,
        relative_run_costs,
        run_jobs,
        typical_run_seconds,
    )
    from clbench.tracking import DEFAULT_EXPERIMENT

    experiment = opts.experiment or DEFAULT_EXPERIMENT
    if opts.dry_run:
        runner = make_backend(opts.backend, opts.jobs, opts.scheduler)
        uri, tracker = existing_tracker(opts.tracking_uri, experiment)
        children = tracker.children() if tracker else []
        plan = plan_jobs(specs, children, opts.results_dir, experiment, force=opts.force)
        console.print(f"{len(specs)} job(s) in MLflow experiment {experiment!r} at {uri} "
                      "(dry run: nothing runs or is logged)", markup=False, highlight=False,
                      soft_wrap=True)
        seconds = typical_run_seconds(children, plan.saved)
        relative = relative_run_costs(opts.results_dir, experiment, plan.todo)
        print_estimate([render_plan("jobs", plan, seconds, relative=relative)], runner)
        return
    sqlite_store(resolve_uri(opts.tracking_uri))  # a refused path, before anything is made
    check_results_dir(opts.results_dir, experiment, create=False)  # before anything starts
    threads = max(s.threads or 1 for s in specs)
    configure_openmp(threads)  # before the workers start
    # default: a worker per usable core, but no more workers than jobs
    jobs = opts.jobs if opts.jobs is not None else min(usable_cores(), len(specs))
    runner = make_backend(opts.backend, jobs, opts.scheduler)
    runner.warm_up()  # workers import torch & co. while the store and the datasets open
    try:
        uri, open_tracker = open_tracking(
            opts.tracking_uri, experiment,
            load_data=(lambda: prepare_datasets(specs))
            if isinstance(runner, LocalBackend) else None)
        tracker = open_tracker()
        console.print(f"{len(specs)} job(s): {shape[0]} method(s) x {shape[1]} dataset(s) x "
                      f"{shape[2]} seed(s); {runner.describe()}, {threads} torch "
                      "thread(s) per job",
                      markup=False, highlight=False, soft_wrap=True)
        summary = run_jobs(specs, tracker, runner, results_dir=opts.results_dir,
                           force=opts.force, reporter=RichReporter(opts.quiet))
    finally:
        runner.close()
    if len(specs) == 1 and summary.finished:
        render_result(summary.finished[0][1])
    elif summary.aggregates:
        render_aggregates(summary, escape(f"{experiment}: mean ± std over seeds"))
    if opts.json_out is not None and summary.finished:
        opts.json_out.parent.mkdir(parents=True, exist_ok=True)
        payload = [r for _, r in summary.finished]
        opts.json_out.write_text(json.dumps(payload[0] if len(specs) == 1 else payload,
                                            indent=2))
        console.print(f"wrote {opts.json_out}", markup=False)
    finish([summary], opts.results_dir, experiment, uri)
