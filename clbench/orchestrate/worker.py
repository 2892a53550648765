"""One job (a :class:`~clbench.spec.RunSpec`) in a worker process, and the
:class:`Outcome` it sends back.

:func:`execute_job` is what a backend's worker calls for each job: it loads the job's
plugins if the worker lacks them, resets the peak-RSS counter, runs
:func:`clbench.experiment.run_experiment` with the job's resume point (:func:`resume_tag`
says which resume points may be continued) and turns an exception into a failed
:class:`Outcome`. Ctrl-C is left to the orchestrating parent, and the worker exits when
that parent dies (:mod:`clbench.lifeline`).

On Dask, joblib's backend waits forever for a task whose worker died, so every Dask job
goes through :func:`execute_job_isolated`: it runs in a child process of its worker,
``python -m clbench.orchestrate JOB.json OUTCOME.json WORKER_PID``
(``__main__.py``: :func:`job_process_main`), and a death of that process becomes an
ordinary failed :class:`Outcome`.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from clbench.lifeline import die_with
from clbench.orchestrate.results import write_json_atomic
from clbench.parsing import is_graph_file
from clbench.provenance import code_version, external_code_digest, source_digest
from clbench.spec import RunSpec
from clbench.threads import DEFAULT_THREADS


@dataclass
class Outcome:
    """What a worker sends back for one job."""

    uid: str
    ok: bool
    result: dict[str, Any] | None = None
    error: str = ""
    traceback: str = ""
    host: str = ""
    pid: int = 0
    seconds: float = 0.0

    @classmethod
    def failure(cls, job: RunSpec, error: str, tb: str = "") -> Outcome:
        return cls(job.uid, False, error=error, traceback=tb, host=socket.gethostname())


def _load_plugins(job: RunSpec) -> None:
    """Import the job's plugin files/modules in a worker, unless what it needs is there."""
    from clbench.datasets import DATASETS
    from clbench.methods import METHODS
    from clbench.plugins import load_plugin

    if job.method in METHODS and (is_graph_file(job.dataset) or job.dataset in DATASETS):
        return
    for plugin in job.plugins:
        load_plugin(plugin)


def _reset_peak_rss() -> None:
    """Reset this process's peak-RSS counter (Linux), so a reused worker reports the
    peak memory of the current job rather than of every job it ran before."""
    with contextlib.suppress(OSError), open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")


def execute_job(job: RunSpec, marker_dir: str | None = None, worker: bool = True,
                parent_pid: int | None = None) -> Outcome:
    """Run one job in a worker; exceptions become a failed :class:`Outcome`.

    In a worker process (``worker``) Ctrl-C is left to the orchestrating parent, which
    stops the pool and records what was running as KILLED. The previous SIGINT handler
    is put back afterwards, so a process that runs a job in-process (and the programs
    it starts later, which inherit an ignored SIGINT) still stops on Ctrl-C.
    ``parent_pid``: the orchestrating process; the worker exits soon after it dies
    (:func:`clbench.lifeline.die_with`).
    """
    die_with(parent_pid)
    if not (worker and threading.current_thread() is threading.main_thread()):
        return _execute_job(job, marker_dir)
    with _ctrl_c_ignored():
        return _execute_job(job, marker_dir)


@contextlib.contextmanager
def _ctrl_c_ignored() -> Iterator[None]:
    """Ignore SIGINT in a worker (the parent handles Ctrl-C), then put the handler back."""
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def import_training_stack(parent_pid: int | None = None) -> int:
    """:meth:`~clbench.orchestrate.backends.LocalBackend.warm_up`'s task in a worker:
    import what every job needs (and tie the worker's life to ``parent_pid``'s, as
    :func:`execute_job` does)."""
    die_with(parent_pid)
    with _ctrl_c_ignored():
        import clbench.experiment  # noqa: F401
    return os.getpid()


def resume_tag(job: RunSpec, external: str | None = None) -> str:
    """What a resume point must match to be continued: the job, the thread count (it
    changes floating-point sums) and the exact torch and clbench code, and the code of a
    method or dataset that comes from outside clbench (``external_code_digest(job)``,
    passed as ``external`` when the caller has it already)."""
    import torch

    tag = (f"{job.uid} {job.protocol_hash} threads={job.threads} torch={torch.__version__} "
           f"clbench={source_digest()}")
    if external is None:
        external = external_code_digest(job.method, job.dataset)
    return f"{tag} code={external}" if external else tag


