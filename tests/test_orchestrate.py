"""The orchestrator: job expansion, the default SQLite store, resume, failures, Ctrl-C."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from mlflow_server import (
    CRASH_PLUGIN,
    child_runs,
    cli,
    cli_process,
    parent_runs,
    shared_server,
    unique,
)

from clbench.errors import ClbenchError
from clbench.orchestrate import (
    Job,
    LocalBackend,
    expand_jobs,
    read_saved_result,
    result_path,
    results_folder,
    stop_loky_pool,
    write_json_atomic,
)
from clbench.parsing import experiment_folder, parse_names, parse_seeds


# ----------------------------------------------------------------------------- units
def test_parse_seeds_and_names():
    assert parse_seeds("0-3") == [0, 1, 2, 3]
    assert parse_seeds("0,5-6, 2,5") == [0, 5, 6, 2]
    for bad in ("3-1", "a", "", "1-2-3"):
        with pytest.raises(ClbenchError):
            parse_seeds(bad)
    assert parse_names("piggyback, ewc,") == ["piggyback", "ewc"]


def test_expand_jobs_resolves_and_hashes():
    jobs = expand_jobs(["finetune", "bare", "joint"], ["synthetic"], [0, 1],
                       params={"epochs": 5, "lr": "0.01"})
    assert [(j.method, j.seed) for j in jobs] == [("finetune", 0), ("finetune", 1),
                                                  ("joint", 0), ("joint", 1)]  # alias merged
    assert jobs[0].config["lr"] == 0.01 and jobs[0].config["epochs"] == 5
    assert jobs[0].config_hash == jobs[1].config_hash  # the seed is not part of the config
    assert jobs[0].config_hash != jobs[2].config_hash
    assert jobs[0].protocol_hash == jobs[2].protocol_hash  # same task sequence: INT pairs
    again = expand_jobs(["finetune"], ["synthetic"], [0], params={"epochs": 5, "lr": 0.01})
    assert again[0].config_hash == jobs[0].config_hash  # stable across calls and spellings
    other = expand_jobs(["finetune"], ["synthetic"], [0], params={"epochs": 6, "lr": 0.01})
    assert other[0].config_hash != jobs[0].config_hash
    assert Job.from_dict(json.loads(json.dumps(jobs[0].to_dict()))) == jobs[0]
    job = jobs[0]  # a job is the run spec a worker runs
    assert (job.method, job.dataset, job.seed, job.protocol.epochs) == (
        "finetune", "synthetic", 0, 5)


def test_expand_jobs_rejects_bad_input_before_running():
    with pytest.raises(ClbenchError, match="unknown method"):
        expand_jobs(["finetune", "nope"], ["synthetic"], [0])
    with pytest.raises(ClbenchError, match="unknown dataset"):
        expand_jobs(["finetune"], ["nope"], [0])
    with pytest.raises(ClbenchError, match="unknown parameter"):
        expand_jobs(["finetune"], ["synthetic"], [0], params={"nope": 1})
    with pytest.raises(ClbenchError, match="not among the methods"):
        expand_jobs(["finetune"], ["synthetic"], [0], params={"joint.lr": 0.1})
    jobs = expand_jobs(["finetune", "joint"], ["synthetic"], [0], params={"joint.lr": 0.1})
    assert jobs[0].config["lr"] == 1e-3 and jobs[1].config["lr"] == 0.1  # method-only override


def test_experiment_names_never_share_a_results_folder(workdir, capsys):
    """``a/b`` and ``a b`` once shared ``runs/a-b``: the second command "recovered" the
    first's result instead of running. ``..`` wrote to ``<results-dir>/<uid>.json``."""
    args = ("run", "--method", "finetune", "--param", "epochs=2", "--param", "hidden=16",
            "--tracking-uri", f"sqlite:///{workdir / 'm.db'}", "-q")
    names = ("a/b", "a b", "..")
    for name in names:
        assert cli(*args, "--experiment", name) == 0
    out = capsys.readouterr().out
    assert "recovered" not in out and out.count("AP") >= 3
    assert not list((workdir / "results").glob("*.json"))
    assert sorted(p.name for p in (workdir / "results" / "runs").iterdir()) == \
        sorted(experiment_folder(n) for n in names)
    assert len({experiment_folder(n) for n in names}) == 3


