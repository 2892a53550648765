"""No code runs from a dataset file: Planetoid's pickled raw files, the processed
files PyG, OGB and clbench write next to them, and a user's own graph file.

All cases use the real Cora and CiteSeer files (copied from the shared data into a
temporary data root) and genuinely malicious pickles: each would create a marker
file if it were ever unpickled without restriction.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from datahelpers import REPO, copy_shared
from torch_geometric.data import Data

from clbench.datasets import DATASETS, load_graph
from clbench.datasets.custom import load_custom_graph
from clbench.errors import DataError

PARTS = ("x", "tx", "allx", "y", "ty", "ally", "graph", "test.index")


class _System:
    """Unpickling this runs ``touch <marker>``: proof that the pickle was executed."""

    def __init__(self, marker: Path) -> None:
        self.command = f"touch {marker}"

    def __reduce__(self):
        return (os.system, (self.command,))


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _plant(path: Path, marker: Path, protocol: int = 2) -> None:
    with path.open("wb") as fh:
        pickle.dump(_System(marker), fh, protocol=protocol)


# -- the digests on the cards --------------------------------------------------------------
@pytest.mark.parametrize("name,folder,shared", [
    ("cora", "Cora", "cora/raw"), ("citeseer", "CiteSeer", "citeseer/raw"),
])
def test_cards_carry_the_digests_of_the_real_planetoid_files(name, folder, shared,
                                                             shared_data):
    card = DATASETS.get(name)
    prefix = folder.lower()
    expected = {f"{folder}/raw/ind.{prefix}.{part}": _sha256(shared_data / shared /
                                                              f"ind.{prefix}.{part}")
                for part in PARTS}
    assert dict(card.sha256) == expected


def test_pubmed_card_lists_no_digest_for_the_file_nobody_verified():
    sha = DATASETS.get("pubmed").sha256
    assert "PubMed/raw/ind.pubmed.allx" not in sha  # read through the restricted unpickler
    assert all(len(d) == 64 and int(d, 16) >= 0 for d in sha.values())


# -- malicious raw files --------------------------------------------------------------------
@pytest.mark.parametrize("part", ["graph", "x", "ally"])
def test_malicious_raw_pickle_is_refused_and_not_run(part, cora_root, net):
    marker = cora_root / "marker"
    target = cora_root / "Cora" / "raw" / f"ind.cora.{part}"
    _plant(target, marker)
    with pytest.raises(DataError) as err:
        load_graph("cora", data_dir=cora_root)
    msg = str(err.value)
    assert f"ind.cora.{part}" in msg and str(target.resolve()) in msg
    assert "posix.system" in msg or "os.system" in msg  # the refused global is named
    assert not marker.exists()
    assert not (cora_root / "Cora" / "processed" / "data.pt").exists()


def _cli_env() -> dict[str, str]:
    """The environment of a user's shell: PyG stays quiet while PYTEST_CURRENT_TEST is set."""
    env = {k: v for k, v in os.environ.items() if k != "PYTEST_CURRENT_TEST"}
    return {**env, "PYTHONPATH": str(REPO)}


def test_malicious_raw_pickle_through_the_cli(cora_root):
    marker = cora_root / "marker"
    _plant(cora_root / "Cora" / "raw" / "ind.cora.graph", marker)
    proc = subprocess.run(
        [sys.executable, "-m", "clbench", "run", "--method", "finetune", "--dataset", "cora",
         "--data-dir", str(cora_root), "--epochs", "1"],
        cwd=cora_root, capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL,
        env=_cli_env(),
    )
    assert proc.returncode == 2, proc.stderr[-3000:]
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert "ind.cora.graph" in lines[0]
    assert "Traceback" not in proc.stderr + proc.stdout
    assert not marker.exists()


def test_malicious_raw_file_with_protocol_0_is_refused(cora_root, net):
    marker = cora_root / "marker"
    _plant(cora_root / "Cora" / "raw" / "ind.cora.tx", marker, protocol=0)
    with pytest.raises(DataError, match=r"ind\.cora\.tx"):
        load_graph("cora", data_dir=cora_root)
    assert not marker.exists()


def test_raw_files_are_checked_again_when_pyg_reprocesses(tmp_path, net):
    """A forged file next to a genuine processed file is harmless, but once the
    processed files are gone PyG re-reads the raw files: they are checked again."""
    copy_shared("cora", tmp_path)
    assert load_graph("cora", data_dir=tmp_path).num_nodes == 2708
    marker = tmp_path / "marker"
    _plant(tmp_path / "Cora" / "raw" / "ind.cora.graph", marker)
    shutil.rmtree(tmp_path / "Cora" / "processed")
    with pytest.raises(DataError, match=r"ind\.cora\.graph"):
        load_graph("cora", data_dir=tmp_path)
    assert not marker.exists()


# -- changed but harmless raw files ------------------------------------------------------------
def _restricted_reads(monkeypatch) -> list[str]:
    from clbench.datasets import safe_pickle

    seen: list[str] = []
    real = safe_pickle.RestrictedUnpickler.load

    def spy(self):
        seen.append(getattr(self, "source", "?"))
        return real(self)

    monkeypatch.setattr(safe_pickle.RestrictedUnpickler, "load", spy)
    return seen


