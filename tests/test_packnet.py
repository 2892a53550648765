"""PackNet: zero forgetting by construction, bit-exact frozen weights, cheap evaluation."""

from __future__ import annotations

import math

import pytest
import torch
from datahelpers import check_zero_forgetting, method_trainer

import clbench.methods.packnet  # noqa: F401  (registration)
from clbench.experiment import ExperimentSpec, build_scenario, seed_everything
from clbench.methods.packnet import NCTaskILPackNetTrainer, begin_keep_ratio
from clbench.models import batchnorm_modules
from clbench.scenario import NCScenarioLoader
from clbench.trainer import TrainerCallback

FAST = {"epochs": 30, "hidden": 64}


#: The synthetic graphs are tiny: one intra-op thread per test (conftest.py); the
#: real-Cora test asks for two.
pytestmark = pytest.mark.usefixtures("one_thread")


def make_trainer(scenario: NCScenarioLoader, seed: int, callbacks=(), **overrides
                 ) -> tuple[NCTaskILPackNetTrainer, dict]:
    """Build the trainer the way :func:`clbench.experiment.run_experiment` does."""
    return method_trainer("packnet", scenario, seed, callbacks=callbacks, **overrides)


def synthetic_scenario(seed: int = 0) -> NCScenarioLoader:
    seed_everything(seed)
    return build_scenario(ExperimentSpec(method="packnet", dataset="synthetic", seed=seed))


class Snapshots(TrainerCallback):
    """The model's state and the owner ids after every task."""

    def __init__(self) -> None:
        self.states: list[dict[str, torch.Tensor]] = []
        self.owners: list[dict[str, torch.Tensor]] = []

    def on_task_end(self, trainer, task_id, test_row) -> None:
        self.states.append({k: v.detach().clone() for k, v in trainer.model.state_dict().items()})
        self.owners.append({k: v.clone() for k, v in trainer.training_states["owners"].items()})


@pytest.mark.parametrize("weight_decay", [0.0, 0.01])
def test_zero_forgetting_and_bit_identical_frozen_parameters(weight_decay: float) -> None:
    scenario = synthetic_scenario(0)
    snaps = Snapshots()
    trainer, params = make_trainer(scenario, 0, [snaps], weight_decay=weight_decay, **FAST)
    out = trainer.run(params["epochs"])
    T = scenario.num_tasks
    check_zero_forgetting(out.R_test)
    check_zero_forgetting(out.R_val)
    assert out.R_test[-1].mean() > 0.7  # well above chance (0.5)

    final, owners = snaps.states[-1], snaps.owners[-1]
    model = trainer.model
    masked = model.backbone_weight_names()
    assert set(owners) == set(masked) and masked
    for t in range(T - 1):
        state, own_t = snaps.states[t], snaps.owners[t]
        for name in masked:
            # ownership of tasks <= t never changes; the rest was free after task t
            mine = own_t[name] <= t
            assert torch.equal(owners[name][mine], own_t[name][mine])
            assert (own_t[name][~mine] == trainer.free).all()
            # owned weights are bit-identical; pruned free weights were zero
            assert torch.equal(final[name][mine], state[name][mine])
            assert (state[name][~mine] == 0).all()
        # this task's classifier rows and bias entries
        rows = scenario.task_classes[t]
        for key in ("classifier.weight", "classifier.bias"):
            assert torch.equal(final[key][rows], state[key][rows])
    # everything outside the masked matrices and the head: frozen after the first task
    after_first = snaps.states[0]
    shared = [k for k in final if k.startswith("convs.") and k not in masked]
    bn = [k for k in final if k.startswith("norms.")]
    assert shared and any(k.endswith("running_mean") for k in bn)
    for key in shared + bn:
        assert torch.equal(final[key], after_first[key]), key
    # the last task took every remaining weight
    for name in masked:
        assert (owners[name] < T).all()
    assert all(not bn_.training for bn_ in batchnorm_modules(model))


def test_pruning_shares_follow_begin() -> None:
    assert begin_keep_ratio(1) == 1.0
    assert math.isclose(begin_keep_ratio(2), 0.5)
    assert math.isclose(begin_keep_ratio(3), 1 - 3 ** -0.5)
    scenario = synthetic_scenario(1)
    trainer, params = make_trainer(scenario, 1, **{**FAST, "epochs": 8})
    trainer.run(params["epochs"])
    T, k = scenario.num_tasks, begin_keep_ratio(scenario.num_tasks)
    for name, owner in trainer.training_states["owners"].items():
        assert owner.dtype == torch.int8
        free = owner.numel()
        for t in range(T):
            n_t = int((owner == t).sum())
            expected = free if t == T - 1 else int(free * k + 0.5)
            assert n_t == expected, (name, t)
            free -= n_t
        # the last task ends up with about 1/T of the weights, like every other task
        assert abs(int((owner == T - 1).sum()) / owner.numel() - 1 / T) < 0.02


