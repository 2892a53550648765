"""HAT: past tasks' outputs unchanged bit for bit, binary masks at evaluation, the
regulariser's effect, the storage it reports."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from datahelpers import check_zero_forgetting, method_trainer

import clbench.methods.hat  # noqa: F401  (registration)
from clbench.degenerate import majority_baseline
from clbench.errors import ClbenchError
from clbench.experiment import ExperimentSpec, build_scenario, run_experiment, seed_everything
from clbench.methods.hat import NCTaskILHATTrainer
from clbench.scenario import NCScenarioLoader
from clbench.trainer import TrainerCallback

FAST = {"epochs": 30, "hidden": 64}

pytestmark = pytest.mark.usefixtures("one_thread")


def synthetic_scenario(seed: int = 0) -> NCScenarioLoader:
    seed_everything(seed)
    return build_scenario(ExperimentSpec(method="hat", dataset="synthetic", seed=seed))


def make_trainer(scenario: NCScenarioLoader, seed: int, callbacks=(), **overrides
                 ) -> tuple[NCTaskILHATTrainer, dict]:
    return method_trainer("hat", scenario, seed, callbacks=callbacks, **overrides)


@torch.no_grad()
def task_logits(trainer: NCTaskILHATTrainer, task_id: int) -> torch.Tensor:
    """Every node's logits of task ``task_id``'s classes, as the task is evaluated."""
    trainer.model.eval()
    batch = trainer.scenario.get_task(task_id).test
    gates, buffers = trainer.eval_view(task_id, trainer.training_states)
    logits = trainer.gated_forward(trainer.model, batch, gates, buffers)
    return logits[:, trainer.scenario.task_classes[task_id]].clone()


class Record(TrainerCallback):
    """After every task: its logits (as evaluated), the embeddings; every epoch's stats."""

    def __init__(self) -> None:
        self.logits: list[torch.Tensor] = []
        self.embeddings: list[list[torch.Tensor]] = []
        self.train_stats: list[dict] = []

    def on_task_end(self, trainer, task_id, test_row) -> None:
        self.logits.append(task_logits(trainer, task_id))
        self.embeddings.append([e.detach().clone() for e in trainer.training_states["embeddings"]])

    def on_epoch_end(self, trainer, task_id, epoch, results) -> None:
        self.train_stats.append(results["train_stats"])


@pytest.mark.parametrize("weight_decay", [0.0, 0.01])
def test_later_tasks_leave_past_outputs_bit_identical(weight_decay: float) -> None:
    """Weight decay and Adam's state would move a weight with zero gradient, BatchNorm's
    running statistics would follow later tasks: none of them changes a past output."""
    scenario = synthetic_scenario(0)
    rec = Record()
    trainer, params = make_trainer(scenario, 0, [rec], weight_decay=weight_decay, **FAST)
    out = trainer.run(params["epochs"])
    check_zero_forgetting(out.R_test)
    check_zero_forgetting(out.R_val)
    assert out.R_test[-1].mean() > 0.7  # well above chance (0.5)
    for t in range(scenario.num_tasks - 1):
        assert torch.equal(task_logits(trainer, t), rec.logits[t]), t
    # later tasks did train units and weights: the network is not simply frozen
    used = trainer.training_states["used"]
    first = trainer.training_states["masks"][0]
    assert all(bool((u & ~m).any()) for u, m in zip(used, first, strict=True))


def test_af_is_exactly_zero_on_every_seed() -> None:
    for seed in (0, 1, 2):
        res = run_experiment(method="hat", dataset="synthetic", seed=seed,
                             params={**FAST, "epochs": 12})
        assert res["metrics"]["AF"] == 0.0, seed
        check_zero_forgetting(np.array(res["R_test"]))


def test_masks_are_binary_at_evaluation_and_soft_while_training() -> None:
    scenario = synthetic_scenario(1)
    rec = Record()
    trainer, params = make_trainer(scenario, 1, [rec], **FAST)
    seen: list[tuple[bool, list[torch.Tensor]]] = []
    forward = trainer.gated_forward

    def recording(model, batch, gates, buffers=None):
        seen.append((model.training, [g.detach().clone() for g in gates]))
        return forward(model, batch, gates, buffers)

    trainer.gated_forward = recording
    trainer.run(params["epochs"])
    evals = [g for training, gs in seen if not training for g in gs]
    trains = [g for training, gs in seen if training for g in gs]
    assert evals and trains
    for g in evals:
        assert bool(((g == 0) | (g == 1)).all())
    # the first training step uses s = 1/smax (every gate near 0.5), not a binary mask
    assert all(bool(((g > 0.4) & (g < 0.6)).all()) for g in seen[0][1]) and seen[0][0]
    # each stored mask is the gate at s = smax, thresholded at 0.5, of the task's
    # embedding at its end
    smax = trainer.smax
    for t, masks in enumerate(trainer.training_states["masks"]):
        for layer, m in enumerate(masks):
            e = rec.embeddings[t][layer][t]
            assert torch.equal(m, torch.sigmoid(smax * e) > 0.5)
            assert m.dtype == torch.bool and 0 < int(m.sum()) < m.numel()


def test_s_is_annealed_from_one_over_smax_to_smax() -> None:
    trainer, _ = make_trainer(synthetic_scenario(0), 0, smax=400.0, anneal_epochs=50, **FAST)
    trainer.epoch_per_task = 1000
    assert trainer.anneal(0) == pytest.approx(1 / 400)
    assert trainer.anneal(49) == pytest.approx(400.0)
    assert trainer.anneal(500) == 400.0
    assert trainer.anneal(1) == pytest.approx(1 / 400 + (400 - 1 / 400) / 49)
    trainer.epoch_per_task = 11  # a shorter budget: annealed over it
    assert trainer.anneal(10) == pytest.approx(400.0)
    assert trainer.anneal(5) == pytest.approx(1 / 400 + (400 - 1 / 400) / 2)


