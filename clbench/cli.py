"""The ``clbench`` command line (built with Typer).

Bad input exits with status 2 and one line on stderr; a finished run prints the
accuracy matrix and the metrics, and ``--json`` writes everything to a file.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import numpy as np
import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from clbench.errors import ClbenchError
from clbench.trainer import TrainerCallback

app = typer.Typer(
    add_completion=False,
    no_args_is_help=False,
    help="clbench: continual-learning benchmarks on graphs (Task-IL node classification).",
    pretty_exceptions_enable=False,
)
console = Console()
err_console = Console(stderr=True)


def fail(message: str) -> None:
    err_console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(2)


def parse_tasks(text: str | None) -> tuple[int | None, int | None]:
    """``"5"`` -> 5 tasks; ``"3x2"`` -> 3 tasks of 2 classes."""
    if text is None:
        return None, None
    t, sep, c = text.lower().partition("x")
    try:
        return int(t), (int(c) if sep else None)
    except ValueError:
        raise ClbenchError(
            f"--tasks expects a number of tasks or TASKSxCLASSES (e.g. 3x2), got {text!r}"
        ) from None


def parse_int_list(text: str | None, option: str) -> list[int] | None:
    if text is None:
        return None
    try:
        return [int(v) for v in text.replace(" ", "").split(",") if v]
    except ValueError:
        raise ClbenchError(f"{option} expects comma-separated integers, got {text!r}") from None


class RichProgress(TrainerCallback):
    """A progress bar over tasks and one over the epochs of the current task."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress
        self.tasks_bar = None
        self.epoch_bar = None

    def on_run_start(self, trainer) -> None:
        self.max_epochs = trainer.epoch_per_task
        self.tasks_bar = self.progress.add_task("tasks", total=trainer.num_tasks)
        self.epoch_bar = self.progress.add_task("epochs", total=None)

    def on_task_start(self, trainer, task_id: int) -> None:
        self.progress.reset(self.epoch_bar, total=self.max_epochs,
                            description=f"task {task_id} epochs")

    def on_epoch_end(self, trainer, task_id: int, epoch: int, results: dict) -> None:
        self.progress.update(self.epoch_bar, completed=epoch + 1,
                             description=f"task {task_id} val acc {results['val_metric']:.3f}")

    def on_task_end(self, trainer, task_id: int, test_row) -> None:
        self.progress.advance(self.tasks_bar)


def render_result(result: dict) -> None:
    R = np.asarray(result["R_test"])
    T = R.shape[0]
    sc = result["scenario"]
    table = Table(title=f"{result['method']} on {result['dataset']} (seed {result['seed']}): "
                  f"test {sc['metric']}, R[i][j] = task j after training task i")
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


@app.command()
def run(
    method: Annotated[str | None, typer.Option("--method", "-m", help="Method name.")] = None,
    dataset: Annotated[str, typer.Option("--dataset", "-d",
                       help="Dataset name, or a .pt/.npz graph file.")] = "synthetic",
    seed: Annotated[int, typer.Option(help="Training seed (also draws the class order).")] = 0,
    tasks: Annotated[str | None, typer.Option(
        help="Number of tasks, or TASKSxCLASSES (e.g. 3x2). Default: the dataset card.")] = None,
    epochs: Annotated[int | None, typer.Option(help="Maximum epochs per task.")] = None,
    model: Annotated[str | None, typer.Option(help="Backbone: gcn, sage or gat.")] = None,
    param: Annotated[list[str] | None, typer.Option(
        "--param", "-p", help="Hyperparameter override key=value (repeatable).")] = None,
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
        "--json", help="Write the full result (R matrices, metrics, config, timings) here.")]
        = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")] = False,
) -> None:
    """Run one Task-IL experiment and print its accuracy matrix and metrics."""
    from clbench.config import parse_assignments
    from clbench.experiment import ExperimentSpec, default_method, run_experiment
    from clbench.plugins import load_plugin

    for p in plugin or []:
        load_plugin(p)
    num_tasks, per_task = parse_tasks(tasks)
    params: dict = parse_assignments(param or [])
    if epochs is not None:
        if epochs < 1:
            raise ClbenchError(f"--epochs must be at least 1, got {epochs}")
        params["epochs"] = epochs
    if model is not None:
        params["model"] = model
    spec = ExperimentSpec(
        method=method or default_method(), dataset=dataset, seed=seed, num_tasks=num_tasks,
        classes_per_task=per_task, class_order=parse_int_list(class_order, "--class-order"),
        params=params, data_dir=data_dir, split_seed=split_seed, graph=graph, metric=metric,
        device=device,
    )
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=err_console, disable=quiet,
                  transient=True) as progress:
        result = run_experiment(spec, callbacks=[RichProgress(progress)])
    render_result(result)
    if json_out is not None:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(result, indent=2))
        console.print(f"wrote {json_out}")


@app.command("list")
def list_(
    what: Annotated[str, typer.Argument(help="methods, datasets or models")] = "all",
    data_dir: Annotated[str | None, typer.Option(help="Data root to check for local files.")]
        = None,
    plugin: Annotated[list[str] | None, typer.Option(help="Plugin to load first.")] = None,
) -> None:
    """List methods (with hyperparameters), datasets (with sizes) and models."""
    from clbench.config import PROTOCOL_DEFAULTS, load_card
    from clbench.datasets import DATASETS, data_root
    from clbench.methods import METHODS
    from clbench.models import MODELS
    from clbench.plugins import load_plugin

    for p in plugin or []:
        load_plugin(p)
    choices = ("all", "methods", "datasets", "models")
    if what not in choices:
        raise ClbenchError(f"unknown list {what!r}; choose one of {', '.join(choices)}")
    if what in ("all", "methods"):
        table = Table(title="methods (hyperparameter=default; override with --param)")
        table.add_column("method")
        table.add_column("aliases")
        table.add_column("hyperparameters")
        table.add_column("summary")
        for name in METHODS.names():
            card = load_card(name)
            hp = ", ".join(f"{k}={v}" for k, v in card.params.items()) or "-"
            table.add_row(name, ", ".join(METHODS.aliases_of(name)) or "-", hp, card.summary)
        console.print(table)
        console.print("shared protocol parameters: "
                      + ", ".join(f"{k}={v}" for k, v in PROTOCOL_DEFAULTS.items()))
    if what in ("all", "datasets"):
        root = data_root(data_dir)
        try:
            from clbench.datasets.info import print_dataset_table
        except ImportError:
            table = Table(title=f"datasets (data root: {root})")
            for col in ("dataset", "nodes", "features", "classes", "default tasks", "local"):
                table.add_column(col)
            for name in DATASETS.names():
                c = DATASETS.get(name)
                table.add_row(name, str(c.stats.get("nodes", "?")),
                              str(c.stats.get("features", "?")), str(c.stats.get("classes", "?")),
                              f"{c.num_tasks} x {c.classes_per_task}",
                              "yes" if c.is_local(root) else "no")
            console.print(table)
        else:
            print_dataset_table(root, console)
    if what in ("all", "models"):
        console.print("models: " + ", ".join(MODELS.names()))


def main() -> None:
    """Console entry point: user errors exit 2 with one line."""
    try:
        app(standalone_mode=False)
    except ClbenchError as exc:
        err_console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except (typer.Abort, KeyboardInterrupt):
        err_console.print("aborted")
        sys.exit(130)
    except Exception as exc:  # click usage errors
        import click

        if isinstance(exc, click.ClickException):
            exc.show()
            sys.exit(exc.exit_code)
        raise


if __name__ == "__main__":
    main()
