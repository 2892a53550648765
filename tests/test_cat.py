"""CaT: the condensed memory (its size per class, no real node in it, the distribution
matching lowering its loss), training in memory (BeGin's weighted loss, each synthetic
node among its own task's classes), its storage, resume points, and an empty budget
being fine-tuning. Class-IL: tests/test_cat_class_il.py."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from datahelpers import method_trainer as make_trainer

import clbench.methods.cat as cat
from clbench.experiment import ExperimentSpec, build_scenario, run_experiment, seed_everything
from clbench.scenario import NCScenarioLoader
from clbench.trainer import TrainerCallback

FAST = {"epochs": 10, "hidden": 32, "condense_steps": 20}

pytestmark = pytest.mark.usefixtures("one_thread")


def synthetic_scenario(seed: int = 0) -> NCScenarioLoader:
    seed_everything(seed)
    return build_scenario(ExperimentSpec(method="cat", dataset="synthetic", seed=seed))


@pytest.fixture(scope="module")
def trained():
    """A full run on synthetic (5 tasks x 2 classes, 72 training nodes per class) with a
    memory of 60: 12 synthetic nodes per task."""
    scenario = synthetic_scenario(0)
    trainer, params = make_trainer("cat", scenario, 0, num_memories=60, **FAST)
    out = trainer.run(params["epochs"])
    return scenario, trainer, out


def test_class_budgets_follow_begins_rounding() -> None:
    assert cat.class_budgets([72, 72], 12) == [6, 6]
    # 4, 2.5, 3.5 -> 4, 2, 3; one left: the largest remainder, ties to the later class
    assert cat.class_budgets([40, 25, 35], 10) == [4, 2, 4]
    assert cat.class_budgets([1, 99], 4) == [1, 3]  # every class keeps at least one
    assert cat.class_budgets([2, 1], 10) == [2, 1]  # never more than the training nodes


def test_memory_has_the_budgeted_size_per_class(trained) -> None:
    scenario, trainer, _ = trained
    states = trainer.training_states
    assert len(states["memory_x"]) == scenario.num_tasks
    for t in range(scenario.num_tasks):
        train = scenario.get_task(t).train
        classes, counts = train.labels.unique(return_counts=True)
        expected = cat.class_budgets(counts.tolist(), 60 // scenario.num_tasks)
        y = states["memory_y"][t]
        assert [int((y == c).sum()) for c in classes.tolist()] == expected == [6, 6]
        assert states["memory_x"][t].shape == (12, scenario.graph.num_features)
        assert bool((states["memory_task"][t] == t).all())
        assert torch.equal(states["memory_weight"][t], torch.full((12,), len(train) / 12))


def test_memory_holds_no_real_node(trained) -> None:
    """Only synthetic rows, their classes, tasks and weights are kept: no memory row is
    any real node's feature row, and there is no node id anywhere in the states."""
    scenario, trainer, _ = trained
    states = trainer.training_states
    assert set(states) == set(cat.MEMORY_KEYS)
    x = scenario.graph.x
    for rows in states["memory_x"]:
        assert rows.dtype.is_floating_point
        assert not bool((rows[:, None, :] == x[None, :, :]).all(-1).any())
        # not a copy of a real row either up to rounding: condensation moved every row
        assert float(torch.cdist(rows, x).min()) > 1e-3
    for y, tasks in zip(states["memory_y"], states["memory_task"], strict=True):
        assert bool((scenario.task_classes[tasks] == y[:, None]).any(1).all())
    long_tensors = [k for k in cat.MEMORY_KEYS for t in states[k] if not t.is_floating_point()]
    assert set(long_tensors) == {"memory_y", "memory_task"}


def test_condensation_lowers_the_matching_loss() -> None:
    """Scored with 20 random encoders that the optimisation never saw, the condensed
    features match the real class means better than the real rows they started from.
    (condense_lr 0.05: the synthetic features are Gaussians of scale 4, which Adam at
    the default 1e-3 moves by at most 0.2 in 200 steps.)"""
    scenario = synthetic_scenario(1)
    trainer, _ = make_trainer("cat", scenario, 1, num_memories=50,
                              **{**FAST, "condense_steps": 200, "condense_lr": 0.05})
    train = scenario.get_task(0).train
    x0, y = trainer.initial_synthetic(train)
    x1, losses = trainer.condense(train, x0, y)
    assert len(losses) == 200

    def mean_loss(x: torch.Tensor) -> float:
        torch.manual_seed(1234)
        encoder = copy.deepcopy(trainer.model).eval()
        classes, counts = train.labels.unique(return_counts=True)
        weights = counts.float() / counts.sum()
        total = 0.0
        for _ in range(20):
            cat.randomize_(encoder)
            with torch.no_grad():
                g = train.graph
                real = cat.embed(encoder, encoder.inputs(g), g)[train.nodes]
                means = cat.class_means(real, train.labels, classes)
                total += float(cat.matching_loss(encoder, means, x, y, classes, weights))
        return total / 20

    before, after = mean_loss(x0), mean_loss(x1)
    assert after < 0.8 * before, (before, after)


