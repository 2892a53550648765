"""Regression guard of the Class-IL table: today's code reruns its committed runs.

``results/compare-cora-citeseer-class.md`` is written from the run records of
``sweeps/cora-citeseer-class.toml`` (``results/sweeps/runs/cora-citeseer-class-*/``). Two
of them are re-run here, seed 0 on the real Cora in the configuration the sweep selected
(the one run on every final seed), and must give the committed record bit for bit:

* finetune, the shared Class-IL loop (candidates = every class seen so far, the
  cross-entropy over them, the evaluation without task identity);
* PI-GNN, a method with its own Class-IL trainer (BeGin's ``NCClassILPIGNNTrainer``).

A run's numbers are a pure function of its spec at one torch thread, so any difference is
a change to the setting, the loop, the method, the scenario or the split, and such a
change must come with re-run records. The spec is read from the record, never copied
here.
"""

from __future__ import annotations

import pytest
from reproduction import rerun
from reproduction import selected_record as committed


def selected_record(method: str, dataset: str = "cora", seed: int = 0) -> dict:
    """The committed Class-IL record of ``method``'s selected configuration."""
    return committed("cora-citeseer-class-*", method, dataset, seed)


@pytest.mark.parametrize("method", ["finetune", "pignn"])
def test_selected_record_is_a_class_il_run_at_begins_protocol(method):
    """What the guard re-runs is what it says: Class-IL, one thread, BeGin's protocol."""
    record = selected_record(method)
    spec = record["spec"]
    assert (spec["method"], spec["dataset"], spec["seed"]) == (method, "cora", 0)
    assert spec["setting"] == "class" and spec["threads"] == 1
    assert record["protocol"]["loss_weights"] == "none"
    assert record["config"]["layers"] == 3 and record["config"]["epochs"] == 1000
    # Class-IL: a task not seen yet is no candidate, so it scores exactly 0
    assert record["R_test"][0][1:] == [0.0, 0.0]


@pytest.mark.slow
@pytest.mark.parametrize("method", ["finetune", "pignn"])
def test_class_il_run_reruns_its_committed_record_bit_for_bit(method, cora_root):
    record = selected_record(method)
    result = rerun(record, cora_root, "Class-IL")
    assert result["R_val"] == record["R_val"]
    assert result["learned_confusion_test"] == record["learned_confusion_test"]
    assert result["own_class_test"] == record["own_class_test"]
    assert result["metrics"] == record["metrics"]
