"""MLflow tracking for the orchestrator (through :class:`mlflow.tracking.MlflowClient`).

Layout of one experiment (one per ``clbench run`` / ``clbench sweep`` command, name
settable)::

    parent run   <method> · <dataset>       one per (method, dataset, config hash)
      child run  <method> · <dataset> · seed <s>    one per seed (nested through the
                                                    ``mlflow.parentRunId`` tag)

Only the orchestrating process talks to MLflow: workers return their results and
the parent logs them, so a SQLite store never sees concurrent writers.

A child run logs every resolved hyperparameter and the protocol settings as
params, the dataset card and package versions, per-task metrics with
``step = task index`` (``test/task_<j>``, ``val/task_<j>``, ``test/AP_so_far``, times
per task), the final ``AP``/``AF``/``BWT``/``FWT`` (and ``INT`` once a joint run of
the same dataset, seed and protocol exists in the experiment), time, peak memory
and the method's extra storage, plus artifacts (``R_test.csv``, ``R_val.csv``,
``R_test_heatmap.png``, ``ap_curve.png``, ``config.json``, ``result.json``).
A parent run logs ``<metric>_mean``/``<metric>_std`` over its seeds (population
std), ``n_seeds``, ``per_seed.csv`` and a ``seed_spread.png`` figure.

Runs are found again by tags (``clbench.role``, ``clbench.method``,
``clbench.dataset``, ``clbench.seed``, ``clbench.config_hash``), which is what
resume and ``clbench compare`` rely on.
"""

from __future__ import annotations

import contextlib
import csv
import functools
import json
import logging
import math
import os
import socket
import tempfile
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

import numpy as np

from clbench import metrics as clmetrics
from clbench import plots
from clbench.errors import ClbenchError
from clbench.parsing import is_graph_file, parse_seed_list, seeds_text

if TYPE_CHECKING:  # pragma: no cover
    from mlflow.tracking import MlflowClient

    from clbench.spec import RunSpec

DEFAULT_EXPERIMENT = "clbench"

TAG_ROLE = "clbench.role"
TAG_METHOD = "clbench.method"
TAG_DATASET = "clbench.dataset"
TAG_SEED = "clbench.seed"
TAG_CONFIG = "clbench.config_hash"
TAG_PROTOCOL = "clbench.protocol_hash"
TAG_ERROR = "clbench.error"
TAG_SEEDS = "clbench.seeds"
TAG_REPORT_SEEDS = "clbench.report_seeds"
TAG_SELECTED = "clbench.selected"
TAG_SELECTION = "clbench.selection"
TAG_SOURCE = "clbench.source"
TAG_PARENT = "mlflow.parentRunId"
#: ``"<host> <pid> <process start>"`` of the command that opened (or reopened) a run; a
#: run still RUNNING whose command is gone on this host was abandoned (a killed session).
TAG_COMMAND = "clbench.command"
TAG_ABANDONED = "clbench.abandoned"
TAG_HOST = "clbench.host"
TAG_RESUMED_AFTER = "clbench.resumed_after_task"
TAG_RECOVERED_FROM = "clbench.recovered_from"
TAG_INT_REFERENCE = "clbench.int_reference"
#: Code identity (:data:`clbench.provenance.CODE_TAGS`): ``clbench.<key>``.
TAG_GIT_COMMIT = "clbench.git_commit"
TAG_GIT_DIRTY = "clbench.git_dirty"
TAG_SOURCE_DIGEST = "clbench.source_digest"
#: Experiment tags of a sweep: its file, and per (method, dataset slug) the selected
#: configuration, ``clbench.selected.<method>.<dataset slug>`` = ``hash (label)``.
TAG_SWEEP_FILE = "clbench.sweep_file"
TAG_SELECTED_PREFIX = "clbench.selected."


def code_tag(key: str) -> str:
    """The tag of a :data:`clbench.provenance.CODE_TAGS` key."""
    return f"clbench.{key}"

