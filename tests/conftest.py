"""Shared fixtures: the real data beside the repo, and small fast settings."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO / "tests" / "data"  # shipped real data (tests/data/README.md)

#: Short runs for tests: enough epochs to learn the synthetic tasks.
FAST = {"epochs": 40, "hidden": 64}


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.fail(f"real test data not found at {SHARED_DATA} (shipped in tests/data)")
    return SHARED_DATA


@pytest.fixture
def cora_root(tmp_path: Path, shared_data: Path) -> Path:
    """A temporary PyG data root holding a copy of the real Cora raw files."""
    raw = tmp_path / "Cora" / "raw"
    shutil.copytree(shared_data / "cora" / "raw", raw)
    return tmp_path


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
