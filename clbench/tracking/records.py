"""What clbench records in MLflow and reads back: every tag name, the run record, the
aggregation over seeds, a finished job's params and metrics, the accuracy-matrix CSV, and
which command owns a run."""

from __future__ import annotations

import csv
import functools
import json
import math
import os
import socket
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from clbench import metrics as clmetrics
from clbench.degenerate import degenerate_from_confusion, learned_balanced_accuracies
from clbench.errors import ClbenchError
from clbench.parsing import is_graph_file

if TYPE_CHECKING:  # pragma: no cover
    from clbench.spec import RunSpec

# ----------------------------------------------------------------------------- tag names
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
#: the grid seeds a sweep selected a configuration on (``seeds_text`` form)
TAG_GRID_SEEDS = "clbench.grid_seeds"
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
#: A child run's protocol preset (``begin``, ``cglb`` or ``none``) and, as JSON, where each
#: protocol value came from (``default``, ``card``, ``preset:<name>`` or ``flag``). Not
#: parent tags: runs of one configuration share a parent whatever preset they came from.
TAG_PRESET = "clbench.preset"
TAG_PROTOCOL_SOURCES = "clbench.protocol_sources"
#: The tasks of a run that learned nothing (:mod:`clbench.degenerate`), ``"1,3"``, or
#: ``"none"``; runs logged before the check existed have no such tag.
TAG_DEGENERATE = "clbench.degenerate_tasks"
#: How that was checked: ``balanced`` (each task's balanced accuracy among its own
#: classes against chance, from the run's confusion matrices) or ``majority`` (the first
#: form: ``R[i][i]`` against the majority-class rate, for records without the matrices).
TAG_DEGENERATE_CHECK = "clbench.degenerate_check"
#: The task whose balanced accuracy right after it was learned was the run's lowest (the
#: metric ``learned_bacc_min``), for runs whose record has the confusion matrices.
TAG_WEAKEST_TASK = "clbench.weakest_learned_task"
#: Code identity (:data:`clbench.provenance.CODE_TAGS`), one tag per key.
TAG_GIT_COMMIT = "clbench.git_commit"
TAG_GIT_DIRTY = "clbench.git_dirty"
TAG_SOURCE_DIGEST = "clbench.source_digest"
TAG_EXTERNAL_CODE_DIGEST = "clbench.external_code_digest"
#: Experiment tags of a sweep: its file, and per (method, dataset slug) the selected
#: configuration, ``clbench.selected.<method>.<dataset slug>`` = ``hash (label)``.
TAG_SWEEP_FILE = "clbench.sweep_file"
TAG_SELECTED_PREFIX = "clbench.selected."
#: The tag of each :data:`clbench.provenance.CODE_TAGS` key.
CODE_TAG_NAMES = {
    "git_commit": TAG_GIT_COMMIT,
    "git_dirty": TAG_GIT_DIRTY,
    "source_digest": TAG_SOURCE_DIGEST,
    "external_code_digest": TAG_EXTERNAL_CODE_DIGEST,
}


def code_tag(key: str) -> str:
    """The tag of a :data:`clbench.provenance.CODE_TAGS` key."""
    return CODE_TAG_NAMES[key]


#: Final per-run metrics; parents log ``<name>_mean`` and ``<name>_std`` of each.
FINAL_METRICS = (
    "AP", "AF", "BWT", "FWT", "INT", "val_AP", "val_AF", "val_BWT", "val_FWT",
    "time_total_seconds", "time_per_task_seconds", "peak_rss_mb", "extra_storage_bytes",
    "learned_bacc_min",
)
#: Metrics drawn in a parent's per-seed spread figure.
SPREAD_METRICS = ("AP", "AF", "BWT", "FWT", "INT")


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

    method = property(lambda self: self.tags.get(TAG_METHOD, ""), doc="its method tag")
    dataset = property(lambda self: self.tags.get(TAG_DATASET, ""), doc="its dataset tag")
    config_hash = property(lambda self: self.tags.get(TAG_CONFIG, ""), doc="its config hash")
    protocol_hash = property(lambda self: self.tags.get(TAG_PROTOCOL, ""),
                             doc="its protocol hash")
    parent_id = property(lambda self: self.tags.get(TAG_PARENT), doc="its parent run's id")

    @property
    def seed(self) -> int | None:
        raw = self.tags.get(TAG_SEED)
        try:
            return int(raw) if raw is not None else None
        except ValueError:
            return None

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


