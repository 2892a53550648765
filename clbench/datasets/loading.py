"""Turn a dataset name (or a user's file) into a preprocessed :class:`Graph`."""

from __future__ import annotations

from pathlib import Path

from clbench.datasets.base import DATASETS, DatasetCard, data_root
from clbench.graph import Graph, prepare_graph


def resolve_card(name: str) -> DatasetCard:
    return DATASETS.get(name)


def load_graph(name: str, data_dir: str | Path | None = None, split_seed: int = 0) -> Graph:
    """Load dataset ``name`` from the data root and preprocess it."""
    card = resolve_card(name)
    root = data_root(data_dir)
    data = card.load(root, split_seed)
    graph = prepare_graph(data, card.name, undirected=card.undirected)
    graph.meta.update(card=card.name, split_seed=split_seed)
    return graph
