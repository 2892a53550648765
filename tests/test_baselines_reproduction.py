"""Regression guard of the continual-learning baselines: today's code reruns committed runs.

The five baselines that BeGin and CGLB share (LwF, MAS, TWP, GEM, ER-GNN) are re-run on
the real Cora under CGLB's protocol (``preset = "cglb"``: 2-layer GCN, 200 epochs per
task, no early stop, one optimizer for the stream, each task on its own subgraph), at
their cards' defaults, seed 0, and must give the committed run record of
``sweeps/cglb-preset.toml`` (``results/sweeps/runs/cglb-preset-*/``, from which
``results/compare-cglb-preset.md`` is written when the sweep is done) bit for bit: the
same accuracy matrices (and confusion matrices, where the record has them).

A run's numbers are a pure function of its spec at one torch thread, so any difference is
a change to the method, the shared loop, the scenario or the data split, and such a change
must come with re-run records. Under CGLB's protocol each run takes 10-25 s, and every
epoch counts (no plateau stop hides a perturbation), so the guard is cheap and sharp.
The spec is read from the record, never copied here.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

RUNS = Path(__file__).resolve().parents[1] / "results" / "sweeps" / "runs"
BASELINES = ("lwf", "mas", "twp", "gem", "ergnn")


def committed_record(method: str, dataset: str = "cora", seed: int = 0) -> dict:
    found = sorted(RUNS.glob(f"cglb-preset-*/{method}__{dataset}__*__seed{seed}.json"))
    assert len(found) == 1, f"expected one committed cglb-preset record, found {found}"
    return json.loads(found[0].read_text())


@pytest.mark.parametrize("method", BASELINES)
def test_committed_record_is_the_cards_default_under_the_cglb_preset(method):
    """What the guard re-runs is what it says: the card's defaults, CGLB's protocol."""
    from clbench.cards import read_card

    record = committed_record(method)
    spec = record["spec"]
    assert (spec["method"], spec["dataset"], spec["seed"]) == (method, "cora", 0)
    assert record["preset"] == "cglb" and spec["graph"] == "task" and spec["threads"] == 1
    assert record["config"]["layers"] == 2 and record["config"]["epochs"] == 200
    assert record["config"]["optimizer_state"] == "keep"  # CGLB's one optimizer
    own = {k: v for k, v in read_card(method).defaults(dataset="cora").items()
           if k not in record["protocol"]}  # the method's own, not the preset's
    assert own, method
    for key, value in own.items():
        assert record["config"][key] == value, (method, key)


@pytest.mark.slow
@pytest.mark.parametrize("method", BASELINES)
def test_baseline_reruns_its_committed_record_bit_for_bit(method, cora_root):
    from clbench.experiment import run_experiment
    from clbench.resolve import resolve_record

    record = committed_record(method)
    spec = resolve_record(record["spec"], data_dir=str(cora_root))
    result = run_experiment(spec)
    assert result["config"] == record["config"]
    assert result["R_test"] == record["R_test"], (
        f"{method} on Cora (cglb preset, seed 0) no longer reproduces its committed record: "
        f"AP {result['metrics']['AP']:.6f} vs {record['metrics']['AP']:.6f}; "
        f"R_test {result['R_test']} vs {record['R_test']}")
    assert result["R_val"] == record["R_val"]
    if "learned_confusion_test" in record:  # records made before the balanced check
        assert result["learned_confusion_test"] == record["learned_confusion_test"]
    assert result["metrics"] == record["metrics"]
