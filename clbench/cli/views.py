"""What the commands print: a run's accuracy matrix, progress lines, aggregates, dry-run
plans with time estimates, and the closing summary (with the command's exit status)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from clbench.cli.app import console, err_console


def degenerate_warning(result: dict, label: str) -> None:
    """One line on stderr when a run has tasks that learned nothing."""
    tasks = result.get("degenerate_tasks")
    if not tasks:
        return
    from clbench.degenerate import balanced_check, learned_scores

    matrices = result.get("learned_confusion_test")
    if matrices is None:  # a record from before the balanced check: its first form
        base = result["majority_test"]
        learned = learned_scores(result["R_test"], result.get("own_class_test"))
        parts = ", ".join(f"task {i} ({learned[i]:.4f} vs majority {base[i]:.4f})"
                          for i in tasks)
        rule = "no more than one test node above the majority-class rate"
    else:
        checks = [balanced_check(m) for m in matrices]
        parts = ", ".join(f"task {i} (balanced accuracy {checks[i][0]:.4f} vs chance "
                          f"{checks[i][1]:.4f})" for i in tasks)
        rule = "balanced accuracy among its classes no more than one test node above chance"
    err_console.print(f"[yellow]warning[/] {escape(label)}: learned nothing ({rule}): "
                      f"{parts}", highlight=False, soft_wrap=True)


def render_result(result: dict) -> None:
    import numpy as np

    R = np.asarray(result["R_test"])
    T = R.shape[0]
    sc = result["scenario"]
    setting = {"class": "Class-IL"}.get(sc.get("setting", "task"), "Task-IL")
    table = Table(title=escape(f"{result['method']} on {result['dataset']} (seed "
                               f"{result['seed']}, {setting}): test {sc['metric']}, R[i][j] = "
                               f"task j after training task i"))
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
    ratios = result.get("task_penalty_ratio") or []
    if any(r is not None for r in ratios):
        console.print("penalty / task loss at the end of each task: " + ", ".join(
            "-" if r is None else f"{r:.3g}" for r in ratios), highlight=False)
    degenerate_warning(result, f"{result['method']} on {result['dataset']} (seed "
                               f"{result['seed']})")


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
        degenerate_warning(result, job.label)

    def job_failed(self, job, error: str) -> None:
        self._line(f"[red]FAILED[/] {escape(job.label)}  {escape(error)}")

    def stop(self) -> None:
        self.progress.stop()

    def stopping(self, killed: int, parents: int) -> None:
        err_console.print(f"stopping: marking {killed} unfinished run(s) KILLED and closing "
                          f"{parents} parent run(s) in MLflow (finished results are kept)",
                          highlight=False)


def render_aggregates(summary, title: str) -> None:
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


def hours(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    return f"{seconds / 3600:.1f} h" if seconds >= 5400 else f"{seconds / 60:.0f} min"


def render_plan(title: str, plan, seconds: dict, after_grid: dict | None = None,
                 order: Sequence[tuple[str, str]] = (),
                 relative: Mapping[str, float] | None = None) -> tuple[int, float, int, int]:
    """Print a stage's jobs per (method, dataset) (rows in ``order``, then in the plan's);
    return (jobs to train, their estimated seconds, how many of them have no estimate,
    saved results). ``seconds``: :func:`~clbench.orchestrate.typical_run_seconds`;
    ``relative``: :func:`~clbench.orchestrate.relative_run_costs`, which estimates a
    (method, dataset) without runs from the reference method's runs on the dataset."""
    from clbench.orchestrate.plan import COST_REFERENCE, estimated_run_seconds

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
    borrowed = scaled = False
    for (method, dataset), (done, saved, left) in rows.items():
        if not done + saved + left:
            continue
        typical, mark = estimated_run_seconds(method, dataset, seconds, relative)
        scaled, borrowed = scaled or mark == "†", borrowed or mark == "*"
        todo += left
        if typical is not None:
            total += left * typical
        elif left:
            unknown += left
        table.add_row(escape(method), escape(dataset), str(done), str(saved), str(left),
                      "-" if typical is None else hours(typical) + mark,
                      "-" if typical is None or not left else hours(left * typical) + mark)
    if rows:
        table.caption = ("saved: result JSON written, not yet logged (logged without "
                         "training); per run: median of the finished runs"
                         + (f"; †: {COST_REFERENCE}'s here x the method's cost relative "
                            f"to {COST_REFERENCE}'s in the other experiments' saved results"
                            if scaled else "")
                         + ("; *: of other methods on the dataset" if borrowed else "")
                         + ("; a grid still running: the final seeds not among the grid "
                            "seeds" if after_grid else ""))
    console.print(table)
    return todo, total, unknown, len(plan.saved)


def print_estimate(stages: list[tuple[int, float, int, int]], runner) -> None:
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
        line += f"; ~{hours(total)} of run time" + (
            f" for {todo - unknown} of them" if unknown else "")
        if isinstance(runner, LocalBackend):
            line += f", ~{hours(total / runner.jobs)} of wall time at --jobs {runner.jobs}"
    if unknown:
        line += f"; {unknown} without a finished run to estimate from"
    console.print(line, highlight=False, soft_wrap=True)


def finish(summaries: list, results_dir: Path, experiment: str, uri: str) -> None:
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
