"""Reddit (CGLB's Reddit-CL) through PyG's real ``Reddit`` loader, on small generated files.

No copy of the 1.3 GB files is at hand, so the files are generated in the exact layout
PyG reads (``Reddit/raw/reddit_data.npz`` with ``feature``, ``label`` and
``node_types``; ``Reddit/raw/reddit_graph.npz``, a SciPy COO matrix). The network is
blocked in every test, so any download attempt fails the test.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from datahelpers import Exploit, edge_set, undirected_pairs

from clbench.datasets import DATASETS, load_graph
from clbench.errors import DataError
from clbench.scenario import NCScenarioLoader

C, PER_CLASS, F = 41, 10, 12
N = C * PER_CLASS


def write_fake_reddit(root: Path, seed: int = 0) -> dict[str, np.ndarray]:
    """Reddit's two raw files for a small random graph; returns what was written."""
    rng = np.random.default_rng(seed)
    raw = root / "Reddit" / "raw"
    raw.mkdir(parents=True)
    x = rng.normal(size=(N, F)).astype(np.float32)
    # every class with 6 training, 2 validation and 2 test nodes, in a random order
    order = rng.permutation(N)
    y = (np.arange(N) % C)[order]
    types = np.array([1] * 6 + [2] * 2 + [3] * 2)[np.arange(N) // C][order]
    src = rng.integers(0, N, size=1200)
    dst = rng.integers(0, N, size=1200)
    np.savez(raw / "reddit_data.npz", feature=x, label=y, node_types=types)
    sp.save_npz(raw / "reddit_graph.npz",
                sp.coo_matrix((np.ones(len(src)), (src, dst)), shape=(N, N)))
    return {"x": x, "y": y, "types": types, "edges": np.stack([src, dst], axis=1)}


def test_reddit_loads_offline_with_graphsage_split(tmp_path, net):
    fake = write_fake_reddit(tmp_path)
    g = load_graph("reddit", data_dir=tmp_path)
    assert net.attempts == []
    assert (g.num_nodes, g.num_features, g.num_classes) == (N, F, C)
    assert torch.allclose(g.x, torch.from_numpy(fake["x"]))
    assert torch.equal(g.y, torch.from_numpy(fake["y"]).long())
    types = torch.from_numpy(fake["types"])
    assert torch.equal(g.train_mask, types == 1)
    assert torch.equal(g.val_mask, types == 2)
    assert torch.equal(g.test_mask, types == 3)
    assert g.meta["split"] == "official"
    # made undirected, self-loops and duplicates removed
    assert edge_set(g.edge_index) == undirected_pairs(fake["edges"])
    # a second load reads clbench's cache
    assert load_graph("reddit", data_dir=tmp_path).meta["cache"] == "hit"


def test_reddit_default_tasks_are_cglbs(tmp_path, net):
    write_fake_reddit(tmp_path)
    card = DATASETS.get("reddit")
    assert (card.num_tasks, card.classes_per_task) == (20, 2)  # Reddit-CL: 40 of 41
    g = load_graph("reddit", data_dir=tmp_path)
    scenario = NCScenarioLoader(g, card.num_tasks, card.classes_per_task, seed=0)
    assert scenario.task_classes.shape == (20, 2) and len(scenario.dropped_classes) == 1


def test_reddit_missing_files_give_one_clear_error(tmp_path, net):
    with pytest.raises(DataError) as err:
        load_graph("reddit", data_dir=tmp_path / "data")
    msg = str(err.value)
    assert "Reddit" in msg and "raw/reddit_data.npz" in msg and "raw/reddit_graph.npz" in msg
    assert "\n" not in msg
    assert not (tmp_path / "data").exists()


def test_a_pickled_reddit_file_is_not_unpickled(tmp_path, net):
    """``reddit_data.npz`` whose labels are a pickled object array that creates a file
    when unpickled: numpy refuses it (``allow_pickle`` is off), nothing is executed, and
    the run fails with one line."""
    write_fake_reddit(tmp_path)
    data = tmp_path / "Reddit" / "raw" / "reddit_data.npz"
    with np.load(data) as arrays:
        kept = dict(arrays)
    proof = tmp_path / "executed"
    kept["label"] = np.array([Exploit(proof)] * N, dtype=object)
    np.savez(data, **kept)
    with pytest.raises(DataError) as err:
        load_graph("reddit", data_dir=tmp_path)
    assert "\n" not in str(err.value) and "allow_pickle" in str(err.value)
    assert not proof.exists()
