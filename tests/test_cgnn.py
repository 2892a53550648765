"""ContinualGNN: the memory (past tasks' training nodes only, within budget whatever the
number of tasks), the detection (past training nodes near the new task), the replay
among each node's own task's classes, the EWC term, the storage count, and no memory,
no detection and no EWC being fine-tuning bit for bit."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from datahelpers import method_trainer as make_trainer
from test_gem import many_task_scenario

import clbench.methods.cgnn as cgnn
from clbench.experiment import ExperimentSpec, build_scenario, run_experiment, seed_everything
from clbench.methods.memory import buffer_bytes
from clbench.scenario import NCScenarioLoader
from clbench.trainer import TrainerCallback

FAST = {"epochs": 15, "hidden": 32}

pytestmark = pytest.mark.usefixtures("one_thread")


def synthetic_scenario(seed: int = 0, **tasks) -> NCScenarioLoader:
    seed_everything(seed)
    return build_scenario(ExperimentSpec(method="cgnn", dataset="synthetic", seed=seed,
                                         **tasks))


class Stop(Exception):
    pass


class StopAtTask(TrainerCallback):
    def __init__(self, task: int) -> None:
        self.task = task

    def on_task_start(self, trainer, task_id):
        if task_id == self.task:
            raise Stop


class Watch(TrainerCallback):
    """Records, at the first training step of every task, the replayed nodes and the
    memory, and the memory after every task."""

    def __init__(self) -> None:
        self.replayed: dict[int, torch.Tensor] = {}
        self.memory_at_start: dict[int, torch.Tensor] = {}
        self.memory_sizes: list[int] = []

    def wrap(self, trainer) -> None:
        original = trainer.afterInference

        def after(results, model, optimizer, batch, states):
            t = trainer.curr_task
            if t not in self.replayed:
                self.replayed[t] = states["replay"].clone()
                self.memory_at_start[t] = trainer.memory_nodes(states)
            return original(results, model, optimizer, batch, states)

        trainer.afterInference = after

    def on_task_end(self, trainer, task_id, test_row):
        self.memory_sizes.append(trainer.memory_nodes(trainer.training_states).numel())


def _past_training_nodes(scenario, nodes: torch.Tensor, t: int) -> None:
    g = scenario.graph
    assert bool(g.train_mask[nodes].all())
    assert not bool((g.val_mask[nodes] | g.test_mask[nodes]).any())
    assert bool((scenario.node_task[nodes] < t).all())
    assert bool((scenario.node_task[nodes] >= 0).all())


@pytest.mark.parametrize(("strategy", "graph"), [("class", "full"), ("random", "task")])
def test_replay_holds_only_past_training_nodes_within_budget(strategy: str, graph: str
                                                             ) -> None:
    """At every step the memory and the detected nodes are training nodes of finished
    tasks (never validation or test nodes, never the current task's), the memory within
    its budget, and each is scored among its own task's classes."""
    scenario = synthetic_scenario(0, graph=graph)
    trainer, params = make_trainer("cgnn", scenario, 0, memory_size=15, new_nodes_size=10,
                                   memory_strategy=strategy, **FAST)
    watch = Watch()
    watch.wrap(trainer)
    trainer.callbacks.append(watch)
    trainer.run(params["epochs"])
    T = scenario.num_tasks
    assert set(watch.replayed) == set(range(T))
    assert watch.replayed[0].numel() == 0
    for t in range(1, T):
        memory, replay = watch.memory_at_start[t], watch.replayed[t]
        assert 0 < memory.numel() <= 15
        assert bool(torch.isin(memory, replay).all())  # the whole memory is replayed
        assert replay.numel() <= 15 + 10
        assert replay.unique().numel() == replay.numel()
        _past_training_nodes(scenario, replay, t)
    assert max(watch.memory_sizes) <= 15
    if strategy == "random":
        assert watch.memory_sizes[-1] == 15
    # each replayed node among its own task's classes, on its task's graph
    for b in cgnn.stored_batches(scenario, watch.replayed[T - 1]):
        assert torch.equal(b.candidates, scenario.task_classes[b.task_ids])
        expected = scenario.graph if graph == "full" else scenario.graph_for(
            b.task_ids.unique().tolist())
        assert b.graph is expected


@pytest.mark.parametrize("strategy", ["class", "random"])
def test_memory_budget_with_many_tasks(strategy: str) -> None:
    """12 tasks x 2 classes: the memory never exceeds its budget (30 nodes, fewer than
    the training nodes of two tasks), and never holds a node that is not a past
    training node."""
    scenario = many_task_scenario(12)
    trainer, _ = make_trainer("cgnn", scenario, 0, memory_size=30, new_nodes_size=0,
                              memory_strategy=strategy, **{**FAST, "epochs": 1})
    watch = Watch()
    watch.wrap(trainer)
    trainer.callbacks.append(watch)
    trainer.run(1)
    assert len(watch.memory_sizes) == 12
    assert max(watch.memory_sizes) <= 30
    # random: full; class: at least floor(share * 30) = 1 node of each of the 24 classes
    assert watch.memory_sizes[-1] >= (24 if strategy == "class" else 30)
    for t in range(1, 12):
        _past_training_nodes(scenario, watch.memory_at_start[t], t)
        assert torch.equal(watch.replayed[t], watch.memory_at_start[t])  # no detection


def test_class_quotas_follow_the_class_shares() -> None:
    """Class strategy: each class's quota is floor(count * budget / nodes seen); a class
    over its quota is cut down to it; a class under it takes the nodes in order; a node
    then enters a full class only at rate p * quota / count (p = 0: never)."""
    scenario = synthetic_scenario(0)
    trainer, _ = make_trainer("cgnn", scenario, 0, memory_size=10, p=0.0, **FAST)
    states = trainer.initTrainingStates(scenario, trainer.model, trainer.optimizer)
    y = scenario.graph.y
    train = scenario.graph.train_mask.nonzero().view(-1)
    a, b = train[y[train] == 0][:30], train[y[train] == 1][:10]
    trainer._update_class(states, torch.cat([a, b]).tolist(), [0] * 30 + [1] * 10, [0.0] * 40)
    assert states["memory"][0] == a[:7].tolist()  # 30 * 10 // 40
    assert states["memory"][1] == b[:2].tolist()  # 10 * 10 // 40
    c = train[y[train] == 2][:40]
    trainer._update_class(states, c.tolist(), [2] * 40, [0.0] * 40)
    assert [len(m) for m in states["memory"][:3]] == [3, 1, 5]  # 30, 10 and 40 * 10 // 80
    assert set(states["memory"][0]) <= set(a[:7].tolist())
    assert states["memory"][2] == c[:5].tolist()
    assert sum(len(m) for m in states["memory"]) <= 10
    # p = 1: a reservoir; later nodes of a full class do get in
    trainer.p = 1.0
    torch.manual_seed(0)
    trainer._update_class(states, c[5:].tolist() + c[5:].tolist(), [2] * 70, [0.0] * 70)
    assert set(states["memory"][2]) - set(c[:5].tolist())
    assert sum(len(m) for m in states["memory"]) <= 10


def test_nothing_kept_is_finetune_bit_for_bit() -> None:
    """No memory, no detection, no EWC term: fine-tuning, bit for bit (with dropout, so
    that a random number drawn out of turn shows)."""
    protocol = {**FAST, "dropout": 0.5}
    params = {**protocol, "memory_size": 0, "new_nodes_size": 0, "ewc_lambda": 0.0}
    out = run_experiment(method="cgnn", dataset="synthetic", seed=2, params=params)
    bare = run_experiment(method="finetune", dataset="synthetic", seed=2, params=protocol)
    assert np.array_equal(np.array(out["R_test"]), np.array(bare["R_test"]))
    assert np.array_equal(np.array(out["R_val"]), np.array(bare["R_val"]))
    assert out["timing"]["task_epochs"] == bare["timing"]["task_epochs"]
    assert out["extra_storage_bytes"] == 0


def test_detection_without_memory_replays_only_influenced_past_nodes() -> None:
    """memory_size = 0 with detection on (BeGin's detection picks among all past training
    nodes): each task replays exactly the detected nodes, which are past training nodes
    within two hops of the new task's training nodes, at most new_nodes_size; the kept
    past training nodes are counted as storage."""
    scenario = synthetic_scenario(0)
    trainer, params = make_trainer("cgnn", scenario, 0, memory_size=0, new_nodes_size=6,
                                   ewc_lambda=0.0, **FAST)
    watch = Watch()
    watch.wrap(trainer)
    trainer.callbacks.append(watch)
    out = trainer.run(params["epochs"])
    g = scenario.graph
    adj = torch.zeros(g.num_nodes, g.num_nodes, dtype=torch.bool)
    adj[g.edge_index[0], g.edge_index[1]] = True
    two_hops = adj | (adj.float() @ adj.float() > 0)
    replayed_any = False
    for t in range(1, scenario.num_tasks):
        replay = watch.replayed[t]
        assert watch.memory_at_start[t].numel() == 0
        assert replay.numel() <= 6
        replayed_any |= replay.numel() > 0
        _past_training_nodes(scenario, replay, t)
        current = scenario.get_task(t).train.nodes
        assert bool(two_hops[replay][:, current].any(1).all())
    assert replayed_any
    # after the last task, every task's training nodes are past ones, kept
    kept = g.train_mask & (scenario.node_task >= 0)
    assert out.extra_storage_bytes == buffer_bytes(scenario, int(kept.sum()))


def test_spread_is_two_rounds_of_mean_aggregation() -> None:
    # path 0 - 1 - 2 - 3, and 4 alone
    edge_index = torch.tensor([[0, 1, 1, 2, 2, 3], [1, 0, 2, 1, 3, 2]])
    values = torch.tensor([4.0, 0.0, 0.0, 0.0, 0.0])
    once = torch.tensor([0.0, 2.0, 0.0, 0.0, 0.0])
    assert torch.equal(cgnn.spread(values, edge_index, 1), once)
    assert torch.equal(cgnn.spread(values, edge_index), torch.tensor([2.0, 0.0, 1.0, 0, 0]))


def _trainer_at_task(task: int, **params):
    scenario = synthetic_scenario(1, num_tasks=3)
    trainer, _ = make_trainer("cgnn", scenario, 1, **{**FAST, **params})
    trainer.callbacks.append(StopAtTask(task))
    with pytest.raises(Stop):
        trainer.run(FAST["epochs"])
    batch = scenario.get_task(task).train
    trainer.processBeforeTraining(task, scenario.get_task(task), trainer.model,
                                  trainer.optimizer, trainer.training_states)
    return trainer, scenario, batch


def test_ewc_term_pulls_towards_the_anchor() -> None:
    """At the start of a task the anchor is the current weights and F the squared
    gradient of the memory's loss divided by its mean (the default fisher_norm); the
    term is ewc_lambda / 2 * sum F (theta - theta*)^2, zero at the anchor, positive away
    from it, and a step on it alone moves the weights back towards the anchor."""
    trainer, scenario, batch = _trainer_at_task(2, memory_size=30, ewc_lambda=80.0)
    model, states = trainer.model, trainer.training_states
    params = [p for p in model.parameters() if p.requires_grad]
    flat = torch.cat([p.detach().reshape(-1) for p in params])
    assert torch.equal(states["anchor"], flat)
    memory = trainer.memory_nodes(states)
    (mb,) = cgnn.stored_batches(scenario, memory)
    reference = copy.deepcopy(model).eval()
    loss = torch.nn.functional.cross_entropy(mb.restrict(trainer.forward(reference, mb)),
                                             mb.local_labels)
    grads = torch.autograd.grad(loss, [p for p in reference.parameters() if p.requires_grad])
    raw = torch.cat([g.reshape(-1) for g in grads]) ** 2
    fisher = raw / raw.mean()
    assert trainer.fisher_norm == "mean"
    torch.testing.assert_close(states["fisher"], fisher)
    assert float(states["fisher"].sum()) > 0
    assert float(trainer.penalty(states).detach()) == 0.0
    with torch.no_grad():
        for p in params:
            p.add_(0.05 * torch.randn_like(p))
    moved = torch.cat([p.detach().reshape(-1) for p in params])
    pen = trainer.penalty(states)
    expected = 40.0 * (fisher * (moved - flat) ** 2).sum()
    torch.testing.assert_close(pen, expected)
    assert float(pen.detach()) > 0
    trainer.optimizer.zero_grad(set_to_none=True)
    pen.backward()
    grad = torch.cat([p.grad.reshape(-1) for p in params])
    torch.testing.assert_close(grad, 80.0 * fisher * (moved - flat))
    with torch.no_grad():  # a gradient step on the term alone
        stepped = moved - 1e-3 * grad
    assert float(((stepped - flat) ** 2 * fisher).sum()) < float(((moved - flat) ** 2 * fisher)
                                                                .sum())
    # the training step reports it as the penalty, added to the loss
    model.train()
    trainer.optimizer.zero_grad(set_to_none=True)
    results = trainer.inference(model, batch, states)
    stats = trainer.afterInference(results, model, trainer.optimizer, batch, states)
    assert stats["penalty"] > 0
    assert stats["task_loss"] == pytest.approx(stats["loss"] - stats["penalty"])


def test_replay_loss_is_the_union_mean_over_own_task_classes() -> None:
    """The step's loss is the mean loss over the task's and the replayed nodes, each
    among its own task's classes: (1 - beta) * task loss + beta * replay loss."""
    trainer, scenario, batch = _trainer_at_task(2, memory_size=30, new_nodes_size=10,
                                                ewc_lambda=0.0)
    model, states = trainer.model, trainer.training_states
    replay = states["replay"]
    assert replay.numel() > 0
    nodes = torch.cat([batch.nodes, replay])
    reference = copy.deepcopy(model).train()
    logits = trainer.forward(reference, batch)
    cand = scenario.task_classes[scenario.node_task[nodes]]
    local = (cand == scenario.graph.y[nodes].view(-1, 1)).long().argmax(1)
    expected = torch.nn.functional.cross_entropy(logits[nodes].gather(1, cand), local)
    expected.backward()
    model.train()
    trainer.optimizer.zero_grad(set_to_none=True)
    results = trainer.inference(model, batch, states)
    stats = trainer.afterInference(results, model, trainer.optimizer, batch, states)
    assert "penalty" not in stats
    assert stats["loss"] == pytest.approx(expected.item(), rel=1e-6)
    for p, q in zip(model.parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad)


def test_storage_counts_memory_fisher_and_anchor() -> None:
    """extraStorageBytes: each distinct kept node's id, label and features, the class
    counts, and the Fisher and anchor vectors."""
    scenario = synthetic_scenario(0)
    trainer, params = make_trainer("cgnn", scenario, 0, memory_size=20, new_nodes_size=0,
                                   ewc_lambda=80.0, **FAST)
    out = trainer.run(params["epochs"])
    states = trainer.training_states
    memory = trainer.memory_nodes(states)
    assert 0 < memory.numel() <= 20
    P = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    assert states["fisher"].numel() == states["anchor"].numel() == P
    expected = buffer_bytes(scenario, memory.numel()) + 8 * (scenario.num_classes + 1) \
        + 2 * 4 * P
    assert out.extra_storage_bytes == expected


# ----------------------------------------------------------------------------- fisher_norm
def test_fisher_norm_mean_divides_the_fisher_by_its_mean() -> None:
    """fisher_norm = mean keeps F / mean(F), whose mean is 1 whatever the raw scale;
    none (BeGin) keeps the raw F, tiny once the memory is fitted. Up to the first anchor
    both runs follow the same trajectory (no term before it), so their raw F agree."""
    kept = {}
    for norm in ("none", "mean"):
        trainer, _, _ = _trainer_at_task(1, memory_size=30, ewc_lambda=80.0, fisher_norm=norm)
        kept[norm] = trainer.training_states["fisher"]
    raw = kept["none"]
    assert 0 < float(raw.mean()) < 1e-3  # a fitted memory's raw Fisher is small
    torch.testing.assert_close(kept["mean"], raw / raw.mean())
    assert float(kept["mean"].mean()) == pytest.approx(1.0, rel=1e-5)


# BeGin's raw Fisher (fisher_norm = none), recorded on the code before fisher_norm existed
# (commit 230382c): synthetic, seed 2, 15 epochs, hidden 32, dropout 0.5, memory 15,
# detection 10, ewc_lambda 80. The test-set matrix and the EWC term / task loss at the end
# of each task.
RAW_FISHER_TASK_IL = {
    "R_test": [[0.75, 0.5208333333333334, 0.5, 0.4583333333333333, 0.4583333333333333],
               [0.7916666666666666, 0.6666666666666666, 0.5, 0.5208333333333334, 0.4375],
               [0.75, 0.7291666666666666, 0.625, 0.4583333333333333, 0.4375],
               [0.7291666666666666, 0.6875, 0.6458333333333334, 0.6666666666666666, 0.4375],
               [0.7291666666666666, 0.5833333333333334, 0.6458333333333334, 0.625,
                0.6666666666666666]],
    "ratio": [None, 0.0007306419188823838, 0.0013525980043466999, 0.00147276980238272,
              0.002377890801241117],
}
PINNED = {"epochs": 15, "hidden": 32, "dropout": 0.5, "memory_size": 15,
          "new_nodes_size": 10, "ewc_lambda": 80.0}


def assert_pinned(out: dict, pinned: dict) -> None:
    assert out["R_test"] == pinned["R_test"]
    assert out["timing"]["task_epochs"] == [15] * 5
    assert out["task_penalty_ratio"][0] is None
    # The ratio's float sums differ across CPUs (the matrices, so far, did not): on an AMD EPYC the
    # Class-IL ratios of tasks 3 and 4 came out 1.3e-5 and 4.4e-4 off the recorded ones.
    # 1e-2 keeps them apart from the mean-normalised Fisher's, 5-28x larger.
    assert out["task_penalty_ratio"][1:] == pytest.approx(pinned["ratio"][1:], rel=1e-2)


def test_raw_fisher_gives_the_numbers_from_before_fisher_norm() -> None:
    """fisher_norm = none is BeGin's raw Fisher: the recorded Task-IL numbers, and the
    default (mean) is not them."""
    out = run_experiment(method="cgnn", dataset="synthetic", seed=2,
                         params={**PINNED, "fisher_norm": "none"})
    assert_pinned(out, RAW_FISHER_TASK_IL)
    default = run_experiment(method="cgnn", dataset="synthetic", seed=2, params=PINNED)
    assert default["config"]["fisher_norm"] == "mean"
    assert default["task_penalty_ratio"][1:] != pytest.approx(RAW_FISHER_TASK_IL["ratio"][1:])


CHEAP = {"epochs": 30, "hidden": 32}


@pytest.mark.parametrize("dataset", [
    "synthetic", "cora",
    pytest.param("citeseer", marks=pytest.mark.slow),
])
def test_default_ewc_term_acts(dataset: str, tmp_path) -> None:
    """With the card's defaults (memory and detection at BeGin's budgets) the EWC term
    is a sizeable part of the loss at the end of each later task, and the run is neither
    fine-tuning nor the same method without the term (BeGin's raw Fisher with
    ewc_lambda = 80 left the term ~1e-5 of the task loss's gradient on Cora)."""
    from datahelpers import copy_shared

    data_dir = None
    if dataset != "synthetic":
        copy_shared(dataset, tmp_path)
        data_dir = str(tmp_path)
    kw = {"dataset": dataset, "seed": 0, "num_tasks": 3, "classes_per_task": 2,
          "data_dir": data_dir}
    out = run_experiment(method="cgnn", params=CHEAP, **kw)
    no_term = run_experiment(method="cgnn", params={**CHEAP, "ewc_lambda": 0.0}, **kw)
    bare = run_experiment(method="finetune", params=CHEAP, **kw)
    assert out["config"]["fisher_norm"] == "mean"
    assert out["task_penalty_ratio"][0] is None
    assert min(out["task_penalty_ratio"][1:]) > 1e-2, out["task_penalty_ratio"]
    assert not np.array_equal(np.array(out["R_test"]), np.array(no_term["R_test"]))
    assert not np.array_equal(np.array(out["R_test"]), np.array(bare["R_test"]))
