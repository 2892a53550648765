"""Degenerate tasks: a task whose score right after it was learned, ``R[i][i]``, is at
most one test node above what predicting its most frequent class for every node scores
(or below it). Such a
task learned nothing, whatever AP and AF say (a method with zero forgetting by
construction has AF = 0 on it). Checked for every run of every method.

In Class-IL the score checked is the task's score among its own classes only (its nodes
classified as in Task-IL, right after the task; the run's ``own_class_test``): there
``R[i][i]`` counts a node given to another task's class as wrong, so a well-learned task
with a dominant class can score below its majority rate (joint training on Cora did),
while a task that never learned to tell its own classes apart still scores at most it.

The baseline is the majority-class predictor scored with the run's metric, and "one
node" is the most one more correctly predicted test node can add to that score:
``1 / n`` for accuracy over ``n`` nodes, ``1 / (K * n_c)`` for balanced accuracy over
``K`` classes (``n_c``: the smallest class's count).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from numpy.typing import ArrayLike

from clbench.scenario import NCScenarioLoader

#: Float slack of the comparison (scores are ratios of node counts).
EPS = 1e-9


def majority_baseline(scenario: NCScenarioLoader, split: str = "test"
                      ) -> tuple[list[float], list[float]]:
    """Per task: the score of predicting the task's most frequent ``split`` class for
    every node, and the score one more correctly predicted node adds (the margin)."""
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
    """The tasks ``i`` with ``learned[i] <= baseline[i] + margin[i]`` (``learned``: from
    :func:`learned_scores`)."""
    return [i for i, r in enumerate(learned) if r <= baseline[i] + margin[i] + EPS]