def _execute_job(job: RunSpec, marker_dir: str | None) -> Outcome:
    started = time.perf_counter()
    started_at = time.time()
    if marker_dir:
        with open(os.path.join(marker_dir, job.uid), "w") as fh:
            fh.write(str(os.getpid()))
    host, pid = socket.gethostname(), os.getpid()
    try:
        _load_plugins(job)
        from clbench.experiment import run_experiment

        _reset_peak_rss()
        external = external_code_digest(job.method, job.dataset)
        result = run_experiment(job, resume_file=job.resume_file,
                                resume_tag=resume_tag(job, external))
        # wall-clock start and end (Unix seconds): a store rebuilt from the saved JSON
        # (results recovered on another machine) keeps when each run really ran
        result["clbench"] = {"config_hash": job.config_hash, "protocol_hash": job.protocol_hash,
                             "host": host, "pid": pid, "threads": job.threads,
                             "started_at": started_at, "finished_at": time.time(),
                             **code_version()}
        if external:
            result["clbench"]["external_code_digest"] = external
        return Outcome(job.uid, True, result=result, host=host, pid=pid,
                       seconds=time.perf_counter() - started)
    except Exception as exc:
        return Outcome(job.uid, False, error=f"{type(exc).__name__}: {exc}",
                       traceback=traceback.format_exc(), host=host, pid=pid,
                       seconds=time.perf_counter() - started)


# ------------------------------------------------------------ Dask: one process per job
_CHILDREN: set[subprocess.Popen] = set()
_CHILDREN_LOCK = threading.Lock()


def _describe_exit(code: int) -> str:
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"worker process died (killed by {name})"
    return f"worker process died (exit code {code})"


def execute_job_isolated(job: RunSpec) -> Outcome:
    """Run one job in a fresh child process (used on Dask workers).

    A job that kills its process (segfault, OOM killer, ``os._exit``) then comes back
    as a failed :class:`Outcome` instead of taking the Dask worker down with it. The
    child gets this worker's pid and exits when the worker dies (the thread that starts
    it waits for it here, so it may also ask the kernel for a SIGKILL then).
    """
    threads = job.threads or DEFAULT_THREADS
    with tempfile.TemporaryDirectory(prefix="clbench-job-") as tmp:
        inp, out, err = (os.path.join(tmp, n) for n in ("job.json", "outcome.json", "stderr"))
        with open(inp, "w") as fh:
            json.dump(job.to_dict(), fh)
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
        with open(err, "w") as err_fh:
            # clbench/orchestrate/__main__.py: job_process_main below
            proc = subprocess.Popen([sys.executable, "-m", "clbench.orchestrate", inp, out,
                                     str(os.getpid())],
                                    stdout=subprocess.DEVNULL, stderr=err_fh, env=env)
            with _CHILDREN_LOCK:
                _CHILDREN.add(proc)
            try:
                code = proc.wait()
            finally:
                with _CHILDREN_LOCK:
                    _CHILDREN.discard(proc)
        if code == 0 and os.path.exists(out):
            with open(out) as fh:
                return Outcome(**json.load(fh))
        with open(err, errors="replace") as fh:
            tail = fh.read()[-3000:]
        return Outcome.failure(job, _describe_exit(code), tail)


def terminate_isolated_jobs() -> int:
    """Kill the job processes this worker started (run on Dask workers on Ctrl-C)."""
    with _CHILDREN_LOCK:
        procs = list(_CHILDREN)
    for p in procs:
        p.kill()
    return len(procs)


def job_process_main(argv: Sequence[str]) -> int:
    """Entry point of ``python -m clbench.orchestrate JOB.json OUTCOME.json [PARENT_PID]``;
    with ``PARENT_PID`` (the Dask worker that started it) it exits when that process dies."""
    inp, out, *parent = argv
    if parent:
        die_with(int(parent[0]), signal_on_death=True)
    with open(inp) as fh:
        job = RunSpec.from_dict(json.load(fh))
    outcome = execute_job(job)  # run_experiment sets the job's torch threads
    write_json_atomic(Path(out), asdict(outcome))
    return 0