def test_keep_ratio_override() -> None:
    scenario = synthetic_scenario(0)
    trainer, params = make_trainer(scenario, 0, keep_ratio=0.5, **{**FAST, "epochs": 8})
    out = trainer.run(params["epochs"])
    check_zero_forgetting(out.R_test)
    owner = trainer.training_states["owners"][trainer.model.backbone_weight_names()[0]]
    assert int((owner == 0).sum()) == int(owner.numel() * 0.5 + 0.5)
    assert int((owner == 1).sum()) == int((owner.numel() - int((owner == 0).sum())) * 0.5 + 0.5)


def test_evaluation_costs_one_forward_per_task_view() -> None:
    scenario = synthetic_scenario(0)
    trainer, params = make_trainer(scenario, 0, **{**FAST, "epochs": 6})
    calls: list[int] = []
    trainer.model.register_forward_hook(lambda *_: calls.append(1))
    counts: list[tuple[int, int]] = []
    evaluate = trainer._evaluate

    def counting_evaluate(splits, eval_fn=None, **kw):  # kw: learned (the check's matrix)
        before = len(calls)
        scores = evaluate(splits, eval_fn, **kw)
        counts.append((trainer.curr_task, len(calls) - before))
        return scores

    trainer._evaluate = counting_evaluate
    trainer.run(params["epochs"])
    T = scenario.num_tasks
    after_tasks = [c for c in counts if c[0] >= 0]
    assert len(after_tasks) == T  # val and test together after every task
    for task, n in after_tasks:
        assert n == task + 1, (task, n)  # one per task view, both splits in the batch
    assert all(n == 1 for task, n in counts if task < 0)


def test_each_phase_has_its_own_task_state() -> None:
    """Phase ``train`` and phase ``retrain`` each get a fresh scheduler and best-weights
    tracking (the loop's TaskState); the training states hold PackNet's own keys only."""
    scenario = synthetic_scenario(0)
    trainer, params = make_trainer(scenario, 0, **{**FAST, "epochs": 10})
    model, opt = trainer.model, trainer.optimizer
    states = trainer.training_states = trainer.initTrainingStates(scenario, model, opt)
    trainer.curr_task = 0
    trainer.epoch_per_task = params["epochs"]
    data = scenario.get_task(0)
    trainer.processBeforeTraining(0, data, model, opt, states)
    assert states["phase"] == "train" and states["train_epochs"] == 1
    first = trainer.task_state
    assert first.task_id == 0 and first.best_weights is None
    go_on = trainer.processAfterEachIteration(model, opt, states, {
        "val_stats": {"loss": 1.0}, "train_stats": {}, "val_metric": 0.5})
    assert go_on and states["phase"] == "retrain"  # pruned at the phase's best weights
    assert trainer.task_state is not first and trainer.task_state.best_weights is None
    assert trainer.task_state.scheduler is not first.scheduler
    assert set(states) == {"owners", "keep", "phase", "phase_epoch", "train_epochs"}


def test_extra_storage_is_the_owner_ids() -> None:
    scenario = synthetic_scenario(0)
    trainer, params = make_trainer(scenario, 0, **{**FAST, "epochs": 4})
    out = trainer.run(params["epochs"])
    model = dict(trainer.model.named_parameters())
    n_masked = sum(model[n].numel() for n in trainer.model.backbone_weight_names())
    assert out.extra_storage_bytes == n_masked  # one int8 owner id per masked weight
    assert sum(o.numel() for o in trainer.training_states["owners"].values()) == n_masked
    # enough to hold ceil(log2(T + 1)) bits per weight, never a float per weight
    need_bits = math.ceil(math.log2(scenario.num_tasks + 1))
    assert n_masked * need_bits / 8 <= out.extra_storage_bytes < 4 * n_masked


def test_run_experiment_reports_zero_forgetting() -> None:
    res = clbench_run("packnet", seed=2, params={**FAST, "epochs": 20})
    assert res["metrics"]["AF"] == 0.0
    assert res["extra_storage_bytes"] > 0


def test_invalid_params() -> None:
    from clbench.errors import ClbenchError

    scenario = synthetic_scenario(0)
    with pytest.raises(ClbenchError):
        make_trainer(scenario, 0, keep_ratio=1.5, **FAST)
    with pytest.raises(ClbenchError):
        make_trainer(scenario, 0, train_ratio=1.0, **FAST)


def clbench_run(method: str, **kwargs):
    from clbench.experiment import run_experiment

    return run_experiment(method=method, dataset="synthetic", **kwargs)


# ---------------------------------------------------------------------- real Cora
@pytest.mark.slow
def test_cora_zero_forgetting(cora_graph) -> None:
    torch.set_num_threads(2)  # a real graph: both cores (the fixture restores the count)
    scenario = NCScenarioLoader(cora_graph, 3, 2, seed=0)
    snaps = Snapshots()
    trainer, params = make_trainer(scenario, 0, [snaps], weight_decay=5e-4)
    out = trainer.run(params["epochs"])
    check_zero_forgetting(out.R_test)
    check_zero_forgetting(out.R_val)
    assert out.R_test[-1].mean() > 0.75
    final = snaps.states[-1]
    for t in range(scenario.num_tasks - 1):
        for name, owner in snaps.owners[t].items():
            mine = owner <= t
            assert torch.equal(final[name][mine], snaps.states[t][name][mine])
    for key in (k for k in final if k.startswith("norms.")):
        assert torch.equal(final[key], snaps.states[0][key])
