"""Run a grid of (method, dataset, seed) jobs in parallel, log them, resume, survive crashes.

* :func:`expand_jobs` turns methods x datasets x seeds (and the shared settings)
  into :class:`Job` s, resolving and validating every hyperparameter up front.
* A backend runs them: :class:`LocalBackend` through joblib's loky process pool
  (each worker gets ``cores // jobs`` torch threads), :class:`DaskBackend`
  through joblib's Dask backend on an existing ``dask.distributed`` scheduler.
* :func:`run_jobs` is the loop in the parent process: it skips jobs that already
  have a FINISHED MLflow run (same method, dataset, seed and config hash), writes
  each finished job's result JSON atomically under ``results/runs/`` *before*
  logging it, logs it to MLflow (only the parent writes to the store) as a child
  run with the job's own start and end times, records jobs that raised or whose
  worker died as FAILED runs, and the running ones as KILLED on Ctrl-C (a queued
  job gets no run until it has run).

Worker deaths. With loky, a dead worker breaks the pool
(``TerminatedWorkerError``) and takes the jobs running beside it along: the jobs
that had started (each worker drops a marker file when it starts a job) are then
re-run one at a time, so the one that kills its worker again is recorded as
FAILED and the innocent ones finish. With Dask, joblib's backend waits forever for
a task whose worker died, so every Dask job runs in a child process of its worker
(``python -m clbench.orchestrate``) and a death becomes an ordinary failed result.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from clbench.errors import ClbenchError
from clbench.lifeline import die_with
from clbench.parsing import experiment_folder, is_graph_file
from clbench.provenance import CODE_TAGS, code_version, external_code_digest, source_digest
from clbench.resolve import resolve_grid
from clbench.spec import RunSpec

if TYPE_CHECKING:  # pragma: no cover
    from clbench.tracking import Tracker

#: One job of the orchestrator is one run.
Job = RunSpec
expand_jobs = resolve_grid


# ============================================================================ workers
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
    def failure(cls, job: Job, error: str, tb: str = "") -> Outcome:
        return cls(job.uid, False, error=error, traceback=tb, host=socket.gethostname())


def _load_plugins(job: Job) -> None:
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


def execute_job(job: Job, marker_dir: str | None = None, worker: bool = True,
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


def _import_training_stack(parent_pid: int | None = None) -> int:
    """:meth:`LocalBackend.warm_up`'s task in a worker: import what every job needs (and
    tie the worker's life to ``parent_pid``'s, as :func:`execute_job` does)."""
    die_with(parent_pid)
    with _ctrl_c_ignored():
        import clbench.experiment  # noqa: F401
    return os.getpid()


def resume_tag(job: Job, external: str | None = None) -> str:
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


def _execute_job(job: Job, marker_dir: str | None) -> Outcome:
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


def execute_job_isolated(job: Job, threads_by_host: Mapping[str, int] | None = None) -> Outcome:
    """Run one job in a fresh child process (used on Dask workers).

    A job that kills its process (segfault, OOM killer, ``os._exit``) then comes back
    as a failed :class:`Outcome` instead of taking the Dask worker down with it. The
    child gets this worker's pid and exits when the worker dies (the thread that starts
    it waits for it here, so it may also ask the kernel for a SIGKILL then).
    """
    threads = job.threads
    if threads is None:
        threads = _dask_threads(threads_by_host or {})
    job = replace(job, threads=threads)
    with tempfile.TemporaryDirectory(prefix="clbench-job-") as tmp:
        inp, out, err = (os.path.join(tmp, n) for n in ("job.json", "outcome.json", "stderr"))
        with open(inp, "w") as fh:
            json.dump(job.to_dict(), fh)
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
        with open(err, "w") as err_fh:
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


def _dask_threads(threads_by_host: Mapping[str, int]) -> int:
    import joblib

    try:
        from distributed import get_worker

        worker = get_worker()
        host = worker.address.rsplit(":", 1)[0].split("://")[-1]
        if host in threads_by_host:
            return threads_by_host[host]
        return max(1, joblib.cpu_count() // max(1, worker.state.nthreads))
    except (ImportError, ValueError, AttributeError):
        return max(1, joblib.cpu_count())


def _job_process_main(argv: Sequence[str]) -> int:
    """Entry point of ``python -m clbench.orchestrate JOB.json OUTCOME.json [PARENT_PID]``;
    with ``PARENT_PID`` (the Dask worker that started it) it exits when that process dies."""
    inp, out, *parent = argv
    if parent:
        die_with(int(parent[0]), signal_on_death=True)
    with open(inp) as fh:
        job = Job.from_dict(json.load(fh))
    if job.threads:
        import torch

        torch.set_num_threads(job.threads)
    outcome = execute_job(job)
    write_json_atomic(Path(out), asdict(outcome))
    return 0


# ============================================================================ backends
class Backend:
    """Runs jobs and yields an :class:`Outcome` per job, in completion order."""

    name = "backend"

    def prepare(self, jobs: Sequence[Job]) -> list[Job]:
        return list(jobs)

    def run(self, jobs: Sequence[Job]) -> Iterator[Outcome]:  # pragma: no cover
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
    """joblib's loky process pool on this machine: ``jobs`` workers, each with
    ``cores // jobs`` torch threads (cores as joblib counts them, cgroup-aware)."""

    name = "loky"

    def __init__(self, jobs: int = 1) -> None:
        import joblib

        self.cores = joblib.cpu_count()
        self.jobs = self.cores if jobs == -1 else max(1, int(jobs))
        self.threads = max(1, self.cores // self.jobs)
        self._marker_dir: str | None = None  # while run() runs: one file per started job
        self._started: dict[str, float] = {}
        self._warming: Iterator[int] | None = None  # warm_up()'s tasks, until run()
        self.warm_pids: set[int] = set()  # the workers warm_up() reached

    def describe(self) -> str:
        return (f"local loky pool: {self.jobs} worker(s) x {self.threads} torch thread(s) "
                f"on {self.cores} core(s)")

    def prepare(self, jobs: Sequence[Job]) -> list[Job]:
        return [replace(j, threads=j.threads or self.threads) for j in jobs]

    @staticmethod
    def _parallel(jobs: Sequence[Job], n_jobs: int, marker_dir: str) -> Iterator[Outcome]:
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
                self._warming = self._pool(n, _import_training_stack, [(os.getpid(),)] * n)

    def _wait_warm_up(self) -> None:
        warming, self._warming = self._warming, None
        if warming is not None:
            with contextlib.suppress(Exception):
                self.warm_pids.update(warming)

    def run(self, jobs: Sequence[Job]) -> Iterator[Outcome]:
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

    def _run(self, pending: list[Job], marker_dir: str) -> Iterator[Outcome]:
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

    Concurrency is the cluster's (its workers' threads); each job gets
    ``cores of its host // threads of the Dask workers on that host`` torch threads and
    runs in a child process of its worker (see the module docstring).
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
        self.threads_by_host = self._threads_by_host()

    def _threads_by_host(self) -> dict[str, int]:
        import joblib

        workers = self.client.scheduler_info(n_workers=-1).get("workers", {})
        if not workers:
            return {}
        cpus = self.client.run(joblib.cpu_count)
        per_host: dict[str, list[tuple[int, int]]] = {}
        for addr, info in workers.items():
            host = info.get("host") or addr.rsplit(":", 1)[0].split("://")[-1]
            per_host.setdefault(host, []).append((info.get("nthreads", 1), cpus.get(addr, 1)))
        return {h: max(1, max(c for _, c in v) // max(1, sum(n for n, _ in v)))
                for h, v in per_host.items()}

    def describe(self) -> str:
        n = sum(self.client.nthreads().values())
        return f"dask scheduler {self.scheduler}: {n} worker thread(s)"

    def run(self, jobs: Sequence[Job]) -> Iterator[Outcome]:
        from joblib import Parallel, delayed, parallel_config

        with parallel_config(backend="dask", client=self.client):
            yield from Parallel(n_jobs=-1, batch_size=1, return_as="generator_unordered")(
                delayed(execute_job_isolated)(job, self.threads_by_host) for job in jobs)

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
        return LocalBackend(jobs if jobs is not None else 1)
    assert scheduler is not None
    return DaskBackend(scheduler)


# ============================================================================ results on disk
def write_json_atomic(path: Path, payload: Any) -> Path:
    """Write JSON next to ``path`` and ``os.replace`` it in: never a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(payload, fh, indent=1)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return path


def results_folder(results_dir: str | Path, experiment: str) -> Path:
    """``<results_dir>/runs/<experiment folder>`` (see :func:`experiment_folder`)."""
    return Path(results_dir) / "runs" / experiment_folder(experiment)


def result_path(results_dir: str | Path, experiment: str, job: Job) -> Path:
    """``<results folder>/<method>__<dataset>__<config hash>__seed<s>.json``."""
    return results_folder(results_dir, experiment) / f"{job.uid}.json"


def resume_path(results_dir: str | Path, experiment: str, job: Job) -> Path:
    """The job's resume point, next to its result JSON (removed once that is written)."""
    return result_path(results_dir, experiment, job).with_suffix(".resume.pt")


def read_saved_result(path: Path, job: Job) -> dict[str, Any] | None:
    """A result saved by an earlier, interrupted command for exactly this job, if any
    (the folder may have been copied from another experiment's: its runs are reused)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    meta = data.get("clbench", {}) if isinstance(data, dict) else {}
    if not isinstance(meta, dict):
        return None
    if meta.get("config_hash") != job.config_hash or data.get("seed") != job.seed:
        return None
    return data


def check_results_dir(results_dir: str | Path, experiment: str, create: bool = True) -> Path:
    """Prove the experiment's results folder usable before anything trains (a job that
    cannot save its resume point or result would fail after its first task). With
    ``create`` the folder is made; without, nothing is left behind: the nearest existing
    folder on its path is probed with a temporary file (which also catches read-only
    file systems, where permission bits say nothing to root). Raises
    :class:`ClbenchError` naming the folder."""
    folder = results_folder(results_dir, experiment)
    try:
        if create:
            folder.mkdir(parents=True, exist_ok=True)
            probe_in = folder
        else:
            probe_in = next(p for p in (folder, *folder.parents) if p.exists())
            if not probe_in.is_dir():
                raise NotADirectoryError(20, "Not a directory")
        with tempfile.NamedTemporaryFile(dir=probe_in, prefix=".clbench-write-check-"):
            pass
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise ClbenchError(f"results directory {folder} is not writable ({reason}); "
                           "choose another with --results-dir") from None
    return folder


def prepare_datasets(jobs: Sequence[Job]) -> None:
    """Load every file-backed dataset once in the parent before the workers start, so
    downloads and preprocessing caches are not raced by parallel workers, and a
    missing or broken dataset is reported before any training."""
    from clbench.datasets import DATASETS, load_graph

    seen: set[tuple] = set()
    for job in jobs:
        k = (job.dataset, job.data_dir)
        if k in seen:
            continue
        seen.add(k)
        if not is_graph_file(job.dataset) and not getattr(DATASETS.get(job.dataset), "files", ()):
            continue  # generated in memory (synthetic): nothing to fetch
        load_graph(job.dataset, job.data_dir, job.protocol.split_seed)


# ============================================================================ planning
@dataclass
class Plan:
    """Where each job of a command stands before it runs (what ``--dry-run`` prints)."""

    done: list[Job] = field(default_factory=list)
    """Jobs with a FINISHED MLflow run: skipped."""
    saved: list[tuple[Job, dict[str, Any]]] = field(default_factory=list)
    """Jobs whose result JSON was written but not logged: logged without training."""
    todo: list[Job] = field(default_factory=list)
    """Jobs that train."""
    jobs: list[Job] = field(default_factory=list)
    """All of them, in the command's order."""


