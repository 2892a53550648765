"""No process outlives its command, and two commands can create one SQLite store at once.

Real commands in subprocesses, killed the hard way; processes are found through
``/proc`` (Linux). Every test kills whatever it started in a ``finally``, so a failing
test leaves nothing running.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterable
from pathlib import Path

import pytest
from mlflow_server import free_port

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(),
                                reason="finds processes through /proc (Linux)")

#: A process: its pid and its start time (clock ticks after boot), so that a pid the
#: kernel has reused is never taken for it.
Proc = tuple[int, int]


# ----------------------------------------------------------------------------- /proc
def _stat(pid: int) -> list[str] | None:
    """Fields of ``/proc/<pid>/stat`` after the command name: state, ppid, pgrp, ..."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def _token(pid: int) -> Proc | None:
    fields = _stat(pid)
    return None if fields is None else (pid, int(fields[19]))


def _all_pids() -> list[int]:
    return [int(e) for e in os.listdir("/proc") if e.isdigit()]


def descendants(pid: int) -> set[Proc]:
    """The live descendants of ``pid``."""
    children: dict[int, list[int]] = {}
    for p in _all_pids():
        fields = _stat(p)
        if fields is not None:
            children.setdefault(int(fields[1]), []).append(p)
    out: set[Proc] = set()
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            token = _token(child)
            if token is not None and token not in out:
                out.add(token)
                todo.append(child)
    return out


def in_groups(pgids: Iterable[int]) -> set[Proc]:
    """The live processes of the process groups ``pgids``."""
    pgids = set(pgids)
    out: set[Proc] = set()
    for p in _all_pids():
        fields = _stat(p)
        if fields is not None and int(fields[2]) in pgids and fields[0] != "Z":
            token = _token(p)
            if token is not None:
                out.add(token)
    return out


def alive(proc: Proc) -> bool:
    fields = _stat(proc[0])
    return fields is not None and fields[0] != "Z" and int(fields[19]) == proc[1]


def pgid_of(proc: Proc) -> int | None:
    fields = _stat(proc[0])
    return None if fields is None else int(fields[2])


def cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return fh.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return "?"


def describe(procs: Iterable[Proc]) -> str:
    return "; ".join(f"{pid}: {cmdline(pid)[:150]}" for pid, _ in sorted(procs))


def wait_gone(procs: Iterable[Proc], timeout: float) -> set[Proc]:
    """Wait until none of ``procs`` is alive; the survivors after ``timeout``."""
    procs = set(procs)
    deadline = time.monotonic() + timeout
    while True:
        left = {p for p in procs if alive(p)}
        if not left or time.monotonic() >= deadline:
            return left
        time.sleep(0.25)


def kill_all(procs: Iterable[Proc], pgids: Iterable[int] = ()) -> None:
    """SIGKILL ``procs`` (those still alive, the very same processes) and the groups."""
    for pgid in set(pgids):
        with contextlib.suppress(OSError):
            os.killpg(pgid, signal.SIGKILL)
    for proc in procs:
        if alive(proc):
            with contextlib.suppress(OSError):
                os.kill(proc[0], signal.SIGKILL)


def clbench(*args: object, cwd: Path, log: Path, env: dict | None = None) -> subprocess.Popen:
    """``clbench ARGS`` as a process of its own (in a session of its own, so that the
    test can kill its whole group)."""
    env = {**os.environ, "COLUMNS": "200", **(env or {})}
    env.pop("MLFLOW_TRACKING_URI", None)
    with open(log, "w") as fh:
        return subprocess.Popen([sys.executable, "-m", "clbench.cli", *map(str, args)],
                                cwd=cwd, stdout=fh, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)


def tail(log: Path, n: int = 3000) -> str:
    return log.read_text(errors="replace")[-n:] if log.exists() else ""


# ----------------------------------------------------------------------------- lifeline
def test_die_with_own_pid_is_a_no_op():
    from clbench.lifeline import die_with, orphaned

    die_with(os.getpid())  # a job run in-process: nothing to watch
    assert not orphaned(os.getppid())


def _grandchild_script(code: str) -> str:
    """A middle process that starts ``python -c code`` and sleeps."""
    return ("import subprocess, sys, time\n"
            f"subprocess.Popen([sys.executable, '-c', {code!r}])\n"
            "time.sleep(600)\n")


