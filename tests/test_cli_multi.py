"""The multi-job CLI: bad input, single runs left alone, ``sweep`` and ``ui``."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from datetime import datetime, timezone
from pathlib import Path

import pytest
from datahelpers import copy_shared
from mlflow.tracking import MlflowClient
from mlflow_server import cli, free_port, parent_runs, shared_server, unique

from clbench.cli import ui_command
from clbench.compare import PAUSE_SECONDS, _duration, busy_intervals
from clbench.errors import ClbenchError
from clbench.orchestrate import results_folder


@pytest.mark.parametrize(("args", "message"), [
    (("--seeds", "5-1"), "--seeds range"),
    (("--seeds", "x"), "--seeds expects"),
    (("--seed", "0", "--seeds", "0-1"), "either --seed or --seeds"),
    (("--method", "finetune,nope", "--seeds", "0-1"), "unknown method 'nope'"),
    (("--dataset", "synthetic,nope", "--seeds", "0"), "unknown dataset 'nope'"),
    (("--seeds", "0-1", "--param", "joint.lr=0.1"), "not among the methods"),
    (("--method", "finetune", "--param", "joint.lr=0.1"), "not among the methods"),
    (("--seeds", "0-1", "--param", "lr=fast"), "expects float"),
    (("--seeds", "0-1", "--backend", "spark"), "unknown --backend"),
    (("--seeds", "0-1", "--backend", "dask"), "--backend dask needs --scheduler"),
    (("--seeds", "0-1", "--scheduler", "tcp://x:1"), "--scheduler only applies"),
    (("--seeds", "0-1", "--jobs", "0"), "--jobs must be at least 1"),
])
def test_bad_input_exits_2_with_one_line_before_anything(workdir, capsys, args, message):
    assert cli("run", *args) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1, err
    assert not (workdir / "mlflow.db").exists() and not (workdir / "results").exists()


def test_single_run_is_unchanged(workdir, capsys):
    assert cli("run", "--epochs", "1", "--tasks", "2", "--method", "finetune", "-q") == 0
    out = capsys.readouterr().out
    assert "R[i][j]" in out and "AP " in out
    assert not (workdir / "mlflow.db").exists() and not (workdir / "results").exists()


def test_single_run_takes_method_scoped_params_as_a_grid_does(workdir, tmp_path):
    """``--param ewc.lamb=...`` means the same in a single run as with ``--seeds``: the
    value reaches the run's configuration (it was once refused as an unknown key)."""
    out = tmp_path / "r.json"
    assert cli("run", "--epochs", "1", "--tasks", "2", "--method", "ewc", "-q",
               "--param", "ewc.lamb=7.5", "--param", "lr=0.02", "--json", str(out)) == 0
    config = json.loads(out.read_text())["config"]
    assert config["lamb"] == 7.5 and config["lr"] == 0.02


SWEEP = """
experiment = "{exp}"
methods = ["finetune"]
datasets = ["synthetic"]
grid_seeds = [0]
final_seeds = "0-1"

[params]
epochs = 3

[grid]
lr = [0.001, 0.01]
"""