@pytest.mark.parametrize("where", ["a file", "under a file", "unwritable"])
def test_an_unwritable_results_dir_fails_before_anything_runs(workdir, capsys, where):
    """Found up front (exit 2, one line, no store created), not after the first task."""
    blocker = workdir / "blocker"
    blocker.write_text("")
    results = {"a file": blocker, "under a file": blocker / "sub",
               "unwritable": Path("/proc/clbench-results")}[where]
    code = cli("run", "--method", "finetune", "--param", "epochs=2", "--tracking-uri",
               f"sqlite:///{workdir / 'm.db'}", "--results-dir", results, "-q")
    captured = capsys.readouterr()
    assert code == 2, captured
    assert "not writable" in captured.err and "Traceback" not in captured.err
    assert len(captured.err.strip().splitlines()) <= 3
    assert not (workdir / "m.db").exists() and "done" not in captured.out


def test_atomic_result_write(tmp_path):
    job = expand_jobs(["finetune"], ["synthetic"], [3])[0]
    path = result_path(tmp_path, "my exp", job)
    assert path.parent == tmp_path / "runs" / experiment_folder("my exp")
    assert experiment_folder("my exp").startswith("my-exp-")
    write_json_atomic(path, {"seed": 3, "clbench": {"config_hash": job.config_hash}})
    assert os.listdir(path.parent) == [path.name]  # no temporary file left behind
    assert read_saved_result(path, job) is not None
    write_json_atomic(path, {"seed": 3, "clbench": {"config_hash": "other"}})
    assert read_saved_result(path, job) is None  # a different configuration is not reused


