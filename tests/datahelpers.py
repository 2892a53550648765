"""Shared helpers and constants for the tests: the repository's paths, the shared real
data, a network blocker, generators of small OGB datasets in OGB's exact on-disk layout,
and a trainer built the way ``run_experiment`` builds it.

Tests import these by name (``from datahelpers import ...``): tests/ is on ``sys.path``
(pytest's rootdir conftest). Fixtures live in conftest.py, which tests never import."""

from __future__ import annotations

import shutil
import socket
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from clbench.loopstate import TrainerCallback

#: The repository's root folder.
REPO = Path(__file__).resolve().parents[1]
#: Real dataset files shipped in tests/data (see its README.md). Never written to.
SHARED_DATA = REPO / "tests" / "data"

#: Short runs for tests: enough epochs to learn the synthetic tasks.
FAST = {"epochs": 40, "hidden": 64}

#: shared folder -> folder below the data root where clbench (PyG) expects the raw files
SHARED_LAYOUT = {
    "cora": ("cora/raw", "Cora/raw"),
    "citeseer": ("citeseer/raw", "CiteSeer/raw"),
    "amazon-computers": ("amazon-computers/raw", "Computers/raw"),
    "coauthor-cs": ("coauthor-cs/raw", "CS/raw"),
}


def shared_or_skip(sub: str = "") -> Path:
    """The shared folder ``sub`` (default: tests/data itself); a missing one fails the
    test (real data is required)."""
    path = SHARED_DATA / sub
    if not path.is_dir():
        pytest.fail(f"real test data not found at {path} (shipped in tests/data)")
    return path


def copy_shared(name: str, root: Path) -> Path:
    """Copy ``name``'s raw files from the shared folder into ``root``; returns the raw dir."""
    src_rel, dst_rel = SHARED_LAYOUT[name]
    src = shared_or_skip(src_rel)
    dst = root / dst_rel
    dst.mkdir(parents=True, exist_ok=True)
    for f in sorted(src.iterdir()):
        shutil.copyfile(f, dst / f.name)  # copyfile: fresh permissions, writable copies
    return dst


class Exploit:
    """Unpickling this would create a file: proof that the pickle was executed."""

    def __init__(self, target: Path) -> None:
        self.target = str(target)

    def __reduce__(self):
        return (open, (self.target, "w"))


class NetworkBlocked(OSError):
    pass


@dataclass
class NetworkLog:
    attempts: list[str]


def block_network(monkeypatch: pytest.MonkeyPatch) -> NetworkLog:
    """Make every DNS lookup and socket connection fail, and record the attempts."""
    log = NetworkLog(attempts=[])

    def refuse(what: str):
        def _refuse(*args, **kwargs):
            log.attempts.append(f"{what}{args[1:2] if what == 'connect' else args[:1]}")
            raise NetworkBlocked(f"network blocked by the test ({what})")

        return _refuse

    monkeypatch.setattr(socket, "getaddrinfo", refuse("getaddrinfo"))
    monkeypatch.setattr(socket, "create_connection", refuse("create_connection"))
    monkeypatch.setattr(socket.socket, "connect", refuse("connect"))
    monkeypatch.setattr(socket.socket, "connect_ex", refuse("connect_ex"))
    return log


