"""GEM: the projection (no memory's loss rises), the untouched steps, the memories and
their budget, and the limits that are fine-tuning."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from datahelpers import flat_grads
from datahelpers import method_trainer as make_trainer

import clbench.methods.gem as gem
from clbench.experiment import ExperimentSpec, build_scenario, run_experiment, seed_everything
from clbench.scenario import NCScenarioLoader
from clbench.trainer import TrainerCallback

FAST = {"epochs": 15, "hidden": 32}

pytestmark = pytest.mark.usefixtures("one_thread")


def synthetic_scenario(seed: int = 0, num_tasks: int | None = None) -> NCScenarioLoader:
    seed_everything(seed)
    return build_scenario(ExperimentSpec(method="gem", dataset="synthetic", seed=seed,
                                         num_tasks=num_tasks))


def many_task_scenario(num_tasks: int = 20) -> NCScenarioLoader:
    """A small SBM graph with ``2 * num_tasks`` classes of 24 nodes: many small tasks
    (corafull's 35 x 2 is the real case; it is not shipped)."""
    from torch_geometric.data import Data
    from torch_geometric.utils import stochastic_blockmodel_graph

    from clbench.datasets.base import stratified_split
    from clbench.graph import prepare_graph

    C, n = 2 * num_tasks, 24
    gen = torch.Generator().manual_seed(0)
    probs = torch.full((C, C), 0.005)
    probs.fill_diagonal_(0.2)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        edge_index = stochastic_blockmodel_graph([n] * C, probs, directed=False)
    y = torch.arange(C).repeat_interleave(n)
    x = torch.randn(C, 16, generator=gen)[y] + torch.randn(C * n, 16, generator=gen)
    train, val, test = stratified_split(y, 0)
    data = Data(x=x, edge_index=edge_index, y=y, train_mask=train, val_mask=val,
                test_mask=test)
    return NCScenarioLoader(prepare_graph(data, "many-tasks"), num_tasks, 2, seed=0)


class WeightsAfterTask(TrainerCallback):
    def __init__(self) -> None:
        self.weights: list[dict[str, torch.Tensor]] = []

    def on_task_end(self, trainer, task_id, test_row) -> None:
        self.weights.append({k: v.clone() for k, v in trainer.model.state_dict().items()})


def test_first_task_is_finetune_bit_for_bit() -> None:
    """No memory yet: the first task trains exactly as fine-tuning does."""
    runs = {}
    for method in ("gem", "finetune"):
        scenario = synthetic_scenario(1, num_tasks=2)
        trainer, params = make_trainer(method, scenario, 1, **FAST)
        snaps = WeightsAfterTask()
        trainer.callbacks.append(snaps)
        out = trainer.run(params["epochs"])
        runs[method] = (out, snaps.weights)
    (g, (gw, gw1)), (f, (fw, fw1)) = runs["gem"], runs["finetune"]
    assert g.task_epochs[0] == f.task_epochs[0]
    assert np.array_equal(g.R_test[0], f.R_test[0])
    assert gw.keys() == fw.keys() and all(torch.equal(gw[k], fw[k]) for k in gw)
    assert not all(torch.equal(gw1[k], fw1[k]) for k in gw1)  # then GEM's memory acts


def test_empty_memory_is_finetune_bit_for_bit() -> None:
    """A budget below the number of tasks leaves every memory empty: fine-tuning."""
    out = run_experiment(method="gem", dataset="synthetic", seed=2,
                         params={**FAST, "num_memories": 4})  # 5 tasks: 4 // 5 = 0
    bare = run_experiment(method="finetune", dataset="synthetic", seed=2, params=FAST)
    assert np.array_equal(np.array(out["R_test"]), np.array(bare["R_test"]))
    assert np.array_equal(np.array(out["R_val"]), np.array(bare["R_val"]))
    assert out["timing"]["task_epochs"] == bare["timing"]["task_epochs"]
    assert out["extra_storage_bytes"] == 0


@pytest.mark.parametrize("strength", [0.0, 0.5])
def test_steps_keep_every_memory_loss_from_rising(strength: float) -> None:
    """Every step: if the gradient points against a memory's, the step applies the QP's
    projection, whose dot product with every memory gradient is >= 0 (up to the
    solver's tolerance); otherwise it applies the gradient untouched, bit for bit."""
    scenario = synthetic_scenario(0, num_tasks=3)
    trainer, params = make_trainer("gem", scenario, 0, memory_strength=strength,
                                   num_memories=60, **FAST)
    decisions, applied = [], []
    original = trainer.projected

    def projected(grad, memory_grads):
        out = original(grad, memory_grads)
        decisions.append((grad.clone(), memory_grads.clone(), out))
        return out

    step = trainer.optimizer.step

    def recording_step(*args, **kwargs):
        if trainer.training_states["memories"]:
            applied.append(flat_grads(trainer.model).clone())
        return step(*args, **kwargs)

    trainer.projected = projected
    trainer.optimizer.step = recording_step
    trainer.run(params["epochs"])

    assert len(decisions) == len(applied) > 0
    num_projected = 0
    for (grad, G, out), used in zip(decisions, applied, strict=True):
        assert G.shape[0] in (1, 2)  # one memory gradient per finished task
        if out is None:
            assert bool(((G @ grad) >= 0).all())
            assert torch.equal(used, grad)  # untouched
            continue
        num_projected += 1
        assert bool(((G @ grad) < 0).any())
        assert torch.equal(used, out)  # the step used the projection
        # the QP's ridge (1e-6 x mean |g_k|^2) leaves dot products >= -ridge * v
        tol = 1e-5 * torch.linalg.vector_norm(G, dim=1) * torch.linalg.vector_norm(grad)
        assert bool(((G @ out) >= -tol).all()), (G @ out, tol)
    assert num_projected > 0


def test_step_without_violation_is_the_plain_gradient_bit_for_bit() -> None:
    """A memory whose gradient agrees with the current one (here: the current task's
    own training nodes, so the dot product is |g|^2 > 0): the step applies exactly the
    gradient fine-tuning computes from the same weights."""
    scenario = synthetic_scenario(0, num_tasks=3)
    trainer, _ = make_trainer("gem", scenario, 0, num_memories=30, **FAST)
    trainer.run(2)
    model, optimizer, states = trainer.model, trainer.optimizer, trainer.training_states
    batch = scenario.get_task(1).train
    states["memories"] = [batch.nodes[:20].clone()]
    copy = copy_model(model).train()
    trainer.inference(copy, batch, None)["loss"].backward()
    expected = flat_grads(copy)

    applied = []
    step = optimizer.step

    def recording_step(*args, **kwargs):
        applied.append(flat_grads(model).clone())
        return step(*args, **kwargs)

    optimizer.step = recording_step
    model.train()
    stats = trainer.processTrainIteration(model, optimizer, batch, states)
    assert stats["projected"] == 0.0
    assert torch.equal(applied[0], expected)


def copy_model(model):
    import copy

    return copy.deepcopy(model)


def test_projection_single_memory_closed_form() -> None:
    """memory_strength 0, one memory: the projection is g - (g.m / |m|^2) m, whose dot
    product with m is 0; with strength s the update is g + v m with v >= s."""
    gen = torch.Generator().manual_seed(0)
    m = torch.randn(50, generator=gen)
    g = torch.randn(50, generator=gen)
    g = g - (g @ m / (m @ m) + 0.7) * m  # g . m < 0
    assert g @ m < 0
    out = gem.project_gradient(g, m[None], 0.0)
    expected = g - (g @ m) / (m @ m) * m
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)
    assert abs(float(out @ m)) < 1e-5 * float(m.norm() * out.norm())
    strong = gem.project_gradient(g, m[None], 0.5)
    v = float((strong - g) @ m / (m @ m))
    assert v >= 0.5 - 1e-6  # here the bound is slack (v = 0.7), so strong = out
    assert float(strong @ m) >= -1e-5 * float(m.norm() * strong.norm())
    g2 = g + 0.5 * m  # now v = 0.2 < 0.5: the bound holds, the step gains on m
    strong2 = gem.project_gradient(g2, m[None], 0.5)
    torch.testing.assert_close(strong2, g2 + 0.5 * m, rtol=1e-5, atol=1e-5)
    assert float(strong2 @ m) > 0


