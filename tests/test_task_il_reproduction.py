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

import pytest
from reproduction import rerun
from reproduction import selected_record as committed

METHODS = ["hat", "cat", "lwf"]


def selected_record(method: str, dataset: str = "cora", seed: int = 0) -> dict:
    """The committed Task-IL record of ``method``'s selected configuration."""
    return committed("cora-citeseer-????????", method, dataset, seed)


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
    record = selected_record(method)
    result = rerun(record, cora_root, "Task-IL")
    assert result["R_val"] == record["R_val"]
    assert result["timing"]["task_epochs"] == record["timing"]["task_epochs"]
    assert result["learned_confusion_test"] == record["learned_confusion_test"]
    assert result["metrics"] == record["metrics"]