def test_sweep_selects_by_val_ap_reruns_on_final_seeds_and_marks(workdir, capsys):
    server = shared_server()
    exp = unique("sweep")
    (workdir / "s.toml").write_text(SWEEP.format(exp=exp))
    assert cli("sweep", "s.toml", "--jobs", "2", "--tracking-uri", server.uri, "-q") == 0
    out = capsys.readouterr().out
    assert "selected configurations" in out and "skipping 1 job(s)" in out

    client = MlflowClient(server.uri)
    eid = client.get_experiment_by_name(exp).experiment_id
    parents = parent_runs(client, eid)
    assert len(parents) == 2  # one per grid configuration
    selected = [p for p in parents if p.data.tags.get("clbench.selected") == "true"]
    other = [p for p in parents if p.data.tags.get("clbench.selected") == "false"]
    assert len(selected) == len(other) == 1
    best, worse = selected[0], other[0]
    assert best.data.tags["clbench.report_seeds"] == "0,1"
    assert best.data.metrics["n_seeds"] == 2 and worse.data.metrics["n_seeds"] == 1
    assert "mean val AP" in best.data.tags["clbench.selection"]

    def val_ap(parent, seed):
        runs = client.search_runs([eid], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}' "
                                         f"and tags.`clbench.seed` = '{seed}'")
        return runs[0].data.metrics["val_AP"]

    assert val_ap(best, 0) >= val_ap(worse, 0)  # selected by validation AP on the grid seed
    assert (workdir / "results" / f"sweep-{exp}.csv").is_file()

    # --dry-run reads where the sweep stands and logs nothing: all done, the same selection;
    # with one more final seed, exactly that job is left, with a time estimate
    n_runs = len(client.search_runs([eid], max_results=1000))
    assert cli("sweep", "s.toml", "--dry-run", "--tracking-uri", server.uri) == 0
    out = capsys.readouterr().out
    assert "nothing to train: every job has a finished run" in out
    assert f"{val_ap(best, 0):.4f}" in out and "selected (by mean validation AP" in out, out
    (workdir / "more.toml").write_text(SWEEP.format(exp=exp).replace('"0-1"', '"0-2"'))
    assert cli("sweep", "more.toml", "--dry-run", "--jobs", "2", "--tracking-uri",
               server.uri) == 0
    out = capsys.readouterr().out
    assert "to train: 1 job(s); ~" in out and "of wall time at --jobs 2" in out, out
    assert len(client.search_runs([eid], max_results=1000)) == n_runs

    assert cli("compare", "--experiment", exp, "--tracking-uri", server.uri) == 0
    md = (workdir / "results" / f"compare-{exp}.md").read_text()
    assert "| finetune |" in md and "(n=2)" in md  # only the selected configuration

    # the saved JSONs alone rebuild the sweep in an empty store: nothing is retrained,
    # the same configuration is selected, and compare writes the same table. One record
    # is moved a day back, as if an earlier work session had made it: the table's wall
    # time is then the two stretches of work, not the day between them.
    saved = sorted((results_folder(workdir / "results", exp)).glob("*.json"))
    early = json.loads(saved[0].read_text())
    for key in ("started_at", "finished_at"):
        early["clbench"][key] -= 86400.0
    saved[0].write_text(json.dumps(early))
    spans = [(r["clbench"]["started_at"], r["clbench"]["finished_at"])
             for r in (json.loads(f.read_text()) for f in saved)]
    rebuilt = f"sqlite:///{workdir / 'rebuilt.db'}"
    capsys.readouterr()
    assert cli("sweep", "s.toml", "--tracking-uri", rebuilt, "--dry-run") == 0
    out = capsys.readouterr().out  # every result is saved: 2 grid + 1 final seed, none to run
    assert "nothing to train" in out and not (workdir / "rebuilt.db").exists()
    rows = [[c.strip() for c in line.split("│")[3:6]] for line in out.splitlines()
            if "│ finetune" in line and "lr=" not in line]  # finished, saved, to run
    assert rows == [["0", "2", "0"], ["1", "1", "0"]], out  # final seed 0 is the grid run
    assert "logs the 3 saved result(s)" in out
    assert cli("sweep", "s.toml", "--tracking-uri", rebuilt, "-q") == 0
    out = capsys.readouterr().out
    assert out.count("recovered from its saved result") == out.count("done ") == 3
    again = MlflowClient(rebuilt)
    eid2 = again.get_experiment_by_name(exp).experiment_id
    chosen = [p for p in parent_runs(again, eid2) if p.data.tags.get("clbench.selected") == "true"]
    assert [p.data.tags["clbench.config_hash"] for p in chosen] == \
        [best.data.tags["clbench.config_hash"]]
    assert cli("compare", "--experiment", exp, "--tracking-uri", rebuilt,
               "--out", str(workdir / "rebuilt")) == 0
    table = (workdir / "rebuilt" / f"compare-{exp}.md").read_text()
    assert table.split("## Configurations")[0] == md.split("## Configurations")[0]
    parts = busy_intervals(spans, join_gap=PAUSE_SECONDS)
    assert len(parts) == 2
    busy = sum(e - s for s, e in parts)
    first = datetime.fromtimestamp(early["clbench"]["started_at"], tz=timezone.utc)
    assert (f"- Wall time: {_duration(busy)} with at least one run in progress, in 2 parts: "
            f"{first:%Y-%m-%d %H:%M} UTC to ") in table, table
    assert "(pauses of over 10 min between runs excluded; 24 h" in table
    assert "in progress, in" not in md  # one command's runs: one stretch, its whole span


