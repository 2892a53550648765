"""A run's training time alone and beside two busy processes, per thread policy.

Each measurement is a fresh process (the OpenMP wait policy is read when torch loads):
finetune on Cora, 3 tasks x 60 epochs with the plateau stop disabled (patience 1000), so
every condition trains the same 180 epochs; the time is the run's own training time
(steps and validation, without start-up). "Busy" means two processes spinning on the
CPU (``while True: pass``) for the whole run, at the same priority, on this machine's
cores. Conditions run interleaved, one of each per round, and the median is reported.

``python benchmarks/perfkit/load.py --child THREADS POLICY DATA_ROOT`` is the child:
POLICY is ``default`` (OpenMP's own), ``passive``, or ``auto`` (clbench's
:func:`clbench.threads.configure_openmp`, as ``clbench run --threads`` does).
"""

from __future__ import annotations

import contextlib
import json
import os
import statistics
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

EPOCHS_PER_TASK = 60


@dataclass(frozen=True)
class Condition:
    label: str
    threads: int
    policy: str  # default | passive | auto
    busy: bool


CONDITIONS = (
    Condition("alone, 2 threads, OpenMP default (the old single-run default)", 2, "default",
              False),
    Condition("alone, 1 thread (the default now)", 1, "default", False),
    Condition("alone, --threads 2 (clbench's wait policy)", 2, "auto", False),
    Condition("busy, 2 threads, OpenMP default (the old single-run default)", 2, "default",
              True),
    Condition("busy, --threads 2 (clbench's wait policy)", 2, "auto", True),
    Condition("busy, 1 thread (the default now)", 1, "default", True),
)


@contextlib.contextmanager
def busy_processes(n: int) -> Iterator[None]:
    procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]
    try:
        yield
    finally:
        for p in procs:
            p.kill()
        for p in procs:
            p.wait()


def measure(cond: Condition, data_root: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY",
                                                           "OMP_NUM_THREADS")}
    with busy_processes(2 if cond.busy else 0):
        out = subprocess.run([sys.executable, __file__, "--child", str(cond.threads),
                              cond.policy, str(data_root)], env=env, capture_output=True,
                             text=True, check=True, timeout=1800)
    return json.loads(out.stdout.strip().splitlines()[-1])


def run_conditions(data_root: Path, rounds: int) -> dict[Condition, list[dict]]:
    """Every condition once per round, the order rotated from round to round."""
    results: dict[Condition, list[dict]] = {c: [] for c in CONDITIONS}
    for r in range(rounds):
        order = CONDITIONS[r % len(CONDITIONS):] + CONDITIONS[:r % len(CONDITIONS)]
        for cond in order:
            results[cond].append(measure(cond, data_root))
            print(f"    round {r + 1}: {cond.label}: {results[cond][-1]['train_seconds']:.2f} s"
                  f" (OMP_WAIT_POLICY={results[cond][-1]['policy']})", flush=True)
    return results


def median_seconds(runs: list[dict]) -> float:
    return statistics.median(r["train_seconds"] for r in runs)


def child(threads: int, policy: str, data_root: str) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from clbench.threads import WAIT_ENV, configure_openmp

    if policy == "passive":
        os.environ[WAIT_ENV] = "PASSIVE"
    elif policy == "auto":
        configure_openmp(threads)
    from clbench.experiment import run_experiment  # torch loads here

    result = run_experiment(method="finetune", dataset="cora", seed=0, data_dir=data_root,
                            threads=threads, num_tasks=3, classes_per_task=2,
                            params={"epochs": EPOCHS_PER_TASK, "patience": 1000})
    epochs = result["timing"]["task_epochs"]
    assert epochs == [EPOCHS_PER_TASK] * 3, epochs
    print(json.dumps({"train_seconds": sum(result["timing"]["task_train_seconds"]),
                      "epochs": sum(epochs), "policy": os.environ.get(WAIT_ENV, "default"),
                      "AP": result["metrics"]["AP"]}))


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--child":
        child(int(sys.argv[2]), sys.argv[3], sys.argv[4])
    else:
        raise SystemExit(__doc__)
