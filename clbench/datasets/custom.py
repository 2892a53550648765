"""A user's own graph: ``--dataset path/to/graph.pt`` (or ``.npz``).

The file holds, by name:

* ``x`` - node features, float ``[N, F]``;
* ``edge_index`` - integer ``[2, E]`` (source row, target row), ids in ``0..N-1``;
* ``y`` - integer class ids ``[N]`` (``-1`` for unlabelled nodes). The classes
  are ``0..C-1``: without ``num_classes``, every one of them must label at least
  one node, so a label past a gap (e.g. 459 among classes 0..6) is reported as
  outside ``[0, C)``;
* optionally ``num_classes`` - one integer, for files where some class has no
  node: labels must then lie in ``0..num_classes-1`` (gaps allowed);
* optionally ``train_mask``, ``val_mask``, ``test_mask`` - boolean ``[N]`` (all
  three or none). Without masks, a stratified 60/20/20 split is drawn from the
  split seed.

A ``.pt`` file is a ``torch.save``-d dict of tensors (or a PyG ``Data``), read
with ``torch.load(weights_only=True)`` after
:func:`~clbench.datasets.safe_pickle.check_torch_file` found no global beyond
torch's allow-list and PyG's ``Data`` classes: a pickle holding anything else
(custom classes, NumPy objects, classes other libraries register as safe, ...)
is rejected without running it. A ``.npz`` file is read with
``numpy.load(allow_pickle=False)``: object arrays are rejected. Save one with
``torch.save({"x": x, "edge_index": ei, "y": y}, "graph.pt")`` or
``numpy.savez("graph.npz", x=x, edge_index=ei, y=y)``.

The graph is made undirected, like the built-in datasets.
"""

from __future__ import annotations

import pickle
import warnings
import zipfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch_geometric.data import Data

from clbench.datasets.base import stratified_split
from clbench.datasets.safe_pickle import forbidden_torch_globals
from clbench.errors import DataError
from clbench.graph import Graph, prepare_graph

REQUIRED = ("x", "edge_index", "y")
MASKS = ("train_mask", "val_mask", "test_mask")
FORMAT_HINT = (
    "expected fields x [N, F] (float), edge_index [2, E] (int), y [N] (int) and optionally "
    "train_mask, val_mask, test_mask [N] (bool)"
)


def _refused(path: Path, detail: str) -> DataError:
    return DataError(
        f"{path}: not a plain tensor file; it is a pickle with Python objects that clbench "
        f"refuses to load ({' '.join(detail.split())[:200]}). Save a dict of tensors, e.g. "
        'torch.save({"x": x, "edge_index": edge_index, "y": y}, path)'
    )


def _read_pt(path: Path) -> Mapping[str, object]:
    refused = forbidden_torch_globals(path)
    if refused:
        raise _refused(path, ", ".join(refused))
    try:
        with warnings.catch_warnings():  # "Detected pickle protocol 4": a plain pickle
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        detail = str(exc)
        marker = "Unsupported global:"
        if marker in detail:
            detail = detail[detail.index(marker):].split("\n")[0].split(" was not")[0]
        elif "weights_only" in detail.lower() or "Weights only" in detail:
            detail = detail.strip().split("\n")[-1]
        raise _refused(path, detail) from exc
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile) as exc:
        raise DataError(
            f"{path}: cannot be read as a torch file ({type(exc).__name__}: "
            f"{' '.join(str(exc).split())[:200]}); it may be truncated or corrupt. "
            "Delete it and save it again."
        ) from exc
    if isinstance(obj, Data):
        return obj.to_dict()
    if not isinstance(obj, Mapping):
        raise DataError(f"{path}: holds a {type(obj).__name__}, not a dict of tensors; "
                        + FORMAT_HINT)
    return obj


def _read_npz(path: Path) -> Mapping[str, object]:
    try:
        with np.load(path, allow_pickle=False) as npz:
            out: dict[str, object] = {}
            for key in npz.files:
                try:
                    out[key] = npz[key]
                except ValueError as exc:  # object arrays need allow_pickle=True
                    raise DataError(
                        f"{path}: array {key!r} holds pickled Python objects, which clbench "
                        "refuses to load; store numeric arrays only"
                    ) from exc
            return out
    except DataError:
        raise
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, KeyError) as exc:
        raise DataError(
            f"{path}: cannot be read as an .npz archive ({type(exc).__name__}: "
            f"{' '.join(str(exc).split())[:200]}); it may be truncated or corrupt. "
            "Delete it and save it again."
        ) from exc


