"""The run spec: every resolved setting reaches its use, and a graph file is a graph file
whatever its suffix."""

from __future__ import annotations

import json

import pytest
import torch
from datahelpers import REPO

from clbench.experiment import run_experiment


def _graph_file(path, n: int = 60, f: int = 5, classes: int = 4):
    gen = torch.Generator().manual_seed(0)
    idx = torch.arange(n)
    torch.save({"x": torch.randn(n, f, generator=gen),
                "edge_index": torch.randint(0, n, (2, 200), generator=gen),
                "y": idx % classes, "train_mask": idx % 5 < 3, "val_mask": idx % 5 == 3,
                "test_mask": idx % 5 == 4}, path)
    return path


def test_protocol_patience_reaches_piggybacks_dgi_pretraining(monkeypatch):
    """``--param patience=3`` is the patience of every plateau scheduler of the run,
    Piggyback's DGI pre-training included (it used to fall back to 20 there)."""
    import clbench.methods.piggyback as pb

    seen: list[int] = []
    real = pb.plateau_scheduler

    def spy(patience=20, *args, **kwargs):
        seen.append(patience)
        return real(patience, *args, **kwargs)

    monkeypatch.setattr(pb, "plateau_scheduler", spy)
    run_experiment(method="piggyback", dataset="synthetic", seed=0,
                   params={"patience": 3, "backbone_init": "dgi", "dgi_epochs": 2,
                           "epochs": 2, "hidden": 16})
    assert seen == [3]


def test_a_pth_graph_file_runs_without_tasks(tmp_path):
    """``--dataset g.pth`` is a graph file like ``g.pt`` (two classes per task by default),
    not an unknown dataset name."""
    for suffix in (".pt", ".pth"):
        path = _graph_file(tmp_path / f"g{suffix}")
        result = run_experiment(method="finetune", dataset=str(path), seed=0,
                                params={"epochs": 2, "hidden": 8})
        assert result["scenario"]["num_tasks"] == 2, suffix


RUNS = REPO / "results" / "sweeps" / "runs"
BEGIN_RUNS = RUNS / "begin-cora-citeseer-bf04eadb"


def _record(name: str) -> dict:
    """A committed run record: ``<experiment folder>/<file>``, or a file of the BeGin table."""
    return json.loads((RUNS / name if "/" in name else BEGIN_RUNS / name).read_text())


def test_committed_records_keep_their_hashes():
    """A spec resolved again from a committed run record has the record's config and
    protocol hashes: the orchestrator finds, skips and resumes those runs by them."""
    from clbench.resolve import resolve_record

    records = sorted(RUNS.glob("*/*.json"))
    assert len(records) > 900
    for path in records[::37]:
        rec = json.loads(path.read_text())
        spec = resolve_record(rec["spec"])
        assert spec.config_hash == rec["clbench"]["config_hash"], path.name
        assert spec.protocol_hash == rec["clbench"]["protocol_hash"], path.name
        assert spec.record() == rec["spec"], path.name
        assert spec.uid == path.stem, path.name


@pytest.mark.parametrize("name", [
    "finetune__cora__643eb99cf69d__seed5000.json",
    pytest.param("piggyback__cora__86c69feef368__seed6000.json", marks=pytest.mark.slow),
    pytest.param("ewc__cora__8a6300f76a4e__seed3000.json", marks=pytest.mark.slow),
    # EWC at its new default (the mean-normalised Fisher, lamb 100), recorded by the
    # defaults sweep at a900f80
    pytest.param("cora-citeseer-b38b1a7c/ewc__cora__93f7a73e80aa__seed6000.json",
                 marks=pytest.mark.slow),
])
def test_a_committed_run_record_reruns_bit_for_bit(name, cora_root):
    """Re-running a committed run from its record alone gives its accuracy matrices
    exactly (same code path, same single thread as the sweep)."""
    from clbench.resolve import resolve_record

    rec = _record(name)
    threads = torch.get_num_threads()
    try:
        result = run_experiment(resolve_record(rec["spec"], data_dir=str(cora_root)))
    finally:
        torch.set_num_threads(threads)
    assert result["R_test"] == rec["R_test"]
    assert result["R_val"] == rec["R_val"]
    assert result["timing"]["task_epochs"] == rec["timing"]["task_epochs"]
    assert result["config"] == rec["config"]


def test_a_record_made_before_fisher_norm_means_the_raw_fisher():
    """EWC records made before ``fisher_norm`` existed lack it: read back they run with the
    raw Fisher they were made with (not today's default), and a new run asked for the raw
    Fisher and the record's lamb has the record's identity."""
    from clbench.resolve import resolve_record, resolve_run

    rec = _record("ewc__cora__8a6300f76a4e__seed3000.json")
    assert "fisher_norm" not in rec["spec"]["params"]
    spec = resolve_record(rec["spec"])
    assert spec.params["fisher_norm"] == "none"
    assert spec.config_hash == rec["clbench"]["config_hash"]
    params = {**rec["spec"]["params"], "fisher_norm": "none"}
    again = resolve_run("ewc", "cora", rec["seed"], params=params,
                        num_tasks=rec["spec"]["num_tasks"],
                        classes_per_task=rec["spec"]["classes_per_task"])
    assert again.config_hash == rec["clbench"]["config_hash"]
    new = resolve_run("ewc", "cora", rec["seed"], params=rec["spec"]["params"],
                      num_tasks=rec["spec"]["num_tasks"],
                      classes_per_task=rec["spec"]["classes_per_task"])
    assert new.params["fisher_norm"] == "mean" and new.config["fisher_norm"] == "mean"
    assert new.config_hash != rec["clbench"]["config_hash"]
