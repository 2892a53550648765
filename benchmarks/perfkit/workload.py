"""Deterministic benchmark workloads: an ogbn-arxiv-sized graph and the real Cora.

The arxiv-sized graph uses the real ogbn-arxiv labels (40 classes, real class
sizes) and years (OGB's time split: train <= 2017, valid 2018, test >= 2019) from
``ogbn-arxiv-labels-only/raw/``, which has no edges and no features. Edges and
features are generated from a seed:

* **edges**: ``num_edges`` directed pairs; the source is drawn with a heavy-tailed
  activity weight (a few hubs, as in citation graphs), the target is a node of the
  source's class with probability ``homophily`` and a uniformly random node
  otherwise. :func:`clbench.graph.prepare_graph` then makes them undirected and
  removes self-loops and duplicates, exactly as for the real dataset.
* **features**: ``num_features`` dense floats, a per-class mean plus unit noise.

The shared data folder is only read; Cora is copied into a temporary root first
(PyG writes ``processed/`` next to ``raw/``).
"""

from __future__ import annotations

import gzip
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch_geometric.data import Data

from clbench.graph import Graph, prepare_graph
from clbench.scenario import NCScenarioLoader

REPO = Path(__file__).resolve().parents[2]
SHARED_DATA = REPO / "tests" / "data"  # the real data shipped with the tests
ARXIV_RAW = "ogbn-arxiv-labels-only/raw"

#: ogbn-arxiv's size: directed citation edges (before making them undirected).
ARXIV_NODES = 169_343
ARXIV_EDGES = 1_166_243
ARXIV_FEATURES = 128
#: BeGin's Task-IL split of ogbn-arxiv.
ARXIV_TASKS, ARXIV_CLASSES_PER_TASK = 8, 5


@dataclass(frozen=True)
class WorkloadSpec:
    """Shape of a generated graph (defaults: ogbn-arxiv's)."""

    num_edges: int = ARXIV_EDGES
    num_features: int = ARXIV_FEATURES
    homophily: float = 0.75
    hub_exponent: float = 1.5
    seed: int = 0


def read_csv_column(path: Path, dtype: type = np.int64) -> np.ndarray:
    """One integer per line of a (gzipped) OGB raw CSV file."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt") as fh:
        return np.loadtxt(fh, dtype=dtype, ndmin=1)


def arxiv_labels_and_years(data_root: Path = SHARED_DATA) -> tuple[Tensor, Tensor]:
    """The real ogbn-arxiv labels ``[N]`` and publication years ``[N]``."""
    raw = Path(data_root) / ARXIV_RAW
    labels = torch.from_numpy(read_csv_column(raw / "node-label.csv.gz"))
    years = torch.from_numpy(read_csv_column(raw / "node_year.csv.gz"))
    if labels.numel() != years.numel():
        raise ValueError(f"{raw}: {labels.numel()} labels but {years.numel()} years")
    return labels, years


def time_split(years: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """OGB's ogbn-arxiv split: train <= 2017, validation 2018, test >= 2019."""
    return years <= 2017, years == 2018, years >= 2019


def homophilous_edges(y: Tensor, num_edges: int, homophily: float, hub_exponent: float,
                      generator: torch.Generator) -> Tensor:
    """``[2, num_edges]`` directed pairs, mostly between nodes of the same class.

    Sources follow a Pareto-like activity weight (``hub_exponent``; larger = fewer
    hubs); a target is a random node of the source's class with probability
    ``homophily``, else a uniformly random node.
    """
    n = y.numel()
    activity = torch.rand(n, generator=generator, dtype=torch.float64)
    activity = activity.clamp_min(1e-6).pow(-1.0 / hub_exponent)
    src = torch.multinomial(activity, num_edges, replacement=True, generator=generator)
    order = torch.argsort(y, stable=True)  # nodes grouped by class
    counts = torch.bincount(y, minlength=int(y.max()) + 1)
    starts = torch.cumsum(counts, 0) - counts
    c = y[src]
    pick = (torch.rand(num_edges, generator=generator, dtype=torch.float64)
            * counts[c].double()).long()
    same_class = order[starts[c] + pick.clamp_max(counts[c] - 1)]
    uniform = torch.randint(0, n, (num_edges,), generator=generator)
    homo = torch.rand(num_edges, generator=generator) < homophily
    dst = torch.where(homo, same_class, uniform)
    return torch.stack([src, dst])


def class_features(y: Tensor, num_features: int, generator: torch.Generator,
                   separation: float = 0.5) -> Tensor:
    """Dense features: ``separation`` x a random per-class mean, plus N(0, 1) noise."""
    num_classes = int(y.max()) + 1
    means = torch.randn(num_classes, num_features, generator=generator)
    noise = torch.randn(y.numel(), num_features, generator=generator)
    return noise.add_(means[y], alpha=separation)


def synthetic_graph(y: Tensor, years: Tensor, spec: WorkloadSpec = WorkloadSpec(),
                    name: str = "arxiv-sized") -> Graph:
    """A preprocessed clbench :class:`Graph` on the given labels and years."""
    gen = torch.Generator().manual_seed(spec.seed)
    y = y.long().view(-1)
    edge_index = homophilous_edges(y, spec.num_edges, spec.homophily, spec.hub_exponent, gen)
    x = class_features(y, spec.num_features, gen)
    train, val, test = time_split(years.view(-1))
    data = Data(x=x, y=y, edge_index=edge_index, train_mask=train, val_mask=val,
                test_mask=test)
    return prepare_graph(data, name)


def arxiv_sized_graph(data_root: Path = SHARED_DATA, spec: WorkloadSpec = WorkloadSpec()
                      ) -> Graph:
    """The ogbn-arxiv-sized benchmark graph (real labels and years, generated edges)."""
    y, years = arxiv_labels_and_years(data_root)
    return synthetic_graph(y, years, spec)


def arxiv_scenario(graph: Graph, seed: int = 0) -> NCScenarioLoader:
    """BeGin's Task-IL split of ogbn-arxiv: 8 tasks x 5 classes."""
    return NCScenarioLoader(graph, ARXIV_TASKS, ARXIV_CLASSES_PER_TASK, seed=seed)


def copy_cora(tmp_root: Path, data_root: Path = SHARED_DATA) -> Path:
    """Copy Cora's Planetoid raw files to ``tmp_root/Cora/raw``; returns ``tmp_root``
    (a clbench/PyG data root)."""
    dst = Path(tmp_root) / "Cora" / "raw"
    if not dst.is_dir():
        shutil.copytree(Path(data_root) / "cora" / "raw", dst)
    return Path(tmp_root)


def cora_graph(tmp_root: Path, data_root: Path = SHARED_DATA) -> Graph:
    """The real Cora (public split), preprocessed, read from a temporary copy."""
    from torch_geometric.datasets import Planetoid

    root = copy_cora(tmp_root, data_root)
    return prepare_graph(Planetoid(str(root), "Cora", split="public")[0], "cora")


def cora_scenario(graph: Graph, seed: int = 0) -> NCScenarioLoader:
    """clbench's default Task-IL split of Cora (3 tasks x 2 classes, as BeGin)."""
    return NCScenarioLoader(graph, 3, 2, seed=seed)