def test_projection_several_memories_is_the_closest_feasible_gradient() -> None:
    """strength 0, several memories: the result satisfies every constraint, and a
    direction that stays feasible never gets it closer to g (KKT: g~ - g = G^T v, v >= 0,
    v_k = 0 where the constraint is slack)."""
    gen = torch.Generator().manual_seed(3)
    G = torch.randn(4, 30, generator=gen, dtype=torch.float64)
    g = -G.sum(0) + 0.1 * torch.randn(30, generator=gen, dtype=torch.float64)
    assert bool(((G @ g) < 0).any())
    out = gem.project_gradient(g, G, 0.0)
    assert bool(((G @ out) >= -1e-5 * G.norm(dim=1) * g.norm()).all())
    v = torch.linalg.lstsq(G.T, out - g).solution
    torch.testing.assert_close(G.T @ v, out - g, rtol=1e-6, atol=1e-8)
    assert bool((v >= -1e-8).all())
    slack = (G @ out) > 1e-5 * G.norm(dim=1) * g.norm()
    assert bool((v[slack].abs() < 1e-6).all())
    assert float((out - g).norm()) < float(g.norm())  # a projection, not a blow-up


class MemoriesAtTaskStart(TrainerCallback):
    def __init__(self) -> None:
        self.seen: list[list[torch.Tensor]] = []

    def on_task_start(self, trainer, task_id) -> None:
        self.seen.append([m.clone() for m in trainer.training_states["memories"]])


