"""Regression guard of the Task-IL table of all 14 methods: today's code reruns its runs.

``results/compare-cora-citeseer.md`` is written from the run records of
``sweeps/cora-citeseer.toml`` (``results/sweeps/runs/cora-citeseer-*/``). Three of the
methods added to it after the first table are re-run here, seed 0 on the real Cora in the
configuration the sweep selected (the one run on every final seed), and must give the
committed record bit for bit:

* HAT, a parameter-isolation method with its own masks and gradient compensation;
* CaT, whose memory is condensed under randomly drawn encoders and which trains on the
  memory only;
* LwF, a regulariser with a frozen copy of the model.

(``tests/test_reproduction.py`` guards finetune and Piggyback in the same protocol,
``tests/test_baselines_reproduction.py`` the five baselines under the cglb preset.) A
run's numbers are a pure function of its spec at one torch thread, so any difference is a
change to the loop, the method, the scenario or the split, and such a change must come
with re-run records. The spec is read from the record, never copied here.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

RUNS = Path(__file__).resolve().parents[1] / "results" / "sweeps" / "runs"
LAST_FINAL_SEED = 9000  # only the selected configuration runs on the final seeds
METHODS = ["hat", "cat", "lwf"]


def selected_record(method: str, dataset: str = "cora", seed: int = 0) -> dict:
    """The committed Task-IL record of ``method``'s selected configuration."""
    finals = sorted(RUNS.glob(f"cora-citeseer-????????/{method}__{dataset}__*"
                              f"__seed{LAST_FINAL_SEED}.json"))
    assert len(finals) == 1, f"expected one selected configuration, found {finals}"
    config_hash = finals[0].name.split("__")[2]
    path = finals[0].with_name(f"{method}__{dataset}__{config_hash}__seed{seed}.json")
    return json.loads(path.read_text())


@pytest.mark.parametrize("method", METHODS)
def test_selected_record_is_a_task_il_run_at_begins_protocol(method):
    """What the guard re-runs is what it says: Task-IL, one thread, BeGin's protocol."""
    record = selected_record(method)
    spec = record["spec"]
    assert (spec["method"], spec["dataset"], spec["seed"]) == (method, "cora", 0)
    assert spec.get("setting", "task") == "task" and spec["threads"] == 1
    assert record["protocol"]["schedule"] == "plateau"
    assert record["config"]["layers"] == 3 and record["config"]["epochs"] == 1000
    assert len(record["R_test"]) == 3  # 3 tasks x 2 classes


@pytest.mark.slow
@pytest.mark.parametrize("method", METHODS)
def test_task_il_run_reruns_its_committed_record_bit_for_bit(method, cora_root):
    from clbench.experiment import run_experiment
    from clbench.resolve import resolve_record

    record = selected_record(method)
    result = run_experiment(resolve_record(record["spec"], data_dir=str(cora_root)))
    assert result["config"] == record["config"]
    assert result["R_test"] == record["R_test"], (
        f"{method} on Cora (Task-IL, seed 0) no longer reproduces its committed record: "
        f"AP {result['metrics']['AP']:.6f} vs {record['metrics']['AP']:.6f}")
    assert result["R_val"] == record["R_val"]
    assert result["timing"]["task_epochs"] == record["timing"]["task_epochs"]
    assert result["learned_confusion_test"] == record["learned_confusion_test"]
    assert result["metrics"] == record["metrics"]
