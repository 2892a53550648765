"""Helpers of the regression guards that re-run committed sweep records bit for bit
(``test_task_il_reproduction.py``, ``test_class_il_reproduction.py``).

A run's numbers are a pure function of its spec at one torch thread, so a guard reads the
spec from the record (never copies it) and requires today's run to give the record."""

from __future__ import annotations

import json
from pathlib import Path

RUNS = Path(__file__).resolve().parents[1] / "results" / "sweeps" / "runs"
LAST_FINAL_SEED = 9000  # only the selected configuration runs on the final seeds


def selected_record(folder: str, method: str, dataset: str = "cora", seed: int = 0) -> dict:
    """The committed record of ``method``'s selected configuration in the experiment
    folder(s) matching the glob ``folder``: the configuration run on the last final seed."""
    finals = sorted(RUNS.glob(f"{folder}/{method}__{dataset}__*__seed{LAST_FINAL_SEED}.json"))
    assert len(finals) == 1, f"expected one selected configuration, found {finals}"
    config_hash = finals[0].name.split("__")[2]
    path = finals[0].with_name(f"{method}__{dataset}__{config_hash}__seed{seed}.json")
    return json.loads(path.read_text())


def rerun(record: dict, data_root: Path, setting: str) -> dict:
    """Run ``record``'s spec again on the data under ``data_root``; its configuration and
    R_test must be the record's (the caller checks the rest)."""
    from clbench.experiment import run_experiment
    from clbench.resolve import resolve_record

    result = run_experiment(resolve_record(record["spec"], data_dir=str(data_root)))
    spec = record["spec"]
    assert result["config"] == record["config"]
    assert result["R_test"] == record["R_test"], (
        f"{spec['method']} on {spec['dataset']} ({setting}, seed {spec['seed']}) no longer "
        f"reproduces its committed record: AP {result['metrics']['AP']:.6f} vs "
        f"{record['metrics']['AP']:.6f}")
    return result