# ----------------------------------------------------------------------------- default store
def test_default_sqlite_store_no_lost_runs_resume_and_recovery(workdir, capsys):
    exp = "default-store"
    args = ("run", "--method", "finetune,joint", "--seeds", "0-1", "--epochs", "5",
            "--jobs", "2", "--experiment", exp, "-q")
    assert cli(*args) == 0
    capsys.readouterr()
    db = workdir / "mlflow.db"
    assert db.is_file()  # MLflow's default store, in the working directory
    client = MlflowClient(f"sqlite:///{db}")
    eid = client.get_experiment_by_name(exp).experiment_id
    children = child_runs(client, eid)
    assert len(children) == 4 and all(c.info.status == "FINISHED" for c in children)
    assert len(parent_runs(client, eid)) == 2
    saved = sorted((results_folder(workdir / "results", exp)).glob("*.json"))
    assert len(saved) == 4

    def saved_result(experiment: str, run) -> dict:
        """The result JSON on disk for an MLflow child run."""
        t = run.data.tags
        return json.loads((results_folder(workdir / "results", experiment) /
                           f"{t['clbench.method']}__synthetic__{t['clbench.config_hash']}__seed"
                           f"{t['clbench.seed']}.json").read_text())

    for child in children:  # every result on disk is the one in MLflow
        data = saved_result(exp, child)
        assert child.data.metrics["AP"] == pytest.approx(data["metrics"]["AP"])
        # the run's MLflow duration is the job's own, not the job's time in the queue
        # (4 jobs, 2 workers: two of them waited for the first two)
        assert child.info.start_time == int(data["clbench"]["started_at"] * 1000)
        assert child.info.end_time == int(data["clbench"]["finished_at"] * 1000)
    starts = sorted(c.info.start_time for c in children)
    first_end = min(c.info.end_time for c in children)
    assert starts[2] >= first_end - 1000  # the queued ones started once a worker was free

    def parent_state() -> dict[str, tuple]:
        return {p.data.tags["clbench.method"]: (p.info.status, p.info.end_time, p.data.metrics)
                for p in parent_runs(client, eid)}

    # resume: nothing runs again, and the closed parents are left as they were
    closed = parent_state()
    assert all(status == "FINISHED" and m["n_seeds"] == 2 for status, _, m in closed.values())
    assert "INT_mean" in closed["finetune"][2]  # joint ran beside it
    assert cli(*args) == 0
    out = capsys.readouterr().out
    assert "skipping 4 job(s)" in out and "done " not in out
    assert len(child_runs(client, eid)) == 4
    assert parent_state() == closed

    # --force reruns (one method, to stay quick)
    assert cli("run", "--method", "finetune", "--seeds", "0-1", "--epochs", "5", "--jobs", "2",
               "--experiment", exp, "--force", "-q") == 0
    out = capsys.readouterr().out
    assert out.count("done ") == 2
    # each line counts the jobs ended so far (the only progress shown in a log file)
    assert [line.rsplit("  ", 1)[-1] for line in out.splitlines() if "done " in line] == \
        ["[1/2]", "[2/2]"]
    assert len(child_runs(client, eid)) == 6
    reaggregated = parent_state()
    assert reaggregated["joint"] == closed["joint"]
    assert reaggregated["finetune"][1] > closed["finetune"][1]  # closed again, re-logged

    # results saved on disk by an interrupted command are logged, not recomputed
    exp2 = "recovered"
    shutil.copytree(results_folder(workdir / "results", exp),
                    results_folder(workdir / "results", exp2))
    assert cli("run", "--method", "finetune,joint", "--seeds", "0-1", "--epochs", "5",
               "--jobs", "2", "--experiment", exp2, "-q") == 0
    assert capsys.readouterr().out.count("recovered from its saved result") == 4
    eid2 = client.get_experiment_by_name(exp2).experiment_id
    recovered = child_runs(client, eid2)
    assert len(recovered) == 4 and all(r.info.status == "FINISHED" for r in recovered)
    assert all("clbench.recovered_from" in r.data.tags for r in recovered)
    for run in recovered:  # with the times the runs really ran, not the recovery's
        data = saved_result(exp2, run)["clbench"]
        assert run.info.start_time == int(data["started_at"] * 1000)
        assert run.info.end_time == int(data["finished_at"] * 1000)
        assert data["started_at"] < data["finished_at"]


@pytest.mark.slow
def test_closed_parent_is_reaggregated_when_its_runs_get_int_later(workdir, capsys):
    """A parent with no job of its own in a command is still re-logged when a joint run
    of that command gives its children INT (intransigence needs the joint reference)."""
    exp = "int-later"
    common = ("--seeds", "0", "--epochs", "5", "--jobs", "1", "--experiment", exp, "-q")
    assert cli("run", "--method", "finetune", *common) == 0
    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    eid = client.get_experiment_by_name(exp).experiment_id
    (finetune,) = parent_runs(client, eid)
    assert "INT_mean" not in finetune.data.metrics
    assert cli("run", "--method", "finetune,joint", *common) == 0
    out = capsys.readouterr()
    assert "skipping 1 job(s)" in out.out
    assert "Downloading artifacts" not in out.err  # reading R back draws no progress bar
    (child,) = [c for c in child_runs(client, eid) if c.data.tags["clbench.method"] == "finetune"]
    parent = client.get_run(finetune.info.run_id)
    assert parent.data.metrics["INT_mean"] == pytest.approx(child.data.metrics["INT"])


