"""Shared fixtures: the real data beside the repo, a working folder, a blocked network.

Plain constants and helpers (``REPO``, ``SHARED_DATA``, ``FAST``, ``copy_shared``, ...)
live in datahelpers.py: tests import them from there, never from this file."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from datahelpers import SHARED_DATA, NetworkLog, block_network, copy_shared, shared_or_skip


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """tests/data, the shipped real data (tests/data/README.md); missing, it fails."""
    return shared_or_skip()


@pytest.fixture
def cora_root(tmp_path: Path) -> Path:
    """A temporary PyG data root holding a copy of the real Cora raw files."""
    copy_shared("cora", tmp_path)
    return tmp_path


@pytest.fixture(scope="module")
def cora_graph(tmp_path_factory):
    """The real Cora graph, prepared by clbench, from a copy of the shipped raw files
    (one per test module)."""
    from torch_geometric.datasets import Planetoid

    from clbench.graph import prepare_graph

    root = tmp_path_factory.mktemp("planetoid")
    copy_shared("cora", root)
    return prepare_graph(Planetoid(str(root), "Cora")[0], "cora")


@pytest.fixture(scope="module")
def synthetic():
    """The synthetic graph (one per test module)."""
    from clbench.datasets import load_graph

    return load_graph("synthetic")


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The test's own working directory, with no tracking URI or Dask scheduler taken
    from the environment (commands then write ``mlflow.db`` and ``results/`` here)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("DASK_SCHEDULER_ADDRESS", raising=False)
    return tmp_path


@pytest.fixture
def net(monkeypatch: pytest.MonkeyPatch) -> NetworkLog:
    """Every DNS lookup and socket connection fails; ``net.attempts`` records them."""
    return block_network(monkeypatch)


@pytest.fixture
def one_thread():
    """One intra-op torch thread for the test (restored afterwards): the synthetic graphs
    are tiny, so that is faster, and much faster on a busy machine. Modules use it with
    ``pytestmark = pytest.mark.usefixtures("one_thread")``; a real-graph test may still
    ask for more threads itself."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def _isolated_registries():
    """Methods and datasets a test registers (and the plugin modules that registered
    them) do not leak into the tests after it."""
    from clbench.datasets import DATASETS
    from clbench.methods import METHODS

    plugins = {m for m in sys.modules if m.startswith("clbench_plugin_")}
    with METHODS.scoped(), DATASETS.scoped():
        yield
    for name in [m for m in sys.modules if m.startswith("clbench_plugin_")]:
        if name not in plugins:
            del sys.modules[name]


def _shipped_files() -> set[str]:
    return {str(p.relative_to(SHARED_DATA)) for p in SHARED_DATA.rglob("*")}


def pytest_sessionstart(session) -> None:
    session.config._clbench_shipped = _shipped_files() if SHARED_DATA.is_dir() else set()


def pytest_sessionfinish(session, exitstatus) -> None:
    """Fail the run if a test wrote into the shipped data (loaders write ``processed/``
    next to ``raw/``: tests must copy the files to a temporary root first)."""
    before = getattr(session.config, "_clbench_shipped", None)
    if before is None or not SHARED_DATA.is_dir():
        return
    added = sorted(_shipped_files() - before)
    if added:
        session.config.get_terminal_writer().line(
            f"tests wrote into the shipped data {SHARED_DATA}: {', '.join(added[:5])}", red=True)
        session.exitstatus = 1