def test_dry_run_of_a_new_sweep_or_grid_counts_every_job_and_creates_nothing(workdir, capsys):
    (workdir / "s.toml").write_text(SWEEP.format(exp=unique("dry")))
    assert cli("sweep", "s.toml", "--dry-run") == 0
    out = capsys.readouterr().out
    # grid: 2 configurations on seed 0; final: seed 1 of the one selected
    assert "to train: 3 job(s); 3 without a finished run to estimate from" in out, out
    assert cli("run", "--method", "finetune,ewc", "--seeds", "0-1", "--dry-run") == 0
    out = capsys.readouterr().out
    assert "4 job(s)" in out and "to train: 4 job(s)" in out, out
    assert not (workdir / "mlflow.db").exists() and not (workdir / "results").exists()


def test_dry_run_estimates_a_method_without_runs_from_its_cost_elsewhere(workdir, capsys):
    """A method with no run yet in the experiment is estimated as finetune's runs here
    times its cost relative to finetune in the other experiments' saved results, counting
    only those of the same schedule and epoch budget when there are any; not the dataset's
    median over other methods, which put a condensing method at a seventh of its cost."""
    from clbench.cli.views import hours

    exp = unique("cost")
    args = ("--epochs", "1", "--tasks", "2", "--experiment", exp)
    assert cli("run", "--method", "finetune", "--seeds", "0", *args, "-q") == 0
    (mine,) = results_folder(workdir / "results", exp).glob("finetune__*.json")
    here = json.loads(mine.read_text())
    finetune_s = here["timing"]["total_seconds"]

    def forge(folder: str, method: str, seconds: float, epochs: int = 1, seed: int = 0):
        record = json.loads(mine.read_text())
        record["method"], record["seed"] = method, seed
        record["timing"]["total_seconds"] = seconds
        record["protocol"]["epochs"] = epochs
        path = workdir / "results" / "runs" / folder / f"{method}__synthetic__x__seed{seed}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(record))

    forge("same-protocol", "finetune", 2.0)
    forge("same-protocol", "finetune", 4.0, seed=1)  # median 3 s
    forge("same-protocol", "ewc", 180.0)  # 60x finetune under the same protocol
    forge("other-protocol", "finetune", 1.0, epochs=200)
    forge("other-protocol", "ewc", 1000.0, epochs=200)  # ignored: a same-protocol ratio exists
    forge("other-protocol", "lwf", 10.0, epochs=200)  # lwf's only ratio: used
    forge(mine.parent.name, "ewc", 1e6, seed=7)  # the experiment's own folder: ignored
    (workdir / "results" / "runs" / "same-protocol" / "broken__seed3.json").write_text("{")

    capsys.readouterr()
    assert cli("run", "--method", "finetune,ewc,lwf,mas", "--seeds", "0-1", *args,
               "--dry-run") == 0
    out = capsys.readouterr().out
    rows = {line.split("│")[1].strip(): [c.strip() for c in line.split("│")[6:8]]
            for line in out.splitlines() if line.startswith("│")}
    assert rows["finetune"][0] == hours(finetune_s), out
    assert rows["ewc"] == [hours(60 * finetune_s) + "†", hours(120 * finetune_s) + "†"], out
    assert rows["lwf"][0] == hours(10 * finetune_s) + "†", out
    assert rows["mas"][0] == hours(finetune_s) + "*", out  # no cost anywhere: the median here
    assert "cost relative to finetune's in the other experiments' saved results" in \
        " ".join(out.split()), out


