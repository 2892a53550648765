"""The per-task regularisation strength: penalty / task loss at the end of each task, for
every method that puts its weighted term in ``results["penalty"]``."""

from __future__ import annotations

import pytest
import torch
from datahelpers import method_trainer

import clbench.methods.ewc  # noqa: F401  (registration)
from clbench import NCTrainer, register_method
from clbench.experiment import ExperimentSpec, build_scenario, run_experiment, seed_everything
from clbench.methods import METHODS
from clbench.tracking import result_metrics
from clbench.trainer import TrainerCallback

pytestmark = pytest.mark.usefixtures("one_thread")
FAST = {"epochs": 10, "hidden": 32}


class LastStats(TrainerCallback):
    def __init__(self) -> None:
        self.last: dict[int, dict] = {}

    def on_epoch_end(self, trainer, task_id, epoch, results) -> None:
        self.last[task_id] = results["train_stats"]


def test_the_ratio_is_the_last_epochs_penalty_over_task_loss() -> None:
    seed_everything(0)
    scenario = build_scenario(ExperimentSpec(method="ewc", dataset="synthetic", seed=0))
    stats = LastStats()
    trainer, params = method_trainer("ewc", scenario, 0, callbacks=[stats], **FAST)
    out = trainer.run(params["epochs"])
    assert out.task_penalty_ratio[0] is None  # no past task, no penalty
    for t in range(1, scenario.num_tasks):
        s = stats.last[t]
        assert s["penalty"] > 0
        assert out.task_penalty_ratio[t] == s["penalty"] / s["task_loss"]


def test_every_method_with_a_penalty_gets_it_in_json_and_mlflow_metrics() -> None:
    """Generic: a method of one's own that puts a term in results["penalty"] gets the
    ratio; one without a penalty gets None."""
    with METHODS.scoped():
        @register_method("constant-penalty")
        class ConstantPenalty(NCTrainer):
            card = {"params": {"weight": 0.5}}

            def afterInference(self, results, model, optimizer, batch, states):
                results["penalty"] = torch.tensor(self.hparams["weight"])
                results["loss"] = results["loss"] + results["penalty"]
                return super().afterInference(results, model, optimizer, batch, states)

        own = run_experiment(method="constant-penalty", dataset="synthetic", seed=0,
                             num_tasks=2, params=FAST)
    bare = run_experiment(method="finetune", dataset="synthetic", seed=0, num_tasks=2,
                          params=FAST)
    assert bare["task_penalty_ratio"] == [None, None]
    ratios = own["task_penalty_ratio"]
    assert all(r is not None and r > 0 for r in ratios), ratios
    logged = [(s, v) for k, v, s in result_metrics(own) if k == "train/penalty_ratio"]
    assert logged == list(enumerate(ratios))
    assert not [k for k, _, _ in result_metrics(bare) if k == "train/penalty_ratio"]