def test_a_process_tied_to_its_parent_exits_soon_after_the_parent_is_killed(tmp_path):
    ready = tmp_path / "ready"
    child = ("import os, time\n"
             "from clbench.lifeline import die_with\n"
             "die_with(os.getppid(), interval=0.2)\n"
             f"open({str(ready)!r}, 'w').close()\n"
             "time.sleep(600)\n")
    middle = subprocess.Popen([sys.executable, "-c", _grandchild_script(child)],
                              cwd=tmp_path, start_new_session=True)
    seen: set[Proc] = set()
    try:
        deadline = time.monotonic() + 60
        while not ready.exists():
            assert time.monotonic() < deadline, "the child never got going"
            time.sleep(0.1)
        seen = descendants(middle.pid)
        assert seen
        middle.kill()
        middle.wait()
        survivors = wait_gone(seen, 5)
        assert not survivors, f"still running: {describe(survivors)}"
    finally:
        kill_all(seen, [middle.pid])
        middle.kill()
        middle.wait()


def test_a_dask_job_process_exits_when_its_worker_dies(tmp_path):
    """``execute_job_isolated`` (what a Dask worker runs) starts the job in a child
    process: killing the worker's process must take that child along."""
    from clbench.orchestrate import expand_jobs

    job = expand_jobs(["finetune"], ["synthetic"], [0], params={"epochs": 400})[0]
    (tmp_path / "job.json").write_text(json.dumps(job.to_dict()))
    worker = ("import json\n"
              "from clbench.orchestrate import Job, execute_job_isolated\n"
              f"job = Job.from_dict(json.load(open({str(tmp_path / 'job.json')!r})))\n"
              "execute_job_isolated(job)\n")
    tmp = tmp_path / "tmp"  # the killed worker leaves its job folder behind: here
    tmp.mkdir()
    middle = subprocess.Popen([sys.executable, "-c", worker], cwd=tmp_path,
                              env={**os.environ, "TMPDIR": str(tmp)}, start_new_session=True)
    seen: set[Proc] = set()
    try:
        deadline = time.monotonic() + 180
        while True:  # until the job process has imported torch (it is training then)
            assert middle.poll() is None, "the worker process ended early"
            assert time.monotonic() < deadline, "the job process never got going"
            seen = descendants(middle.pid)
            jobs = [p for p in seen if "clbench.orchestrate" in cmdline(p[0])]
            with contextlib.suppress(OSError):
                if jobs and "libtorch" in Path(f"/proc/{jobs[0][0]}/maps").read_text():
                    break
            time.sleep(0.5)
        middle.kill()
        middle.wait()
        survivors = wait_gone(seen, 10)
        assert not survivors, f"still running: {describe(survivors)}"
    finally:
        kill_all(seen, [middle.pid])
        middle.kill()
        middle.wait()


@pytest.mark.slow
def test_workers_stop_when_the_run_command_is_killed(tmp_path):
    """SIGKILL to ``clbench run --jobs 2``: its loky workers stop within seconds instead
    of training the queued seeds and then idling."""
    log = tmp_path / "run.log"
    tmp = tmp_path / "tmp"  # where the workers mark the jobs they start
    tmp.mkdir()
    proc = clbench("run", "--method", "finetune", "--dataset", "synthetic", "--seeds", "0-5",
                   "--jobs", "2", "--param", "epochs=400", "--quiet",
                   "--tracking-uri", f"sqlite:///{tmp_path / 'm.db'}",
                   "--results-dir", tmp_path / "r", cwd=tmp_path, log=log,
                   env={"TMPDIR": str(tmp)})
    seen: set[Proc] = set()
    try:
        deadline = time.monotonic() + 400
        while len(list(tmp.glob("clbench-started-*/*"))) < 2:  # both workers train
            assert proc.poll() is None, f"clbench run ended early:\n{tail(log)}"
            assert time.monotonic() < deadline, f"no job started:\n{tail(log)}"
            time.sleep(0.5)
        time.sleep(2)
        seen = descendants(proc.pid)
        workers = [p for p in seen if "loky" in cmdline(p[0]) and "tracker" not in cmdline(p[0])]
        assert len(workers) >= 2, describe(seen)
        proc.kill()
        proc.wait()
        t0 = time.monotonic()
        survivors = wait_gone(seen, 30)
        assert not survivors, f"still running after 30 s: {describe(survivors)}"
        print(f"workers gone {time.monotonic() - t0:.1f} s after the command was killed")
    finally:
        kill_all(seen, [proc.pid])
        proc.kill()
        proc.wait()


