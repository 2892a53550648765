"""Real datasets through PyG's loaders, offline, from the shared files; the cache;
failures (missing files offline, hanging servers, truncated or unsafe files);
the dataset cards, the ``list datasets`` rows and the README."""

from __future__ import annotations

import os
import socket
import threading
import time
from pathlib import Path

import pytest
import torch
from datahelpers import REPO, SHARED_LAYOUT, Exploit, copy_shared
from rich.console import Console
from torch_geometric.utils import contains_self_loops, is_undirected

from clbench.datasets import DATASETS, load_graph
from clbench.datasets.info import dataset_rows, print_dataset_table
from clbench.datasets.loading import FileSource, check_file
from clbench.errors import DataError
from clbench.scenario import NCScenarioLoader

#: Published statistics (PyG's dataset docs; edges count both directions).
PUBLISHED = {
    "cora": {"nodes": 2708, "edges": 10556, "features": 1433, "classes": 7},
    "citeseer": {"nodes": 3327, "edges": 9104, "features": 3703, "classes": 6},
    "amazon-computers": {"nodes": 13752, "edges": 491722, "features": 767, "classes": 10},
    "coauthor-cs": {"nodes": 18333, "edges": 163788, "features": 6805, "classes": 15},
}
PUBLIC_SPLIT = {"cora": (140, 500, 1000), "citeseer": (120, 500, 1000)}

REQUIRED_NAMES = {
    "ogbn-arxiv", "ogbn-products", "cora", "citeseer", "pubmed", "corafull",
    "amazon-computers", "amazon-photo", "coauthor-cs", "coauthor-physics",
    "cora-ml", "citeseer-full", "dblp", "synthetic",
}


@pytest.fixture(scope="module")
def real_root(tmp_path_factory) -> Path:
    """One data root with the four shared datasets, loaded once (the cache is then warm)."""
    root = tmp_path_factory.mktemp("real")
    for name in PUBLISHED:
        copy_shared(name, root)
    return root


# -- real data, offline ------------------------------------------------------------------
@pytest.mark.parametrize("name", list(PUBLISHED))
def test_real_dataset_loads_offline_with_published_counts(name, real_root, net):
    card = DATASETS.get(name)
    assert card.is_local(real_root)
    g = load_graph(name, data_dir=real_root, split_seed=0)
    assert net.attempts == []
    pub = PUBLISHED[name]
    assert (g.num_nodes, g.num_edges, g.num_features, g.num_classes) == (
        pub["nodes"], pub["edges"], pub["features"], pub["classes"])
    assert {k: card.stats[k] for k in pub} == pub
    assert is_undirected(g.edge_index, num_nodes=g.num_nodes)
    assert not contains_self_loops(g.edge_index)
    assert not bool((g.train_mask & g.val_mask).any() | (g.train_mask & g.test_mask).any()
                    | (g.val_mask & g.test_mask).any())
    sizes = tuple(int(m.sum()) for m in (g.train_mask, g.val_mask, g.test_mask))
    if name in PUBLIC_SPLIT:
        assert sizes == PUBLIC_SPLIT[name] == (card.stats["train"], card.stats["val"],
                                               card.stats["test"])
        assert g.meta["split"] == "official"
    else:
        assert g.meta["split"] == "stratified"
        assert sum(sizes) == g.num_nodes
        for got, share in zip(sizes, (0.6, 0.2, 0.2), strict=True):
            assert abs(got / g.num_nodes - share) < 0.01
    # the card's default task split is feasible on the real split
    scenario = NCScenarioLoader(g, card.num_tasks, card.classes_per_task, seed=0)
    assert scenario.num_tasks == card.num_tasks