def test_sweep_data_dir_option_reads_that_root(workdir, tmp_path_factory, monkeypatch):
    """`clbench sweep --data-dir` loads the real Cora from the given root, not $CLBENCH_DATA
    (pointed at an empty folder) or ./datasets, and the jobs record that root."""
    root = tmp_path_factory.mktemp("data-root")
    copy_shared("cora", root)
    monkeypatch.setenv("CLBENCH_DATA", str(tmp_path_factory.mktemp("empty-root")))
    exp = unique("sweep-data-dir")
    (workdir / "s.toml").write_text(
        f'experiment = "{exp}"\nmethods = ["finetune"]\ndatasets = ["cora"]\n'
        'grid_seeds = [0]\nfinal_seeds = [0]\n[params]\nepochs = 2\n')
    server = shared_server()
    assert cli("sweep", "s.toml", "--data-dir", str(root), "--tracking-uri", server.uri,
               "-q") == 0
    saved = list((results_folder(workdir / "results", exp)).glob("*.json"))
    assert saved
    for path in saved:
        result = json.loads(path.read_text())
        assert result["dataset"] == "cora" and result["spec"]["data_dir"] == str(root)
    assert not (workdir / "datasets").exists()


def test_sweep_file_errors(workdir, capsys):
    assert cli("sweep", "missing.toml") == 2
    assert "sweep file not found" in capsys.readouterr().err
    (workdir / "bad.toml").write_text('methods = ["finetune"]\ndatasets = ["synthetic"]\n'
                                      'grid_seeds = [0]\nfinal_seeds = [0]\n[grid]\nnope = [1]\n')
    assert cli("sweep", "bad.toml") == 2
    assert "unknown parameter 'nope'" in capsys.readouterr().err
    (workdir / "bad2.toml").write_text('methods = ["finetune"]\n')
    assert cli("sweep", "bad2.toml") == 2
    assert "needs 'datasets'" in capsys.readouterr().err
    assert not (workdir / "mlflow.db").exists()


def test_sweep_in_parts_by_method_adds_up_to_the_whole_file(workdir, capsys):
    """`--methods` runs part of a file: only that method's jobs run and are logged, the
    selection CSV gains its rows and keeps the other parts', and afterwards the whole file
    has nothing left to train. A method the file does not list exits 2, writing nothing."""
    exp = unique("sweep-parts")
    (workdir / "s.toml").write_text(SWEEP.format(exp=exp).replace(
        'methods = ["finetune"]', 'methods = ["finetune", "joint"]'))
    assert cli("sweep", "s.toml", "--methods", "ewc") == 2
    err = capsys.readouterr().err
    assert "does not list the method 'ewc'" in err and len(err.strip().splitlines()) == 1
    assert not (workdir / "mlflow.db").exists() and not (workdir / "results").exists()

    server = shared_server()
    csv_path = workdir / "results" / f"sweep-{exp}.csv"

    def csv_pairs() -> list[tuple[str, str]]:
        return [tuple(line.split(",")[:2]) for line in csv_path.read_text().splitlines()[1:]]

    assert cli("sweep", "s.toml", "--methods", "joint", "--tracking-uri", server.uri,
               "-q") == 0
    client = MlflowClient(server.uri)
    eid = client.get_experiment_by_name(exp).experiment_id
    children = [r for r in client.search_runs([eid], max_results=1000)
                if "mlflow.parentRunId" in r.data.tags]
    assert {r.data.tags["clbench.method"] for r in children} == {"joint"}
    assert len(children) == 3  # 2 grid configurations on seed 0, the selected on seed 1
    assert csv_pairs() == [("joint", "synthetic")]

    assert cli("sweep", "s.toml", "--methods", "finetune", "--tracking-uri", server.uri,
               "-q") == 0
    assert csv_pairs() == [("finetune", "synthetic"), ("joint", "synthetic")]
    capsys.readouterr()
    assert cli("sweep", "s.toml", "--dry-run", "--tracking-uri", server.uri) == 0
    assert "nothing to train: every job has a finished run" in capsys.readouterr().out


