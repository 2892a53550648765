"""ER-GNN: the buffer (past tasks' training nodes only, within budget whatever the
number of tasks), the samplers, BeGin's replay weighting, and an empty budget being
fine-tuning."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from datahelpers import method_trainer as make_trainer
from datahelpers import record_replays
from test_gem import many_task_scenario

import clbench.methods.ergnn as ergnn
from clbench.experiment import ExperimentSpec, build_scenario, run_experiment, seed_everything
from clbench.scenario import NCScenarioLoader
from clbench.trainer import TrainerCallback

FAST = {"epochs": 15, "hidden": 32}

pytestmark = pytest.mark.usefixtures("one_thread")


def synthetic_scenario(seed: int = 0, **tasks) -> NCScenarioLoader:
    seed_everything(seed)
    return build_scenario(ExperimentSpec(method="ergnn", dataset="synthetic", seed=seed,
                                         **tasks))


def test_empty_budget_is_finetune_bit_for_bit() -> None:
    """num_memories below the number of classes: no node per class, no replay."""
    out = run_experiment(method="ergnn", dataset="synthetic", seed=2,
                         params={**FAST, "num_memories": 9})  # 10 classes: 9 // 10 = 0
    bare = run_experiment(method="finetune", dataset="synthetic", seed=2, params=FAST)
    assert np.array_equal(np.array(out["R_test"]), np.array(bare["R_test"]))
    assert np.array_equal(np.array(out["R_val"]), np.array(bare["R_val"]))
    assert out["timing"]["task_epochs"] == bare["timing"]["task_epochs"]
    assert out["extra_storage_bytes"] == 0


@pytest.mark.parametrize(("sampler", "graph"), [("CM", "full"), ("MF", "full"),
                                                ("random", "task")])
def test_replayed_nodes_are_past_tasks_training_nodes(sampler: str, graph: str) -> None:
    """Every replayed node, at every step, is a training node of a finished task (never
    a validation or test node, never the current task's), restricted to its own
    task's classes, and scored on the graph its task is evaluated on."""
    scenario = synthetic_scenario(0, graph=graph)
    trainer, params = make_trainer("ergnn", scenario, 0, num_memories=40, sampler=sampler,
                                   **FAST)
    seen = record_replays(trainer)
    trainer.run(params["epochs"])
    g = scenario.graph
    assert {t for t, _ in seen} == set(range(1, scenario.num_tasks))
    for t, batches in seen:
        nodes = torch.cat([b.nodes for b in batches])
        assert nodes.numel() == 4 * 2 * t  # 40 // 10 = 4 per class, 2 classes per task
        assert nodes.unique().numel() == nodes.numel()
        assert bool(g.train_mask[nodes].all())
        assert not bool((g.val_mask[nodes] | g.test_mask[nodes]).any())
        assert bool((scenario.node_task[nodes] < t).all())
        for b in batches:
            assert torch.equal(b.task_ids, scenario.node_task[b.nodes])
            assert torch.equal(b.candidates, scenario.task_classes[b.task_ids])
            assert torch.equal(b.candidates.gather(1, b.local_labels[:, None])[:, 0], b.labels)
            tasks = b.task_ids.unique().tolist()
            expected = scenario.graph if graph == "full" else scenario.graph_for(tasks)
            assert b.graph is expected


def test_budget_with_many_small_tasks() -> None:
    """20 tasks x 2 classes (40 classes): num_memories // 40 nodes per class, so the
    buffer reaches but never exceeds the budget."""
    scenario = many_task_scenario(20)
    trainer, _ = make_trainer("ergnn", scenario, 0, num_memories=95, **{**FAST, "epochs": 1})
    sizes = []

    class Size(TrainerCallback):
        def on_task_end(self, trainer, task_id, test_row):
            sizes.append(trainer.training_states["buffer"].numel())

    trainer.callbacks.append(Size())
    out = trainer.run(1)
    assert sizes == [4 * (t + 1) for t in range(20)]  # 95 // 40 = 2 per class
    assert max(sizes) <= 95
    assert out.extra_storage_bytes == 80 * (8 + 8 + 4 * 16)


def test_replay_loss_is_begins_weighting() -> None:
    """loss = (1 - beta) * task loss + beta * buffer loss, beta = |B| / (|B| + n_t), both
    from one full-graph forward pass; the step back-propagates exactly that."""
    scenario = synthetic_scenario(1, num_tasks=3)
    trainer, _ = make_trainer("ergnn", scenario, 1, num_memories=50, **FAST)

    class Stop(Exception):
        pass

    class StopAtLastTask(TrainerCallback):
        def on_task_start(self, trainer, task_id):
            if task_id == 2:
                raise Stop

    trainer.callbacks.append(StopAtLastTask())
    with pytest.raises(Stop):
        trainer.run(3)
    model, states = trainer.model, trainer.training_states
    buffer = states["buffer"]
    assert buffer.numel() == 5 * 3 * 2  # 50 // 10 per class, 3 classes per task, 2 tasks
    batch = scenario.get_task(2).train
    reference = copy.deepcopy(model).train()
    logits = trainer.forward(reference, batch)
    task_loss = torch.nn.functional.cross_entropy(batch.restrict(logits), batch.local_labels)
    (replay,) = trainer.replay_batches(states)
    buf_loss = torch.nn.functional.cross_entropy(replay.restrict(logits), replay.local_labels)
    beta = buffer.numel() / (buffer.numel() + len(batch))
    expected = (1 - beta) * task_loss + beta * buf_loss
    expected.backward()

    model.train()
    trainer.optimizer.zero_grad(set_to_none=True)
    results = trainer.inference(model, batch, states)
    stats = trainer.afterInference(results, model, trainer.optimizer, batch, states)
    assert stats["loss"] == pytest.approx(expected.item(), rel=1e-6)
    assert stats["replay_loss"] == pytest.approx(buf_loss.item(), rel=1e-6)
    # the gradients stepped on are those of the mixed loss
    for p, q in zip(model.parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad)


def test_coverage_maximisation_prefers_nodes_far_from_other_classes() -> None:
    own = torch.tensor([[0.0, 0.0], [5.0, 0.0], [0.2, 0.0], [6.0, 0.0]])
    other = torch.tensor([[0.1, 0.0], [0.3, 0.0], [5.2, 0.0]])
    # within 0.5 of an other-class node: 2, 1, 2, 0
    torch.manual_seed(0)
    assert ergnn.coverage_max(own, [other], 2, 0.5).tolist() == [3, 1]
    assert set(ergnn.coverage_max(own, [other], 4, 0.5)[2:].tolist()) == {0, 2}
    assert ergnn.coverage_max(own, [other], 10, 0.5).numel() == 4  # a smaller class


def test_mean_of_feature_takes_the_nodes_closest_to_the_mean() -> None:
    own = torch.tensor([[0.0], [1.0], [2.0], [3.0], [10.0]])  # mean 3.2
    assert ergnn.mean_of_feature(own, 2).tolist() == [3, 2]


def test_selection_per_class_from_the_task_training_nodes() -> None:
    scenario = synthetic_scenario(0)
    for sampler in ergnn.SAMPLERS:
        trainer, _ = make_trainer("ergnn", scenario, 0, num_memories=70, sampler=sampler)
        train = scenario.get_task(3).train
        chosen = trainer.select(train)
        labels = scenario.graph.y[chosen]
        assert sorted(labels.tolist()) == sorted(scenario.task_classes[3].tolist() * 7)
        assert bool(torch.isin(chosen, train.nodes).all())