def _as_tensor(path: Path, key: str, value: object) -> Tensor:
    if isinstance(value, Tensor):
        if value.is_complex():
            raise DataError(f"{path}: field {key!r} has dtype {value.dtype}; it must be real")
        return value.to_dense() if value.is_sparse else value
    if isinstance(value, np.ndarray):
        if value.dtype.kind not in "biuf":
            raise DataError(f"{path}: field {key!r} has dtype {value.dtype}; it must be numeric")
        return torch.from_numpy(np.ascontiguousarray(value))
    raise DataError(f"{path}: field {key!r} must be a tensor or array, got "
                    f"{type(value).__name__}")


def _mask(path: Path, key: str, t: Tensor, n: int) -> Tensor:
    if t.dim() != 1 or t.numel() != n:
        raise DataError(f"{path}: {key} must have shape [{n}] (one entry per node), "
                        f"got {list(t.shape)}")
    if t.dtype == torch.bool:
        return t
    if t.is_floating_point() or not bool(((t == 0) | (t == 1)).all()):
        raise DataError(f"{path}: {key} must be boolean (or 0/1 integers), got {t.dtype}")
    return t.bool()


def _num_classes(path: Path, fields: Mapping[str, object]) -> int | None:
    """The optional ``num_classes`` field: one positive integer, or ``None`` if absent."""
    if "num_classes" not in fields:
        return None
    value = fields["num_classes"]
    try:
        t = torch.as_tensor(value)
    except (TypeError, ValueError, RuntimeError):
        t = None
    if (t is None or t.numel() != 1 or t.is_floating_point() or t.is_complex()
            or t.dtype == torch.bool or int(t.item()) < 1):
        raise DataError(f"{path}: num_classes must be one positive integer, got {value!r}")
    return int(t.item())


def _first(mask: Tensor) -> int:
    return int(mask.nonzero()[0, 0])


def _check_labels(path: Path, y: Tensor, num_classes: int | None) -> None:
    """Every label is -1 (unlabelled) or a class id in ``[0, C)``.

    ``C`` is ``num_classes`` when the file gives it; otherwise the classes are the
    consecutive ids from 0 that label at least one node, so a label past a gap is
    outside them (see the module docstring).
    """
    if num_classes is None:
        present = torch.unique(y[y >= 0])
        gaps = (present != torch.arange(present.numel())).nonzero()
        C = int(gaps[0, 0]) if gaps.numel() else int(present.numel())
    else:
        C = num_classes
    bad = (y < -1) | (y >= C)
    if not bool(bad.any()):
        return
    node = _first(bad)
    label = int(y[node])
    if label < 0:
        why = "class ids are >= 0; -1 marks an unlabelled node"
    elif num_classes is not None:
        why = f"num_classes = {num_classes} in the file"
    else:
        why = (f"class {C} labels no node, so the classes are 0..{C - 1}" if C else
               "class 0 labels no node")
    others = int(bad.sum()) - 1
    more = f"; {others} other node(s) have labels outside that range too" if others else ""
    hint = ("" if num_classes is not None or label < 0 else
            ". Number the classes 0..C-1 without gaps (numpy.unique(y, return_inverse=True) "
            "does it), or store num_classes in the file if some classes really have no node")
    raise DataError(f"{path}: label {label} of node {node} is outside [0, {C}) ({why}){more}"
                    f"{hint}")