# ----------------------------------------------------------------------------- results
def finite(v: Any) -> bool:
    """True when ``v`` is a finite number (or a text of one)."""
    try:
        return v is not None and math.isfinite(float(v))
    except (TypeError, ValueError):
        return False


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


def job_tags(job: RunSpec) -> dict[str, str]:
    """A child run's :data:`TAG_PRESET` and :data:`TAG_PROTOCOL_SOURCES`."""
    return {TAG_PRESET: job.preset or "none",
            TAG_PROTOCOL_SOURCES: json.dumps(dict(job.protocol_sources), sort_keys=True)}


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
        "setting": p.setting,
        **({"split": p.split} if "split" in p.tasks() else {}),  # old runs: no such param
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
        ratios = result.get("task_penalty_ratio") or []
        if i < len(ratios):
            out.append(("train/penalty_ratio", ratios[i], i))
        for key, name in (("task_train_seconds", "time/train_seconds"),
                          ("task_eval_seconds", "time/eval_seconds"),
                          ("task_epochs", "time/epochs")):
            values = timing.get(key) or []
            if i < len(values):
                out.append((name, values[i], i))
    learned = learned_balanced_accuracies(result.get("learned_confusion_test") or [])
    for i, v in enumerate(learned):
        out.append(("learned/balanced_accuracy", v, i))
    if any(map(finite, learned)):
        out.append(("learned_bacc_min", float(np.nanmin(learned)), 0))
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
    return [(k, float(v), s) for k, v, s in out if finite(v)]


def degenerate_text(tasks: Sequence[int]) -> str:
    """:data:`TAG_DEGENERATE`'s value of a run's degenerate tasks."""
    return ",".join(str(t) for t in tasks) or "none"


def result_tags(result: Mapping[str, Any]) -> dict[str, str]:
    """Tags only known after the run: its degenerate tasks, found again from the run's
    confusion matrices by today's check, or as the record has them (the first form of
    the check), or none when the run was never checked."""
    matrices = result.get("learned_confusion_test")
    if matrices is not None:
        tags = {TAG_DEGENERATE: degenerate_text(degenerate_from_confusion(matrices)),
                TAG_DEGENERATE_CHECK: "balanced"}
        learned = learned_balanced_accuracies(matrices)
        if any(map(finite, learned)):
            tags[TAG_WEAKEST_TASK] = str(int(np.nanargmin(learned)))
        return tags
    tasks = result.get("degenerate_tasks")
    if tasks is None:
        return {}
    return {TAG_DEGENERATE: degenerate_text(tasks), TAG_DEGENERATE_CHECK: "majority"}


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


# ----------------------------------------------------------------------------- owners
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


#: What ``clbench.tracking`` re-exports of this module.
__all__ = [
    "CODE_TAG_NAMES",
    "FINAL_METRICS",
    "SPREAD_METRICS",
    "TAG_ABANDONED",
    "TAG_COMMAND",
    "TAG_CONFIG",
    "TAG_DATASET",
    "TAG_DEGENERATE",
    "TAG_DEGENERATE_CHECK",
    "TAG_ERROR",
    "TAG_EXTERNAL_CODE_DIGEST",
    "TAG_GIT_COMMIT",
    "TAG_GIT_DIRTY",
    "TAG_GRID_SEEDS",
    "TAG_HOST",
    "TAG_INT_REFERENCE",
    "TAG_METHOD",
    "TAG_PARENT",
    "TAG_PRESET",
    "TAG_PROTOCOL",
    "TAG_PROTOCOL_SOURCES",
    "TAG_RECOVERED_FROM",
    "TAG_REPORT_SEEDS",
    "TAG_RESUMED_AFTER",
    "TAG_ROLE",
    "TAG_SEED",
    "TAG_SEEDS",
    "TAG_SELECTED",
    "TAG_SELECTED_PREFIX",
    "TAG_SELECTION",
    "TAG_SOURCE",
    "TAG_SOURCE_DIGEST",
    "TAG_SWEEP_FILE",
    "TAG_WEAKEST_TASK",
    "RunRecord",
    "aggregate",
    "code_tag",
    "command_owner",
    "dataset_card_info",
    "degenerate_text",
    "job_params",
    "job_tags",
    "owner_gone",
    "process_token",
    "read_matrix_csv",
    "result_metrics",
    "result_params",
    "result_tags",
    "select_seed_runs",
    "write_matrix_csv",
]