def plan_jobs(jobs: Iterable[Job], children: Iterable[Any], results_dir: str | Path,
              experiment: str, *, force: bool = False) -> Plan:
    """Sort ``jobs`` into done / saved / to run, given the experiment's child runs
    (:class:`~clbench.tracking.RunRecord`) and the result JSONs under ``results_dir``."""
    finished = set() if force else {rec.key for rec in children if rec.finished}
    plan = Plan(jobs=list(jobs))
    for job in plan.jobs:
        if job.key in finished:
            plan.done.append(job)
            continue
        saved = None if force else read_saved_result(
            result_path(results_dir, experiment, job), job)
        if saved is not None:
            plan.saved.append((job, saved))
        else:
            plan.todo.append(job)
    return plan


def typical_run_seconds(children: Iterable[Any],
                        saved: Iterable[tuple[Job, Mapping[str, Any]]] = ()
                        ) -> dict[tuple[str, str | None], float]:
    """Median duration of one run (its ``time_total_seconds``: training and evaluation,
    not queueing) per (method, dataset), and per ``(dataset, None)`` over all methods,
    from finished MLflow child runs and saved results; for time estimates."""
    import statistics

    seen: dict[tuple[str, str | None], list[float]] = {}

    def add(method: str, dataset: str, seconds: Any) -> None:
        if isinstance(seconds, (int, float)) and seconds > 0:
            seen.setdefault((method, dataset), []).append(float(seconds))
            seen.setdefault((dataset, None), []).append(float(seconds))

    for rec in children:
        if rec.finished:
            add(rec.method, rec.dataset, rec.metrics.get("time_total_seconds"))
    for job, result in saved:
        add(job.method, job.dataset, result.get("timing", {}).get("total_seconds"))
    return {k: statistics.median(v) for k, v in seen.items()}