# -- OGB layout -------------------------------------------------------------------------
def _write_csv(path: Path, array: np.ndarray) -> None:
    """Header-less gzip CSV, as in OGB's ``raw/`` and ``split/`` folders."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(array).to_csv(path, header=False, index=False, compression="gzip")


@dataclass
class FakeOgb:
    folder: Path
    x: np.ndarray
    y: np.ndarray
    edges: np.ndarray  # [E, 2] as written to edge.csv.gz
    split: dict[str, np.ndarray]
    year: np.ndarray | None = None


def write_fake_arxiv(root: Path, num_nodes: int = 400, num_edges: int = 1500,
                     num_features: int = 16, seed: int = 0) -> FakeOgb:
    """A small ogbn-arxiv in OGB's exact layout (what ``PygNodePropPredDataset`` reads).

    ``ogbn_arxiv/RELEASE_v1.txt``; ``raw/`` with ``edge``, ``node-feat``,
    ``node-label``, ``node_year`` (master.csv: additional node files),
    ``num-node-list`` and ``num-edge-list``; ``split/time/{train,valid,test}``
    derived from the years like the real split (<= 2017, 2018, >= 2019). Edges
    are directed and include self-loops, duplicates and some reciprocal pairs.
    All 40 classes occur in every split.
    """
    rng = np.random.default_rng(seed)
    folder = root / "ogbn_arxiv"
    y = rng.permutation(np.arange(num_nodes) % 40).astype(np.int64)
    year = np.empty(num_nodes, dtype=np.int64)
    for c in range(40):  # every class gets train, valid and test papers
        members = rng.permutation(np.flatnonzero(y == c))
        choices = np.array([2015, 2018, 2019, *rng.integers(2010, 2021, len(members))])
        year[members] = choices[: len(members)]
    src = rng.integers(0, num_nodes, num_edges)
    dst = rng.integers(0, num_nodes, num_edges)
    edges = np.stack([src, dst], axis=1)
    edges[:10, 1] = edges[:10, 0]  # self-loops
    edges[10:20] = edges[20:30]  # duplicates
    edges[30:40] = edges[40:50, ::-1]  # reciprocal pairs
    x = rng.normal(size=(num_nodes, num_features)).astype(np.float32)
    split = {"train": np.flatnonzero(year <= 2017), "valid": np.flatnonzero(year == 2018),
             "test": np.flatnonzero(year >= 2019)}
    _write_csv(folder / "raw" / "edge.csv.gz", edges)
    _write_csv(folder / "raw" / "node-feat.csv.gz", x)
    _write_csv(folder / "raw" / "node-label.csv.gz", y[:, None])
    _write_csv(folder / "raw" / "node_year.csv.gz", year[:, None])
    _write_csv(folder / "raw" / "num-node-list.csv.gz", np.array([[num_nodes]]))
    _write_csv(folder / "raw" / "num-edge-list.csv.gz", np.array([[num_edges]]))
    for part, idx in split.items():
        _write_csv(folder / "split" / "time" / f"{part}.csv.gz", idx[:, None])
    (folder / "RELEASE_v1.txt").write_text("")
    return FakeOgb(folder=folder, x=x, y=y, edges=edges, split=split, year=year)


def write_fake_products(root: Path, num_nodes: int = 300, num_edges: int = 900,
                        num_features: int = 8, seed: int = 1) -> FakeOgb:
    """A small ogbn-products in OGB's layout: each undirected edge stored once
    (master.csv: ``add_inverse_edge=True``), split in ``split/sales_ranking/``."""
    rng = np.random.default_rng(seed)
    folder = root / "ogbn_products"
    y = rng.permutation(np.arange(num_nodes) % 47).astype(np.int64)
    src = rng.integers(0, num_nodes, num_edges)
    dst = rng.integers(0, num_nodes, num_edges)
    edges = np.stack([src, dst], axis=1)
    x = rng.normal(size=(num_nodes, num_features)).astype(np.float32)
    order = rng.permutation(num_nodes)
    n_train, n_val = int(0.08 * num_nodes), int(0.02 * num_nodes)
    split = {"train": np.sort(order[:n_train]), "valid": np.sort(order[n_train:n_train + n_val]),
             "test": np.sort(order[n_train + n_val:])}
    _write_csv(folder / "raw" / "edge.csv.gz", edges)
    _write_csv(folder / "raw" / "node-feat.csv.gz", x)
    _write_csv(folder / "raw" / "node-label.csv.gz", y[:, None])
    _write_csv(folder / "raw" / "num-node-list.csv.gz", np.array([[num_nodes]]))
    _write_csv(folder / "raw" / "num-edge-list.csv.gz", np.array([[num_edges]]))
    for part, idx in split.items():
        _write_csv(folder / "split" / "sales_ranking" / f"{part}.csv.gz", idx[:, None])
    (folder / "RELEASE_v1.txt").write_text("")
    return FakeOgb(folder=folder, x=x, y=y, edges=edges, split=split)


def undirected_pairs(edges: np.ndarray) -> set[tuple[int, int]]:
    """The directed pairs of the undirected, loop-free, duplicate-free version of ``edges``."""
    out = set()
    for u, v in edges.tolist():
        if u != v:
            out.add((u, v))
            out.add((v, u))
    return out


def edge_set(edge_index) -> set[tuple[int, int]]:
    return set(map(tuple, edge_index.t().tolist()))


# -- methods ----------------------------------------------------------------------------
def method_trainer(method: str, scenario, seed: int, dataset: str | None = None,
                   callbacks=(), **overrides):
    """``(trainer, params)``: ``method``'s trainer built the way
    :func:`clbench.experiment.run_experiment` does (with the card's overrides for
    ``dataset``), ``overrides`` on top of the method's defaults."""
    from clbench.experiment import build_trainer, seed_everything
    from clbench.resolve import resolve_run

    spec = resolve_run(method, dataset or "synthetic", seed, params=overrides)
    seed_everything(seed)
    trainer = build_trainer(spec, scenario, callbacks)
    params = spec.config
    return trainer, params


def record_replays(trainer, attr: str = "replay_batches") -> list[tuple[int, list]]:
    """Wrap ``trainer.<attr>`` (ER-GNN's and ContinualGNN's ``replay_batches``, PI-GNN's
    ``memory_batches``) so that every call's ``(task being learned, batches)`` is recorded
    in the returned list."""
    calls: list[tuple[int, list]] = []
    original = getattr(trainer, attr)

    def recorded(states):
        batches = original(states)
        calls.append((trainer.curr_task, batches))
        return batches

    setattr(trainer, attr, recorded)
    return calls


def n_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


class Snapshots(TrainerCallback):
    """The model's parameter count at the start, and its state and parameter count after
    every task (for methods that grow or freeze parameters)."""

    def __init__(self) -> None:
        self.states: list[dict] = []
        self.counts: list[int] = []

    def on_run_start(self, trainer) -> None:
        self.counts_at_start = n_params(trainer.model)

    def on_task_end(self, trainer, task_id, test_row) -> None:
        self.states.append({k: v.detach().clone() for k, v in trainer.model.state_dict().items()})
        self.counts.append(n_params(trainer.model))


def check_zero_forgetting(R: np.ndarray) -> None:
    """AF is exactly 0 and every task's score stays at its value right after it was
    learned, bit for bit (PackNet, HAT, PI-GNN)."""
    from clbench import metrics

    T = R.shape[0]
    assert metrics.average_forgetting(R) == 0.0
    for j in range(T):
        assert all(R[i, j] == R[j, j] for i in range(j, T)), (j, R[:, j])


def flat_grads(model) -> torch.Tensor:
    """The gradients of ``model``'s trainable parameters, flattened into one vector."""
    return torch.cat([p.grad.reshape(-1) for p in model.parameters() if p.requires_grad])