def graph_data_from_fields(fields: Mapping[str, object], path: Path, split_seed: int) -> Data:
    """Validate the named arrays of a graph file and build a PyG ``Data`` with masks."""
    missing = [k for k in REQUIRED if k not in fields]
    if missing:
        found = ", ".join(sorted(map(str, fields))) or "nothing"
        raise DataError(f"{path}: missing field(s) {', '.join(missing)} (found: {found}); "
                        + FORMAT_HINT)
    x = _as_tensor(path, "x", fields["x"])
    edge_index = _as_tensor(path, "edge_index", fields["edge_index"])
    y = _as_tensor(path, "y", fields["y"])
    if x.dim() != 2:
        raise DataError(f"{path}: x must be 2-D [num_nodes, num_features], got {list(x.shape)}")
    n = x.size(0)
    if not x.is_floating_point():
        x = x.float()
    finite = torch.isfinite(x)
    if not bool(finite.all()):
        row, col = (int(i) for i in (~finite).nonzero()[0])
        raise DataError(f"{path}: x contains NaN or infinite values (the first: x[{row}, {col}] "
                        f"= {float(x[row, col])})")
    if y.dim() == 2 and y.size(1) == 1:
        y = y.view(-1)
    if y.dim() != 1 or y.numel() != n:
        raise DataError(f"{path}: y must have shape [{n}] (one class id per row of x), "
                        f"got {list(y.shape)}")
    if y.is_floating_point() or y.dtype == torch.bool:
        raise DataError(f"{path}: y must hold integer class ids, got {y.dtype}")
    if not bool((y >= 0).any()):
        if bool((y < -1).any()):
            node = _first(y < -1)
            raise DataError(f"{path}: label {int(y[node])} of node {node} is negative; class "
                            "ids are >= 0 and -1 marks an unlabelled node")
        raise DataError(f"{path}: y has no labelled node")
    _check_labels(path, y.long(), _num_classes(path, fields))
    if edge_index.dim() != 2 or edge_index.size(0) != 2:
        hint = " (it looks transposed: use edge_index.T)" if (
            edge_index.dim() == 2 and edge_index.size(1) == 2) else ""
        raise DataError(f"{path}: edge_index must have shape [2, E], got "
                        f"{list(edge_index.shape)}{hint}")
    if edge_index.is_floating_point() or edge_index.dtype == torch.bool:
        raise DataError(f"{path}: edge_index must hold integer node ids, got {edge_index.dtype}")
    edge_index = edge_index.long()
    outside = (edge_index < 0) | (edge_index >= n)
    if bool(outside.any()):
        row, col = (int(i) for i in outside.nonzero()[0])
        raise DataError(f"{path}: edge_index[{row}, {col}] = {int(edge_index[row, col])} refers "
                        f"to a node outside 0..{n - 1} (x has {n} rows); "
                        f"{int(outside.sum())} entr{'y' if int(outside.sum()) == 1 else 'ies'} "
                        "out of range in all")
    present = [k for k in MASKS if k in fields]
    if present and len(present) != len(MASKS):
        raise DataError(f"{path}: has {', '.join(present)} but not "
                        f"{', '.join(k for k in MASKS if k not in present)}; give all three "
                        "masks or none (then a stratified split is drawn from the split seed)")
    data = Data(x=x, edge_index=edge_index, y=y.long())
    if present:
        masks = [_mask(path, k, _as_tensor(path, k, fields[k]), n) for k in MASKS]
        if not bool(masks[0].any()):
            raise DataError(f"{path}: train_mask selects no node")
    else:
        masks = list(stratified_split(y.long(), split_seed))
    data.train_mask, data.val_mask, data.test_mask = masks
    return data


def load_custom_graph(path: str | Path, split_seed: int = 0) -> Graph:
    """Load and preprocess a user's ``.pt``/``.pth``/``.npz`` graph file."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(f"graph file {path} does not exist" if not path.exists()
                        else f"{path} is not a file")
    suffix = path.suffix.lower()
    if suffix in (".pt", ".pth"):
        fields = _read_pt(path)
    elif suffix == ".npz":
        fields = _read_npz(path)
    else:
        raise DataError(f"{path}: unsupported graph file type {suffix or '(none)'}; "
                        "use a .pt file (torch.save of a dict of tensors) or an .npz file")
    data = graph_data_from_fields(fields, path, split_seed)
    has_masks = all(k in fields for k in MASKS)
    graph = prepare_graph(data, path.stem, undirected=True)
    graph.meta.update(card="custom", source=str(path.resolve()), split_seed=split_seed,
                      split="file masks" if has_masks else "stratified")
    return graph