def _swept_finetune_and_joint(workdir: Path, name: str) -> tuple[object, str, str]:
    """:data:`SWEEP` for finetune and joint, swept once into the shared server: the
    server, the experiment and the file's text."""
    server = shared_server()
    exp = unique(name)
    first = SWEEP.format(exp=exp).replace('methods = ["finetune"]',
                                          'methods = ["finetune", "joint"]')
    (workdir / "s.toml").write_text(first)
    assert cli("sweep", "s.toml", "--tracking-uri", server.uri, "-q") == 0
    return server, exp, first


def test_a_changed_grid_replaces_the_earlier_selection(workdir):
    """When the file's grid changes, the new selection is the only one marked: the earlier
    grid's selected parent is unmarked, so compare reports one row per method and
    dataset. Another method's selection in the same experiment is left alone."""
    server, exp, first = _swept_finetune_and_joint(workdir, "sweep-regrid")
    (workdir / "s.toml").write_text(first.replace("lr = [0.001, 0.01]", "lr = [0.005]")
                                    .replace('"finetune", "joint"', '"finetune"'))
    assert cli("sweep", "s.toml", "--tracking-uri", server.uri, "-q") == 0
    client = MlflowClient(server.uri)
    parents = parent_runs(client, client.get_experiment_by_name(exp).experiment_id)
    chosen = {}
    for p in parents:
        if p.data.tags.get("clbench.selected") == "true":
            chosen.setdefault(p.data.tags["clbench.method"], []).append(p)
    assert {m: len(ps) for m, ps in chosen.items()} == {"finetune": 1, "joint": 1}
    assert chosen["finetune"][0].data.params["lr"] == "0.005"
    assert len([p for p in parents if p.data.tags["clbench.method"] == "finetune"]) == 3
    json_out = workdir / "cmp.json"
    assert cli("compare", "--experiment", exp, "--tracking-uri", server.uri,
               "--json", str(json_out), "--out", str(workdir / "cmp")) == 0
    rows = json.loads(json_out.read_text())
    rows = rows["rows"] if isinstance(rows, dict) else rows
    assert sorted(r["method"] for r in rows) == ["finetune", "joint"]


def test_a_resumed_sweep_runs_the_final_seeds_of_complete_grids_beside_the_rest(workdir, capsys):
    """A method x dataset whose grid is complete when a sweep starts is selected then: its
    new final seed runs in the same batch as another method's unfinished grid job, before
    the final stage, and the selection and its report seeds are what the two-stage sweep
    gives."""
    server, exp, first = _swept_finetune_and_joint(workdir, "sweep-ready")
    client = MlflowClient(server.uri)
    eid = client.get_experiment_by_name(exp).experiment_id

    def selected() -> dict[str, tuple[str, str]]:
        return {p.data.tags["clbench.method"]: (p.data.tags["clbench.config_hash"],
                                                p.data.tags["clbench.report_seeds"])
                for p in parent_runs(client, eid)
                if p.data.tags.get("clbench.selected") == "true"}

    before = selected()
    # finetune gets a third final seed; joint a third grid point, so its grid is not done
    (workdir / "s.toml").write_text(first.replace('"0-1"', '"0-2"') +
                                    "\n[method.joint.grid]\nlr = [0.001, 0.01, 0.005]\n")
    capsys.readouterr()
    assert cli("sweep", "s.toml", "--tracking-uri", server.uri, "-q") == 0
    out = capsys.readouterr().out
    ready = "with it, the final seeds of the grids already complete (3 job(s))"
    assert ready in out, out
    first_stage = out.split("final: the selected configurations")[0]
    assert "done   finetune · synthetic · seed 2" in first_stage, out
    assert "done   joint · synthetic · seed 0" in first_stage, out  # the new grid point
    after = selected()
    assert after["finetune"] == (before["finetune"][0], "0,1,2")
    assert after["joint"][1] == "0,1,2"
    # nothing is left: both grids are complete at the start, and nothing is trained
    assert cli("sweep", "s.toml", "--tracking-uri", server.uri, "-q") == 0
    out = capsys.readouterr().out
    assert "done   " not in out and ready.replace("3 job", "6 job") in out, out