def test_memories_are_training_nodes_of_their_task_within_budget() -> None:
    scenario = synthetic_scenario(0)
    trainer, params = make_trainer("gem", scenario, 0, num_memories=53,
                                   **{**FAST, "epochs": 3})
    seen = MemoriesAtTaskStart()
    trainer.callbacks.append(seen)
    out = trainer.run(params["epochs"])
    graph = scenario.graph
    per_task = 53 // scenario.num_tasks
    for t, memories in enumerate(seen.seen):
        assert len(memories) == t  # only finished tasks, never the current one
        for k, nodes in enumerate(memories):
            assert nodes.numel() == per_task == nodes.unique().numel()
            assert bool(graph.train_mask[nodes].all())
            assert not bool((graph.val_mask[nodes] | graph.test_mask[nodes]).any())
            assert bool((scenario.node_task[nodes] == k).all())
    kept = sum(m.numel() for m in trainer.training_states["memories"])
    assert kept == per_task * scenario.num_tasks <= 53
    assert out.extra_storage_bytes == kept * (8 + 8 + 4 * graph.num_features)


def test_budget_with_many_small_tasks() -> None:
    """20 tasks: num_memories // 20 per task; below 20 nothing is stored."""
    scenario = many_task_scenario(20)
    for budget, per_task in ((50, 2), (19, 0)):
        trainer, _ = make_trainer("gem", scenario, 0, num_memories=budget,
                                  **{**FAST, "epochs": 1})
        out = trainer.run(1)
        memories = trainer.training_states["memories"]
        assert len(memories) == (20 if per_task else 0)
        assert all(m.numel() == per_task for m in memories)
        assert sum(m.numel() for m in memories) <= budget
        assert out.extra_storage_bytes == 20 * per_task * (16 + 4 * 16)


def test_task_graph_mode_and_resume_state() -> None:
    """graph="task": memories are scored on their own task's subgraph; the training
    states are plain tensors (saved in resume points)."""
    seed_everything(0)
    scenario = build_scenario(ExperimentSpec(method="gem", dataset="synthetic", seed=0,
                                             num_tasks=3, graph="task"))
    trainer, params = make_trainer("gem", scenario, 0, num_memories=30, **FAST)
    trainer.run(params["epochs"])
    batches = trainer.memory_batches(trainer.training_states)
    assert [b.graph is scenario.graph_for((k,)) for k, b in enumerate(batches)] == [True] * 3
    state = trainer.state_dict()
    assert len(state["attrs"]) > 0


class Task0ValLoss(TrainerCallback):
    """Task 0's loss on its validation nodes (held out: not the memory) after each task."""

    def __init__(self) -> None:
        self.loss: list[float] = []

    def on_task_end(self, trainer, task_id, test_row) -> None:
        model, was_training = trainer.model, trainer.model.training
        model.eval()
        with torch.no_grad():
            batch = trainer.scenario.get_task(0).val
            self.loss.append(float(trainer.inference(model, batch, None)["loss"]))
        model.train(was_training)