def test_embedding_gradient_is_compensated_for_the_gate_temperature() -> None:
    """HAT's gradient compensation (the paper's code): before the embeddings' step their
    gradient is multiplied by ``smax / s * (cosh(clamp(s e, +-50)) + 1) / (cosh(e) + 1)``,
    at the step's ``s``. Checked on steps of task 1 against the raw gradient that
    backward computed (a hook on each embedding) and the embeddings before the step."""
    scenario = synthetic_scenario(0)
    trainer, params = make_trainer(scenario, 0, **{**FAST, "epochs": 6})
    seen: list[tuple] = []
    original = trainer.processTrainIteration

    def step(model, optimizer, batch, states):
        if trainer.curr_task != 1 or len(seen) >= 3:
            return original(model, optimizer, batch, states)
        raw: dict[int, torch.Tensor] = {}
        before: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        embeddings = states["embeddings"]
        handles = [e.register_hook(lambda g, i=i: raw.__setitem__(i, g.detach().clone()))
                   for i, e in enumerate(embeddings)]

        def pre_step(opt, args, kwargs):
            for i, e in enumerate(embeddings):
                before[i] = (e.detach().clone(), e.grad.detach().clone())

        handles.append(states["emb_optimizer"].register_step_pre_hook(pre_step))
        s = trainer.anneal(states["epoch"])
        try:
            out = original(model, optimizer, batch, states)
        finally:
            for h in handles:
                h.remove()
        seen.append((s, raw, before))
        return out

    trainer.processTrainIteration = step
    trainer.run(params["epochs"])
    assert len(seen) == 3
    smax = trainer.smax
    for s, raw, before in seen:
        assert s < smax and raw and raw.keys() == before.keys()
        for i, g in raw.items():
            e, compensated = before[i]
            factor = smax / s * (torch.cosh(torch.clamp(s * e, -50, 50)) + 1) / (torch.cosh(e) + 1)
            assert (g != 0).any()
            torch.testing.assert_close(compensated, g * factor)
            assert not torch.allclose(compensated, g)  # the factor is not 1 here


def units_taken(lamb: float) -> tuple[float, float, list[float]]:
    """(share of units task 0 takes, share of the units free after task 0 that task 1
    takes, the penalties of every epoch)."""
    scenario = synthetic_scenario(0)
    rec = Record()
    trainer, params = make_trainer(scenario, 0, [rec], lamb=lamb, **FAST)
    trainer.run(params["epochs"])
    m0, m1 = trainer.training_states["masks"][:2]
    first = sum(int(m.sum()) for m in m0) / sum(m.numel() for m in m0)
    new = sum(int((b & ~a).sum()) for a, b in zip(m0, m1, strict=True))
    free = sum(int((~a).sum()) for a in m0)
    return first, new / free, [s["penalty"] for s in rec.train_stats]


def test_regulariser_off_at_zero_and_shrinks_what_a_task_takes() -> None:
    first0, later0, penalties0 = units_taken(0.0)
    assert penalties0 and all(p == 0.0 for p in penalties0)
    first, later, penalties = units_taken(0.75)
    assert all(p > 0 for p in penalties)
    # same seed, same initial embeddings: the regulariser switches units off
    assert first < first0 - 0.05, (first, first0)
    assert later < later0 - 0.05, (later, later0)


def test_extra_storage_is_the_embeddings_masks_and_statistics() -> None:
    scenario = synthetic_scenario(0)
    trainer, params = make_trainer(scenario, 0, **{**FAST, "epochs": 4})
    out = trainer.run(params["epochs"])
    T, L, H = scenario.num_tasks, len(trainer.model.convs), trainer.model.n_hidden
    embeddings = T * L * H * 4  # float32
    masks = T * L * H + L * H  # one bool per unit per task, and their union
    bn = T * L * 2 * H * 4  # running mean and variance per task
    assert out.extra_storage_bytes == embeddings + masks + bn
    assert len(trainer.training_states["bn_stats"]) == T


def test_refuses_gat_and_class_il() -> None:
    scenario = synthetic_scenario(0)
    with pytest.raises(ClbenchError, match="runs only on --model gcn/sage, not gat"):
        make_trainer(scenario, 0, model="gat", **FAST)
    trainer, _ = make_trainer(scenario, 0, model="sage", **FAST)  # unit-wise: accepted
    assert trainer.lamb == 0.75 and trainer.smax == 400.0  # BeGin's defaults
    from clbench.resolve import resolve_run

    with pytest.raises(ClbenchError, match="Class-IL"):
        resolve_run("hat", "synthetic", 0, setting="class")


# ---------------------------------------------------------------------- real Cora
@pytest.mark.slow
def test_cora_zero_forgetting_and_every_task_learned(cora_graph) -> None:
    torch.set_num_threads(2)  # a real graph: both cores (the fixture restores the count)
    scenario = NCScenarioLoader(cora_graph, 3, 2, seed=0)
    rec = Record()
    trainer, params = make_trainer(scenario, 0, [rec], weight_decay=5e-4)
    out = trainer.run(params["epochs"])
    check_zero_forgetting(out.R_test)
    for t in range(scenario.num_tasks - 1):
        assert torch.equal(task_logits(trainer, t), rec.logits[t]), t
    majority, _ = majority_baseline(scenario)
    diag = np.diag(out.R_test)
    # no task at its majority class (Cora seed 0's task 1: majority 0.833)
    assert all(d > m + 0.03 for d, m in zip(diag, majority, strict=True)), (diag, majority)