# ============================================================================ the loop
class Reporter:
    """Progress hooks of :func:`run_jobs` (the CLI draws a rich bar; tests use this no-op)."""

    def start(self, total: int, skipped: Sequence[Job], recovered: Sequence[Job]) -> None: ...
    def job_finished(self, job: Job, result: dict[str, Any], recovered: bool = False) -> None: ...
    def job_failed(self, job: Job, error: str) -> None: ...
    def stop(self) -> None: ...
    def stopping(self, killed: int, parents: int) -> None:
        """After an interrupt, before the (possibly slow) MLflow bookkeeping."""


@dataclass
class Summary:
    """What one :func:`run_jobs` call did."""

    experiment: str
    tracking_uri: str
    finished: list[tuple[Job, dict[str, Any]]] = field(default_factory=list)
    recovered: list[Job] = field(default_factory=list)
    skipped: list[Job] = field(default_factory=list)
    failed: list[tuple[Job, str]] = field(default_factory=list)
    killed: list[Job] = field(default_factory=list)
    interrupted: bool = False
    #: runs left RUNNING by an earlier command that is gone, closed as KILLED
    abandoned: list[Any] = field(default_factory=list)
    parents: dict[tuple[str, str, str], str] = field(default_factory=dict)
    aggregates: dict[tuple[str, str, str], dict[str, dict[str, float]]] = field(
        default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.failed and not self.interrupted

    def failure_lines(self) -> list[str]:
        return [f"{job.label}: {err}" for job, err in self.failed]


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


@contextlib.contextmanager
def _interrupts_deferred() -> Iterator[None]:
    """Ctrl-C or SIGTERM while a job's outcome is logged takes effect right after it, so
    a job is logged whole (one MLflow run, closed) and never half. Signals the process
    ignores stay ignored."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    previous = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        if signal.getsignal(sig) is not signal.SIG_IGN:
            previous[sig] = signal.signal(sig, lambda signum, frame: caught.append(signum))
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if caught:
        raise KeyboardInterrupt


def run_jobs(
    jobs: Sequence[Job],
    tracker: Tracker,
    backend: Backend,
    *,
    results_dir: str | Path = "results",
    force: bool = False,
    reporter: Reporter | None = None,
    report_seeds: Mapping[tuple[str, str, str], Iterable[int]] | None = None,
    parent_labels: Mapping[tuple, str] | None = None,
    on_result: Callable[[Job, dict[str, Any]], None] | None = None,
) -> Summary:
    """Run ``jobs`` on ``backend`` and log them through ``tracker`` (see module docs).

    ``report_seeds[group]`` restricts a parent's aggregate to those seeds (a sweep's
    final seeds). Never raises for a failing job; the :class:`Summary` lists them.
    """
    from clbench import tracking as tr

    reporter = reporter or Reporter()
    check_results_dir(results_dir, tracker.experiment_name)
    summary = Summary(tracker.experiment_name, tracker.uri)
    jobs = backend.prepare(jobs)
    uids = [j.uid for j in jobs]
    if len(set(uids)) != len(uids):
        jobs = list({j.uid: j for j in jobs}.values())

    summary.abandoned = tracker.close_abandoned()
    plan = plan_jobs(jobs, tracker.children(), results_dir, tracker.experiment_name,
                     force=force)
    summary.skipped.extend(plan.done)
    to_run, to_recover = plan.todo, plan.saved

    parents = tracker.ensure_parents(jobs, parent_labels)
    summary.parents = parents
    ours = set(parents.values())
    before = {rec.run_id: rec for rec in tracker.parents() if rec.run_id in ours}
    report_tags = {g: tr.seeds_text(seeds) for g, seeds in (report_seeds or {}).items()
                   if g in parents}
    changed_tags = {g for g, text in report_tags.items()
                    if before[parents[g]].tags.get(tr.TAG_REPORT_SEEDS) != text}
    for g in changed_tags:
        tracker.set_tags(parents[g], {tr.TAG_REPORT_SEEDS: report_tags[g]})
    active_groups = {j.group for j in to_run} | {j.group for j, _ in to_recover}
    for g in active_groups:
        tracker.mark_running(parents[g])
    # A parent closed before, with no job of its own now and the same report seeds, keeps
    # its logged aggregate (re-logging the figure and files costs ~1 s per parent, which
    # adds up when a sweep is resumed); unless a child of it gets INT below.
    settled = {g for g, pid in parents.items() if g not in active_groups
               and g not in changed_tags and before[pid].status == "FINISHED"}

    by_uid = {j.uid: j for j in [*to_run, *(j for j, _ in to_recover)]}
    child_ids: dict[str, str] = {}
    done: set[str] = set()  # uids with an outcome (finished or failed)
    known_R: dict[str, Any] = {}
    failed_groups: set[tuple] = set()

    def open_child(job: Job, started_at: float | None) -> str:
        # A child run is created once its job has run (or is known to be running when
        # the command is stopped), backdated to the job's own start: created when the
        # command starts, a queued job's MLflow duration would include its time in the
        # queue (hours, late in a long sweep). Once per job: a Ctrl-C while a finished
        # job is being logged kills the run that was opened for it.
        if job.uid not in child_ids:
            child_ids[job.uid] = tracker.start_child(job, parents[job.group],
                                                     started_at=started_at)
        return child_ids[job.uid]

    def finish(job: Job, result: dict[str, Any], recovered: bool) -> None:
        if not recovered:
            result.setdefault("clbench", {})["experiment"] = tracker.experiment_name
            write_json_atomic(result_path(results_dir, tracker.experiment_name, job), result)
        resume_path(results_dir, tracker.experiment_name, job).unlink(missing_ok=True)
        info = result.get("clbench", {})
        open_child(job, info.get("started_at"))
        tags = {tr.TAG_HOST: info.get("host", "")}
        tags.update({tr.code_tag(key): str(info[key]) for key in CODE_TAGS if info.get(key)})
        if result.get("resumed"):
            tags[tr.TAG_RESUMED_AFTER] = str(result["resumed"]["after_task"])
        if recovered:
            tags[tr.TAG_RECOVERED_FROM] = str(
                result_path(results_dir, tracker.experiment_name, job))
        tracker.log_result(child_ids[job.uid], result, extra_tags=tags,
                           finished_at=info.get("finished_at"))
        known_R[child_ids[job.uid]] = result["R_test"]
        done.add(job.uid)
        if recovered:
            summary.recovered.append(job)
        summary.finished.append((job, result))
        reporter.job_finished(job, result, recovered)
        if on_result is not None:
            on_result(job, result)

    # each job keeps a resume point after every task: a run stopped half-way (Ctrl-C, a
    # killed session, a dead worker) continues from its last finished task next time
    to_run = [replace(j, resume_file=str(resume_path(results_dir, tracker.experiment_name, j)))
              for j in to_run]
    if force:  # start over
        for job in to_run:
            Path(job.resume_file).unlink(missing_ok=True)
    reporter.start(len(to_run) + len(to_recover), summary.skipped, [j for j, _ in to_recover])
    in_main = threading.current_thread() is threading.main_thread()
    old_term = signal.signal(signal.SIGTERM, _raise_interrupt) if in_main else None
    outcomes = backend.run(to_run)
    running: dict[str, float] = {}  # started, unfinished jobs when the command stops
    try:
        for job, saved in to_recover:
            with _interrupts_deferred():
                finish(job, saved, recovered=True)
        for outcome in outcomes:
            job = by_uid[outcome.uid]
            if outcome.ok and outcome.result is not None:
                with _interrupts_deferred():
                    finish(job, outcome.result, recovered=False)
                continue
            with _interrupts_deferred():
                started_at = (backend.started().get(job.uid)
                              or time.time() - (outcome.seconds or 0.0))
                tracker.fail_child(open_child(job, started_at), outcome.error,
                                   outcome.traceback)
                done.add(job.uid)
                failed_groups.add(job.group)
                summary.failed.append((job, outcome.error))
                reporter.job_failed(job, outcome.error)
    except KeyboardInterrupt:
        summary.interrupted = True
        running = {uid: t for uid, t in backend.started().items()
                   if uid in by_uid and uid not in done}
        backend.interrupt()
    except Exception as exc:
        from mlflow.exceptions import MlflowException

        if not isinstance(exc, MlflowException):
            raise
        backend.interrupt()
        saved_dir = results_folder(results_dir, tracker.experiment_name)
        first = next((ln for ln in str(exc).splitlines() if ln.strip()), "")[:200]
        raise ClbenchError(
            f"MLflow failed while logging ({first}); finished results are saved under "
            f"{saved_dir} and the next run of the same command logs them without retraining"
        ) from None
    finally:
        outcomes.close()
        if in_main:
            signal.signal(signal.SIGTERM, old_term)
        reporter.stop()

    if summary.interrupted:
        reporter.stopping(len(running), len(parents))
        for uid in sorted(running):
            tracker.kill_child(open_child(by_uid[uid], running[uid]))
            summary.killed.append(by_uid[uid])
    killed_groups = {j.group for j in summary.killed}

    children = tracker.children()
    got_int = {rec.parent_id for rec in tracker.backfill_intransigence(children, known_R)}
    for group, parent_id in parents.items():
        if group in settled and parent_id not in got_int:
            chosen = tracker.parent_seed_runs(before[parent_id], children)
            summary.aggregates[group] = tr.aggregate([c.metrics for c in chosen.values()])
            continue
        status = ("KILLED" if group in killed_groups else
                  "FAILED" if group in failed_groups else "FINISHED")
        summary.aggregates[group] = tracker.finish_parent(parent_id, children, status)
    return summary


if __name__ == "__main__":  # a job process started by execute_job_isolated
    sys.exit(_job_process_main(sys.argv[1:]))
