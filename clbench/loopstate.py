"""What the training loop hands out and keeps: its callbacks' interface, BeGin's
scheduler, the task loss's weighting, the result of a run, and the loop's own per-task
state."""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import ReduceLROnPlateau

from clbench import statefile

if TYPE_CHECKING:  # pragma: no cover
    from clbench.trainer import NCTrainer

OptimizerFn = Callable[[Iterable[nn.Parameter]], Optimizer]


class TrainerCallback:
    """Observer of a run (progress bars, loggers). Every hook is optional."""

    def on_run_start(self, trainer: NCTrainer) -> None: ...
    def on_task_start(self, trainer: NCTrainer, task_id: int) -> None: ...
    def on_epoch_end(self, trainer: NCTrainer, task_id: int, epoch: int, results: dict) -> None: ...
    def on_task_end(self, trainer: NCTrainer, task_id: int, test_row: np.ndarray) -> None: ...


def plateau_scheduler(patience: int = 20, min_lr_ratio: float = 0.002) -> Callable:
    """BeGin's scheduler: ``ReduceLROnPlateau`` on val loss, floor = initial lr x ratio."""

    def make(optimizer: Optimizer) -> ReduceLROnPlateau:
        lr = optimizer.param_groups[0]["lr"]
        return ReduceLROnPlateau(optimizer, mode="min", patience=patience,
                                 min_lr=lr * min_lr_ratio)

    return make


@statefile.allow_object
@dataclass
class TrainerResult:
    """What :meth:`NCTrainer.run` returns. ``R_*[i, j]``: score on task j after task i."""

    R_test: np.ndarray
    R_val: np.ndarray
    init_test: np.ndarray
    init_val: np.ndarray
    task_train_seconds: list[float] = field(default_factory=list)
    task_eval_seconds: list[float] = field(default_factory=list)
    task_epochs: list[int] = field(default_factory=list)
    task_penalty_ratio: list[float | None] = field(default_factory=list)
    """Per task: a regulariser's weighted penalty / the task loss in the last epoch's
    train stats (:func:`penalty_ratio`); None for a method without a penalty (or before
    the method's first penalty, e.g. EWC's first task)."""
    own_class_test: list[float] = field(default_factory=list)
    """Class-IL only, per task: its test score right after it was learned with each node
    classified among its own task's classes (as in Task-IL), for the degenerate-task
    check; empty in Task-IL, where that score is ``R_test[i][i]``."""
    learned_confusion_test: list[list[list[int]]] = field(default_factory=list)
    """Per task: the confusion matrix of its test nodes right after it was learned, each
    node classified among its own task's classes (rows: true class, columns: predicted,
    in the order of ``task_classes``), for the degenerate-task check."""
    extra_storage_bytes: int = 0
    resumed_after_task: int | None = None
    """Set when the run continued from a resume point saved after this task."""
    earlier_seconds: float = 0.0
    """Time the interrupted attempts spent up to their last resume point."""


@statefile.allow_object
@dataclass
class TaskState:
    """The loop's own state while a task trains (``NCTrainer.task_state``).

    :meth:`NCTrainer.processBeforeTraining` starts one per task (after resetting the
    optimizer); :meth:`NCTrainer.processAfterEachIteration` keeps the best validation
    loss and weights and steps the scheduler; :meth:`NCTrainer.processAfterTraining`
    restores ``best_weights``. A method may read it; one that trains a task in phases
    (PackNet) starts a new one per phase.
    """

    task_id: int
    scheduler: Any = None
    """Made by the trainer's ``scheduler_fn`` over the main optimizer; the task stops
    when it has brought the learning rate down to its floor."""
    best_val_loss: float = math.inf
    best_weights: Any = None
    """What :meth:`NCTrainer.saveCheckpoint` returned at the best validation loss
    (None before the first epoch and after the restore)."""


@lru_cache(maxsize=256)
def takes_training_states(fn: Callable, bound: bool) -> bool:
    """Whether a ``processEvalIteration`` accepts the training states (a third argument
    after model and batch, or ``*args``). ``fn``: the function of a bound method
    (``bound``: its first parameter is self) or a plain callable."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):  # no signature to read: call it the new way
        return True
    try:
        sig.bind(*([None] * (4 if bound else 3)))
    except TypeError:
        return False
    return True


def penalty_ratio(train_stats: dict) -> float | None:
    """``penalty / task_loss`` of an epoch's train stats: how strongly a regulariser (a
    method that puts its weighted term in ``results["penalty"]``) pulls against the task.
    None without a penalty, or when the task loss is not positive (a ratio without
    meaning)."""
    penalty, task_loss = train_stats.get("penalty"), train_stats.get("task_loss")
    if penalty is None or task_loss is None or not task_loss > 0:
        return None
    return float(penalty) / float(task_loss)


def mean_stats(stats: Iterable[dict]) -> dict:
    """The mean of each statistic over a loader's batches."""
    stats = list(stats)
    if not stats:
        return {}
    return {k: float(np.mean([s[k] for s in stats])) for k in stats[0]}


def class_balance_weights(labels: Tensor, dtype: torch.dtype) -> Tensor:
    """Each node's weight under ``class_balanced``: 1 / the number of nodes of its class."""
    _, inverse, counts = torch.unique(labels, return_inverse=True, return_counts=True)
    return 1.0 / counts[inverse].to(dtype)


def task_loss(loss_fn: Callable[[Tensor, Tensor], Tensor], preds: Tensor, batch: Any,
              weighting: str = "none") -> Tensor:
    """The loss of ``preds`` (a batch's restricted logits) against its labels.

    ``batch``: one batch, or a sequence of batches whose restricted logits are
    concatenated in ``preds`` (a replay buffer or memory stored as one batch per task).

    ``none``: ``loss_fn(preds, local labels)``. ``class_balanced`` (CGLB's
    ``cls_balance``): the cross-entropy of each node weighted by 1 / the number of the
    batch's nodes of its (global) class, normalised by the sum of the weights, which is
    ``F.cross_entropy(..., weight=1 / counts)`` on a one-task batch; by global class, so
    a batch of several tasks (joint training, a replay buffer) balances every class, not
    the positions within a task. CGLB weights its replay and memory losses the same way.
    """
    batches = batch if isinstance(batch, list | tuple) else [batch]
    local = torch.cat([b.local_labels for b in batches]) if len(batches) > 1 \
        else batches[0].local_labels
    if weighting == "none":
        return loss_fn(preds, local)
    if weighting != "class_balanced":
        raise ValueError(f"unknown loss weighting {weighting!r}")
    labels = torch.cat([b.labels for b in batches]) if len(batches) > 1 else batches[0].labels
    w = class_balance_weights(labels, preds.dtype)
    per_node = F.cross_entropy(preds, local, reduction="none")
    return (w * per_node).sum() / w.sum()


def train_stats(results: dict, batch: Any) -> dict:
    """A training step's loss and accuracy; a regulariser that put its weighted term in
    ``results["penalty"]`` (already included in ``results["loss"]``) also gets
    ``penalty`` and ``task_loss`` (the loss without it)."""
    acc = (results["preds"].argmax(-1) == batch.local_labels).float().mean()
    stats = {"loss": results["loss"].item(), "acc": acc.item()}
    penalty = results.get("penalty")
    if penalty is not None:
        stats["penalty"] = float(torch.as_tensor(penalty).detach())
        stats["task_loss"] = stats["loss"] - stats["penalty"]
    return stats
