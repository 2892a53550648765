"""Datasets: cards in a registry, loaded by name or from a user's file.

Importing this package registers the built-in cards (from ``catalog.toml`` and the
synthetic dataset) without importing torch or PyG; the loaders import them when a
dataset is read (:func:`load_graph`, imported on first use).
"""

from typing import Any

from clbench.datasets import ogb, pyg, synthetic  # noqa: F401  (registers the built-in datasets)
from clbench.datasets.base import (
    DATASETS,
    DatasetCard,
    data_root,
    register_dataset,
    stratified_split,
)

__all__ = [
    "DATASETS",
    "DatasetCard",
    "data_root",
    "load_graph",
    "register_dataset",
    "stratified_split",
]


def __getattr__(name: str) -> Any:
    if name == "load_graph":
        from clbench.datasets.loading import load_graph

        return load_graph
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