# ----------------------------------------------------------------------------- failures
def test_crash_and_killed_worker_are_failed_runs_others_finish(workdir):
    server = shared_server()
    (workdir / "crashy.py").write_text(CRASH_PLUGIN)
    exp = unique("crash")
    proc = cli_process("run", "--plugin", "crashy.py", "--method", "raiser,killer",
                       "--seeds", "0-1", "--epochs", "5", "--jobs", "2", "--tracking-uri",
                       server.uri, "--experiment", exp, "-q", cwd=workdir)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "2 job(s) failed" in proc.stderr
    assert "raiser · synthetic · seed 1: RuntimeError: boom on purpose" in proc.stderr
    assert "killer · synthetic · seed 1: worker process died (killed by SIGKILL)" in proc.stderr

    client = MlflowClient(server.uri)
    eid = client.get_experiment_by_name(exp).experiment_id
    runs = {(r.data.tags["clbench.method"], r.data.tags["clbench.seed"]): r
            for r in child_runs(client, eid)}
    assert len(runs) == 4
    assert runs[("raiser", "0")].info.status == "FINISHED"
    assert runs[("killer", "0")].info.status == "FINISHED"
    assert runs[("raiser", "1")].info.status == "FAILED"
    assert runs[("killer", "1")].info.status == "FAILED"
    assert "boom on purpose" in runs[("raiser", "1")].data.tags["clbench.error"]
    assert "SIGKILL" in runs[("killer", "1")].data.tags["clbench.error"]
    err = client.download_artifacts(runs[("raiser", "1")].info.run_id, "error.txt",
                                    str(workdir))
    with open(err) as fh:
        assert "Traceback" in fh.read()
    statuses = {p.data.tags["clbench.method"]: p.info.status
                for p in parent_runs(client, eid)}
    assert statuses == {"raiser": "FAILED", "killer": "FAILED"}
    saved = sorted(p.name for p in (results_folder(workdir / "results", exp)).iterdir())
    # results of the finished jobs; the failed ones keep their resume point (saved after
    # task 0), so a retry would continue from task 1
    jsons = [n for n in saved if n.endswith(".json")]
    points = [n for n in saved if n.endswith(".resume.pt")]
    assert len(jsons) == 2 and all(n.endswith("__seed0.json") for n in jsons)
    assert points == sorted(n.replace("__seed0.json", "__seed1.resume.pt") for n in jsons)
    assert len(saved) == 4


@pytest.fixture
def fresh_pool():
    """No loky pool left by earlier tests: a command's first pool, whose workers each
    take one warm-up task."""
    stop_loky_pool()


@pytest.mark.parametrize("n_jobs", [1, 2])
def test_warm_up_starts_the_workers_that_then_run_the_jobs(tmp_path, fresh_pool, n_jobs):
    """``warm_up`` has the pool's workers import the training stack while the parent
    opens the store and the datasets; that only saves time if joblib then runs the jobs
    in those same workers instead of starting a new pool."""
    backend = LocalBackend(n_jobs)
    backend.warm_up()
    jobs = backend.prepare(expand_jobs(["finetune"], ["synthetic"], [0, 1],
                                       params={"epochs": 1}, data_dir=str(tmp_path)))
    try:
        outcomes = list(backend.run(jobs))
    finally:
        backend.close()
    assert [o.ok for o in outcomes] == [True, True], [o.error for o in outcomes]
    assert len(backend.warm_pids) == 2  # loky's pool has 2 workers even at --jobs 1
    assert {o.pid for o in outcomes} <= backend.warm_pids
    # close() kills the idle workers (loky would keep them, and their shutdown at exit
    # took seconds): none of them is left running
    assert not backend.warm_pids & _loky_workers()


def _loky_workers() -> set[int]:
    """This process's loky worker processes (from /proc)."""
    found = set()
    for entry in Path("/proc").iterdir():
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except (OSError, ValueError):
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == os.getpid() and b"popen_loky_posix" in cmdline:
            found.add(int(entry.name))
    return found


def test_closing_before_any_run_stops_the_warming_workers(fresh_pool):
    """A command that fails while preparing (unreachable store, broken dataset) closes
    its backend without running: the workers still importing are stopped, so the error
    is not delayed by their imports."""
    backend = LocalBackend(2)
    backend.warm_up()
    assert len(_loky_workers()) == 2
    backend.close()
    deadline = time.monotonic() + 30
    while _loky_workers() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _loky_workers()


