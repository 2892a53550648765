"""The orchestrator dispatches the jobs it trains longest expected first, so that a pool
ends with short jobs instead of leaving workers idle behind one long job."""

from __future__ import annotations

from mlflow_server import shared_server, unique

from clbench import tracking as tr
from clbench.orchestrate import LocalBackend, expand_jobs, run_jobs
from clbench.orchestrate.plan import estimated_run_seconds, longest_first
from clbench.tracking import Tracker


def _finished(method: str, seconds: float, dataset: str = "synthetic") -> tr.RunRecord:
    return tr.RunRecord(f"{method}-{seconds}", "FINISHED",
                        tags={tr.TAG_METHOD: method, tr.TAG_DATASET: dataset},
                        metrics={"time_total_seconds": seconds})


def test_longest_expected_first_and_unknown_before_known():
    jobs = expand_jobs(["finetune", "joint", "ewc"], ["synthetic"], [0, 1],
                       params={"epochs": 2})
    children = [_finished("finetune", 10.0), _finished("finetune", 12.0),
                _finished("joint", 30.0), tr.RunRecord("x", "FAILED", tags={
                    tr.TAG_METHOD: "ewc", tr.TAG_DATASET: "synthetic"},
                    metrics={"time_total_seconds": 999.0})]  # a failed run is no estimate
    order = [(j.method, j.seed) for j in longest_first(jobs, children)]
    # joint (30 s), then ewc, which has no run of its own: the median of every run on the
    # dataset (12 s), then finetune (11 s); each in the command's seed order
    assert order == [("joint", 0), ("joint", 1), ("ewc", 0), ("ewc", 1), ("finetune", 0),
                     ("finetune", 1)]
    # a job on a dataset without any run comes first: it may be the longest
    other = expand_jobs(["finetune"], ["cora"], [0], params={"epochs": 2})
    order = [(j.method, j.dataset) for j in longest_first([*jobs[:2], *other], children)]
    assert order == [("finetune", "cora"), ("finetune", "synthetic"),
                     ("finetune", "synthetic")]
    calls = []

    def relative() -> dict[str, float]:
        calls.append(1)
        return {"ewc": 4.0}  # ewc costs 4 x finetune in other experiments: 4 x 11 s

    order = [(j.method, j.seed) for j in longest_first(jobs, children, relative=relative)]
    assert order == [("ewc", 0), ("ewc", 1), ("joint", 0), ("joint", 1), ("finetune", 0),
                     ("finetune", 1)]
    assert calls == [1]
    assert estimated_run_seconds("ewc", "synthetic", {("finetune", "synthetic"): 11.0},
                                 {"ewc": 4.0}) == (44.0, "†")
    longest_first(jobs[:4], children, relative=relative)  # finetune, joint: both known
    assert calls == [1]
    # a job list without any estimate keeps the command's order
    assert longest_first(jobs, []) == jobs


class RecordingBackend(LocalBackend):
    """The real loky backend, noting the order in which it was handed the jobs."""

    def run(self, jobs):
        self.handed = [(j.method, j.seed) for j in jobs]
        return super().run(jobs)


def test_run_jobs_hands_the_backend_the_longest_first(workdir, capsys):
    """joint at 60 epochs per task takes far longer than finetune at 2: given finetune's
    jobs first, the backend gets joint's first (the old order was the command's)."""
    server = shared_server()
    exp = unique("dispatch")
    short = expand_jobs(["finetune"], ["synthetic"], [0, 1, 2], params={"epochs": 2})
    long = expand_jobs(["joint"], ["synthetic"], [0, 1, 2], params={"epochs": 60})
    tracker = Tracker(server.uri, exp)
    backend = RecordingBackend(2)
    try:
        first = run_jobs([short[0], long[0]], tracker, backend)
        took = {c.method: c.metrics["time_total_seconds"] for c in tracker.children()}
        assert first.ok and took["joint"] > took["finetune"], took
        summary = run_jobs([*short, *long], tracker, backend)
    finally:
        backend.close()
    assert summary.ok and len(summary.skipped) == 2 and len(summary.finished) == 4
    assert backend.handed == [("joint", 1), ("joint", 2), ("finetune", 1), ("finetune", 2)]