@pytest.mark.parametrize("name", list(PUBLISHED))
def test_second_load_uses_the_cache(name, real_root, net):
    first = load_graph(name, data_dir=real_root, split_seed=3)
    second = load_graph(name, data_dir=real_root, split_seed=3)
    assert second.meta["cache"] == "hit"
    cache = Path(second.meta["cache_path"])
    assert cache.parent == real_root / SHARED_LAYOUT[name][1].split("/")[0] / "processed"
    for key in ("x", "y", "edge_index", "train_mask", "val_mask", "test_mask"):
        assert torch.equal(getattr(first, key), getattr(second, key)), key
    assert net.attempts == []


def test_stratified_split_follows_the_split_seed(real_root):
    card = DATASETS.get("amazon-computers")
    a0 = load_graph("amazon-computers", data_dir=real_root, split_seed=0)
    a0_again = load_graph("amazon-computers", data_dir=real_root, split_seed=0)
    a1 = load_graph("amazon-computers", data_dir=real_root, split_seed=1)
    assert torch.equal(a0.train_mask, a0_again.train_mask)
    assert not torch.equal(a0.train_mask, a1.train_mask)
    # the uncached path (card.load + preprocessing) draws the same split
    data = card.load(real_root, 1)
    assert torch.equal(data.train_mask, a1.train_mask)
    assert torch.equal(data.test_mask, a1.test_mask)
    for g in (a0, a1):  # stratified: every class in every split, near 60/20/20
        for c in range(10):
            cls = g.y == c
            share = int((cls & g.train_mask).sum()) / int(cls.sum())
            assert abs(share - 0.6) < 0.02


def test_changed_source_file_rebuilds_cache(tmp_path, net, monkeypatch):
    raw = copy_shared("cora", tmp_path)
    first = load_graph("cora", data_dir=tmp_path)
    assert first.meta["cache"] == "written"
    assert load_graph("cora", data_dir=tmp_path).meta["cache"] == "hit"
    os.utime(raw / "ind.cora.graph", ns=(10**9, 10**9))
    calls = []
    real_load = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **k: calls.append(k.get("weights_only"))
                        or real_load(*a, **k))
    rebuilt = load_graph("cora", data_dir=tmp_path)
    assert rebuilt.meta["cache"] == "rebuilt"
    assert torch.equal(rebuilt.edge_index, first.edge_index)
    assert all(w is True for w in calls), calls


def test_pyg_markers_are_read_with_weights_only(tmp_path, net, monkeypatch):
    """Without a clbench cache PyG re-reads processed/pre_transform.pt, which it does with
    weights_only=False; clbench forces weights_only=True on every torch.load it makes."""
    copy_shared("cora", tmp_path)
    load_graph("cora", data_dir=tmp_path)
    (tmp_path / "Cora" / "processed" / "clbench_cora.pt").unlink()
    assert (tmp_path / "Cora" / "processed" / "pre_transform.pt").exists()
    calls = []
    real_load = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **k: calls.append(k.get("weights_only"))
                        or real_load(*a, **k))
    g = load_graph("cora", data_dir=tmp_path)
    assert g.num_nodes == 2708
    assert len(calls) >= 2 and all(w is True for w in calls), calls


def test_corrupt_cache_is_rebuilt(tmp_path, net):
    copy_shared("cora", tmp_path)
    g = load_graph("cora", data_dir=tmp_path)
    cache = Path(g.meta["cache_path"])
    cache.write_bytes(cache.read_bytes()[:1000])
    with pytest.warns(UserWarning, match="unreadable cache"):
        again = load_graph("cora", data_dir=tmp_path)
    assert torch.equal(again.edge_index, g.edge_index)
    assert load_graph("cora", data_dir=tmp_path).meta["cache"] == "hit"