GROWING_PLUGIN = """
from clbench import register_method
from clbench.methods.finetune import NCTaskILBareTrainer

_KEEP = []


@register_method("growing")
class Growing(NCTaskILBareTrainer):
    def processAfterTraining(self, task_id, *args, **kwargs):
        super().processAfterTraining(task_id, *args, **kwargs)
        if task_id == 0:  # 400 MB resident per job, as a larger graph after a small one
            _KEEP.append(b"\\x01" * 400_000_000)
"""


@pytest.mark.slow
def test_a_worker_replaced_for_its_memory_growth_is_silent_and_loses_nothing(workdir):
    """loky replaces a worker whose memory grew by 300 MB since its first job and warns
    "A worker stopped while some jobs were given to the executor ... memory leak" (seen
    in a sweep after a coauthor-cs job followed amazon-computers ones). Every job still
    finishes, and the user is not alarmed."""
    server = shared_server()
    (workdir / "growing.py").write_text(GROWING_PLUGIN)
    exp = unique("growing")
    proc = cli_process("run", "--plugin", "growing.py", "--method", "growing", "--seeds",
                       "0-5", "--epochs", "2", "--jobs", "2", "--tracking-uri", server.uri,
                       "--experiment", exp, "-q", cwd=workdir,
                       timeout=900)  # a hang guard: ~60 s quiet, >300 s on a saturated host
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "worker stopped" not in proc.stderr and "Warning" not in proc.stderr, proc.stderr
    assert proc.stdout.count("done   growing") == 6
    assert len(list((results_folder(workdir / "results", exp)).glob("*.json"))) == 6

def test_runs_abandoned_by_a_dead_command_are_closed(workdir):
    """A command killed without a chance to clean up (SIGKILL, a session that ended)
    leaves its runs RUNNING. The next command marks KILLED those whose command process is
    gone on this host, and only those: not a live command's, not another host's (it
    cannot be checked), not a run without the tag (older clbench)."""
    import socket

    from clbench.orchestrate import LocalBackend, run_jobs
    from clbench.tracking import (
        TAG_ABANDONED,
        TAG_COMMAND,
        Tracker,
        command_owner,
        process_token,
    )

    host = socket.gethostname()
    sleeper = subprocess.Popen(["sleep", "60"])
    dead = process_token(sleeper.pid)
    sleeper.kill()
    sleeper.wait()
    assert dead is not None and process_token(sleeper.pid) is None

    tracker = Tracker(shared_server().uri, unique("abandoned"))
    backend = LocalBackend(1)
    job = backend.prepare(expand_jobs(["finetune"], ["synthetic"], [0],
                                      params={"epochs": 2, "hidden": 16}))[0]
    parent = tracker.ensure_parents([job])[job.group]
    owners = {
        "dead": f"{host} {dead}",
        "reused pid": f"{host} {os.getpid()} 1",  # this pid, another start time
        "live": command_owner(),
        "other host": "elsewhere.example 4242 17",
        "untagged": None,
    }
    ghosts = {}
    for name, owner in owners.items():
        run_id = tracker.start_child(job, parent)
        if owner is None:
            tracker.client.delete_tag(run_id, TAG_COMMAND)
        else:
            tracker.client.set_tag(run_id, TAG_COMMAND, owner)
        ghosts[name] = run_id

    summary = run_jobs([job], tracker, backend, results_dir=workdir)
    assert summary.ok and len(summary.finished) == 1
    assert sorted(r.run_id for r in summary.abandoned) == sorted(
        [ghosts["dead"], ghosts["reused pid"]])
    for name, run_id in ghosts.items():
        run = tracker.client.get_run(run_id)
        if name in ("dead", "reused pid"):
            assert run.info.status == "KILLED", name
            pid = owners[name].split()[1]
            assert f"(process {pid} on {host}) ended without closing it" in \
                run.data.tags[TAG_ABANDONED]
        else:
            assert run.info.status == "RUNNING" and TAG_ABANDONED not in run.data.tags, name
    new = [c for c in tracker.children() if c.run_id not in ghosts.values()]
    assert [c.status for c in new] == ["FINISHED"]
    assert new[0].tags[TAG_COMMAND] == command_owner()

