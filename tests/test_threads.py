"""Thread policy: one torch thread per run unless asked, so a seed's numbers do not
depend on how it ran; the OpenMP wait policy follows the load at start-up."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from mlflow_server import cli

from clbench import threads as th
from clbench.resolve import resolve_run

FAST = ("--epochs", "25", "--param", "hidden=32", "--tasks", "3x2")


def test_runs_default_to_one_thread_and_refuse_zero():
    assert resolve_run("finetune", "synthetic", 0).threads == 1
    assert resolve_run("finetune", "synthetic", 0, threads=2).threads == 2


def test_threads_zero_exits_2(workdir, capsys):
    assert cli("run", "--method", "finetune", "--threads", "0") == 2
    err = capsys.readouterr().err
    assert "--threads must be at least 1" in err and len(err.strip().splitlines()) == 1


def test_a_single_run_alone_uses_the_usable_cores(workdir, monkeypatch):
    """One run alone uses the machine (1 thread was 1.57x slower alone on 2 cores:
    results/performance.md); the count is in its record."""
    import torch

    import clbench.cli.run as run_cli

    monkeypatch.setattr(run_cli, "usable_cores", lambda: 2)
    before = torch.get_num_threads()
    try:
        assert cli("run", "--method", "finetune", *FAST, "-q",
                   "--json", workdir / "alone.json") == 0
        assert torch.get_num_threads() == 2  # the run set it (it ran in this process)
    finally:
        torch.set_num_threads(before)
    assert json.loads((workdir / "alone.json").read_text())["spec"]["threads"] == 2


def test_a_seed_gives_the_same_numbers_with_threads_1_and_through_two_parallel_jobs(
        workdir, capsys):
    """Orchestrated jobs use one thread each whatever --jobs is, so a seed's numbers do
    not depend on it, and a single run with --threads 1 gives them too. Before, a single
    run used torch's default (a thread per core) and orchestrated jobs ``cores // jobs``;
    on Cora the same seed then trained different epochs at --jobs 1 and 2. (On this small
    graph the sums happen to agree at any thread count, so the thread counts themselves
    are checked too.)"""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        assert cli("run", "--method", "finetune", "--seed", "1", "--threads", "1", *FAST,
                   "-q", "--json", workdir / "alone.json") == 0
        assert torch.get_num_threads() == 1  # the run set it (it ran in this process)
    finally:
        torch.set_num_threads(before)
    assert cli("run", "--method", "finetune", "--seeds", "0-1", "--jobs", "2", *FAST, "-q",
               "--json", workdir / "grid.json") == 0
    alone = json.loads((workdir / "alone.json").read_text())
    grid = {r["seed"]: r for r in json.loads((workdir / "grid.json").read_text())}
    assert grid[1]["clbench"]["threads"] == alone["spec"]["threads"] == 1
    assert grid[1]["R_test"] == alone["R_test"]
    assert grid[1]["timing"]["task_epochs"] == alone["timing"]["task_epochs"]


@pytest.mark.parametrize(("threads", "busy", "cores", "policy"), [
    (1, 5.0, 2, None),        # one thread never waits for another
    (2, 0.1, 2, None),        # idle machine: spinning is fastest
    (2, 2.0, 2, "PASSIVE"),   # two busy processes on two cores
    (2, 1.0, 4, None),        # enough free cores
    (4, 1.0, 4, "PASSIVE"),
    (2, None, 2, None),       # load unknown: OpenMP's default
])
def test_wait_policy(threads, busy, cores, policy):
    assert th.wait_policy(threads, busy, cores) == policy


def test_configure_openmp_keeps_the_users_policy(monkeypatch):
    monkeypatch.setenv(th.WAIT_ENV, "ACTIVE")
    monkeypatch.setattr(th, "busy_cores", lambda: 99.0)
    assert th.configure_openmp(4) == "ACTIVE"


def test_configure_openmp_goes_passive_beside_busy_processes(monkeypatch):
    monkeypatch.delenv(th.WAIT_ENV, raising=False)
    monkeypatch.setattr(th, "usable_cores", lambda: 2)
    monkeypatch.setattr(th, "busy_cores", lambda: 2.0)
    assert th.configure_openmp(2) == "PASSIVE"
    import os

    assert os.environ[th.WAIT_ENV] == "PASSIVE"  # monkeypatch restores it


PROBE = """
import json, sys
import clbench.threads as th
th.busy_cores = lambda interval=0.25: float(th.usable_cores())  # every core busy
import clbench.cli.run as run
seen = []
real = run.configure_openmp
def probe(threads):
    loaded = "torch" in sys.modules
    seen.append([loaded, threads, real(threads)])
    return seen[-1][2]
run.configure_openmp = probe
from clbench.cli import main
sys.argv = ["clbench", "run", "--method", "finetune", "--epochs", "2", "--param",
            "hidden=16", "--tasks", "2x2", "--threads", "2", "--device", sys.argv[1], "-q"]
try:
    main()
except SystemExit as exc:
    assert not exc.code, exc.code
print(json.dumps(seen))
"""


@pytest.mark.parametrize("device", ["cpu", "cpu:0"])
def test_a_single_run_sets_the_wait_policy_before_torch_loads(tmp_path, device):
    """OpenMP reads ``OMP_WAIT_POLICY`` once, when torch loads: set afterwards it does
    nothing. A single 2-thread run beside busy cores must therefore choose ``PASSIVE``
    before anything imports torch: resolving ``--device cpu`` used to, and parsing any
    other device (``cpu:0`` here, ``cuda`` on a GPU machine) does."""
    env = {k: v for k, v in os.environ.items() if k != th.WAIT_ENV}
    proc = subprocess.run([sys.executable, "-c", PROBE, device], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    seen = json.loads(proc.stdout.strip().splitlines()[-1])
    assert seen == [[False, 2, "PASSIVE"]]


def test_busy_cores_sees_a_spinning_process():
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        busy = th.busy_cores(interval=0.5)
    finally:
        spinner.kill()
        spinner.wait()
    assert busy is not None and busy >= 0.6
