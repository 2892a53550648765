"""The preprocessing cache of a file-backed dataset: the prepared graph's tensors in one
torch file next to the raw files (``processed/clbench_*.pt``), valid while the raw files'
sizes and modification times match. Read with ``weights_only=True`` after a scan of its
globals: it never runs code, whoever wrote it."""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Protocol

import torch
from torch import Tensor

from clbench.datasets.base import DatasetCard, stratified_split
from clbench.datasets.safe_pickle import check_torch_file
from clbench.errors import short_error
from clbench.graph import Graph


class FileSource(Protocol):
    """What the cache needs of a :class:`clbench.datasets.loading.FileSource`."""

    official_split: bool

    def card_files(self) -> tuple[str, ...]: ...


#: Bump when the cache layout or the preprocessing changes; old caches are rebuilt.
CACHE_FORMAT = 1
#: Features sparser than this are cached as CSR components instead of a dense matrix.
SPARSE_CACHE_DENSITY = 0.25
_MASKS = ("train_mask", "val_mask", "test_mask")


def _fingerprint(root: Path, source: FileSource) -> list[list]:
    out = []
    for rel in source.card_files():
        st = (root / rel).stat()
        out.append([rel, int(st.st_size), int(st.st_mtime_ns)])
    return out


def read_cache(path: Path, source: FileSource, card: DatasetCard, root: Path) -> dict | None:
    """The cached tensors if the cache exists, is readable and matches the files."""
    if not path.is_file():
        return None
    try:
        check_torch_file(path, "it")
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        warnings.warn(f"ignoring unreadable cache {path} ({short_error(exc)}); rebuilding it",
                      stacklevel=3)
        return None
    if not isinstance(payload, dict) or payload.get("format") != CACHE_FORMAT:
        return None
    if payload.get("undirected") != card.undirected:
        return None
    try:
        if payload.get("fingerprint") != _fingerprint(root, source):
            return None
    except OSError:
        return None
    return payload


def write_cache(path: Path, graph: Graph, source: FileSource, card: DatasetCard,
                 root: Path) -> bool:
    try:
        fingerprint = _fingerprint(root, source)
    except OSError as exc:  # e.g. a downloaded archive that lacks one of the card's files
        warnings.warn(f"{card.name}: not caching the preprocessed graph ({short_error(exc)})",
                      stacklevel=3)
        return False
    x = graph.x
    payload: dict = {
        "format": CACHE_FORMAT,
        "name": card.name,
        "undirected": card.undirected,
        "fingerprint": fingerprint,
        "y": graph.y,
        "edge_index": graph.edge_index,
    }
    density = float((x != 0).sum()) / max(x.numel(), 1)
    if density < SPARSE_CACHE_DENSITY:
        csr = x.to_sparse_csr()
        payload.update(x_format="csr", x_shape=list(x.shape), x_crow=csr.crow_indices(),
                       x_col=csr.col_indices(), x_values=csr.values())
    else:
        payload.update(x_format="dense", x=x)
    if source.official_split:
        payload.update({m: getattr(graph, m) for m in _MASKS})
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(payload, tmp)
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        warnings.warn(f"could not write the preprocessing cache {path} ({short_error(exc)}); "
                      "the dataset will be preprocessed again next time", stacklevel=3)
        return False
    return True


def graph_from_cache(payload: dict, source: FileSource, card: DatasetCard,
                      split_seed: int) -> Graph | None:
    try:
        if payload["x_format"] == "csr":
            shape = tuple(int(s) for s in payload["x_shape"])
            x = torch.sparse_csr_tensor(payload["x_crow"], payload["x_col"], payload["x_values"],
                                        size=shape).to_dense()
        else:
            x = payload["x"]
        y: Tensor = payload["y"]
        edge_index: Tensor = payload["edge_index"]
        if source.official_split:
            masks = [payload[m] for m in _MASKS]
        else:
            masks = list(stratified_split(y, split_seed))
    except (KeyError, RuntimeError, TypeError, ValueError):
        return None
    n = y.numel()
    if x.size(0) != n or any(m.shape != (n,) for m in masks) or edge_index.size(0) != 2:
        return None
    return Graph(x, y, edge_index, masks[0], masks[1], masks[2], name=card.name)