def task0_rise(method: str, seed: int, **overrides) -> tuple[float, dict, dict]:
    """How much task 0's validation loss rises while task 1 trains (2 tasks, long
    enough for Adam to act on every coordinate), and the weights after each task."""
    scenario = synthetic_scenario(seed, num_tasks=2)
    trainer, _ = make_trainer(method, scenario, seed, hidden=32, **overrides)
    losses, snaps = Task0ValLoss(), WeightsAfterTask()
    trainer.callbacks += [losses, snaps]
    trainer.run(300)
    return losses.loss[1] - losses.loss[0], snaps.weights[0], snaps.weights[1]


def test_gem_forgets_less_than_finetune_with_adam() -> None:
    """GEM's purpose: while task 1 trains with the protocol's optimizer (Adam), task 0's
    held-out loss rises less than under fine-tuning (summed over three seeds; a
    4-node budget as on Cora). Projecting every coordinate (BeGin's scope="all") fails
    this: Adam turns the projection's small component on task 0's classifier rows,
    which the current loss never touches, into full-size steps towards the memory.
    The default leaves those rows exactly where task 0 left them, as fine-tuning does."""
    gem_rise = finetune_rise = 0.0
    for seed in range(3):
        rise, after0, after1 = task0_rise("gem", seed, num_memories=4)
        gem_rise += rise
        finetune_rise += task0_rise("finetune", seed)[0]
        classes = synthetic_scenario(seed, num_tasks=2).task_classes[0]
        for name in ("classifier.weight", "classifier.bias"):
            assert torch.equal(after0[name][classes], after1[name][classes])
    assert gem_rise < finetune_rise, (gem_rise, finetune_rise)


def test_scope_all_moves_earlier_heads() -> None:
    """BeGin's scope="all" (kept as an option) does move task 0's classifier rows."""
    _, after0, after1 = task0_rise("gem", 0, num_memories=4, scope="all")
    classes = synthetic_scenario(0, num_tasks=2).task_classes[0]
    assert not torch.equal(after0["classifier.weight"][classes],
                           after1["classifier.weight"][classes])


def test_each_memory_loss_is_scored_among_its_own_tasks_classes() -> None:
    """Task-IL: a memory of task t is scored with task t's head (its classes), not the
    current task's and not all classes: each memory loss equals the cross-entropy of the
    full forward pass's logits at the memory's nodes, restricted to its task's classes."""
    import torch.nn.functional as F

    scenario = synthetic_scenario(0, num_tasks=3)
    trainer, _ = make_trainer("gem", scenario, 0, num_memories=30, dropout=0.0, **FAST)
    trainer.curr_task = 2
    batch = scenario.get_task(2).train
    mems = [scenario.get_task(t).train.nodes[:10].clone() for t in (0, 1)]
    states = {"memories": mems}
    model = trainer.model.train()
    losses = trainer.inference(model, batch, states)["memory_losses"]
    with torch.no_grad():
        logits = model(scenario.graph.x, scenario.graph)
    assert len(losses) == 2
    for t, nodes, loss in zip((0, 1), mems, losses, strict=True):
        classes = scenario.task_classes[t]
        y = scenario.graph.y[nodes]
        local = (classes.view(1, -1) == y.view(-1, 1)).long().argmax(1)
        own = F.cross_entropy(logits[nodes][:, classes], local)
        assert torch.allclose(loss.detach(), own, rtol=1e-6, atol=1e-7)
        current = F.cross_entropy(logits[nodes][:, scenario.task_classes[2]], local)
        every = F.cross_entropy(logits[nodes], y)
        assert not torch.allclose(own, current) and not torch.allclose(own, every)


def test_parameter_without_a_gradient_keeps_none_after_a_zero_projection() -> None:
    """The projection is written into ``.grad`` only where it is non-zero or a gradient
    existed: a parameter neither the current loss nor any memory reaches keeps
    ``grad = None``, so the optimizer leaves it alone; one whose part of the projection is
    non-zero gets it."""
    a = torch.nn.Parameter(torch.ones(3))
    b = torch.nn.Parameter(torch.ones(2))
    c = torch.nn.Parameter(torch.ones(2))
    a.grad = torch.zeros(3)
    flat = torch.tensor([1.0, 2.0, 3.0, 0.0, 0.0, 4.0, 0.0])
    gem._unflat_into_grads(flat, [a, b, c])
    assert torch.equal(a.grad, torch.tensor([1.0, 2.0, 3.0]))
    assert b.grad is None
    assert torch.equal(c.grad, torch.tensor([4.0, 0.0]))
