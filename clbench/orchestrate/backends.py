"""Backends run a command's jobs in worker processes
(:func:`~clbench.orchestrate.worker.execute_job`) and yield an
:class:`~clbench.orchestrate.worker.Outcome` per job, in completion order.

* :class:`LocalBackend`: joblib's loky process pool on this machine (by default one
  worker per usable core, each job with one torch thread). A dead worker breaks the pool
  (``TerminatedWorkerError``) and takes the jobs running beside it along: the jobs that
  had started (each worker drops a marker file when it starts a job) are then re-run one
  at a time, so the one that kills its worker again comes back as failed and the
  innocent ones finish.
* :class:`DaskBackend`: joblib's Dask backend on an existing ``dask.distributed``
  scheduler. That backend waits forever for a task whose worker died, so every Dask job
  runs in a child process of its worker
  (:func:`~clbench.orchestrate.worker.execute_job_isolated`) and a death becomes an
  ordinary failed outcome.

:func:`check_backend_options` validates ``--backend/--jobs/--scheduler`` and
:func:`make_backend` builds the backend they name.
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from clbench.errors import ClbenchError
from clbench.orchestrate.worker import (
    Outcome,
    execute_job,
    execute_job_isolated,
    import_training_stack,
    terminate_isolated_jobs,
)
from clbench.spec import RunSpec
from clbench.threads import usable_cores


class Backend:
    """Runs jobs and yields an :class:`Outcome` per job, in completion order."""

    name = "backend"

    def prepare(self, jobs: Sequence[RunSpec]) -> list[RunSpec]:
        return list(jobs)

    def run(self, jobs: Sequence[RunSpec]) -> Iterator[Outcome]:  # pragma: no cover
        raise NotImplementedError

    def interrupt(self) -> None:
        """Stop what is still running (after Ctrl-C)."""

    def started(self) -> dict[str, float]:
        """Jobs of the current :meth:`run` that have started, by uid, with their start
        time (Unix seconds), where the backend can tell; finished ones may be included."""
        return {}

    def warm_up(self) -> None:
        """Start the workers in the background while the parent prepares (optional)."""

    def close(self) -> None:
        """Release resources."""

    def describe(self) -> str:
        return self.name


_EXIT_CODES = re.compile(r"exit codes of the workers are (\{[^}]*\})")


def stop_loky_pool() -> None:
    """Kill the workers of this process's loky pool (joblib's, which it keeps for reuse).
    ``get_reusable_executor`` returns that pool, or, as joblib built it with other
    arguments, kills it (``kill_workers``) and returns a new one with no processes yet;
    either is then shut down."""
    from joblib.externals.loky import get_reusable_executor

    get_reusable_executor(kill_workers=True).shutdown(wait=True, kill_workers=True)


class LocalBackend(Backend):
    """joblib's loky process pool on this machine: ``jobs`` workers (None or -1: the
    usable cores, as joblib counts them, affinity- and cgroup-aware). Each job runs
    with its own thread count (``RunSpec.threads``, 1 unless ``--threads``)."""

    name = "loky"

    def __init__(self, jobs: int | None = None) -> None:
        self.cores = usable_cores()
        self.jobs = self.cores if jobs in (None, -1) else max(1, int(jobs))
        self._marker_dir: str | None = None  # while run() runs: one file per started job
        self._started: dict[str, float] = {}
        self._warming: Iterator[int] | None = None  # warm_up()'s tasks, until run()
        self.warm_pids: set[int] = set()  # the workers warm_up() reached

    def describe(self) -> str:
        return f"local loky pool: {self.jobs} worker(s) on {self.cores} core(s)"

    @staticmethod
    def _parallel(jobs: Sequence[RunSpec], n_jobs: int, marker_dir: str) -> Iterator[Outcome]:
        # the workers are children of this process: they exit when it dies (lifeline)
        me = os.getpid()
        return LocalBackend._pool(n_jobs, execute_job,
                                  [(job, marker_dir, True, me) for job in jobs])

    @staticmethod
    def _pool(n_jobs: int, fn: Callable[..., Any], calls: Sequence[tuple]) -> Iterator[Any]:
        from joblib import Parallel, delayed

        # n_jobs >= 2 keeps every job in a worker process (n_jobs=1 would run in-process);
        # the same arguments every time, so joblib reuses one loky pool for all calls
        return Parallel(n_jobs=max(2, n_jobs), backend="loky", batch_size=1,
                        return_as="generator_unordered")(delayed(fn)(*a) for a in calls)

    def warm_up(self) -> None:
        """Start the worker processes now and have each import clbench's training stack
        (torch, PyG, the methods: seconds), without waiting: the parent meanwhile opens
        the MLflow store and loads the datasets, and the first jobs do not wait for their
        workers' imports. :meth:`run` collects it; :meth:`close` before a run (the
        command failed while preparing) stops the workers. Best effort: if it fails, the
        workers start with the first job."""
        if self._warming is None:
            n = max(2, self.jobs)
            with contextlib.suppress(Exception):
                # joblib dispatches before it returns the generator
                self._warming = self._pool(n, import_training_stack, [(os.getpid(),)] * n)

    def _wait_warm_up(self) -> None:
        warming, self._warming = self._warming, None
        if warming is not None:
            with contextlib.suppress(Exception):
                self.warm_pids.update(warming)

    def run(self, jobs: Sequence[RunSpec]) -> Iterator[Outcome]:
        # loky replaces a worker whose memory grew by 300 MB since its first job (a job
        # on a larger graph than the one before: not a leak) and warns about it; the
        # job's result is already back and the next job gets a fresh worker, so the
        # warning only alarms. A worker that dies is reported by BrokenProcessPool below.
        warnings.filterwarnings("ignore", category=UserWarning,
                                message="A worker stopped while some jobs were given")
        self._wait_warm_up()
        pending = list(jobs)
        with tempfile.TemporaryDirectory(prefix="clbench-started-") as marker_dir:
            self._marker_dir, self._started = marker_dir, {}
            try:
                yield from self._run(pending, marker_dir)
            finally:  # Ctrl-C propagates through here: keep what had started
                self._started, self._marker_dir = self.started(), None

    def _run(self, pending: list[RunSpec], marker_dir: str) -> Iterator[Outcome]:
        from joblib.externals.loky.process_executor import BrokenProcessPool

        while pending:
            done: set[str] = set()
            try:
                if self.jobs == 1:
                    for job in pending:
                        for out in self._parallel([job], 1, marker_dir):
                            done.add(out.uid)
                            yield out
                else:
                    for out in self._parallel(pending, self.jobs, marker_dir):
                        done.add(out.uid)
                        yield out
                return
            except BrokenProcessPool as exc:
                started = set(self.started())
                rest = [j for j in pending if j.uid not in done]
                suspects = [j for j in rest if j.uid in started]
                pending = [j for j in rest if j.uid not in started]
                reason = self._death_reason(exc)
                if len(suspects) == 1:  # the only job running when the pool broke
                    yield Outcome.failure(suspects[0], reason, str(exc))
                    suspects = []
                for job in suspects:  # one at a time: the culprit dies again, alone
                    os.unlink(os.path.join(marker_dir, job.uid))
                    try:
                        yield from self._parallel([job], 1, marker_dir)
                    except BrokenProcessPool as exc2:
                        yield Outcome.failure(job, self._death_reason(exc2) or reason,
                                              str(exc2))

    def started(self) -> dict[str, float]:
        """From the marker file each job writes when it starts (its mtime); after the
        run stopped, what had started when it stopped."""
        if self._marker_dir is None:
            return dict(self._started)
        out: dict[str, float] = {}
        with contextlib.suppress(OSError):
            for entry in os.scandir(self._marker_dir):
                with contextlib.suppress(OSError):
                    out[entry.name] = entry.stat().st_mtime
        return out

    def close(self) -> None:
        """Stop the pool's workers. loky keeps them for later calls, and otherwise they
        shut down when this process exits: each finalises an interpreter holding torch
        and PyG, which added about 3 s to the end of every command on a 2-core machine.
        Killed here, idle as they are after a run, they take a fraction of a second; a
        later run in the same process starts a new pool."""
        warming, self._warming = self._warming, None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if warming is not None:  # no run came: joblib stops the workers mid-import
                with contextlib.suppress(Exception):
                    warming.close()
            with contextlib.suppress(Exception):
                stop_loky_pool()

    @staticmethod
    def _death_reason(exc: BaseException) -> str:
        m = _EXIT_CODES.search(str(exc))
        codes = m.group(1).strip("{}") if m else "unknown exit code"
        codes = re.sub(r"(SIG\w+)\(-?\d+\)", r"killed by \1", codes)
        codes = re.sub(r"EXIT\((-?\d+)\)", r"exit code \1", codes)
        return f"worker process died ({codes})"


class DaskBackend(Backend):
    """joblib's Dask backend on an existing ``dask.distributed`` scheduler.

    Concurrency is the cluster's (its workers' threads); each job runs with its own
    thread count (``RunSpec.threads``, 1 unless ``--threads``) in a child process of its
    worker (see the module docstring).
    """

    name = "dask"

    def __init__(self, scheduler: str, timeout: float = 5.0) -> None:
        try:
            from dask.distributed import Client
        except ImportError:
            raise ClbenchError(
                "--backend dask needs dask.distributed: pip install 'clbench[dask]'"
            ) from None
        self.scheduler = scheduler
        try:
            self.client = Client(scheduler, timeout=f"{timeout}s", set_as_default=False)
        except (OSError, TimeoutError, ValueError) as exc:
            raise ClbenchError(
                f"cannot connect to the Dask scheduler at {scheduler}: {exc}"
            ) from None

    def describe(self) -> str:
        n = sum(self.client.nthreads().values())
        return f"dask scheduler {self.scheduler}: {n} worker thread(s)"

    def run(self, jobs: Sequence[RunSpec]) -> Iterator[Outcome]:
        from joblib import Parallel, delayed, parallel_config

        with parallel_config(backend="dask", client=self.client):
            yield from Parallel(n_jobs=-1, batch_size=1, return_as="generator_unordered")(
                delayed(execute_job_isolated)(job) for job in jobs)

    def interrupt(self) -> None:
        with contextlib.suppress(Exception):  # best effort: the cluster may be gone
            self.client.run(terminate_isolated_jobs)

    def close(self) -> None:
        self.client.close()


def check_backend_options(backend: str | None, jobs: int | None,
                          scheduler: str | None) -> tuple[str, str | None]:
    """Validate ``--backend/--jobs/--scheduler`` without connecting to anything."""
    name = (backend or "loky").lower()
    if name == "local":
        name = "loky"
    if name not in ("loky", "dask"):
        raise ClbenchError(f"unknown --backend {backend!r}; choose loky or dask")
    if jobs is not None and jobs < 1 and jobs != -1:
        raise ClbenchError(f"--jobs must be at least 1 (or -1 for all cores), got {jobs}")
    if name == "loky" and scheduler:
        raise ClbenchError("--scheduler only applies to --backend dask")
    if name == "dask":
        scheduler = scheduler or os.environ.get("DASK_SCHEDULER_ADDRESS")
        if not scheduler:
            raise ClbenchError("--backend dask needs --scheduler tcp://host:port "
                               "(or $DASK_SCHEDULER_ADDRESS)")
    return name, scheduler


def make_backend(backend: str | None, jobs: int | None, scheduler: str | None) -> Backend:
    """``loky`` (default) or ``dask`` (needs ``scheduler``); connects to the scheduler now."""
    name, scheduler = check_backend_options(backend, jobs, scheduler)
    if name == "loky":
        return LocalBackend(jobs)
    assert scheduler is not None
    return DaskBackend(scheduler)