def signal_state(pid: int) -> str:
    """Pending, blocked, ignored and caught signal masks of ``pid`` and of its threads."""
    keys = ("Name", "ShdPnd", "SigPnd", "SigBlk", "SigIgn", "SigCgt")
    lines = []
    try:
        for status in [Path(f"/proc/{pid}/status"),
                       *sorted(Path(f"/proc/{pid}/task").glob("*/status"))]:
            fields = dict(ln.split(":\t", 1) for ln in status.read_text().splitlines()
                          if ln.startswith(keys))
            lines.append(f"{status.parent.name}: " + " ".join(
                f"{k}={fields.get(k, '?').strip()}" for k in keys))
    except OSError as exc:  # it may have exited already
        lines.append(f"unreadable: {exc}")
    return "\n".join(lines)


def as_foreground_job() -> None:
    """``preexec_fn``: the SIGINT disposition of a command typed at an interactive shell.

    A test run started in the background of a non-interactive shell (``nohup ... &``, as
    CI scripts and long runs often are) inherits SIGINT *ignored* (POSIX), and so would
    the CLI under test: Python then installs no KeyboardInterrupt handler and the
    simulated Ctrl-C does nothing. That, not clbench, was the "lost Ctrl-C" of a full run
    on 2026-11-27 (started with ``nohup bash .ci/run &``; the masks showed SIGINT in
    SigIgn)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.slow
def test_ctrl_c_marks_running_killed_and_keeps_finished(workdir):
    server = shared_server()
    exp = unique("ctrl-c")
    out_dir = results_folder(workdir / "results", exp)
    proc = subprocess.Popen(
        [sys.executable, "-m", "clbench.cli", "run", "--method", "finetune", "--seeds", "0-3",
         "--epochs", "40", "--jobs", "2", "--tracking-uri", server.uri, "--experiment", exp,
         "-q"],
        cwd=workdir, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True, preexec_fn=as_foreground_job,
    )
    client = MlflowClient(server.uri)

    def finished_seeds() -> set[str]:
        experiment = client.get_experiment_by_name(exp)
        if experiment is None:
            return set()
        return {r.data.tags["clbench.seed"] for r in child_runs(client, experiment.experiment_id)
                if r.info.status == "FINISHED"}

    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and not finished_seeds():  # one seed saved and logged
        time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGINT)  # what a terminal does on Ctrl-C
    time.sleep(1)
    signals = signal_state(proc.pid)  # evidence, should the Ctrl-C ever be lost again
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, f"{out}{err}\nparent's signal state 1 s after SIGINT:\n{signals}"
    assert "interrupted" in err
    eid = client.get_experiment_by_name(exp).experiment_id
    statuses = [r.info.status for r in child_runs(client, eid)]
    assert "KILLED" in statuses and "RUNNING" not in statuses
    # one run per job that ran (a queued job has none), even when the Ctrl-C came while
    # a finished job was being logged
    seeds = [r.data.tags["clbench.seed"] for r in child_runs(client, eid)]
    assert len(seeds) == len(set(seeds)) <= 4
    # says what it does while closing the runs (a long sweep takes a while to stop)
    assert f"marking {statuses.count('KILLED')} unfinished run(s) KILLED" in err
    saved = list(out_dir.glob("*.json"))
    assert len(saved) >= statuses.count("FINISHED") >= 1  # nothing finished is lost
    # the next run picks up what is there and finishes the rest
    again = subprocess.run(proc.args, cwd=workdir, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stdout + again.stderr
    assert finished_seeds() == {str(s) for s in range(4)}
