"""LwF: lamb = 0 is fine-tuning, the target is the frozen model at the task's start,
BeGin's loss form, and the storage it reports."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from datahelpers import method_trainer as make_trainer

import clbench.methods.lwf  # noqa: F401  (registration)
from clbench.errors import ClbenchError
from clbench.experiment import ExperimentSpec, build_scenario, run_experiment, seed_everything
from clbench.scenario import NCScenarioLoader
from clbench.trainer import TrainerCallback

FAST = {"epochs": 30, "hidden": 64}

pytestmark = pytest.mark.usefixtures("one_thread")


def synthetic_scenario(seed: int = 0, num_tasks: int | None = None) -> NCScenarioLoader:
    seed_everything(seed)
    return build_scenario(ExperimentSpec(method="lwf", dataset="synthetic", seed=seed,
                                         num_tasks=num_tasks))


def test_lamb_zero_is_finetune_bit_for_bit() -> None:
    """The targets (an eval-mode forward pass per task) and the zero-weighted term change
    nothing: with dropout and BatchNorm, a teacher pass in train mode would (it draws
    dropout masks and moves the running statistics)."""
    params = {**FAST, "dropout": 0.5}
    lwf = run_experiment(method="lwf", dataset="synthetic", seed=3, num_tasks=4,
                         params={**params, "lamb": 0.0})
    bare = run_experiment(method="finetune", dataset="synthetic", seed=3, num_tasks=4,
                          params=params)
    assert np.array_equal(np.array(lwf["R_test"]), np.array(bare["R_test"]))
    assert np.array_equal(np.array(lwf["R_val"]), np.array(bare["R_val"]))
    assert lwf["timing"]["task_epochs"] == bare["timing"]["task_epochs"]


def test_default_lamb_changes_training() -> None:
    lwf = run_experiment(method="lwf", dataset="synthetic", seed=3, num_tasks=3, params=FAST)
    bare = run_experiment(method="finetune", dataset="synthetic", seed=3, num_tasks=3,
                          params=FAST)
    assert not np.array_equal(np.array(lwf["R_test"]), np.array(bare["R_test"]))


def soft_ce(teacher_logits: torch.Tensor, student_logits: torch.Tensor, T: float) -> float:
    """BeGin's term for one old task, written out: -mean_n sum_c p log q."""
    p = F.softmax(teacher_logits / T, -1)
    return float(-(p * F.log_softmax(student_logits / T, -1)).sum(-1).mean())


class Recorder(TrainerCallback):
    """A copy of the model when each task starts and after every epoch, and each epoch's
    training stats. After the first epoch of tasks >= 1 the weights are shaken, so that
    the live model is far from the one the task started with."""

    def __init__(self) -> None:
        self.start: dict[int, torch.nn.Module] = {}
        self.epochs: dict[int, list[tuple[torch.nn.Module, dict]]] = {}

    def on_task_start(self, trainer, task_id) -> None:
        self.start[task_id] = copy.deepcopy(trainer.model)
        self.epochs[task_id] = []

    def on_epoch_end(self, trainer, task_id, epoch, iter_results) -> None:
        if task_id >= 1 and epoch == 0:
            with torch.no_grad():
                for p in trainer.model.parameters():
                    p.add_(torch.randn_like(p) * 0.5)
        self.epochs[task_id].append((copy.deepcopy(trainer.model),
                                     dict(iter_results["train_stats"])))


