"""MAS: lamb = 0 is fine-tuning, the importance uses no labels, it is summed over tasks,
and the penalty pulls the weights back towards the old ones."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from datahelpers import method_trainer as make_trainer

import clbench.methods.mas  # noqa: F401  (registration)
from clbench.errors import ClbenchError
from clbench.experiment import ExperimentSpec, build_scenario, run_experiment, seed_everything
from clbench.scenario import NCScenarioLoader, NodeBatch
from clbench.trainer import TrainerCallback

FAST = {"epochs": 30, "hidden": 64}

pytestmark = pytest.mark.usefixtures("one_thread")


def synthetic_scenario(seed: int = 0) -> NCScenarioLoader:
    seed_everything(seed)
    return build_scenario(ExperimentSpec(method="mas", dataset="synthetic", seed=seed))


@pytest.mark.parametrize(("importance", "num_tasks"), [("batch", 5), ("node", 2)])
def test_lamb_zero_is_finetune_bit_for_bit(importance: str, num_tasks: int) -> None:
    """Computing importances and the (zero-weighted) penalty changes nothing else."""
    params = {**FAST, "dropout": 0.5}  # the importance pass must not draw dropout masks
    mas = run_experiment(method="mas", dataset="synthetic", seed=3, num_tasks=num_tasks,
                         params={**params, "lamb": 0.0, "importance": importance})
    bare = run_experiment(method="finetune", dataset="synthetic", seed=3,
                          num_tasks=num_tasks, params=params)
    assert np.array_equal(np.array(mas["R_test"]), np.array(bare["R_test"]))
    assert np.array_equal(np.array(mas["R_val"]), np.array(bare["R_val"]))
    assert mas["timing"]["task_epochs"] == bare["timing"]["task_epochs"]


def flat_grad(out: torch.Tensor, params) -> torch.Tensor:
    grads = torch.autograd.grad(out, params, retain_graph=True)
    return torch.cat([g.reshape(-1) for g in grads])


def with_labels(batch: NodeBatch, labels: torch.Tensor) -> NodeBatch:
    """``batch`` with other (global) labels; candidates and tasks unchanged."""
    local = (batch.candidates == labels.view(-1, 1)).long().argmax(1)
    return NodeBatch(batch.graph, batch.nodes, labels, batch.task_ids, batch.candidates, local)


@pytest.mark.parametrize("importance", ["batch", "node"])
def test_importance_uses_outputs_not_labels(importance: str) -> None:
    """Omega_t is the (batch: |grad of the mean|; node: mean of |per-node grads|) of the
    squared norms of the Task-IL outputs; permuted or corrupted labels, and a loss that
    cannot be called, leave it bit-identical."""
    scenario = synthetic_scenario(0)
    trainer, _ = make_trainer("mas", scenario, 0, importance=importance, **FAST)
    model = trainer.model.eval()
    batch = scenario.get_task(1).train
    omega = trainer.task_importance(model, batch)
    params = list(model.parameters())

    sq = batch.restrict(trainer.forward(model, batch)).pow(2).sum(-1)
    if importance == "batch":
        expected = flat_grad(sq.mean(), params).abs()
    else:
        expected = torch.stack([flat_grad(sq[i], params).abs()
                                for i in range(len(batch))]).mean(0)
    torch.testing.assert_close(omega, expected)
    assert (omega > 0).any()

    gen = torch.Generator().manual_seed(1)
    permuted = with_labels(batch, batch.labels[torch.randperm(len(batch), generator=gen)])
    cands = batch.candidates
    wrong = with_labels(batch, cands[torch.arange(len(batch)), (batch.local_labels + 1)
                                     % cands.size(1)])
    assert not torch.equal(wrong.local_labels, batch.local_labels)

    def no_loss(*_):
        raise AssertionError("the importance must not use the loss (labels)")

    trainer.loss_fn = no_loss
    for other in (permuted, wrong):
        assert torch.equal(trainer.task_importance(model, other), omega)


class Snapshots(TrainerCallback):
    """The model's flat parameters after every task (after the best-weights restore)."""

    def __init__(self) -> None:
        self.flat: list[torch.Tensor] = []
        self.states: list[dict[str, torch.Tensor]] = []

    def on_task_end(self, trainer, task_id, test_row) -> None:
        self.flat.append(trainer.flat_params().detach().clone())
        self.states.append({k: v.detach().clone() for k, v in
                            trainer.model.state_dict().items()})