def test_empty_budget_is_finetune_bit_for_bit() -> None:
    """num_memories below the number of tasks: no synthetic node, the real task."""
    out = run_experiment(method="cat", dataset="synthetic", seed=2,
                         params={**FAST, "num_memories": 4})  # 5 tasks: 4 // 5 = 0
    params = {k: v for k, v in FAST.items() if k != "condense_steps"}
    bare = run_experiment(method="finetune", dataset="synthetic", seed=2, params=params)
    assert np.array_equal(np.array(out["R_test"]), np.array(bare["R_test"]))
    assert np.array_equal(np.array(out["R_val"]), np.array(bare["R_val"]))
    assert out["timing"]["task_epochs"] == bare["timing"]["task_epochs"]
    assert out["extra_storage_bytes"] == 0


def test_extra_storage_is_the_memory(trained) -> None:
    scenario, trainer, out = trained
    features = scenario.graph.num_features
    # 60 synthetic nodes: a float32 row, an int64 class, an int64 task, a float32 weight
    assert out.extra_storage_bytes == 60 * (4 * features + 8 + 8 + 4)
    states = trainer.training_states
    assert out.extra_storage_bytes == sum(t.numel() * t.element_size()
                                          for k in cat.MEMORY_KEYS for t in states[k])


def test_training_step_is_on_the_memory_only() -> None:
    """Train in Memory: the step's loss is BeGin's sum of (n_t / |M_t|) x cross-entropy
    over the synthetic nodes of tasks 0..t, each among its own task's classes, whatever
    the real batch; its gradients are those of that loss."""
    scenario = synthetic_scenario(3)
    trainer, _ = make_trainer("cat", scenario, 3, num_memories=50, **FAST)

    class StopAtTask2(TrainerCallback):
        def on_epoch_end(self, trainer, task_id, epoch, results):
            if task_id == 2:
                raise KeyboardInterrupt

    trainer.callbacks.append(StopAtTask2())
    with pytest.raises(KeyboardInterrupt):
        trainer.run(FAST["epochs"])
    states, model = trainer.training_states, trainer.model
    assert len(states["memory_x"]) == 3  # task 2 was condensed before it trained
    batch = trainer.memory_batch(states)
    assert torch.equal(batch.candidates, scenario.task_classes[batch.task_ids])
    assert torch.equal(batch.candidates.gather(1, batch.local_labels[:, None])[:, 0],
                       batch.labels)
    assert batch.graph.num_edges == 0

    reference = copy.deepcopy(model).train()
    for norm in cat.batchnorm_modules(reference):
        norm.eval()  # memory_bn = "running"
    logits = reference(batch.graph.x, batch.graph)
    per_node = F.cross_entropy(batch.restrict(logits), batch.local_labels, reduction="none")
    n_train = [len(scenario.get_task(t).train) for t in range(3)]
    weights = torch.tensor([n_train[t] / 10 for t in batch.task_ids.tolist()])
    expected = (weights * per_node).sum()
    expected.backward()

    model.train()
    real = scenario.get_task(0).val  # any real batch: it is not used
    stats = trainer.processTrainIteration(model, trainer.optimizer, real, states)
    assert stats["loss"] == pytest.approx(expected.item(), rel=1e-6)
    for p, q in zip(model.parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad)
    assert all(m.training for m in cat.batchnorm_modules(model))


def test_memory_bn_running_leaves_the_statistics_alone(trained) -> None:
    """With the default, no memory step changes BatchNorm's running statistics."""
    _, trainer, _ = trained
    for norm in cat.batchnorm_modules(trainer.model):
        assert torch.equal(norm.running_mean, torch.zeros_like(norm.running_mean))
        assert torch.equal(norm.running_var, torch.ones_like(norm.running_var))


@pytest.mark.slow
def test_cora_no_task_stuck_at_its_majority_class(cora_root) -> None:
    """Cora, BeGin's budget (12: 4 synthetic nodes per task): every task is learned."""
    out = run_experiment(method="cat", dataset="cora", seed=0, data_dir=str(cora_root),
                         params={"epochs": 200})
    diag = np.diag(np.array(out["R_test"]))
    assert (diag > 0.8).all(), diag