def test_untouched_real_files_load_as_before_without_the_restricted_path(
        cora_root, net, monkeypatch):
    seen = _restricted_reads(monkeypatch)
    g = load_graph("cora", data_dir=cora_root)
    assert (g.num_nodes, g.num_edges, g.num_features, g.num_classes) == (2708, 10556, 1433, 7)
    assert tuple(int(m.sum()) for m in (g.train_mask, g.val_mask, g.test_mask)) == (
        140, 500, 1000)
    assert seen == []  # every file matched its digest: PyG read them as they are


def test_repickled_graph_with_only_allowed_classes_loads(cora_root, net, monkeypatch):
    reference = load_graph("cora", data_dir=cora_root)
    other = cora_root / "other"
    copy_shared("cora", other)
    path = other / "Cora" / "raw" / "ind.cora.graph"
    from clbench.datasets.safe_pickle import restricted_load

    graph = restricted_load(path)
    with path.open("wb") as fh:
        pickle.dump(graph, fh, protocol=4)  # Python 3 names, STACK_GLOBAL: another file
    assert _sha256(path) != DATASETS.get("cora").sha256["Cora/raw/ind.cora.graph"]
    seen = _restricted_reads(monkeypatch)
    g = load_graph("cora", data_dir=other)
    assert any("ind.cora.graph" in s for s in seen)
    assert torch.equal(g.edge_index, reference.edge_index)
    assert torch.equal(g.x, reference.x) and torch.equal(g.y, reference.y)


def test_repickled_features_with_only_allowed_classes_load(tmp_path, net):
    copy_shared("citeseer", tmp_path / "a")
    reference = load_graph("citeseer", data_dir=tmp_path / "a")
    copy_shared("citeseer", tmp_path / "b")
    from clbench.datasets.safe_pickle import restricted_load

    for part in ("x", "ally"):
        path = tmp_path / "b" / "CiteSeer" / "raw" / f"ind.citeseer.{part}"
        obj = restricted_load(path)
        with path.open("wb") as fh:
            pickle.dump(obj, fh, protocol=4)  # NumPy 2 / SciPy names of the same classes
    g = load_graph("citeseer", data_dir=tmp_path / "b")
    assert g.num_nodes == reference.num_nodes == 3327
    assert torch.equal(g.x, reference.x) and torch.equal(g.y, reference.y)


# -- garbage ----------------------------------------------------------------------------------
@pytest.mark.parametrize("part,content", [
    ("x", os.urandom(4096)),
    ("graph", pickle.dumps({"not": "a graph"}, protocol=2)),
    ("test.index", b"12\nnot a number\n"),
])
def test_garbage_raw_file_is_named(part, content, cora_root, net):
    """(Truncated raw files are covered in test_datasets.py.)"""
    path = cora_root / "Cora" / "raw" / f"ind.cora.{part}"
    path.write_bytes(content)
    with pytest.raises(DataError) as err:
        load_graph("cora", data_dir=cora_root)
    assert str(path.resolve()) in str(err.value)


def test_wrong_type_in_a_harmless_pickle_is_named(cora_root, net):
    path = cora_root / "Cora" / "raw" / "ind.cora.graph"
    path.write_bytes(pickle.dumps([1, 2, 3], protocol=2))
    with pytest.raises(DataError, match=r"ind\.cora\.graph") as err:
        load_graph("cora", data_dir=cora_root)
    assert "list" in str(err.value)


# -- processed files ---------------------------------------------------------------------------
def test_malicious_processed_file_is_refused(cora_root, net):
    load_graph("cora", data_dir=cora_root)
    processed = cora_root / "Cora" / "processed"
    (processed / "clbench_cora.pt").unlink()
    marker = cora_root / "marker"
    data_pt = processed / "data.pt"
    torch.save((_System(marker),), data_pt)
    with pytest.raises(DataError) as err:
        load_graph("cora", data_dir=cora_root)
    assert not marker.exists()
    msg = str(err.value)
    assert str(data_pt.resolve()) in msg and "posix.system" in msg  # the file itself


def test_processed_file_may_not_call_classes_pyg_allows_for_itself(cora_root, net,
                                                                    monkeypatch):
    """PyG registers ClusterData (whose constructor reads and writes files) as safe for
    ``torch.load(weights_only=True)`` in every process; a processed file may not use it."""
    from torch_geometric.loader import ClusterData

    load_graph("cora", data_dir=cora_root)
    processed = cora_root / "Cora" / "processed"
    (processed / "clbench_cora.pt").unlink()
    calls = []
    monkeypatch.setattr(ClusterData, "__init__", lambda self, *a, **k: calls.append(a))

    class _Cluster:
        def __reduce__(self):
            return (ClusterData, (Data(edge_index=torch.zeros(2, 0, dtype=torch.long)), 2))

    torch.save((_Cluster(), {}, Data), processed / "data.pt")
    with pytest.raises(DataError) as err:
        load_graph("cora", data_dir=cora_root)
    assert calls == []
    msg = str(err.value)
    assert str((processed / "data.pt").resolve()) in msg and "ClusterData" in msg