def test_example_sweep_file_is_valid():
    from clbench.orchestrate.sweep import grid_jobs
    from clbench.orchestrate.sweepfile import load_sweep

    spec = load_sweep(Path(__file__).resolve().parent.parent / "sweeps" / "example.toml")
    jobs, labels, _ = grid_jobs(spec)
    assert len(jobs) == 2 * 3 * 3 * 2 * len(spec.grid_seeds)  # methods x BeGin's 18-point grid
    assert len(set(labels.values())) == 18


@pytest.mark.parametrize("path", sorted((Path(__file__).resolve().parent.parent / "sweeps")
                                         .glob("*.toml")), ids=lambda p: p.name)
def test_every_committed_sweep_file_expands(path):
    """Each sweep file in the repository reads, names known methods, datasets and
    parameters, and expands to its grid jobs (what `clbench sweep` checks first)."""
    from clbench.methods import METHODS
    from clbench.orchestrate.sweep import grid_jobs
    from clbench.orchestrate.sweepfile import load_sweep

    spec = load_sweep(path)
    jobs, _, _ = grid_jobs(spec)
    assert {j.method for j in jobs} == {METHODS.canonical(m) for m in spec.methods}
    assert len(jobs) >= len(spec.methods) * len(spec.datasets) * len(spec.grid_seeds)


PER_METHOD_SEEDS = """
methods = ["finetune", "ewc"]
datasets = ["synthetic"]
grid_seeds = [0]
final_seeds = "0-4"

[method.ewc]
final_seeds = [0, 7]
"""


def test_a_method_can_run_its_own_final_seeds(tmp_path):
    """``[method.<name>] final_seeds`` replaces the file's final seeds for that method
    only (a stated reduction for costly methods); the plan counts them the same way."""
    from clbench.orchestrate.sweep import final_jobs_of, grid_jobs, plan_sweep
    from clbench.orchestrate.sweepfile import load_sweep

    path = tmp_path / "s.toml"
    path.write_text(PER_METHOD_SEEDS)
    spec = load_sweep(path)
    jobs, _, _ = grid_jobs(spec)
    finals = final_jobs_of(jobs, {j.group for j in jobs}, spec)
    seeds = {m: sorted(j.seed for j in finals if j.method == m) for m in ("finetune", "ewc")}
    assert seeds == {"finetune": [0, 1, 2, 3, 4], "ewc": [0, 7]}
    plan = plan_sweep(spec, None, results_dir=tmp_path / "results")
    assert plan.final_after_grid == {("finetune", "synthetic"): 4, ("ewc", "synthetic"): 1}

    for bad, message in (('[method.nope]\nfinal_seeds = [1]\n', "unknown method"),
                         ('[method.ewc]\nfinal_seeds = "x"\n', "final_seeds expects"),
                         ('[method.ewc]\nseeds = [1]\n', "may only hold"),
                         ('[method.nope]\ngrid_seeds = [1]\n', "unknown method")):
        path.write_text(PER_METHOD_SEEDS.split("[method.ewc]")[0] + bad)
        with pytest.raises(ClbenchError, match=message):
            grid_jobs(load_sweep(path))


