"""Progress of a single run (``clbench run`` without the orchestrator): rich bars on a
terminal, and a line per finished task where the output goes to a file or a pipe."""

from __future__ import annotations

import math
import time

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from clbench.trainer import TrainerCallback


class RichProgress(TrainerCallback):
    """A progress bar over tasks and one over the epochs of the current task."""

    @staticmethod
    def bars(console: Console, disable: bool = False) -> Progress:
        """The two bars' container; use it as a context manager around the run."""
        return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TimeElapsedColumn(), console=console, disable=disable, transient=True)

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
        val = results["val_metric"]  # NaN: not scored every epoch (the fixed schedule)
        what = "epochs" if math.isnan(val) else f"val acc {val:.3f}"
        self.progress.update(self.epoch_bar, completed=epoch + 1,
                             description=f"task {task_id} {what}")

    def on_task_end(self, trainer, task_id: int, test_row) -> None:
        self.progress.advance(self.tasks_bar)


class TaskLines(TrainerCallback):
    """A line per finished task on ``console``: the bars are not drawn into a log file,
    so without these a long run's log stays empty until it ends."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.started = 0.0
        self.epochs = 0

    def on_task_start(self, trainer, task_id: int) -> None:
        self.started, self.epochs = time.perf_counter(), 0

    def on_epoch_end(self, trainer, task_id: int, epoch: int, results: dict) -> None:
        self.epochs = epoch + 1

    def on_task_end(self, trainer, task_id: int, test_row) -> None:
        seen = test_row[: task_id + 1]
        self.console.print(
            f"task {task_id + 1}/{trainer.num_tasks} done: test acc on it "
            f"{test_row[task_id]:.4f}, AP so far {sum(seen) / len(seen):.4f}, "
            f"{self.epochs} epochs, {time.perf_counter() - self.started:.1f} s",
            markup=False, highlight=False)