def test_importance_accumulates_over_tasks_and_keeps_the_last_weights() -> None:
    scenario = synthetic_scenario(2)
    snaps = Snapshots()
    trainer, params = make_trainer("mas", scenario, 2, callbacks=[snaps],
                                   **{**FAST, "epochs": 8})
    out = trainer.run(params["epochs"])
    states = trainer.training_states
    model = trainer.model
    expected = torch.zeros_like(states["importance"])
    for t, state in enumerate(snaps.states):
        model.load_state_dict(state)
        expected += trainer.task_importance(model, scenario.get_task(t).train)
    torch.testing.assert_close(states["importance"], expected)
    assert torch.equal(states["params"], snaps.flat[-1])
    P = sum(p.numel() for p in model.parameters())
    assert states["importance"].shape == states["params"].shape == (P,)
    assert out.extra_storage_bytes == 2 * P * 4


def test_penalty_gradient_points_to_the_old_weights() -> None:
    """At weights moved away from theta*, the penalty's gradient is
    2 lamb Omega (theta - theta*): a descent step moves every important weight towards
    its old value and lowers the penalty."""
    scenario = synthetic_scenario(0)
    lamb = 3.0
    trainer, params = make_trainer("mas", scenario, 0, lamb=lamb, **{**FAST, "epochs": 5})
    trainer.run(params["epochs"])
    states = trainer.training_states
    omega, star = states["importance"], states["params"]
    with torch.no_grad():
        for p in trainer.model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    theta = trainer.flat_params()
    diff = (theta - star).detach()
    reg = lamb * trainer.penalty(states)
    grad = flat_grad(reg, list(trainer.model.parameters()))
    torch.testing.assert_close(grad, 2 * lamb * omega * diff)
    important = omega > 0
    assert important.sum() > 0.5 * important.numel()
    assert ((-grad * diff)[important] < 0).all()  # -grad points from theta to theta*
    with torch.no_grad():
        for p, g in zip(trainer.model.parameters(),
                        torch.split(grad, [p.numel() for p in trainer.model.parameters()]),
                        strict=True):
            p.sub_(1e-3 / grad.abs().max() * g.view_as(p))
    after = trainer.flat_params().detach()
    assert ((after - star).abs()[important] <= diff.abs()[important]).all()
    assert lamb * trainer.penalty(states) < reg


def test_penalty_is_logged_and_changes_training() -> None:
    """The weighted penalty reaches the training stats from task 1 on, and the default
    strength changes the result."""
    seen: dict[int, list[float]] = {}

    class Penalties(TrainerCallback):
        def on_epoch_end(self, trainer, task_id, epoch, iter_results) -> None:
            seen.setdefault(task_id, []).append(iter_results["train_stats"].get("penalty"))

    mas = run_experiment(method="mas", dataset="synthetic", seed=3, num_tasks=3,
                         params=FAST, callbacks=[Penalties()])
    bare = run_experiment(method="finetune", dataset="synthetic", seed=3, num_tasks=3,
                          params=FAST)
    assert set(seen[0]) == {None}
    assert all(p is not None and p >= 0 for t in (1, 2) for p in seen[t])
    assert max(seen[1]) > 0
    assert not np.array_equal(np.array(mas["R_test"]), np.array(bare["R_test"]))


def test_invalid_params() -> None:
    scenario = synthetic_scenario(0)
    with pytest.raises(ClbenchError):
        make_trainer("mas", scenario, 0, lamb=-1.0)
    with pytest.raises(ClbenchError):
        make_trainer("mas", scenario, 0, importance="fisher")