PER_METHOD_GRID = """
methods = ["finetune", "ewc"]
datasets = ["synthetic"]
grid_seeds = [0, 1, 2]
final_seeds = "0-4"

[grid]
lr = [0.001, 0.01]

[method.ewc]
grid_seeds = [3]
"""


def test_a_method_can_run_its_grid_on_its_own_seeds(tmp_path):
    """``[method.<name>] grid_seeds`` replaces the file's grid seeds for that method only:
    its grid runs on them, its selection needs (and averages) exactly them, its final
    jobs start from them, and the plan counts the seeds left after them."""
    from clbench.orchestrate.sweep import final_jobs_of, grid_jobs, plan_sweep, select
    from clbench.orchestrate.sweepfile import load_sweep

    path = tmp_path / "s.toml"
    path.write_text(PER_METHOD_GRID)
    spec = load_sweep(path)
    jobs, labels, order = grid_jobs(spec)
    seeds = {m: sorted({j.seed for j in jobs if j.method == m}) for m in ("finetune", "ewc")}
    assert seeds == {"finetune": [0, 1, 2], "ewc": [3]}
    assert sum(j.method == "ewc" for j in jobs) == 2  # lr x one seed

    # EWC: one seed is a complete configuration; finetune: one of three is not
    groups = {m: sorted({j.group for j in jobs if j.method == m}) for m in ("finetune", "ewc")}
    ewc_a, ewc_b = groups["ewc"]
    ft_a, ft_b = groups["finetune"]
    val_aps = {ewc_a: {3: 0.5}, ewc_b: {3: 0.9},
               ft_a: {0: 0.99}, ft_b: {0: 0.6, 1: 0.6, 2: 0.6}}
    picked = {s.method: s for s in select(val_aps, labels, order, spec.grid_seeds_of)}
    assert picked["ewc"].config_hash == ewc_b[2] and picked["ewc"].n_seeds == 1
    assert picked["finetune"].config_hash == ft_b[2]  # complete beats a higher partial mean

    finals = final_jobs_of(jobs, {ewc_b, ft_b}, spec)
    assert sorted(j.seed for j in finals if j.method == "ewc") == [0, 1, 2, 3, 4]
    assert sorted(j.seed for j in finals if j.method == "finetune") == [0, 1, 2, 3, 4]
    plan = plan_sweep(spec, None, results_dir=tmp_path / "results")
    assert plan.final_after_grid == {("finetune", "synthetic"): 2, ("ewc", "synthetic"): 4}

    path.write_text(PER_METHOD_GRID.replace("grid_seeds = [3]", 'grid_seeds = "x"'))
    with pytest.raises(ClbenchError, match="grid_seeds expects"):
        load_sweep(path)


def test_ui_command_and_server_uri(workdir, capsys):
    cmd = ui_command("sqlite:////tmp/x.db")
    assert cmd[1:] == ["ui", "--backend-store-uri", "sqlite:////tmp/x.db", "--host",
                       "127.0.0.1", "--port", "5000"]
    assert cli("ui", "--tracking-uri", "http://127.0.0.1:1") == 0
    assert "is an MLflow server already" in capsys.readouterr().out


@pytest.mark.slow
def test_ui_serves_the_default_store(workdir):
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "clbench.cli", "ui", "--port", str(port)],
                            cwd=workdir, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        ok = False
        while time.monotonic() < deadline and not ok:
            with contextlib.suppress(OSError), urllib.request.urlopen(
                    f"http://127.0.0.1:{port}/health", timeout=2) as r:
                ok = r.status == 200
            time.sleep(0.5)
        assert ok
        assert (workdir / "mlflow.db").exists()  # the same default store `run` uses
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(30)
