"""ogbn-arxiv and ogbn-products through OGB's real loader, on small generated files.

The files follow OGB's exact on-disk layout; the network is blocked in every
test, so any download attempt fails the test.
"""

from __future__ import annotations

import builtins
import os
import subprocess
import sys
import textwrap
import time

import numpy as np
import pandas as pd
import pytest
import torch
from datahelpers import (
    REPO,
    edge_set,
    shared_or_skip,
    undirected_pairs,
    write_fake_arxiv,
    write_fake_products,
)
from torch_geometric.utils import contains_self_loops, is_undirected

from clbench.datasets import DATASETS, load_graph
from clbench.datasets.ogb import SAFE_GLOBALS, ogb_prompts_answered
from clbench.errors import DataError
from clbench.scenario import NCScenarioLoader


def _mask_of(idx: np.ndarray, n: int) -> torch.Tensor:
    m = torch.zeros(n, dtype=torch.bool)
    m[torch.as_tensor(idx)] = True
    return m


def test_arxiv_loads_offline_with_time_split_undirected(tmp_path, net):
    fake = write_fake_arxiv(tmp_path)
    g = load_graph("ogbn-arxiv", data_dir=tmp_path)
    assert net.attempts == []
    n = len(fake.y)
    assert (g.num_nodes, g.num_features, g.num_classes) == (n, fake.x.shape[1], 40)
    assert torch.allclose(g.x, torch.from_numpy(fake.x))
    assert torch.equal(g.y, torch.from_numpy(fake.y))
    # official time split, taken from split/time/*.csv.gz
    assert torch.equal(g.train_mask, _mask_of(fake.split["train"], n))
    assert torch.equal(g.val_mask, _mask_of(fake.split["valid"], n))
    assert torch.equal(g.test_mask, _mask_of(fake.split["test"], n))
    year = torch.from_numpy(fake.year)
    assert bool((year[g.train_mask] <= 2017).all()) and bool((year[g.val_mask] == 2018).all())
    assert bool((year[g.test_mask] >= 2019).all())
    # directed citations made undirected, self-loops and duplicates removed
    assert is_undirected(g.edge_index, num_nodes=n)
    assert not contains_self_loops(g.edge_index)
    assert edge_set(g.edge_index) == undirected_pairs(fake.edges)
    assert g.num_edges == len(undirected_pairs(fake.edges))
    assert g.meta["split"] == "official"


def test_arxiv_default_task_split(tmp_path, net):
    write_fake_arxiv(tmp_path)
    g = load_graph("ogbn-arxiv", data_dir=tmp_path)
    card = DATASETS.get("ogbn-arxiv")
    assert (card.num_tasks, card.classes_per_task) == (8, 5)
    for seed in (0, 1):
        scenario = NCScenarioLoader(g, card.num_tasks, card.classes_per_task, seed=seed)
        assert scenario.task_classes.shape == (8, 5)
        assert scenario.dropped_classes == []
        for t in range(card.num_tasks):  # each task: its own classes, in every split
            task = scenario.get_task(t)
            for batch in (task.train, task.val, task.test):
                assert set(batch.labels.tolist()) == set(scenario.task_classes[t].tolist())


def test_arxiv_cache_and_weights_only(tmp_path, net, monkeypatch):
    fake = write_fake_arxiv(tmp_path)
    calls = []
    real_load = torch.load

    def spy(*args, **kwargs):
        calls.append(kwargs.get("weights_only"))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    first = load_graph("ogbn-arxiv", data_dir=tmp_path)
    assert first.meta["cache"] == "written"
    assert calls and all(w is True for w in calls), calls  # OGB's processed file included
    processed = fake.folder / "processed" / "geometric_data_processed.pt"
    saved = torch.serialization.get_safe_globals()
    torch.serialization.clear_safe_globals()  # see what plain weights_only would refuse
    try:
        unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(str(processed))
    finally:
        torch.serialization.add_safe_globals(saved)
    registered = {f"{c.__module__}.{c.__qualname__}" for c in SAFE_GLOBALS}
    assert set(unsafe) == registered  # exactly the classes in OGB's pickle

    cache = fake.folder / "processed" / "clbench_ogbnarxiv.pt"
    assert cache.is_file()
    assert real_load(cache, weights_only=True)["format"] == 1
    second = load_graph("ogbn-arxiv", data_dir=tmp_path)
    assert second.meta["cache"] == "hit"
    for key in ("x", "y", "edge_index", "train_mask", "val_mask", "test_mask"):
        assert torch.equal(getattr(first, key), getattr(second, key)), key

    # a changed source file invalidates the cache; OGB re-processes, still weights_only
    os.utime(fake.folder / "raw" / "node-label.csv.gz", ns=(1, 1))
    calls.clear()
    third = load_graph("ogbn-arxiv", data_dir=tmp_path)
    assert third.meta["cache"] == "rebuilt"
    assert calls and all(w is True for w in calls), calls
    assert torch.equal(third.edge_index, first.edge_index)
    assert net.attempts == []


def test_products_loads_offline_with_official_split(tmp_path, net):
    fake = write_fake_products(tmp_path)
    g = load_graph("ogbn-products", data_dir=tmp_path)
    assert net.attempts == []
    n = len(fake.y)
    assert (g.num_nodes, g.num_features) == (n, fake.x.shape[1])
    assert torch.equal(g.y, torch.from_numpy(fake.y))
    for part, mask in (("train", g.train_mask), ("valid", g.val_mask), ("test", g.test_mask)):
        assert torch.equal(mask, _mask_of(fake.split[part], n))
    assert edge_set(g.edge_index) == undirected_pairs(fake.edges)
    card = DATASETS.get("ogbn-products")
    assert card.num_tasks * card.classes_per_task <= 47 == g.num_classes


