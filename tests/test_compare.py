"""``clbench compare``: the AP/AF table (Markdown, CSV) and the grouped bar chart."""

from __future__ import annotations

import csv

import pytest
from mlflow.tracking import MlflowClient

try:
    from mlflow_server import cli, parent_runs, shared_server, unique
except ImportError:  # tests/ imported as a package
    from tests.mlflow_server import cli, parent_runs, shared_server, unique


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return tmp_path


def test_compare_writes_table_csv_and_figure(workdir, capsys):
    server = shared_server()
    exp = unique("compare")
    assert cli("run", "--method", "finetune,joint", "--seeds", "0-1", "--epochs", "3",
               "--jobs", "2", "--tracking-uri", server.uri, "--experiment", exp, "-q") == 0
    capsys.readouterr()
    assert cli("compare", "--experiment", exp, "--tracking-uri", server.uri) == 0
    out = capsys.readouterr().out
    assert "finetune" in out and "joint" in out and "(n=2)" in out

    md = (workdir / "results" / f"compare-{exp}.md").read_text()
    assert "| method | synthetic |" in md
    assert md.count("(n=2)") == 2 and "AP " in md and "AF " in md and "±" in md
    with open(workdir / "results" / f"compare-{exp}.csv", newline="") as fh:
        rows = {r["method"]: r for r in csv.DictReader(fh)}
    assert set(rows) == {"finetune", "joint"}
    png = (workdir / "results" / f"compare-{exp}.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000

    client = MlflowClient(server.uri)
    eid = client.get_experiment_by_name(exp).experiment_id
    for parent in parent_runs(client, eid):  # the table is the parents' aggregate
        row = rows[parent.data.tags["clbench.method"]]
        assert row["n_seeds"] == "2" and row["seeds"] == "0 1"
        for key in ("AP", "AF"):
            assert float(row[f"{key}_mean"]) == pytest.approx(parent.data.metrics[f"{key}_mean"])
            assert float(row[f"{key}_std"]) == pytest.approx(parent.data.metrics[f"{key}_std"])


def test_compare_unknown_experiment(workdir, capsys):
    assert cli("compare", "--experiment", unique("missing"), "--tracking-uri",
               shared_server().uri) == 2
    assert "no MLflow experiment named" in capsys.readouterr().err
    assert not (workdir / "results").exists()