def test_target_is_the_frozen_model_at_the_task_start_not_the_live_one() -> None:
    """The logged penalty at every epoch of tasks 1 and 2 is lamb x BeGin's soft
    cross-entropy between the model *as the task started* and the model before the step;
    a target taken from the live model (its own softened outputs) gives other values
    (the weights are shaken after the first epoch, so the two are far apart).

    Without dropout and BatchNorm the training forward pass equals the eval-mode one, so
    the penalty can be recomputed from copies of the model."""
    scenario = synthetic_scenario(1, num_tasks=3)
    lamb, T = 0.5, 1.5
    rec = Recorder()
    trainer, params = make_trainer("lwf", scenario, 1, callbacks=[rec], lamb=lamb, T=T,
                                   dropout=0.0, batch_norm=False, **{**FAST, "epochs": 15})
    trainer.run(params["epochs"])
    classes = scenario.task_classes
    for task in (1, 2):
        batch = scenario.get_task(task).train

        def old_logits(model, k, batch=batch):
            with torch.no_grad():
                return trainer.forward(model.eval(), batch)[batch.nodes][:, classes[k]]

        frozen = rec.start[task]
        before = [frozen] + [m for m, _ in rec.epochs[task][:-1]]
        moved = 0
        for model, (_, stats) in zip(before, rec.epochs[task], strict=True):
            expected = lamb * sum(soft_ce(old_logits(frozen, k), old_logits(model, k), T)
                                  for k in range(task))
            live = lamb * sum(soft_ce(old_logits(model, k), old_logits(model, k), T)
                              for k in range(task))
            assert stats["penalty"] == pytest.approx(expected, rel=1e-4, abs=1e-6)
            moved += abs(expected - live) > 0.1 * expected
        assert moved >= len(before) - 1, moved  # all but the first step (no change yet)
        assert stats["task_loss"] == pytest.approx(stats["loss"] - stats["penalty"])
    # the kept targets are the frozen model's softened outputs (task 2's, two old tasks)
    last = rec.start[2].eval()
    with torch.no_grad():
        logits = trainer.forward(last, batch)[batch.nodes]
    want = torch.stack([F.softmax(logits[:, classes[k]] / T, -1) for k in range(2)], 1)
    torch.testing.assert_close(trainer.training_states["targets"], want)


def test_distillation_is_begins_loss() -> None:
    """The vectorised term equals BeGin's loop: per old task, the -1e12-masked softmax
    of the teacher times the student's log-softmax, masked entries zeroed, summed over
    classes, averaged over nodes, summed over tasks."""
    scenario = synthetic_scenario(0)
    trainer, _ = make_trainer("lwf", scenario, 0, **FAST)
    gen = torch.Generator().manual_seed(0)
    n, C = 17, scenario.num_classes
    teacher, student = (torch.randn(n, C, generator=gen) * 4 for _ in range(2))
    K, T = 3, trainer.T
    classes = scenario.task_classes
    begin = torch.zeros(())
    for tid in range(K):
        observed = torch.zeros(C, dtype=torch.bool)
        observed[classes[tid]] = True
        masked_t, masked_s = teacher.clone(), student.clone()
        masked_t[:, ~observed] = -1e12
        masked_s[:, ~observed] = -1e12
        term = F.softmax(masked_t / T, -1) * F.log_softmax(masked_s / T, -1)
        term[..., ~observed] = 0.0
        begin = begin - term.sum(-1).mean()
    targets = F.softmax(teacher[:, classes[:K]] / T, -1)
    ours = trainer.distillation(student[:, classes[:K]], targets)
    torch.testing.assert_close(ours, begin)


def test_storage_is_the_last_tasks_targets() -> None:
    scenario = synthetic_scenario(0)
    trainer, params = make_trainer("lwf", scenario, 0, **{**FAST, "epochs": 5})
    out = trainer.run(params["epochs"])
    T, c = scenario.num_tasks, scenario.classes_per_task
    n = len(scenario.get_task(T - 1).train)
    assert trainer.training_states["targets"].shape == (n, T - 1, c)
    assert out.extra_storage_bytes == n * (T - 1) * c * 4 + n * 8


def test_invalid_params() -> None:
    scenario = synthetic_scenario(0)
    with pytest.raises(ClbenchError):
        make_trainer("lwf", scenario, 0, lamb=-1.0)
    with pytest.raises(ClbenchError):
        make_trainer("lwf", scenario, 0, T=0.0)