def test_cache_may_not_call_classes_pyg_allows_for_itself(cora_root, net, monkeypatch):
    from torch_geometric.loader import ClusterData

    g = load_graph("cora", data_dir=cora_root)
    cache = Path(g.meta["cache_path"])
    calls = []
    monkeypatch.setattr(ClusterData, "__init__", lambda self, *a, **k: calls.append(a))

    class _Cluster:
        def __reduce__(self):
            return (ClusterData, (Data(edge_index=torch.zeros(2, 0, dtype=torch.long)), 2))

    torch.save({"format": 1, "evil": _Cluster()}, cache)
    with pytest.warns(UserWarning, match="ClusterData"):
        again = load_graph("cora", data_dir=cora_root)
    assert calls == []
    assert torch.equal(again.edge_index, g.edge_index)


# -- a user's graph file --------------------------------------------------------------------------
def _user_fields(n: int = 40, classes: int = 4) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    ei = torch.randint(0, n, (2, 120), generator=gen)
    return {"x": torch.randn(n, 3, generator=gen), "edge_index": ei,
            "y": torch.arange(n) % classes}


def _save(fields: dict, path: Path) -> Path:
    if path.suffix == ".pt":
        torch.save(fields, path)
    else:
        np.savez(path, **{k: np.asarray(v) for k, v in fields.items()})
    return path


@pytest.mark.parametrize("suffix", [".pt", ".npz"])
def test_user_label_far_outside_the_classes_is_named(suffix, tmp_path):
    fields = _user_fields()
    fields["y"][12] = 459
    path = _save(fields, tmp_path / f"graph{suffix}")
    with pytest.raises(DataError) as err:
        load_custom_graph(path)
    msg = str(err.value)
    assert str(path) in msg
    assert "label 459 of node 12 is outside [0, 4)" in msg


@pytest.mark.parametrize("suffix", [".pt", ".npz"])
def test_user_negative_label_is_named(suffix, tmp_path):
    fields = _user_fields()
    fields["y"][5] = -3
    path = _save(fields, tmp_path / f"graph{suffix}")
    with pytest.raises(DataError, match=r"label -3 of node 5 is outside \[0, 4\)") as err:
        load_custom_graph(path)
    assert str(path) in str(err.value)


@pytest.mark.parametrize("suffix", [".pt", ".npz"])
def test_user_label_beyond_explicit_num_classes_is_named(suffix, tmp_path):
    fields = {**_user_fields(), "num_classes": torch.tensor(3)}  # y holds 0..3
    path = _save(fields, tmp_path / f"graph{suffix}")
    with pytest.raises(DataError, match=r"label 3 of node 3 is outside \[0, 3\)") as err:
        load_custom_graph(path)
    assert "num_classes" in str(err.value)


def test_user_explicit_num_classes_allows_an_empty_class(tmp_path):
    fields = _user_fields()
    fields["y"] = torch.where(fields["y"] == 2, 3, fields["y"])  # class 2 has no node
    path = _save({**fields, "num_classes": 4}, tmp_path / "graph.pt")
    assert load_custom_graph(path).num_classes == 4
    with pytest.raises(DataError, match=r"label 3 of node 2 is outside \[0, 2\)"):
        load_custom_graph(_save(fields, tmp_path / "gap.pt"))


@pytest.mark.parametrize("change,match", [
    (lambda f: f["x"].__setitem__((7, 1), float("nan")), r"NaN .*x\[7, 1\] = nan"),
    (lambda f: f["edge_index"].__setitem__((1, 9), 40), r"edge_index\[1, 9\] = 40"),
    (lambda f: f["edge_index"].__setitem__((0, 4), -2), r"edge_index\[0, 4\] = -2"),
])
def test_user_field_errors_name_the_file(change, match, tmp_path):
    fields = _user_fields()
    change(fields)
    for suffix in (".pt", ".npz"):
        path = _save(fields, tmp_path / f"graph{suffix}")
        with pytest.raises(DataError, match=match) as err:
            load_custom_graph(path)
        assert str(path) in str(err.value)


@pytest.mark.parametrize("zip_format", [True, False])
def test_user_file_may_not_call_classes_pyg_allows_for_itself(zip_format, tmp_path,
                                                               monkeypatch):
    from torch_geometric.loader import ClusterData

    calls = []
    monkeypatch.setattr(ClusterData, "__init__", lambda self, *a, **k: calls.append(a))

    class _Cluster:
        def __reduce__(self):
            return (ClusterData, (Data(edge_index=torch.zeros(2, 0, dtype=torch.long)), 2))

    path = tmp_path / "graph.pt"
    torch.save({**_user_fields(), "extra": _Cluster()}, path,
               _use_new_zipfile_serialization=zip_format)
    with pytest.raises(DataError, match="ClusterData") as err:
        load_custom_graph(path)
    assert str(path) in str(err.value)
    assert calls == []