# -- failures ------------------------------------------------------------------------------
@pytest.mark.parametrize("name,folder,files", [
    ("cora", "Cora", ["raw/ind.cora.x", "raw/ind.cora.graph", "raw/ind.cora.test.index"]),
    ("amazon-computers", "Computers", ["raw/amazon_electronics_computers.npz"]),
    ("corafull", "CitationFull/cora", ["raw/cora.npz"]),
])
def test_missing_files_offline_give_one_clear_error(name, folder, files, tmp_path, net):
    root = tmp_path / "data"
    start = time.monotonic()
    with pytest.raises(DataError) as err:
        load_graph(name, data_dir=root)
    assert time.monotonic() - start < 10
    msg = str(err.value)
    assert str((root / folder).resolve()) in msg
    for f in files:
        assert f in msg
    assert "\n" not in msg
    assert net.attempts  # the library's download ran, and was refused
    assert not root.exists()  # nothing left behind


@pytest.fixture
def silent_server():
    """A TCP server that accepts connections and never answers."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(16)
    conns: list[socket.socket] = []
    stop = threading.Event()

    def accept():
        srv.settimeout(0.2)
        while not stop.is_set():
            try:
                conns.append(srv.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{srv.getsockname()[1]}"
    stop.set()
    thread.join(2)
    for c in conns:
        c.close()
    srv.close()


@pytest.mark.parametrize("name", ["cora", "amazon-computers"])
def test_download_that_hangs_times_out(name, tmp_path, silent_server, monkeypatch):
    from torch_geometric.datasets import Amazon, Planetoid

    monkeypatch.setenv("CLBENCH_DOWNLOAD_TIMEOUT", "1")
    monkeypatch.setattr(Planetoid, "url", silent_server + "/data")  # fsspec/aiohttp path
    monkeypatch.setattr(Amazon, "url", silent_server + "/npz/")  # urllib path
    start = time.monotonic()
    with pytest.raises(DataError, match="downloading them") as err:
        load_graph(name, data_dir=tmp_path)
    assert time.monotonic() - start < 15
    assert "timeout" in str(err.value).lower()
    assert socket.getdefaulttimeout() is None  # restored


@pytest.mark.parametrize("name,rel", [
    ("cora", "Cora/raw/ind.cora.allx"),
    ("cora", "Cora/raw/ind.cora.graph"),
    ("amazon-computers", "Computers/raw/amazon_electronics_computers.npz"),
])
def test_truncated_raw_file_is_named(name, rel, tmp_path, net):
    copy_shared(name, tmp_path)
    path = tmp_path / rel
    os.truncate(path, path.stat().st_size // 2)
    start = time.monotonic()
    with pytest.raises(DataError) as err:
        load_graph(name, data_dir=tmp_path)
    assert time.monotonic() - start < 10
    msg = str(err.value)
    assert str(path.resolve()) in msg and "truncated" in msg
    assert "delete it and run again to re-download it" in msg
    assert net.attempts == []


def test_truncated_processed_file_is_named(tmp_path, net):
    copy_shared("cora", tmp_path)
    load_graph("cora", data_dir=tmp_path)
    processed = tmp_path / "Cora" / "processed"
    (processed / "clbench_cora.pt").unlink()
    data_pt = processed / "data.pt"
    os.truncate(data_pt, data_pt.stat().st_size // 3)
    with pytest.raises(DataError) as err:
        load_graph("cora", data_dir=tmp_path)
    msg = str(err.value)
    assert str(data_pt.resolve()) in msg and "rebuild it from the raw files" in msg


def test_unsafe_processed_file_is_refused(tmp_path, net):
    copy_shared("cora", tmp_path)
    load_graph("cora", data_dir=tmp_path)
    processed = tmp_path / "Cora" / "processed"
    (processed / "clbench_cora.pt").unlink()
    marker = tmp_path / "pwned"
    torch.save({"payload": Exploit(marker)}, processed / "data.pt")
    with pytest.raises(DataError, match="weights_only") as err:
        load_graph("cora", data_dir=tmp_path)
    assert not marker.exists()
    assert str(processed.resolve()) in str(err.value)


def test_check_file(tmp_path):
    good = tmp_path / "a.txt"
    good.write_text("")
    assert check_file(good) is None  # empty text files (OGB's RELEASE marker) are fine
    empty = tmp_path / "ind.cora.x"
    empty.write_bytes(b"")
    assert "empty" in check_file(empty)
    src = copy_shared("cora", tmp_path / "root")
    assert check_file(src / "ind.cora.x") is None
    cut = tmp_path / "ind.cora.tx"
    cut.write_bytes((src / "ind.cora.tx").read_bytes()[:500])
    assert check_file(cut) is not None


# -- cards, list rows, README --------------------------------------------------------------
def test_every_required_dataset_is_registered_with_a_full_card():
    assert set(DATASETS.names()) >= REQUIRED_NAMES
    for name in REQUIRED_NAMES:
        card = DATASETS.get(name)
        assert card.source and card.license and card.split and card.description, name
        assert {"nodes", "features", "classes"} <= set(card.stats), name
        assert card.num_tasks * card.classes_per_task <= card.stats["classes"], name
        if name != "synthetic":
            assert isinstance(card.load, FileSource), name
            assert card.files and "edges" in card.stats, name
            assert card.undirected
    for name, tasks in {"cora": (3, 2), "citeseer": (3, 2), "corafull": (35, 2),
                        "ogbn-arxiv": (8, 5)}.items():
        card = DATASETS.get(name)
        assert (card.num_tasks, card.classes_per_task) == tasks


def test_dataset_rows(real_root):
    rows = {r["name"]: r for r in dataset_rows(real_root)}
    assert set(rows) >= REQUIRED_NAMES
    assert rows["cora"] | {"local": None} == {
        "name": "cora", "nodes": 2708, "edges": 10556, "features": 1433, "classes": 7,
        "split": "140/500/1,000", "tasks": "3 x 2", "local": None,
        "folder": str(real_root / "Cora"), "description": rows["cora"]["description"],
    }
    for name in PUBLISHED:
        assert rows[name]["local"] is True, name
    for name in ("pubmed", "ogbn-arxiv", "dblp"):
        assert rows[name]["local"] is False, name
    assert rows["amazon-computers"]["split"] == "60/20/20 %"
    assert rows["ogbn-arxiv"]["split"] == "90,941/29,799/48,603"
    assert rows["ogbn-arxiv"]["tasks"] == "8 x 5"
    assert rows["synthetic"]["folder"] is None
    console = Console(record=True, width=160)
    print_dataset_table(real_root, console)
    text = console.export_text()
    for name in REQUIRED_NAMES:
        assert name in text


def test_readme_documents_every_dataset():
    readme = (REPO / "datasets" / "README.md").read_text()
    for name in DATASETS.names():
        card = DATASETS.get(name)
        assert f"`{name}`" in readme, name
        assert f"{card.num_tasks} \u00d7 {card.classes_per_task}" in readme, name  # "T x C"


def test_data_root_comes_from_env(tmp_path, monkeypatch, net):
    copy_shared("cora", tmp_path)
    monkeypatch.setenv("CLBENCH_DATA", str(tmp_path))
    assert load_graph("cora").num_nodes == 2708


@pytest.mark.parametrize("width", [80, 200])
def test_list_datasets_keeps_every_number_at_any_width(tmp_path, width):
    """At 80 columns (a pipe's default) the numbers must survive whole: the wide text
    column goes first, with a note."""
    import io

    from rich.console import Console

    from clbench.datasets.info import print_dataset_table

    out = io.StringIO()
    print_dataset_table(tmp_path, Console(file=out, width=width, color_system=None))
    text = out.getvalue()
    for number in ("2,449,029", "123,718,280", "169,343", "8,710", "built-in"):
        assert number in text, (width, number)
    assert "…" not in text
    assert max(len(line) for line in text.splitlines()) <= width
    assert ("column left out" in text) == (width == 80)
    assert ("60/20/20 %" in text) == (width == 200)
