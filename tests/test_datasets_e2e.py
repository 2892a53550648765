"""Each real dataset runs a short finetune experiment end to end, offline."""

import pytest
from datahelpers import block_network, copy_shared

from clbench.experiment import run_experiment

CASES = {  # dataset -> (tasks, classes per task) from its card
    "cora": (3, 2),
    "citeseer": (3, 2),
    "amazon-computers": (5, 2),
    "coauthor-cs": (7, 2),
}


@pytest.mark.parametrize("name", list(CASES))
def test_finetune_end_to_end_on_real_data(name, tmp_path, monkeypatch):
    copy_shared(name, tmp_path)
    block_network(monkeypatch)
    r = run_experiment(method="finetune", dataset=name, data_dir=str(tmp_path), seed=0,
                       params={"epochs": 20, "hidden": 32, "lr": 0.01})
    T, K = CASES[name]
    assert r["dataset"] == name
    assert (r["scenario"]["num_tasks"], r["scenario"]["classes_per_task"]) == (T, K)
    assert len(r["R_test"]) == T and all(len(row) == T for row in r["R_test"])
    assert all(0.0 <= v <= 1.0 for row in r["R_test"] for v in row)
    assert r["metrics"]["AP"] > 1.0 / K  # above chance after even a few epochs
