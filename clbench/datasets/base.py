"""Dataset cards, the dataset registry and the data root (without importing torch:
the cards are known before anything is loaded)."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from clbench.errors import ClbenchError
from clbench.registry import Registry

if TYPE_CHECKING:  # pragma: no cover
    from torch import Tensor
    from torch_geometric.data import Data

#: ``load(root, split_seed) -> Data`` with x, edge_index, y and the three split masks.
Loader = Callable[[Path, int], "Data"]


@dataclass(frozen=True)
class DatasetCard:
    """What the suite knows about a dataset before loading it.

    Attributes:
        name: registry name, e.g. ``"cora"``.
        load: builds the PyG ``Data`` (with split masks) from files under ``root``.
        num_tasks, classes_per_task: the default Task-IL split.
        stats: published sizes (``nodes``, ``edges``, ``features``, ``classes``).
        files: paths below the data root whose presence means "available offline".
        sha256: published sha256 digests of files that are fixed public downloads
            (paths as in ``files``). The loader reads a file that matches as it is and
            vets any other one (Planetoid: restricted unpickling); a file without a
            digest here is never trusted by its name alone.
        split: how train/val/test are defined.
    """

    name: str
    load: Loader
    num_tasks: int
    classes_per_task: int
    description: str = ""
    source: str = ""
    license: str = ""
    split: str = ""
    stats: dict[str, int] = field(default_factory=dict)
    files: tuple[str, ...] = ()
    undirected: bool = True
    aliases: tuple[str, ...] = ()
    sha256: dict[str, str] = field(default_factory=dict)

    def is_local(self, root: Path) -> bool:
        """True when every file the loader needs is already under ``root``."""
        return all((root / f).exists() for f in self.files)


DATASETS: Registry[DatasetCard] = Registry("dataset", entry_point_group="clbench.datasets")


def register_dataset(card: DatasetCard) -> DatasetCard:
    """Add a dataset card to the registry (third parties may call this too)."""
    DATASETS.register(card.name, card, aliases=card.aliases)
    return card


def data_root(cli_value: str | os.PathLike | None = None) -> Path:
    """The data root: ``--data-dir``, else ``$CLBENCH_DATA``, else ``./datasets``."""
    value = cli_value or os.environ.get("CLBENCH_DATA") or "datasets"
    return Path(value).expanduser()


def stratified_split(
    y: Tensor, seed: int, fractions: tuple[float, float, float] = (0.6, 0.2, 0.2)
) -> tuple[Tensor, Tensor, Tensor]:
    """Boolean train/val/test masks, stratified by class, drawn from ``seed``.

    Nodes labelled ``-1`` stay out of all three. Uses scikit-learn's stratified
    splitting; classes too small to stratify are split at random.
    """
    import numpy as np
    import torch

    if not np.isclose(sum(fractions), 1.0):
        raise ClbenchError(f"split fractions must sum to 1, got {fractions}")
    from sklearn.model_selection import train_test_split  # lazy: ~2 s of imports

    labels = y.cpu().numpy()
    idx = np.flatnonzero(labels >= 0)
    lab = labels[idx]
    counts = np.bincount(lab)
    stratify = lab if counts[counts > 0].min() >= 3 else None
    train_idx, rest = train_test_split(
        idx, train_size=fractions[0], random_state=seed, stratify=stratify
    )
    rest_lab = labels[rest]
    rest_counts = np.bincount(rest_lab)
    can_stratify = stratify is not None and rest_counts[rest_counts > 0].min() >= 2
    rest_strat = rest_lab if can_stratify else None
    val_share = fractions[1] / (fractions[1] + fractions[2])
    val_idx, test_idx = train_test_split(
        rest, train_size=val_share, random_state=seed, stratify=rest_strat
    )
    masks = []
    for chosen in (train_idx, val_idx, test_idx):
        m = torch.zeros(len(labels), dtype=torch.bool)
        m[torch.as_tensor(chosen)] = True
        masks.append(m)
    return masks[0], masks[1], masks[2]
