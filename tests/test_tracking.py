"""MLflow tracking against a real ``mlflow server`` on 127.0.0.1 (started by the tests)."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
from mlflow.tracking import MlflowClient
from mlflow_server import (
    child_runs,
    cli,
    cli_process,
    free_port,
    parent_runs,
    shared_server,
    unique,
)

from clbench.config import resolve_params
from clbench.orchestrate import results_folder
from clbench.spec import TRAINING_KEYS_ABSENT
from clbench.tracking import (
    aggregate,
    check_tracking_uri,
    read_matrix_csv,
    resolve_tracking_uri,
    select_seed_runs,
)

PROTOCOL_PARAMS = ("method", "dataset", "seed", "split_seed", "graph", "metric", "config_hash",
                   "num_tasks", "classes_per_task", "class_order", "dataset.name",
                   "dataset.nodes", "version.torch", "version.clbench", "version.python")
CHILD_FINAL = ("AP", "AF", "BWT", "FWT", "val_AP", "time_total_seconds",
               "time_per_task_seconds", "peak_rss_mb", "extra_storage_bytes")
CHILD_ARTIFACTS = {"R_test.csv", "R_val.csv", "R_test_heatmap.png", "ap_curve.png",
                   "config.json", "result.json"}


def test_server_run_logs_parents_children_metrics_and_artifacts(workdir, capsys):
    server = shared_server()
    exp = unique("server-grid")
    code = cli("run", "--method", "finetune,joint", "--seeds", "0-1", "--epochs", "5",
               "--jobs", "2", "--tracking-uri", server.uri, "--experiment", exp, "-q")
    out = capsys.readouterr().out
    assert code == 0, out
    assert out.count("done ") == 4 and "AP " in out and "AF " in out

    client = MlflowClient(server.uri)
    experiment = client.get_experiment_by_name(exp)
    parents = parent_runs(client, experiment.experiment_id)
    children = child_runs(client, experiment.experiment_id)
    assert len(parents) == 2 and len(children) == 4
    by_id = {p.info.run_id: p for p in parents}
    assert {p.data.tags["clbench.method"] for p in parents} == {"finetune", "joint"}
    assert all(p.info.status == "FINISHED" for p in parents + children)

    for child in children:
        tags, params, metrics = child.data.tags, child.data.params, child.data.metrics
        parent = by_id[tags["mlflow.parentRunId"]]  # nested under its (method, dataset) parent
        assert parent.data.tags["clbench.method"] == tags["clbench.method"]
        method = tags["clbench.method"]
        for key, value in resolve_params(method, "synthetic", {"epochs": 5}).items():
            if TRAINING_KEYS_ABSENT.get(key, object()) == value:  # e.g. schedule=plateau:
                assert key not in params, key  # left out, as before the key existed
                continue
            assert params[key] == str(value), key  # every resolved hyperparameter
        for key in PROTOCOL_PARAMS:
            assert key in params, key
        assert params["seed"] == tags["clbench.seed"] and params["num_tasks"] == "5"
        for key in CHILD_FINAL:
            assert key in metrics, key
        if method == "finetune":  # a joint run of the same dataset and seed exists
            assert "INT" in metrics

        saved = json.loads((results_folder(workdir / "results", exp) /
                            f"{method}__synthetic__{tags['clbench.config_hash']}__seed"
                            f"{tags['clbench.seed']}.json").read_text())
        R = np.asarray(saved["R_test"])
        T = R.shape[0]
        hist = client.get_metric_history(child.info.run_id, "test/task_0")
        assert sorted(m.step for m in hist) == list(range(T))  # step = task index
        assert [m.value for m in sorted(hist, key=lambda m: m.step)] == pytest.approx(R[:, 0])
        ap = client.get_metric_history(child.info.run_id, "test/AP_so_far")
        assert [m.value for m in sorted(ap, key=lambda m: m.step)] == pytest.approx(
            saved["ap_curve"])
        assert len(client.get_metric_history(child.info.run_id, "time/train_seconds")) == T
        assert metrics["AP"] == pytest.approx(saved["metrics"]["AP"])

        names = {a.path for a in client.list_artifacts(child.info.run_id)}
        assert names >= CHILD_ARTIFACTS
        local = client.download_artifacts(child.info.run_id, "R_test.csv", str(workdir))
        assert read_matrix_csv(local) == pytest.approx(R)
        cfg = client.download_artifacts(child.info.run_id, "config.json", str(workdir))
        with open(cfg) as fh:
            assert json.load(fh)["config"]["epochs"] == 5

    for parent in parents:
        m = parent.data.metrics
        assert m["n_seeds"] == 2
        for key in ("AP", "AF", "BWT", "FWT"):
            assert f"{key}_mean" in m and f"{key}_std" in m
        mine = [c for c in children if c.data.tags["mlflow.parentRunId"] == parent.info.run_id]
        aps = [c.data.metrics["AP"] for c in mine]
        assert m["AP_mean"] == pytest.approx(np.mean(aps))
        assert m["AP_std"] == pytest.approx(np.std(aps))
        names = {a.path for a in client.list_artifacts(parent.info.run_id)}
        assert {"seed_spread.png", "per_seed.csv", "config.json"} <= names


def test_down_server_fails_fast_before_training(workdir, capsys):
    port = free_port()  # nothing listens there
    started = time.monotonic()
    code = cli("run", "--method", "finetune", "--seeds", "0-1", "--epochs", "5",
               "--tracking-uri", f"http://127.0.0.1:{port}")
    elapsed = time.monotonic() - started
    err = capsys.readouterr().err
    assert code == 2
    assert "cannot reach the MLflow tracking server" in err and str(port) in err
    assert len(err.strip().splitlines()) == 1
    assert elapsed < 30
    assert not (workdir / "results").exists()  # nothing ran


def test_bad_tracking_uri_is_one_clear_line(workdir, capsys):
    code = cli("run", "--seeds", "0", "--epochs", "5", "--tracking-uri", "htp://nowhere")
    err = capsys.readouterr().err
    assert code == 2 and "cannot use MLflow tracking URI 'htp://nowhere'" in err
    assert not (workdir / "results").exists()


def test_check_and_resolve_uri(workdir, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://example.invalid:1")
    assert resolve_tracking_uri(None) == "http://example.invalid:1"
    assert resolve_tracking_uri("sqlite:///x.db") == "sqlite:///x.db"
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    assert resolve_tracking_uri(None) == f"sqlite:///{workdir / 'mlflow.db'}"  # MLflow default
    check_tracking_uri(shared_server().uri)  # a live server passes


def test_aggregate_and_seed_selection():
    from clbench.tracking import RunRecord

    def rec(seed, ap, status="FINISHED", end=1):
        return RunRecord(f"r{seed}{end}", status, {"clbench.seed": str(seed)}, {"AP": ap}, {},
                         0, end)

    runs = [rec(0, 0.5, end=1), rec(0, 0.7, end=2), rec(1, 0.9), rec(2, 0.1, "FAILED")]
    chosen = select_seed_runs(runs)
    assert list(chosen) == [0, 1] and chosen[0].metrics["AP"] == 0.7  # latest finished per seed
    assert list(select_seed_runs(runs, {1})) == [1]
    agg = aggregate([r.metrics for r in chosen.values()] + [{"AP": float("nan")}])
    assert agg["AP"] == {"mean": pytest.approx(0.8), "std": pytest.approx(0.1), "n": 2}


def test_every_code_identity_key_has_its_tag():
    """Each :data:`clbench.provenance.CODE_TAGS` key is logged as ``clbench.<key>``, a
    constant of :mod:`clbench.tracking`."""
    from clbench.provenance import CODE_TAGS
    from clbench.tracking import CODE_TAG_NAMES, code_tag

    assert set(CODE_TAG_NAMES) == set(CODE_TAGS)
    assert {k: code_tag(k) for k in CODE_TAGS} == {k: f"clbench.{k}" for k in CODE_TAGS}


def test_creating_a_store_prints_no_mlflow_bookkeeping(tmp_path):
    """MLflow's INFO lines about creating the database tables stay out of the output."""
    proc = cli_process("run", "--method", "finetune", "--param", "epochs=2", "--param",
                       "hidden=16", "--track", "--tracking-uri",
                       f"sqlite:///{tmp_path / 'new.db'}", "-q", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "new.db").is_file()
    assert "database tables" not in proc.stdout + proc.stderr
    assert " INFO " not in proc.stdout + proc.stderr
