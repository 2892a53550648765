"""Degenerate tasks: a task that learned nothing, whatever AP and AF say (a method with
zero forgetting by construction has AF = 0 on it). Checked for every run of every method.

The check reads each task's test nodes right after the task was learned, classified
among the task's own classes (as in Task-IL, in either setting), as a confusion matrix
(:func:`confusion`): the task learned nothing when its **balanced accuracy** (the mean
recall over its classes) is at most one test node above chance, ``1 / K`` for ``K``
classes with test nodes: every constant predictor, e.g. "always the majority class",
scores exactly ``1 / K``, and "one node" is the most one more correct node of the
smallest class adds, ``1 / (K * n_min)``.

Why balanced accuracy and not accuracy against the majority-class rate (the first form
of this check, kept for the records made before it, :func:`degenerate_tasks`): on a task
whose test split is imbalanced and whose training split is balanced (the Planetoid
splits: 20 training nodes per class), a classifier that learned can score at or below
the majority rate. EWC on CiteSeer, seed 1000, task 2 (77 / 160 test nodes): accuracy
0.6751, exactly the majority rate, with both classes predicted (recalls 0.87 and 0.58,
balanced accuracy 0.73). A task stuck at its majority class scores exactly chance.

In Class-IL ``R[i][i]`` also counts a node given to another task's class as wrong, so a
well-learned task can score below its majority rate there too (joint training on Cora
did): the own-class matrix is what tells whether the task learned its classes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import ArrayLike

if TYPE_CHECKING:  # torch only where a run computes (the tracking side reads lists)
    from torch import Tensor

    from clbench.scenario import NCScenarioLoader

#: Float slack of the comparison (scores are ratios of node counts).
EPS = 1e-9


def confusion(preds: Tensor, labels: Tensor, classes: Sequence[int]) -> list[list[int]]:
    """``C[a][b]``: the nodes of class ``classes[a]`` predicted as ``classes[b]`` (every
    prediction must be one of ``classes``: the task's own-class candidates)."""
    import torch

    labels, preds = labels.cpu().long(), preds.cpu().long()
    k = len(classes)
    top = max([int(max(classes))] + [int(t.max()) for t in (labels, preds) if t.numel()])
    index = torch.full((top + 1,), -1, dtype=torch.long)
    index[torch.as_tensor(list(classes), dtype=torch.long)] = torch.arange(k)
    truth, guess = index[labels], index[preds]
    if bool((truth < 0).any() or (guess < 0).any()):
        raise ValueError("confusion: a label or prediction outside the task's classes")
    return torch.bincount(truth * k + guess, minlength=k * k).view(k, k).tolist()


def balanced_check(matrix: Sequence[Sequence[int]]) -> tuple[float, float, float]:
    """``(balanced accuracy, chance, margin)`` of a task's confusion matrix, over the
    classes with test nodes: the mean recall, ``1 / K``, and ``1 / (K * n_min)``."""
    C = np.asarray(matrix, dtype=np.float64)
    counts = C.sum(1)
    present = counts > 0
    k = int(present.sum())
    if k == 0:
        return 0.0, 0.0, 0.0
    recall = np.diag(C)[present] / counts[present]
    return float(recall.mean()), 1.0 / k, 1.0 / (k * float(counts[present].min()))


def learned_balanced_accuracies(matrices: Sequence[Sequence[Sequence[int]]]) -> list[float]:
    """Each task's balanced accuracy among its own classes right after it was learned
    (``matrices``: the run's ``learned_confusion_test``); ``nan`` for a task with no
    test node. The diagonal of R, read so that a task stuck at one class scores chance."""
    out = []
    for m in matrices:
        score, chance, _ = balanced_check(m)
        out.append(score if chance > 0 else float("nan"))
    return out


def degenerate_from_confusion(matrices: Sequence[Sequence[Sequence[int]]]) -> list[int]:
    """The tasks whose balanced accuracy, right after they were learned (``matrices``:
    the run's ``learned_confusion_test``), is at most one test node above chance."""
    out = []
    for i, m in enumerate(matrices):
        score, chance, margin = balanced_check(m)
        if chance > 0 and score <= chance + margin + EPS:  # chance 0: no test node
            out.append(i)
    return out


def majority_baseline(scenario: NCScenarioLoader, split: str = "test"
                      ) -> tuple[list[float], list[float]]:
    """Per task: the score of predicting the task's most frequent ``split`` class for
    every node, and the score one more correctly predicted node adds (the margin)."""
    import torch

    graph = scenario.graph
    mask = getattr(graph, f"{split}_mask").cpu()
    task_of = scenario.node_task.cpu()
    labels = graph.y.cpu()
    scores, margins = [], []
    for t in range(scenario.num_tasks):
        y = labels[mask & (task_of == t)]
        counts = torch.bincount(y, minlength=scenario.num_classes)
        present = counts[counts > 0]
        n = int(present.sum())
        if scenario.metric == "accuracy":
            scores.append(float(present.max()) / n)
            margins.append(1.0 / n)
        else:
            k = int(present.numel())
            scores.append(1.0 / k)
            margins.append(1.0 / (k * int(present.min())))
    return scores, margins


def learned_scores(R: ArrayLike, own_class: Sequence[float] | None = None) -> list[float]:
    """Each task's score right after it was learned, as the check reads it: ``R[i][i]``,
    or in Class-IL (``own_class``, the run's ``own_class_test``) the task's score among
    its own classes."""
    if own_class:
        return [float(x) for x in own_class]
    return [float(x) for x in np.diag(np.asarray(R, dtype=np.float64))]


def degenerate_tasks(learned: Sequence[float], baseline: Sequence[float],
                     margin: Sequence[float]) -> list[int]:
    """The first form of the check, for records without confusion matrices: the tasks
    ``i`` with ``learned[i] <= baseline[i] + margin[i]`` (``learned``: from
    :func:`learned_scores`; ``baseline``: the majority-class score,
    :func:`majority_baseline`)."""
    return [i for i, r in enumerate(learned) if r <= baseline[i] + margin[i] + EPS]
