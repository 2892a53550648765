"""Results on disk: where each job's result JSON and resume point live, written
atomically and read back.

A finished job's result is written to
``<results_dir>/runs/<experiment folder>/<uid>.json`` (:func:`result_path`) *before* it
is logged to MLflow, so a command stopped in between logs it next time without
retraining (:func:`read_saved_result`); its resume point sits next to it
(:func:`resume_path`) until then. :func:`check_results_dir` proves the folder writable
and :func:`prepare_datasets` loads the datasets once, both before anything trains.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from clbench.errors import ClbenchError
from clbench.parsing import experiment_folder, is_graph_file
from clbench.spec import RunSpec


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


def result_path(results_dir: str | Path, experiment: str, job: RunSpec) -> Path:
    """``<results folder>/<method>__<dataset>__<config hash>__seed<s>.json``."""
    return results_folder(results_dir, experiment) / f"{job.uid}.json"


def resume_path(results_dir: str | Path, experiment: str, job: RunSpec) -> Path:
    """The job's resume point, next to its result JSON (removed once that is written)."""
    return result_path(results_dir, experiment, job).with_suffix(".resume.pt")


def read_saved_result(path: Path, job: RunSpec) -> dict[str, Any] | None:
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


def prepare_datasets(jobs: Sequence[RunSpec]) -> None:
    """Load every file-backed dataset once in the parent before the workers start, so
    downloads and preprocessing caches are not raced by parallel workers, and a
    missing or broken dataset is reported before any training."""
    from clbench.datasets import DATASETS, load_graph

    seen: set[tuple] = set()
    for job in jobs:
        k = (job.dataset, job.data_dir)  # the split is drawn after loading: not in the key
        if k in seen:
            continue
        seen.add(k)
        if not is_graph_file(job.dataset) and not getattr(DATASETS.get(job.dataset), "files", ()):
            continue  # generated in memory (synthetic): nothing to fetch
        load_graph(job.dataset, job.data_dir, job.protocol.split_seed)

