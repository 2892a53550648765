"""The :class:`Tracker`: one MLflow experiment, seen from the orchestrating process (the
layout of its runs is described in :mod:`clbench.tracking`)."""

from __future__ import annotations

import csv
import json
import tempfile
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from clbench import metrics as clmetrics
from clbench import plots
from clbench.errors import ClbenchError
from clbench.parsing import parse_seed_list, seeds_text
from clbench.threads import DEFAULT_THREADS
from clbench.tracking.mlflow_ui import config_label, experiment_ui_tags, mark_experiment
from clbench.tracking.records import (
    FINAL_METRICS,
    SPREAD_METRICS,
    TAG_ABANDONED,
    TAG_COMMAND,
    TAG_CONFIG,
    TAG_DATASET,
    TAG_DEGENERATE,
    TAG_ERROR,
    TAG_INT_REFERENCE,
    TAG_METHOD,
    TAG_PARENT,
    TAG_PROTOCOL,
    TAG_REPORT_SEEDS,
    TAG_ROLE,
    TAG_SEED,
    TAG_SEEDS,
    TAG_SOURCE,
    RunRecord,
    aggregate,
    command_owner,
    finite,
    job_params,
    job_tags,
    owner_gone,
    read_matrix_csv,
    result_metrics,
    result_params,
    result_tags,
    select_seed_runs,
    write_matrix_csv,
)
from clbench.tracking.store import NO_PROGRESS_BAR_ENV, first_line, store_lock, temporary_env

if TYPE_CHECKING:  # pragma: no cover
    from mlflow.tracking import MlflowClient

    from clbench.spec import RunSpec

DEFAULT_EXPERIMENT = "clbench"

_MAX_PARAM = 6000
_MAX_TAG = 5000


def _clip(value: Any, limit: int) -> str:
    text = value if isinstance(value, str) else json.dumps(value) if isinstance(
        value, list | dict) else str(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _chunks(items: Sequence, size: int) -> Iterator[Sequence]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


class Tracker:
    """One MLflow experiment, seen from the orchestrating process.

    Args:
        uri: tracking URI (see :func:`~clbench.tracking.store.resolve_tracking_uri`).
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
                return self.client.create_experiment(
                    name, tags={TAG_SOURCE: "clbench", **experiment_ui_tags()})
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
        if create and exp.tags.get(TAG_SOURCE) == "clbench":  # perhaps by an older clbench
            mark_experiment(self.client, exp.experiment_id, exp.tags)
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
        created with the group's config as params, named ``method · dataset ·
        configuration`` (``labels[group]``, else :func:`config_label`).
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
            label = (labels or {}).get(k) or config_label(job)
            name = f"{job.method} · {job.dataset} · {label}"
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
        degenerate = {s: c.tags[TAG_DEGENERATE] for s, c in chosen.items()
                      if c.tags.get(TAG_DEGENERATE, "none") != "none"}
        self._log(parent_id, metrics=metric_rows,
                  tags={TAG_SEEDS: seeds_text(chosen) or "none",
                        TAG_DEGENERATE: "; ".join(f"seed {s}: {t}" for s, t in
                                                  degenerate.items()) or "none"})

        def write(d: Path) -> None:
            spread = {m: {s: c.metrics[m] for s, c in chosen.items()
                          if finite(c.metrics.get(m))} for m in SPREAD_METRICS}
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
                TAG_COMMAND: command_owner(), **job_tags(job),
            },
        )
        self._log(run.info.run_id, params={**job_params(job), "seed": job.seed,
                                           "device": job.device,
                                           "threads": job.threads or DEFAULT_THREADS})
        return run.info.run_id

    def log_result(self, run_id: str, result: Mapping[str, Any], *,
                   extra_tags: Mapping[str, Any] | None = None,
                   finished_at: float | None = None) -> None:
        """Log a finished job's metrics, late params and artifacts; mark it FINISHED (at
        ``finished_at``, Unix seconds, if given: a result recovered from disk)."""
        self._log(run_id, metrics=result_metrics(result), params=result_params(result),
                  tags={**result_tags(result), **(extra_tags or {})})

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
        self._log(run_id, tags={TAG_ERROR: first_line(error, 1000)})
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
            with tempfile.TemporaryDirectory(prefix="clbench-R-") as tmp, \
                    temporary_env(NO_PROGRESS_BAR_ENV):
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
