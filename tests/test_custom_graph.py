"""A user's own graph file: ``--dataset path/to/graph.pt`` (or ``.npz``)."""

from __future__ import annotations

import os
import pickle
import time

import numpy as np
import pytest
import torch
from datahelpers import Exploit, edge_set
from torch_geometric.data import Data
from torch_geometric.utils import is_undirected

from clbench.datasets import load_graph
from clbench.datasets.custom import load_custom_graph
from clbench.errors import DataError


def _fields(n: int = 60, f: int = 5, classes: int = 4, seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % classes
    src = torch.randint(0, n, (200,), generator=gen)
    dst = torch.randint(0, n, (200,), generator=gen)
    return {"x": torch.randn(n, f, generator=gen), "edge_index": torch.stack([src, dst]), "y": y}


def _masks(n: int) -> dict[str, torch.Tensor]:
    idx = torch.arange(n)
    return {"train_mask": idx % 5 < 3, "val_mask": idx % 5 == 3, "test_mask": idx % 5 == 4}


def test_pt_with_masks(tmp_path):
    fields = {**_fields(), **_masks(60)}
    path = tmp_path / "my_graph.pt"
    torch.save(fields, path)
    g = load_graph(str(path), split_seed=7)  # a path given as the dataset name
    assert g.name == "my_graph"
    assert (g.num_nodes, g.num_features, g.num_classes) == (60, 5, 4)
    assert torch.equal(g.x, fields["x"]) and torch.equal(g.y, fields["y"])
    for key in ("train_mask", "val_mask", "test_mask"):
        assert torch.equal(getattr(g, key), fields[key])
    assert is_undirected(g.edge_index, num_nodes=60)
    expected = {(u, v) for u, v in fields["edge_index"].t().tolist() if u != v}
    assert edge_set(g.edge_index) == expected | {(v, u) for u, v in expected}
    assert g.meta["split"] == "file masks"


def test_npz_without_masks_gets_seeded_stratified_split(tmp_path):
    fields = {k: v.numpy() for k, v in _fields(n=100).items()}
    path = tmp_path / "g.npz"
    np.savez(path, **fields)
    a = load_custom_graph(path, split_seed=0)
    b = load_graph(str(path), split_seed=0)
    c = load_graph(str(path), split_seed=1)
    assert a.meta["split"] == "stratified"
    assert torch.equal(a.train_mask, b.train_mask)
    assert not torch.equal(a.train_mask, c.train_mask)
    assert int(a.train_mask.sum()) == 60 and int(a.test_mask.sum()) == 20


def test_pyg_data_object_is_accepted(tmp_path):
    fields = _fields()
    path = tmp_path / "data.pt"
    torch.save(Data(**fields), path)
    assert load_custom_graph(path).num_nodes == 60


def test_non_tensor_pickle_is_rejected_without_running_it(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({**_fields(), "extra": Exploit(marker)}, path)
    start = time.monotonic()
    with pytest.raises(DataError, match="not a plain tensor file") as err:
        load_graph(str(path))
    assert time.monotonic() - start < 5
    assert "io.open" in str(err.value)  # the refused global is named
    assert not marker.exists()


def test_plain_pickle_is_rejected(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "graph.pt"
    with path.open("wb") as fh:
        pickle.dump({"x": np.zeros((3, 2)), "evil": Exploit(marker)}, fh)
    with pytest.raises(DataError, match="not a plain tensor file"):
        load_custom_graph(path)
    assert not marker.exists()


def test_npz_with_object_array_is_rejected(tmp_path):
    path = tmp_path / "graph.npz"
    fields = {k: v.numpy() for k, v in _fields().items()}
    np.savez(path, **fields, meta=np.array([{"a": 1}], dtype=object))
    with pytest.raises(DataError, match="pickled Python objects"):
        load_custom_graph(path)


@pytest.mark.parametrize("change,match", [
    (lambda f: f.pop("edge_index"), r"missing field\(s\) edge_index"),
    (lambda f: f.update(edge_index=f["edge_index"].t()), "transposed"),
    (lambda f: f.update(y=f["y"][:-1]), r"y must have shape \[60\]"),
    (lambda f: f.update(y=f["y"].float()), "integer class ids"),
    (lambda f: f.update(x=f["x"][0]), "x must be 2-D"),
    (lambda f: f.update(x=f["x"].clone().fill_(float("nan"))), "NaN"),
    (lambda f: f["edge_index"].__setitem__((0, 0), 60), "outside 0..59"),
    (lambda f: f.update(train_mask=torch.ones(60, dtype=torch.bool)), "all three"),
    (lambda f: f.update(_masks(60), val_mask=torch.zeros(59, dtype=torch.bool)),
     r"val_mask must have shape \[60\]"),
    (lambda f: f.update(_masks(60), test_mask=torch.full((60,), 2)), "boolean"),
    (lambda f: f.update(y="labels"), "must be a tensor"),
])
def test_bad_fields_get_clear_errors(tmp_path, change, match):
    fields = _fields()
    change(fields)
    path = tmp_path / "bad.pt"
    torch.save(fields, path)
    with pytest.raises(DataError, match=match) as err:
        load_custom_graph(path)
    assert str(path) in str(err.value)


@pytest.mark.parametrize("suffix", [".pt", ".npz"])
def test_truncated_file(tmp_path, suffix):
    path = tmp_path / f"graph{suffix}"
    fields = _fields()
    if suffix == ".pt":
        torch.save(fields, path)
    else:
        np.savez(path, **{k: v.numpy() for k, v in fields.items()})
    os.truncate(path, path.stat().st_size // 2)
    start = time.monotonic()
    with pytest.raises(DataError, match="truncated or corrupt"):
        load_custom_graph(path)
    assert time.monotonic() - start < 5


def test_missing_and_unsupported_paths(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_graph(str(tmp_path / "nope.pt"))
    other = tmp_path / "graph.csv"
    other.write_text("1,2\n")
    with pytest.raises(DataError, match="unsupported graph file type"):
        load_graph(str(other))
    # a plain name is still a registry lookup, not a path
    from clbench.errors import UnknownNameError

    with pytest.raises(UnknownNameError):
        load_graph("no-such-dataset")
