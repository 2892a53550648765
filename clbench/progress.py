"""Rich progress bars for a single run (``clbench run`` without the orchestrator)."""

from __future__ import annotations

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
        self.progress.update(self.epoch_bar, completed=epoch + 1,
                             description=f"task {task_id} val acc {results['val_metric']:.3f}")

    def on_task_end(self, trainer, task_id: int, test_row) -> None:
        self.progress.advance(self.tasks_bar)