#: Final per-run metrics; parents log ``<name>_mean`` and ``<name>_std`` of each.
FINAL_METRICS = (
    "AP", "AF", "BWT", "FWT", "INT", "val_AP", "val_AF", "val_BWT", "val_FWT",
    "time_total_seconds", "time_per_task_seconds", "peak_rss_mb", "extra_storage_bytes",
)
#: Metrics drawn in a parent's per-seed spread figure.
SPREAD_METRICS = ("AP", "AF", "BWT", "FWT", "INT")

_MAX_PARAM = 6000
_MAX_TAG = 5000
#: Fast failure while checking the store: no retries, a few seconds per request.
QUICK_HTTP_ENV = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "0",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "5",
}


# ----------------------------------------------------------------------------- store
def resolve_tracking_uri(cli_value: str | None = None) -> str:
    """``--tracking-uri``, else ``$MLFLOW_TRACKING_URI``, else MLflow's default store.

    MLflow's default is a SQLite file in the working directory
    (``sqlite:///<cwd>/mlflow.db``); it is returned as an absolute URI.
    """
    if cli_value:
        return cli_value
    import mlflow

    return mlflow.get_tracking_uri()


def sqlite_file(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` tracking URI (None for other stores)."""
    if not uri.startswith("sqlite:///"):
        return None
    return Path(uri.removeprefix("sqlite:///").split("?", 1)[0])


def require_existing_store(uri: str) -> None:
    """For ``compare``, which only reads: a SQLite store must exist already (MLflow
    would create an empty one, and its directories, at a mistyped path)."""
    path = sqlite_file(uri)
    if path is not None and not path.is_file():
        raise ClbenchError(
            f"no MLflow store at {uri}: {path} does not exist (check --tracking-uri or "
            f"MLFLOW_TRACKING_URI; `clbench run` and `clbench sweep` create a store)"
        )


#: How long a command waits for another that is creating (or opening) the same SQLite
#: store before it gives up.
STORE_LOCK_TIMEOUT = 300.0


def store_lock_file(uri: str) -> Path | None:
    """``<store>.db.lock`` beside a SQLite store's file (None for other stores)."""
    path = sqlite_file(uri)
    if path is None or path.name in ("", ":memory:"):
        return None
    return path.with_name(path.name + ".lock")


def _quiet_store_creation() -> None:
    """MLflow logs "Creating initial MLflow database tables..." and "Updating database
    tables" at INFO when it creates a SQLite store: bookkeeping, not news for a user."""
    for name in ("mlflow.store.db.utils", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)


@contextlib.contextmanager
def store_lock(uri: str, timeout: float = STORE_LOCK_TIMEOUT) -> Iterator[None]:
    """Hold an exclusive file lock beside a SQLite store while MLflow opens it.

    MLflow creates a new SQLite store's tables and runs its schema migrations when it
    first opens the file, unguarded: two commands doing that at once both migrate,
    and one (or both) fails (``Online migration expected to match one row``, ``table
    ... already exists``) and can leave the schema half-migrated. Under this lock the
    second command waits and then finds the store complete. MLflow keeps an opened
    store for the process, so only a process's first opening takes long. A lock that
    cannot be created (a read-only folder, where no store can be created either) is
    skipped; other stores need none.
    """
    _quiet_store_creation()
    lock_file = store_lock_file(uri)
    if lock_file is None:
        yield
        return
    from filelock import FileLock, Timeout

    lock = FileLock(lock_file, timeout=timeout)
    held = False
    try:
        lock_file.parent.mkdir(parents=True, exist_ok=True)  # as MLflow would
        lock.acquire()
        held = True
    except Timeout:
        raise ClbenchError(
            f"another process has been creating or opening the MLflow store {uri} for "
            f"{timeout:.0f} s (it holds {lock_file}); try again when it is done"
        ) from None
    except OSError:
        pass
    try:
        yield
    finally:
        if held:
            lock.release()


@contextlib.contextmanager
def quick_http(env: Mapping[str, str] = QUICK_HTTP_ENV) -> Iterator[None]:
    """Temporarily make MLflow's HTTP client fail in seconds instead of retrying."""
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _first_line(text: str, limit: int = 300) -> str:
    line = next((s.strip() for s in str(text).splitlines() if s.strip()), "")
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _explain_store_error(uri: str, exc: BaseException) -> str:
    text = str(exc)
    scheme = urlparse(uri).scheme
    if scheme in ("http", "https"):
        for needle, reason in (
            ("Connection refused", "connection refused"),
            ("timed out", "timed out"),
            ("Read timed out", "timed out"),
            ("Name or service not known", "unknown host"),
            ("Failed to resolve", "unknown host"),
            ("nodename nor servname", "unknown host"),
            ("Max retries exceeded", "no answer"),
        ):
            if needle in text:
                return (
                    f"cannot reach the MLflow tracking server at {uri} ({reason}); start it "
                    f"(e.g. `mlflow server --host 127.0.0.1 --port 5000`) or pass another "
                    f"--tracking-uri / MLFLOW_TRACKING_URI"
                )
        return f"the MLflow tracking server at {uri} does not answer properly: {_first_line(text)}"
    return f"cannot use MLflow tracking URI {uri!r}: {_first_line(text)}"


def check_tracking_uri(uri: str) -> None:
    """Fail fast (seconds) with a :class:`ClbenchError` when the store is unusable.

    Runs one cheap query through the MLflow client with retries disabled and a short
    HTTP timeout, so a mistyped URI or a server that is down is reported before any
    training starts.
    """
    from mlflow.tracking import MlflowClient

    with quick_http(), store_lock(uri):
        try:
            MlflowClient(tracking_uri=uri).search_experiments(max_results=1)
        except Exception as exc:
            raise ClbenchError(_explain_store_error(uri, exc)) from None


# ----------------------------------------------------------------------------- records
@dataclass
class RunRecord:
    """The parts of an MLflow run the orchestrator and ``compare`` use."""

    run_id: str
    status: str
    tags: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    params: dict[str, str] = field(default_factory=dict)
    start_time: int = 0
    end_time: int | None = None

    @classmethod
    def from_run(cls, run: Any) -> RunRecord:
        return cls(run.info.run_id, run.info.status, dict(run.data.tags),
                   dict(run.data.metrics), dict(run.data.params),
                   run.info.start_time or 0, run.info.end_time)

    @property
    def method(self) -> str:
        return self.tags.get(TAG_METHOD, "")

    @property
    def dataset(self) -> str:
        return self.tags.get(TAG_DATASET, "")

    @property
    def seed(self) -> int | None:
        raw = self.tags.get(TAG_SEED)
        try:
            return int(raw) if raw is not None else None
        except ValueError:
            return None

    @property
    def config_hash(self) -> str:
        return self.tags.get(TAG_CONFIG, "")

    @property
    def protocol_hash(self) -> str:
        return self.tags.get(TAG_PROTOCOL, "")

    @property
    def parent_id(self) -> str | None:
        return self.tags.get(TAG_PARENT)

    @property
    def key(self) -> tuple[str, str, int | None, str]:
        """What resume matches on: (method, dataset, seed, config hash)."""
        return self.method, self.dataset, self.seed, self.config_hash

    @property
    def finished(self) -> bool:
        return self.status == "FINISHED"


def select_seed_runs(children: Iterable[RunRecord],
                     seeds: set[int] | None = None) -> dict[int, RunRecord]:
    """The latest FINISHED child per seed (restricted to ``seeds`` when given)."""
    chosen: dict[int, RunRecord] = {}
    for rec in children:
        s = rec.seed
        if not rec.finished or s is None or (seeds is not None and s not in seeds):
            continue
        best = chosen.get(s)
        if best is None or (rec.end_time or rec.start_time) > (best.end_time or best.start_time):
            chosen[s] = rec
    return dict(sorted(chosen.items()))


def aggregate(per_seed: Sequence[Mapping[str, float]],
              names: Sequence[str] = FINAL_METRICS) -> dict[str, dict[str, float]]:
    """Mean, population std and count of every metric over seeds (non-finite values skipped)."""
    out: dict[str, dict[str, float]] = {}
    for name in names:
        vals = np.array([m[name] for m in per_seed
                         if name in m and m[name] is not None and math.isfinite(m[name])],
                        dtype=float)
        if vals.size:
            out[name] = {"mean": float(vals.mean()), "std": float(vals.std()), "n": int(vals.size)}
    return out


# ----------------------------------------------------------------------------- helpers
def _clip(value: Any, limit: int) -> str:
    text = value if isinstance(value, str) else json.dumps(value) if isinstance(
        value, list | dict) else str(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _finite(v: Any) -> bool:
    try:
        return v is not None and math.isfinite(float(v))
    except (TypeError, ValueError):
        return False


def _chunks(items: Sequence, size: int) -> Iterator[Sequence]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def dataset_card_info(dataset: str) -> dict[str, str]:
    """The dataset card as flat ``dataset.*`` params (or the file path for a user's file)."""
    if is_graph_file(dataset):
        return {"dataset.file": str(dataset)}
    from clbench.datasets import DATASETS

    try:
        card = DATASETS.get(dataset)
    except ClbenchError:
        return {}
    out = {
        "dataset.name": card.name,
        "dataset.default_tasks": f"{card.num_tasks}x{card.classes_per_task}",
    }
    for attr in ("description", "source", "license", "split"):
        if getattr(card, attr, ""):
            out[f"dataset.{attr}"] = str(getattr(card, attr))
    for k, v in (card.stats or {}).items():
        out[f"dataset.{k}"] = str(v)
    return out


def write_matrix_csv(R: Sequence[Sequence[float]], path: Path) -> Path:
    """``R[i][j]`` as CSV: one row per "after task i", one column per task j."""
    R = np.asarray(R, dtype=float)
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["after_task", *(f"task_{j}" for j in range(R.shape[1]))])
        for i, row in enumerate(R):
            w.writerow([i, *(repr(float(v)) for v in row)])
    return path


def read_matrix_csv(path: str | Path) -> np.ndarray:
    with open(path, newline="") as fh:
        rows = list(csv.reader(fh))
    return np.array([[float(v) for v in row[1:]] for row in rows[1:]], dtype=float)


def job_params(job: RunSpec) -> dict[str, Any]:
    """Params known before a job runs: every resolved hyperparameter, protocol, data card."""
    p = job.protocol
    tasks = "card default"
    if p.num_tasks is not None or p.classes_per_task is not None:
        tasks = f"{p.num_tasks or '?'}x{p.classes_per_task or 'auto'}"
    return {
        **job.config,
        "method": job.method,
        "dataset": job.dataset,
        "split_seed": p.split_seed,
        "graph": p.graph,
        "metric": p.metric,
        "tasks_requested": tasks,
        "class_order_requested": list(p.class_order) if p.class_order else "from seed",
        "config_hash": job.config_hash,
        "protocol_hash": job.protocol_hash,
        **dataset_card_info(job.dataset),
    }


def result_metrics(result: Mapping[str, Any]) -> list[tuple[str, float, int]]:
    """``(key, value, step)`` for a finished run: per task (step = task index) and final."""
    out: list[tuple[str, float, int]] = []
    R = np.asarray(result["R_test"], dtype=float)
    V = np.asarray(result["R_val"], dtype=float)
    T = R.shape[0]
    val_curve = clmetrics.average_accuracy_curve(V)
    timing = result.get("timing", {})
    for i in range(T):
        for j in range(T):
            out.append((f"test/task_{j}", R[i, j], i))
            out.append((f"val/task_{j}", V[i, j], i))
        out.append(("test/AP_so_far", result["ap_curve"][i], i))
        out.append(("val/AP_so_far", val_curve[i], i))
        out.append(("test/current_task", R[i, i], i))
        for key, name in (("task_train_seconds", "time/train_seconds"),
                          ("task_eval_seconds", "time/eval_seconds"),
                          ("task_epochs", "time/epochs")):
            values = timing.get(key) or []
            if i < len(values):
                out.append((name, values[i], i))
    for j, v in enumerate(result.get("init_test") or []):
        out.append((f"untrained/test_task_{j}", v, 0))
    for k, v in result["metrics"].items():
        out.append((k, v, 0))
    for k, v in result.get("val_metrics", {}).items():
        out.append((f"val_{k}", v, 0))
    total = timing.get("total_seconds")
    if total is not None:
        out.append(("time_total_seconds", total, 0))
    per_task = [a + b for a, b in zip(timing.get("task_train_seconds") or [],
                                      timing.get("task_eval_seconds") or [], strict=False)]
    if per_task:
        out.append(("time_per_task_seconds", float(np.mean(per_task)), 0))
    out.append(("peak_rss_mb", result.get("peak_rss_mb"), 0))
    out.append(("extra_storage_bytes", result.get("extra_storage_bytes"), 0))
    return [(k, float(v), s) for k, v, s in out if _finite(v)]


def result_params(result: Mapping[str, Any]) -> dict[str, Any]:
    """Params only known after the run: the resolved task split and package versions."""
    sc = result.get("scenario", {})
    out: dict[str, Any] = {
        "num_tasks": sc.get("num_tasks"),
        "classes_per_task": sc.get("classes_per_task"),
        "class_order": sc.get("class_order"),
        "task_classes": sc.get("task_classes"),
        "dropped_classes": sc.get("dropped_classes"),
    }
    for k, v in (result.get("versions") or {}).items():
        out[f"version.{k}"] = v
    return {k: v for k, v in out.items() if v is not None}


# ----------------------------------------------------------------------------- tracker
def process_token(pid: int) -> str | None:
    """``"<pid> <start time>"`` of a live process on this host, None once it is gone.

    The start time (Linux ``/proc``, clock ticks since boot) tells a reused pid from the
    original process; where there is no ``/proc`` only liveness is checked (``?``).
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return f"{pid} {stat.rsplit(')', 1)[1].split()[19]}"  # field 22, starttime
    except (OSError, IndexError):
        if Path("/proc/self/stat").exists():
            return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass
    return f"{pid} ?"


@functools.cache
def command_owner() -> str:
    """This command's :data:`TAG_COMMAND` value."""
    return f"{socket.gethostname()} {process_token(os.getpid())}"


def owner_gone(owner: str) -> bool:
    """True when ``owner`` (a :data:`TAG_COMMAND` value) is a process of this host that
    no longer runs; False when it runs, or is on another host (which cannot be checked)."""
    host, _, token = owner.partition(" ")
    if host != socket.gethostname() or not token:
        return False
    try:
        now = process_token(int(token.split()[0]))
    except ValueError:
        return False
    return now is None or ("?" not in (now + token) and now != token)


class Tracker:
    """One MLflow experiment, seen from the orchestrating process.

    Args:
        uri: tracking URI (see :func:`resolve_tracking_uri`).
        experiment: experiment name; created unless ``create`` is False.
    """

    def __init__(self, uri: str, experiment: str = DEFAULT_EXPERIMENT, *,
                 create: bool = True) -> None:
        from mlflow.tracking import MlflowClient

        self.uri = uri
        self.experiment_name = experiment
        with store_lock(uri):  # opening a new SQLite store creates it: one process at a time
            self.client: MlflowClient = MlflowClient(tracking_uri=uri)
        self.experiment_id = self._open_experiment(experiment, create)

    # ------------------------------------------------------------ experiment & search
    def _open_experiment(self, name: str, create: bool) -> str:
        from mlflow.exceptions import MlflowException

        exp = self.client.get_experiment_by_name(name)
        if exp is None:
            if not create:
                known = [e.name for e in self.client.search_experiments(max_results=50)]
                raise ClbenchError(
                    f"no MLflow experiment named {name!r} in {self.uri}; "
                    f"existing: {', '.join(known) or 'none'}"
                )
            try:
                return self.client.create_experiment(name, tags={TAG_SOURCE: "clbench"})
            except MlflowException:
                exp = self.client.get_experiment_by_name(name)  # created concurrently
                if exp is None:
                    raise
        if exp.lifecycle_stage == "deleted":
            raise ClbenchError(
                f"MLflow experiment {name!r} is deleted; restore it "
                f"(`mlflow experiments restore --experiment-id {exp.experiment_id}`) "
                f"or choose another --experiment"
            )
        return exp.experiment_id

    def search(self, filter_string: str = "") -> list[RunRecord]:
        """Every active run of the experiment matching ``filter_string`` (paginated)."""
        out: list[RunRecord] = []
        token = None
        while True:
            page = self.client.search_runs([self.experiment_id], filter_string,
                                           max_results=1000, page_token=token)
            out.extend(RunRecord.from_run(r) for r in page)
            token = page.token
            if not token:
                return out

    def children(self) -> list[RunRecord]:
        return self.search(f"tags.`{TAG_ROLE}` = 'child'")

    def parents(self) -> list[RunRecord]:
        return self.search(f"tags.`{TAG_ROLE}` = 'parent'")

    # ------------------------------------------------------------ low-level logging
    def _log(self, run_id: str, metrics: Sequence[tuple[str, float, int]] = (),
             params: Mapping[str, Any] | None = None,
             tags: Mapping[str, Any] | None = None) -> None:
        from mlflow.entities import Metric, Param, RunTag

        ts = int(time.time() * 1000)
        for chunk in _chunks([Param(k, _clip(v, _MAX_PARAM)) for k, v in (params or {}).items()],
                             100):
            self.client.log_batch(run_id, params=list(chunk))
        for chunk in _chunks([RunTag(k, _clip(v, _MAX_TAG)) for k, v in (tags or {}).items()],
                             100):
            self.client.log_batch(run_id, tags=list(chunk))
        for chunk in _chunks([Metric(k, v, ts, s) for k, v, s in metrics], 1000):
            self.client.log_batch(run_id, metrics=list(chunk))

    def _log_folder(self, run_id: str, write: Any) -> None:
        with tempfile.TemporaryDirectory(prefix="clbench-artifacts-") as tmp:
            write(Path(tmp))
            self.client.log_artifacts(run_id, tmp)

    # ------------------------------------------------------------ parents
    def find_parents(self) -> dict[tuple[str, str, str], RunRecord]:
        """The existing parent run of each (method, dataset, config hash); the newest
        if there are several."""
        existing: dict[tuple[str, str, str], RunRecord] = {}
        for rec in self.parents():
            k = (rec.method, rec.dataset, rec.config_hash)
            if k not in existing or rec.start_time > existing[k].start_time:
                existing[k] = rec
        return existing

    def ensure_parents(self, jobs: Sequence[RunSpec], labels: Mapping[tuple, str] | None = None
                       ) -> dict[tuple[str, str, str], str]:
        """The parent run of every (method, dataset, config hash) among ``jobs``.

        An existing parent with the same tags is reused (resume); otherwise one is
        created with the group's config as params.
        """
        existing = self.find_parents()
        out: dict[tuple[str, str, str], str] = {}
        for job in jobs:
            k = job.group
            if k in out:
                continue
            if k in existing:
                out[k] = existing[k].run_id
                continue
            name = f"{job.method} · {job.dataset}"
            if labels and labels.get(k):
                name += f" · {labels[k]}"
            run = self.client.create_run(self.experiment_id, run_name=name, tags={
                TAG_ROLE: "parent", TAG_METHOD: job.method, TAG_DATASET: job.dataset,
                TAG_CONFIG: job.config_hash, TAG_PROTOCOL: job.protocol_hash,
                TAG_SOURCE: "clbench", TAG_COMMAND: command_owner(),
            })
            self._log(run.info.run_id, params=job_params(job))
            self._log_folder(run.info.run_id, lambda d, j=job: (d / "config.json").write_text(
                json.dumps({"method": j.method, "dataset": j.dataset, "config": j.config,
                            "protocol": j.task_protocol, "config_hash": j.config_hash}, indent=2)))
            out[k] = run.info.run_id
        return out

    def mark_running(self, run_id: str) -> None:
        self.client.set_tag(run_id, TAG_COMMAND, command_owner())
        self.client.update_run(run_id, status="RUNNING")

    def close_abandoned(self) -> list[RunRecord]:
        """Mark KILLED the RUNNING runs whose command is gone (a session or machine that
        was stopped without Ctrl-C/SIGTERM, so nothing closed its runs); they would
        otherwise look in progress forever. Only commands of this host can be checked;
        runs logged by clbench versions without the tag are left alone."""
        abandoned = [rec for rec in self.search("attributes.status = 'RUNNING'")
                     if rec.tags.get(TAG_COMMAND) and owner_gone(rec.tags[TAG_COMMAND])]
        for rec in abandoned:
            host, _, token = rec.tags[TAG_COMMAND].partition(" ")
            self._log(rec.run_id, tags={TAG_ABANDONED: (
                f"the clbench command that ran it (process {token.split()[0]} on {host}) "
                "ended without closing it")})
            self.client.set_terminated(rec.run_id, status="KILLED")
        return abandoned

    def set_tags(self, run_id: str, tags: Mapping[str, Any]) -> None:
        self._log(run_id, tags=tags)

    def set_experiment_tags(self, tags: Mapping[str, Any]) -> None:
        """Tag the experiment itself (a sweep's file and selections)."""
        for key, value in tags.items():
            self.client.set_experiment_tag(self.experiment_id, key, str(value))

    def experiment_tags(self) -> dict[str, str]:
        return dict(self.client.get_experiment(self.experiment_id).tags or {})

    @staticmethod
    def parent_seed_runs(parent: RunRecord, children: Iterable[RunRecord]
                         ) -> dict[int, RunRecord]:
        """The finished children a parent aggregates: one per seed, restricted to its
        report seeds when it has them (a sweep's final seeds)."""
        seeds = parse_seed_list(parent.tags.get(TAG_REPORT_SEEDS))
        return select_seed_runs([c for c in children if c.parent_id == parent.run_id], seeds)

    def finish_parent(self, parent_id: str, children: Iterable[RunRecord],
                      status: str = "FINISHED") -> dict[str, dict[str, float]]:
        """Aggregate a parent's finished seeds (mean/std), draw their spread, close it."""
        parent = RunRecord.from_run(self.client.get_run(parent_id))
        chosen = self.parent_seed_runs(parent, children)
        agg = aggregate([c.metrics for c in chosen.values()])
        metric_rows = [(f"{name}_{stat}", v[stat], 0) for name, v in agg.items()
                       for stat in ("mean", "std")]
        metric_rows.append(("n_seeds", float(len(chosen)), 0))
        self._log(parent_id, metrics=metric_rows,
                  tags={TAG_SEEDS: seeds_text(chosen) or "none"})

        def write(d: Path) -> None:
            spread = {m: {s: c.metrics[m] for s, c in chosen.items()
                          if _finite(c.metrics.get(m))} for m in SPREAD_METRICS}
            plots.seed_spread(spread, d / "seed_spread.png",
                              title=f"{parent.method} on {parent.dataset}: per-seed spread")
            with open(d / "per_seed.csv", "w", newline="") as fh:
                w = csv.writer(fh)
                w.writerow(["seed", "run_id", *FINAL_METRICS])
                for s, c in chosen.items():
                    w.writerow([s, c.run_id, *(c.metrics.get(m, "") for m in FINAL_METRICS)])

        self._log_folder(parent_id, write)
        self.client.set_terminated(parent_id, status=status)
        return agg

    # ------------------------------------------------------------ children
    def start_child(self, job: RunSpec, parent_id: str, started_at: float | None = None) -> str:
        """Create a RUNNING child run for ``job`` with its params (closed by
        :meth:`log_result`, :meth:`fail_child` or :meth:`kill_child`).
        ``started_at`` (Unix seconds) backdates it to when the job started."""
        run = self.client.create_run(
            self.experiment_id,
            start_time=None if started_at is None else int(started_at * 1000),
            run_name=f"{job.method} · {job.dataset} · seed {job.seed}",
            tags={
                TAG_ROLE: "child", TAG_PARENT: parent_id, TAG_METHOD: job.method,
                TAG_DATASET: job.dataset, TAG_SEED: str(job.seed), TAG_CONFIG: job.config_hash,
                TAG_PROTOCOL: job.protocol_hash, TAG_SOURCE: "clbench",
                TAG_COMMAND: command_owner(),
            },
        )
        self._log(run.info.run_id, params={**job_params(job), "seed": job.seed,
                                           "device": job.device,
                                           "threads": job.threads or "auto"})
        return run.info.run_id

    def log_result(self, run_id: str, result: Mapping[str, Any], *,
                   extra_tags: Mapping[str, Any] | None = None,
                   finished_at: float | None = None) -> None:
        """Log a finished job's metrics, late params and artifacts; mark it FINISHED (at
        ``finished_at``, Unix seconds, if given: a result recovered from disk)."""
        self._log(run_id, metrics=result_metrics(result), params=result_params(result),
                  tags=dict(extra_tags or {}))

        def write(d: Path) -> None:
            write_matrix_csv(result["R_test"], d / "R_test.csv")
            write_matrix_csv(result["R_val"], d / "R_val.csv")
            title = (f"{result['method']} on {result['dataset']} (seed {result['seed']})")
            metric = result.get("scenario", {}).get("metric", "accuracy")
            plots.heatmap(result["R_test"], d / "R_test_heatmap.png",
                          title=f"R_test, {title}", metric=metric)
            plots.ap_curve(result["ap_curve"], d / "ap_curve.png", title=f"AP so far, {title}",
                           val_curve=clmetrics.average_accuracy_curve(result["R_val"]))
            job_meta = result.get("clbench", {})
            (d / "config.json").write_text(json.dumps({
                "method": result["method"], "dataset": result["dataset"],
                "seed": result["seed"], "split_seed": result.get("split_seed"),
                "config": result["config"], "spec": result.get("spec"),
                "scenario": result.get("scenario"), "versions": result.get("versions"),
                **{k: job_meta[k] for k in ("config_hash", "protocol_hash") if k in job_meta},
            }, indent=2))
            (d / "result.json").write_text(json.dumps(result, indent=2))

        self._log_folder(run_id, write)
        self.client.set_terminated(
            run_id, status="FINISHED",
            end_time=None if finished_at is None else int(finished_at * 1000))

    def fail_child(self, run_id: str, error: str, traceback_text: str = "") -> None:
        """Record a job that raised or whose worker died: FAILED, with its error."""
        self._log(run_id, tags={TAG_ERROR: _first_line(error, 1000)})
        self._log_folder(run_id, lambda d: (d / "error.txt").write_text(
            error + ("\n\n" + traceback_text if traceback_text else "") + "\n"))
        self.client.set_terminated(run_id, status="FAILED")

    def kill_child(self, run_id: str, reason: str = "interrupted") -> None:
        self._log(run_id, tags={TAG_ERROR: reason})
        self.client.set_terminated(run_id, status="KILLED")

    # ------------------------------------------------------------ intransigence
    def _matrix(self, rec: RunRecord, known: Mapping[str, Any]) -> np.ndarray | None:
        if rec.run_id in known:
            return np.asarray(known[rec.run_id], dtype=float)
        try:
            with tempfile.TemporaryDirectory(prefix="clbench-R-") as tmp:
                path = self.client.download_artifacts(rec.run_id, "R_test.csv", tmp)
                return read_matrix_csv(path)
        except Exception:
            return None

    def backfill_intransigence(self, children: Sequence[RunRecord],
                               known: Mapping[str, Any]) -> list[RunRecord]:
        """Log ``INT`` on finished runs that lack it once a joint run of the same
        dataset, protocol and seed exists. Returns the runs that got it."""
        joint: dict[tuple, RunRecord] = {}
        for rec in children:
            if rec.finished and rec.method == "joint":
                k = (rec.dataset, rec.protocol_hash, rec.seed)
                if k not in joint or (rec.end_time or 0) > (joint[k].end_time or 0):
                    joint[k] = rec
        done: list[RunRecord] = []
        joint_R: dict[str, np.ndarray | None] = {}
        for rec in children:
            if not rec.finished or rec.method == "joint" or "INT" in rec.metrics:
                continue
            j = joint.get((rec.dataset, rec.protocol_hash, rec.seed))
            if j is None:
                continue
            if j.run_id not in joint_R:
                joint_R[j.run_id] = self._matrix(j, known)
            RJ, R = joint_R[j.run_id], self._matrix(rec, known)
            if RJ is None or R is None or RJ.shape != R.shape:
                continue
            value = clmetrics.intransigence(R, RJ)
            self._log(rec.run_id, metrics=[("INT", value, 0)],
                      tags={TAG_INT_REFERENCE: j.run_id})
            rec.metrics["INT"] = value
            done.append(rec)
        return done