@pytest.mark.parametrize("backbone", ["gcn", "sage", "gat"])
def test_real_nodes_are_embedded_on_their_receptive_field_only(cora_graph, backbone) -> None:
    """The condensation embeds the real nodes on the nodes within the encoder's depth of
    them (Graph.neighbourhood), which must give exactly the whole graph's embeddings:
    GCN keeps the whole graph's normalisation, dense features its first aggregation.
    Also on a task's own subgraph (--graph task) and with dense features."""
    from clbench.models import build_model
    from clbench.scenario import NodeBatch

    torch.manual_seed(0)
    g = cora_graph
    own = (g.y == 2) | (g.y == 4)
    dense = type(g)(g.x * 0.5 + 0.1, g.y, g.edge_index, g.train_mask, g.val_mask,
                    g.test_mask)  # every entry non-zero: the dense first layer
    nodes = (g.train_mask & own).nonzero().view(-1)  # global ids
    for graph in (g, g.subgraph(own), dense):
        assert graph.sparse_features is (graph is not dense)
        model = build_model(backbone, g.num_features, 7, hidden=32).eval()
        batch = NodeBatch(graph, nodes, g.y[nodes], torch.zeros_like(nodes),
                          torch.tensor([[2, 4]]).expand(nodes.numel(), -1), g.y[nodes] // 4)
        rows = batch.rows
        view, view_rows = cat.real_view(model, batch)
        assert 0 < view.num_nodes < graph.num_nodes
        with torch.no_grad():
            for _ in range(3):
                cat.randomize_(model)
                whole = cat.embed(model, model.inputs(graph), graph)[rows]
                part = cat.embed(model, model.inputs(view), view)[view_rows]
                assert torch.allclose(whole, part, rtol=0, atol=1e-6)
    # deeper encoders reach further: one layer sees only the nodes' direct neighbours
    one = build_model(backbone, g.num_features, 7, hidden=32, layers=1).eval()
    rows = g.train_mask.nonzero().view(-1)[:5]
    batch = NodeBatch(g, rows, g.y[rows], torch.zeros_like(rows), g.y[rows, None], 0 * rows)
    view, _ = cat.real_view(one, batch)
    neighbours = torch.isin(g.edge_index[1], rows)
    assert view.num_nodes == torch.cat([rows, g.edge_index[0, neighbours]]).unique().numel()


def test_condensation_optimizer_is_cats_own_or_the_runs() -> None:
    """``condense_lr > 0``: Adam at that lr without weight decay (the CaT authors'),
    whatever the run's optimizer; ``0``: the run's optimizer, lr and weight decay (BeGin),
    which is what a record made before the key existed means."""
    scenario = synthetic_scenario(1)
    own, _ = make_trainer("cat", scenario, 1, **FAST, lr=0.005, weight_decay=5e-4,
                          optimizer="sgd", condense_lr=0.002)
    runs, _ = make_trainer("cat", scenario, 1, **FAST, lr=0.005, weight_decay=5e-4,
                           optimizer="sgd", condense_lr=0.0)
    x = torch.nn.Parameter(torch.zeros(3, 4))
    a, b = own.condense_optimizer(x), runs.condense_optimizer(x)
    assert isinstance(a, torch.optim.Adam) and isinstance(b, torch.optim.SGD)
    assert (a.defaults["lr"], a.defaults["weight_decay"]) == (0.002, 0)
    assert (b.defaults["lr"], b.defaults["weight_decay"]) == (0.005, 5e-4)
    from clbench.cards import read_card

    assert read_card("cat").absent == {"condense_lr": 0.0}
    assert read_card("cat").defaults()["condense_lr"] == 0.001


def test_default_condensation_is_begins_at_the_protocols_defaults() -> None:
    """At Adam, lr 1e-3 and weight decay 0 (the protocol's defaults) CaT's own
    condensation optimizer is BeGin's: the same run, bit for bit."""
    params = {**FAST, "num_memories": 60}
    own = run_experiment(method="cat", dataset="synthetic", seed=1, params=params)
    begin = run_experiment(method="cat", dataset="synthetic", seed=1,
                           params={**params, "condense_lr": 0.0})
    assert own["R_test"] == begin["R_test"] and own["R_val"] == begin["R_val"]
    assert own["config"]["condense_lr"] == 0.001 and "condense_lr" not in begin["config"]
