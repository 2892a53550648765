"""``--backend dask`` on a real ``dask.distributed.LocalCluster`` on 127.0.0.1."""

from __future__ import annotations

import json
import time

from dask import distributed  # a required test dependency (the "test" extra)
from mlflow_server import cli, free_port, shared_server, unique

from clbench.orchestrate import results_folder


def _results(workdir, exp):
    out = {}
    for path in sorted((results_folder(workdir / "results", exp)).glob("*.json")):
        data = json.loads(path.read_text())
        out[(data["method"], data["seed"])] = data
    return out


def test_dask_backend_matches_local_backend(workdir, capsys):
    server = shared_server()
    common = ("--method", "finetune", "--seeds", "0-1", "--epochs", "5", "--tracking-uri",
              server.uri, "-q")
    local_exp, dask_exp = unique("local"), unique("dask")
    assert cli("run", *common, "--jobs", "2", "--experiment", local_exp) == 0
    with distributed.LocalCluster(host="127.0.0.1", n_workers=2, threads_per_worker=1,
                                  dashboard_address=None) as cluster:
        code = cli("run", *common, "--backend", "dask", "--scheduler",
                   cluster.scheduler_address, "--experiment", dask_exp)
    out = capsys.readouterr().out
    assert code == 0, out
    assert "dask scheduler tcp://127.0.0.1" in out
    local, remote = _results(workdir, local_exp), _results(workdir, dask_exp)
    assert sorted(local) == sorted(remote) == [("finetune", 0), ("finetune", 1)]
    for key, res in local.items():
        assert remote[key]["R_test"] == res["R_test"]  # identical accuracy matrices
        assert remote[key]["R_val"] == res["R_val"]
        assert remote[key]["clbench"]["threads"] == res["clbench"]["threads"] == 1


def test_dask_scheduler_down_is_a_clear_error(workdir, capsys):
    started = time.monotonic()
    code = cli("run", "--seeds", "0-1", "--epochs", "5", "--backend", "dask",
               "--scheduler", f"tcp://127.0.0.1:{free_port()}", "--tracking-uri",
               shared_server().uri)
    err = capsys.readouterr().err
    assert code == 2 and "cannot connect to the Dask scheduler" in err
    assert time.monotonic() - started < 40
    assert not (workdir / "results").exists()


def test_dask_backend_needs_a_scheduler(workdir, capsys, monkeypatch):
    monkeypatch.delenv("DASK_SCHEDULER_ADDRESS", raising=False)
    assert cli("run", "--seeds", "0-1", "--backend", "dask") == 2
    assert "--backend dask needs --scheduler" in capsys.readouterr().err