# ----------------------------------------------------------------------------- clbench ui
def port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0


def start_ui(tmp_path: Path) -> tuple[subprocess.Popen, int, Path]:
    """``clbench ui`` on a new SQLite store, once its server answers HTTP 200."""
    port = free_port()
    log = tmp_path / "ui.log"
    proc = clbench("ui", "--tracking-uri", f"sqlite:///{tmp_path / 'm.db'}", "--port", port,
                   cwd=tmp_path, log=log)
    deadline = time.monotonic() + 240
    while True:
        if proc.poll() is not None:
            raise AssertionError(f"clbench ui exited ({proc.returncode}):\n{tail(log)}")
        if time.monotonic() > deadline:
            kill_all(descendants(proc.pid), [proc.pid])
            proc.kill()
            raise AssertionError(f"the UI did not answer within 240 s:\n{tail(log)}")
        with contextlib.suppress(OSError), urllib.request.urlopen(
                f"http://127.0.0.1:{port}/health", timeout=2) as r:
            if r.status == 200:
                return proc, port, log
        time.sleep(0.5)


def server_processes(proc: subprocess.Popen) -> tuple[set[Proc], set[int]]:
    """What ``clbench ui`` started, and the process groups of it (but the test's own)."""
    seen = descendants(proc.pid)
    groups = {g for g in map(pgid_of, seen) if g is not None and g != os.getpgid(0)}
    return seen | in_groups(groups), groups


@pytest.mark.slow
def test_sigterm_stops_the_ui_and_every_process_of_its_server(tmp_path):
    proc, port, log = start_ui(tmp_path)
    seen, groups = server_processes(proc)
    try:
        assert len(seen) > 1, describe(seen)
        time.sleep(3)  # the job runner starts its consumers a little later
        more, groups = server_processes(proc)
        seen |= more
        proc.terminate()
        t0 = time.monotonic()
        while port_open(port) and time.monotonic() - t0 < 15:
            time.sleep(0.2)
        assert not port_open(port), "the UI still answers 15 s after SIGTERM"
        survivors = wait_gone(seen | in_groups(groups), 15 - (time.monotonic() - t0))
        survivors |= in_groups(groups)
        assert not survivors, f"still running 15 s after SIGTERM: {describe(survivors)}"
        assert proc.wait(5) == 0, tail(log)
        print(f"server gone {time.monotonic() - t0:.1f} s after SIGTERM")
    finally:
        kill_all(seen | in_groups(groups), groups | {proc.pid})
        proc.kill()
        proc.wait()


@pytest.mark.slow
def test_killing_the_ui_command_stops_its_server(tmp_path):
    """SIGKILL to ``clbench ui`` itself: its server does not stay behind."""
    proc, port, _ = start_ui(tmp_path)
    seen, groups = server_processes(proc)
    try:
        proc.kill()
        proc.wait()
        t0 = time.monotonic()
        survivors = wait_gone(seen | in_groups(groups), 30)
        survivors |= in_groups(groups)
        assert not survivors, f"still running 30 s after SIGKILL: {describe(survivors)}"
        assert not port_open(port)
        print(f"server gone {time.monotonic() - t0:.1f} s after SIGKILL")
    finally:
        kill_all(seen | in_groups(groups), groups | {proc.pid})


# ----------------------------------------------------------------------------- the store
@pytest.mark.slow
def test_two_commands_can_create_one_sqlite_store_at_once(tmp_path):
    """Both log to a store that neither finds: MLflow creates and migrates it on first
    use, which two processes must not do at the same time."""
    for rnd in range(3):
        root = tmp_path / f"round{rnd}"
        root.mkdir()
        uri = f"sqlite:///{root / 'new.db'}"
        procs = [clbench("run", "--method", "finetune", "--dataset", "synthetic",
                         "--param", "epochs=2", "--param", "hidden=16", "--track", "--quiet",
                         "--tracking-uri", uri, "--results-dir", root / f"r{n}",
                         "--experiment", f"e{n}", cwd=root, log=root / f"{n}.log")
                 for n in (1, 2)]
        try:
            codes = [p.wait(300) for p in procs]
        finally:
            for p in procs:
                kill_all(descendants(p.pid), [p.pid])
                p.kill()
                p.wait()
        assert codes == [0, 0], "\n".join(
            f"round {rnd}, command {n}: exit {c}\n{tail(root / f'{n}.log')}"
            for n, c in zip((1, 2), codes, strict=True))
