r"""Continual-learning metrics as small pure functions over the accuracy matrix.

``R[i, j]`` is the accuracy on task ``j`` after training on tasks ``0..i``
(``T`` tasks, 0-based). All functions take array-likes and return floats.

* AP  = mean_j R[T-1, j]                               (average accuracy at the end)
* AF  = mean_{j<T-1} (R[j, j] - R[T-1, j])             (forgetting; positive = forgot)
* BWT = -AF                                            (backward transfer)
* FWT = mean_{j>=1} (R[j-1, j] - b[j])                 (forward transfer; b = untrained model)
* INT = mean_j (R*[j, j] - R[j, j])                    (intransigence; R* = joint training)

Undefined quantities (AF/BWT/FWT with a single task) are ``nan``.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike


def _square(R: ArrayLike) -> np.ndarray:
    R = np.asarray(R, dtype=np.float64)
    if R.ndim != 2 or R.shape[0] != R.shape[1] or R.shape[0] == 0:
        raise ValueError(f"accuracy matrix must be square and non-empty, got shape {R.shape}")
    return R


def average_accuracy(R: ArrayLike) -> float:
    """AP: mean accuracy over all tasks after the last task."""
    R = _square(R)
    return float(R[-1].mean())


def average_accuracy_curve(R: ArrayLike) -> list[float]:
    """AP so far: entry ``i`` is the mean accuracy over tasks ``0..i`` after task ``i``."""
    R = _square(R)
    return [float(R[i, : i + 1].mean()) for i in range(R.shape[0])]


def average_forgetting(R: ArrayLike) -> float:
    """AF: mean drop from just-learned accuracy to final accuracy, over tasks ``0..T-2``."""
    R = _square(R)
    T = R.shape[0]
    if T < 2:
        return float("nan")
    idx = np.arange(T - 1)
    return float((R[idx, idx] - R[-1, idx]).mean())


def backward_transfer(R: ArrayLike) -> float:
    """BWT = -AF."""
    return 0.0 - average_forgetting(R)  # 0.0, not -0.0, when nothing is forgotten


def forward_transfer(R: ArrayLike, initial: ArrayLike) -> float:
    """FWT: accuracy on task ``j`` just before learning it, minus an untrained model's."""
    R = _square(R)
    b = np.asarray(initial, dtype=np.float64)
    T = R.shape[0]
    if b.shape != (T,):
        raise ValueError(f"initial accuracies must have shape ({T},), got {b.shape}")
    if T < 2:
        return float("nan")
    j = np.arange(1, T)
    return float((R[j - 1, j] - b[j]).mean())


def intransigence(R: ArrayLike, R_joint: ArrayLike) -> float:
    """INT: how much less a method learns each new task than joint training does."""
    R, J = _square(R), _square(R_joint)
    if R.shape != J.shape:
        raise ValueError(f"matrices differ in shape: {R.shape} vs {J.shape}")
    return float((np.diag(J) - np.diag(R)).mean())


def summarize(
    R: ArrayLike, initial: ArrayLike | None = None, R_joint: ArrayLike | None = None
) -> dict[str, float]:
    """All final metrics of one run, keyed ``AP``, ``AF``, ``BWT``, ``FWT``, ``INT``."""
    out = {
        "AP": average_accuracy(R),
        "AF": average_forgetting(R),
        "BWT": backward_transfer(R),
    }
    if initial is not None:
        out["FWT"] = forward_transfer(R, initial)
    if R_joint is not None:
        out["INT"] = intransigence(R, R_joint)
    return out
