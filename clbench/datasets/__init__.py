"""Datasets: cards in a registry, loaded by name or from a user's file."""

from clbench.datasets import ogb, pyg, synthetic  # noqa: F401  (registers the built-in datasets)
from clbench.datasets.base import (
    DATASETS,
    DatasetCard,
    data_root,
    register_dataset,
    stratified_split,
)
from clbench.datasets.loading import load_graph

__all__ = [
    "DATASETS",
    "DatasetCard",
    "data_root",
    "load_graph",
    "register_dataset",
    "stratified_split",
]