def test_missing_files_offline_fail_fast_and_leave_nothing(tmp_path, net):
    root = tmp_path / "data"
    for attempt in range(2):  # the second attempt must not meet OGB's "updated?" question
        start = time.monotonic()
        with pytest.raises(DataError) as err:
            load_graph("ogbn-arxiv", data_dir=root)
        assert time.monotonic() - start < 10
        msg = str(err.value)
        assert str((root / "ogbn_arxiv").resolve()) in msg
        for f in ("RELEASE_v1.txt", "raw/edge.csv.gz", "raw/node-feat.csv.gz",
                  "split/time/train.csv.gz"):
            assert f in msg
        assert "arxiv.zip" in msg
        assert not (root / "ogbn_arxiv").exists(), attempt
    assert net.attempts  # OGB did try, and was refused


def test_empty_leftover_folder_is_not_a_prompt(tmp_path, net):
    (tmp_path / "ogbn_arxiv" / "raw").mkdir(parents=True)  # an interrupted download
    with pytest.raises(DataError, match="downloading them"):
        load_graph("ogbn-arxiv", data_dir=tmp_path)


def test_release_missing_gives_clear_error_with_stdin_closed(tmp_path, net, monkeypatch):
    fake = write_fake_arxiv(tmp_path)
    (fake.folder / "RELEASE_v1.txt").unlink()

    def no_input(*args, **kwargs):
        raise AssertionError("stdin must never be read")

    monkeypatch.setattr(builtins, "input", no_input)
    monkeypatch.setattr(sys, "stdin", None)
    start = time.monotonic()
    with pytest.raises(DataError) as err:
        load_graph("ogbn-arxiv", data_dir=tmp_path)
    assert time.monotonic() - start < 10
    msg = str(err.value)
    assert "RELEASE_v1.txt" in msg and "delete" in msg and str(fake.folder) in msg
    assert (fake.folder / "raw" / "edge.csv.gz").exists()  # nothing of the user's deleted


def test_release_missing_in_a_subprocess_with_stdin_closed(tmp_path):
    fake = write_fake_arxiv(tmp_path)
    (fake.folder / "RELEASE_v1.txt").unlink()
    script = textwrap.dedent(f"""
        import sys
        from clbench.datasets import load_graph
        from clbench.errors import DataError
        try:
            load_graph("ogbn-arxiv", data_dir={str(tmp_path)!r})
        except DataError as exc:
            print("DATAERROR", exc)
            sys.exit(3)
        sys.exit(0)
    """)
    start = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120,
        stdin=subprocess.DEVNULL, preexec_fn=lambda: os.close(0),
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert proc.returncode == 3, proc.stderr[-2000:]
    assert "DATAERROR" in proc.stdout and "RELEASE_v1.txt" in proc.stdout
    assert time.monotonic() - start < 60


def test_ogb_update_question_is_answered_without_stdin(tmp_path, monkeypatch):
    """The safety net: even if OGB itself reaches its question, stdin is not read."""
    from ogb.nodeproppred import PygNodePropPredDataset

    fake = write_fake_arxiv(tmp_path)
    (fake.folder / "RELEASE_v1.txt").unlink()
    monkeypatch.setattr(builtins, "input", lambda *a: pytest.fail("stdin read"))
    with pytest.raises(DataError, match=r"RELEASE_v1\.txt"), ogb_prompts_answered(fake.folder):
        PygNodePropPredDataset("ogbn-arxiv", root=str(tmp_path))
    import ogb.nodeproppred.dataset_pyg as dataset_module

    assert "input" not in vars(dataset_module)  # restored afterwards


def test_ogb_size_question_is_answered_yes(tmp_path, monkeypatch):
    import ogb.utils.url as url_module

    class Response:
        def info(self):
            return {"Content-Length": str(3 << 30)}

    monkeypatch.setattr(url_module.ur, "urlopen", lambda url: Response())
    monkeypatch.setattr(builtins, "input", lambda *a: pytest.fail("stdin read"))
    with ogb_prompts_answered(tmp_path):
        assert url_module.decide_download("http://example.invalid/big.zip") is True


def test_truncated_ogb_file_is_named(tmp_path, net):
    fake = write_fake_arxiv(tmp_path)
    path = fake.folder / "raw" / "node-feat.csv.gz"
    os.truncate(path, path.stat().st_size // 2)
    start = time.monotonic()
    with pytest.raises(DataError) as err:
        load_graph("ogbn-arxiv", data_dir=tmp_path)
    assert time.monotonic() - start < 10
    msg = str(err.value)
    assert str(path) in msg and "truncated" in msg and "delete it" in msg.lower()
    assert "RELEASE" not in msg  # an empty RELEASE file is fine


def test_card_stats_match_the_real_arxiv_labels():
    """Card statistics and the time split sizes, checked on the real ogbn-arxiv labels/years."""
    raw = shared_or_skip("ogbn-arxiv-labels-only/raw")

    def col(name):
        return pd.read_csv(raw / name, header=None).values[:, 0]

    year, label = col("node_year.csv.gz"), col("node-label.csv.gz")
    stats = DATASETS.get("ogbn-arxiv").stats
    assert stats["nodes"] == len(year) == int(col("num-node-list.csv.gz")[0])
    assert stats["edges"] == int(col("num-edge-list.csv.gz")[0])
    assert stats["classes"] == int(label.max()) + 1
    assert (stats["train"], stats["val"], stats["test"]) == (
        int((year <= 2017).sum()), int((year == 2018).sum()), int((year >= 2019).sum()))
