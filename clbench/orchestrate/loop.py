"""The loop in the orchestrating process: :func:`run_jobs`.

It skips jobs that already have a FINISHED MLflow run (same method, dataset, seed and
config hash), dispatches the others longest expected first
(:func:`~clbench.orchestrate.plan.longest_first`), writes each finished job's result JSON
atomically under ``results/runs/`` *before* logging it, logs it to MLflow (only this
process writes to the store) as a child run with the job's own start and end times,
records jobs that raised or whose worker died as FAILED runs, and the running ones as
KILLED on Ctrl-C or SIGTERM (a queued job gets no run until it has run). A signal that
arrives while a job's outcome is logged takes effect right after it, so a job is never
logged half.
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from clbench.errors import ClbenchError
from clbench.orchestrate.backends import Backend
from clbench.orchestrate.plan import longest_first, plan_jobs, relative_run_costs
from clbench.orchestrate.results import (
    check_results_dir,
    result_path,
    results_folder,
    resume_path,
    write_json_atomic,
)
from clbench.provenance import CODE_TAGS
from clbench.spec import RunSpec

if TYPE_CHECKING:  # pragma: no cover
    from clbench.tracking import Tracker


class Reporter:
    """Progress hooks of :func:`run_jobs` (the CLI draws a rich bar; tests use this no-op)."""

    def start(self, total: int, skipped: Sequence[RunSpec],
              recovered: Sequence[RunSpec]) -> None: ...
    def job_finished(self, job: RunSpec, result: dict[str, Any],
                     recovered: bool = False) -> None: ...
    def job_failed(self, job: RunSpec, error: str) -> None: ...
    def stop(self) -> None: ...
    def stopping(self, killed: int, parents: int) -> None:
        """After an interrupt, before the (possibly slow) MLflow bookkeeping."""


@dataclass
class Summary:
    """What one :func:`run_jobs` call did."""

    experiment: str
    tracking_uri: str
    finished: list[tuple[RunSpec, dict[str, Any]]] = field(default_factory=list)
    recovered: list[RunSpec] = field(default_factory=list)
    skipped: list[RunSpec] = field(default_factory=list)
    failed: list[tuple[RunSpec, str]] = field(default_factory=list)
    killed: list[RunSpec] = field(default_factory=list)
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
    jobs: Sequence[RunSpec],
    tracker: Tracker,
    backend: Backend,
    *,
    results_dir: str | Path = "results",
    force: bool = False,
    reporter: Reporter | None = None,
    report_seeds: Mapping[tuple[str, str, str], Iterable[int]] | None = None,
    parent_labels: Mapping[tuple, str] | None = None,
    on_result: Callable[[RunSpec, dict[str, Any]], None] | None = None,
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
    children = tracker.children()
    plan = plan_jobs(jobs, children, results_dir, tracker.experiment_name, force=force)
    summary.skipped.extend(plan.done)
    to_recover = plan.saved
    to_run = longest_first(plan.todo, children, to_recover, relative=lambda: relative_run_costs(
        results_dir, tracker.experiment_name, plan.todo))

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

    def open_child(job: RunSpec, started_at: float | None) -> str:
        # A child run is created once its job has run (or is known to be running when
        # the command is stopped), backdated to the job's own start: created when the
        # command starts, a queued job's MLflow duration would include its time in the
        # queue (hours, late in a long sweep). Once per job: a Ctrl-C while a finished
        # job is being logged kills the run that was opened for it.
        if job.uid not in child_ids:
            child_ids[job.uid] = tracker.start_child(job, parents[job.group],
                                                     started_at=started_at)
        return child_ids[job.uid]

    def finish(job: RunSpec, result: dict[str, Any], recovered: bool) -> None:
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
