"""PI-GNN in Task-IL: frozen blocks stay bit-identical, the network grows by what the card
says, the extra storage is exactly the growth beyond the backbone plus the memory, the
memory loss is weighted by ``retrain``, forgetting is exactly zero, and resume points work.
Class-IL: tests/test_pignn_class_il.py."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from datahelpers import Snapshots, check_zero_forgetting, method_trainer, n_params

import clbench.methods.pignn  # noqa: F401  (registration)
from clbench.errors import ClbenchError
from clbench.experiment import (
    ExperimentSpec,
    build_backbone,
    build_scenario,
    run_experiment,
    seed_everything,
)
from clbench.methods.memory import stored_batch
from clbench.methods.pignn import (
    NCTaskILPIGNNTrainer,
    ProgressiveGCN,
    block_param_count,
    block_widths,
    param_count,
)
from clbench.models import build_model
from clbench.resolve import resolve_run
from clbench.scenario import NCScenarioLoader
from clbench.trainer import TrainerCallback

FAST = {"epochs": 25, "hidden": 32, "lr": 0.01, "num_memories": 40, "retrain": 1.0}

pytestmark = pytest.mark.usefixtures("one_thread")


def synthetic_scenario(seed: int = 0) -> NCScenarioLoader:
    seed_everything(seed)
    return build_scenario(ExperimentSpec(method="pignn", dataset="synthetic", seed=seed))


def make_trainer(scenario, seed, callbacks=(), **overrides
                 ) -> tuple[NCTaskILPIGNNTrainer, dict]:
    return method_trainer("pignn", scenario, seed, callbacks=callbacks, **{**FAST, **overrides})


def test_isolated_blocks_are_bit_identical_and_forgetting_is_zero() -> None:
    """With weight decay and dropout: every block (weights, biases, BatchNorm affine and
    running statistics, classifier slice) is unchanged after its task, and each task's
    score never moves once learned."""
    scenario = synthetic_scenario(0)
    snaps = Snapshots()
    trainer, params = make_trainer(scenario, 0, [snaps], hidden=64, weight_decay=0.01,
                                   dropout=0.25)
    out = trainer.run(params["epochs"])
    T = scenario.num_tasks
    check_zero_forgetting(out.R_test)
    check_zero_forgetting(out.R_val)
    assert np.diag(out.R_test).mean() > 0.7  # well above chance (0.5)
    final = snaps.states[-1]
    for t in range(T - 1):
        own = [k for k in snaps.states[t] if k.startswith(f"blocks.{t}.")]
        assert any(k.endswith("running_mean") for k in own)
        assert any(k.endswith("classifier.weight") for k in own)
        for key in own:
            assert torch.equal(final[key], snaps.states[t][key]), key


def test_growth_per_task_and_width_match_the_card() -> None:
    scenario = synthetic_scenario(1)
    snaps = Snapshots()
    trainer, params = make_trainer(scenario, 1, [snaps], epochs=3)
    trainer.run(params["epochs"])
    T = scenario.num_tasks
    backbone = build_backbone(resolve_run("pignn", "synthetic", 1, params=params).protocol,
                              scenario)
    budget = n_params(backbone)
    in_dim, C = scenario.graph.num_features, backbone.classifier.out_features
    H = trainer.total_width
    widths = block_widths(H, T)
    assert len(widths) == T and sum(widths) == H and max(widths) - min(widths) <= 1
    counts = [snaps.counts_at_start, *snaps.counts]
    for t in range(T):
        added = block_param_count(in_dim, C, 3, widths, t)
        assert counts[t + 1] - (counts[t] if t else 0) == added, t
    assert snaps.counts_at_start == block_param_count(in_dim, C, 3, widths, 0)
    # H is the smallest width with at least the backbone's parameters
    assert counts[-1] == param_count(in_dim, C, 3, H, T) >= budget
    assert param_count(in_dim, C, 3, H - 1, T) < budget
    assert [b.width for b in trainer.model.blocks] == widths


def test_task_subgraphs_score_the_memory_on_its_own_subgraph_and_forget_nothing() -> None:
    """``--graph task``: the memory of each earlier task is scored on that task's subgraph
    (a forward pass of its own); the blocks still isolate every task."""
    result = run_experiment(method="pignn", dataset="synthetic", seed=4, graph="task",
                            params={**FAST, "epochs": 8})
    check_zero_forgetting(np.array(result["R_test"]))
    assert result["scenario"]["graph_mode"] == "task"


@pytest.mark.parametrize("batch_norm", [True, False])
def test_the_count_formula_matches_real_modules(batch_norm: bool) -> None:
    """One block of width h is the plain backbone, parameter for parameter; a grown
    network counts what param_count says."""
    for hidden, layers in [(16, 3), (37, 2)]:
        plain = build_model("gcn", 50, 7, hidden=hidden, layers=layers, batch_norm=batch_norm)
        assert param_count(50, 7, layers, hidden, 1, batch_norm) == n_params(plain)
        grown = ProgressiveGCN(50, 7, block_widths(hidden, 4), layers, batch_norm=batch_norm)
        for _ in range(3):
            grown.grow()
        assert n_params(grown) == param_count(50, 7, layers, hidden, 4, batch_norm)


def test_extra_storage_is_the_growth_beyond_the_backbone_plus_the_memory() -> None:
    result = run_experiment(method="pignn", dataset="synthetic", seed=2,
                            params={**FAST, "epochs": 3})
    scenario = synthetic_scenario(2)
    spec = resolve_run("pignn", "synthetic", 2, params={**FAST, "epochs": 3})
    backbone = build_backbone(spec.protocol, scenario)
    seed_everything(2)
    trainer, _ = make_trainer(scenario, 2, epochs=3)
    trainer.run(3)
    T, in_dim = scenario.num_tasks, scenario.graph.num_features

    def state_bytes(model):
        return sum(v.numel() * v.element_size() for v in model.state_dict().values())

    memory_nodes = (T - 1) * (FAST["num_memories"] // T)  # none drawn after the last task
    assert sum(m.numel() for m in trainer.training_states["memories"]) == memory_nodes
    expected = (state_bytes(trainer.model) - state_bytes(backbone)
                + memory_nodes * (8 + 8 + 4 * in_dim))
    assert result["extra_storage_bytes"] == expected > 0
    # the memories are training nodes of their own task
    for t, nodes in enumerate(trainer.training_states["memories"]):
        assert (scenario.node_task[nodes] == t).all()
        assert scenario.graph.train_mask[nodes].all()


class MemoryLossProbe(TrainerCallback):
    """At the start of the last task: the loss ``afterInference`` steps on, the task loss,
    and the memory's loss recomputed here (:meth:`memory_loss`; each stored node among
    its own task's classes)."""

    def on_task_start(self, trainer, task_id) -> None:
        if task_id != trainer.num_tasks - 1:
            return
        model, states = trainer.model, trainer.training_states
        model.eval()  # deterministic forward (no dropout, fixed BatchNorm statistics)
        batch = trainer.scenario.get_task(task_id).train
        results = trainer.inference(model, batch, states)
        task_loss = results["loss"].item()

        class NoStep:
            def step(self):
                pass

        stats = trainer.afterInference(results, model, NoStep(), batch, states)
        with torch.no_grad():
            memory_loss = self.memory_loss(trainer, task_id, batch)
        self.seen = (stats["loss"], task_loss, memory_loss)
        model.zero_grad(set_to_none=True)
        raise KeyboardInterrupt

    def memory_loss(self, trainer, task_id, batch) -> float:
        model = trainer.model
        memory = stored_batch(trainer.scenario, torch.cat(trainer.training_states["memories"]))
        logits = model(model.inputs(memory.graph), memory.graph)
        return F.cross_entropy(memory.restrict(logits), memory.local_labels).item()


@pytest.mark.parametrize("retrain", [0.0, 0.1, 2.5])
def test_training_loss_adds_retrain_times_the_memory_loss(retrain: float) -> None:
    scenario = synthetic_scenario(3)
    probe = MemoryLossProbe()
    trainer, params = make_trainer(scenario, 3, [probe], epochs=3, retrain=retrain)
    with pytest.raises(KeyboardInterrupt):
        trainer.run(params["epochs"])
    total, task_loss, memory_loss = probe.seen
    assert memory_loss > 0
    assert total == pytest.approx(task_loss + retrain * memory_loss, rel=1e-6)


@pytest.mark.parametrize(("settings", "match"), [
    ({"params": {"model": "sage"}}, "runs only on --model gcn, not sage: it grows its own"),
    ({"params": {"model": "gat"}}, "runs only on --model gcn, not gat"),
])
def test_other_backbones_are_refused_before_training(settings, match) -> None:
    with pytest.raises(ClbenchError, match=match):
        resolve_run("pignn", "synthetic", 0, **settings)


@pytest.mark.slow
def test_cora_zero_forgetting_and_every_task_learns(cora_graph) -> None:
    torch.set_num_threads(2)  # a real graph: both cores (the fixture restores the count)
    from clbench.degenerate import degenerate_tasks, learned_scores, majority_baseline

    scenario = NCScenarioLoader(cora_graph, 3, 2, seed=0)
    trainer, params = method_trainer("pignn", scenario, 0, dataset="cora")
    assert params["num_memories"] == 12 and trainer.per_task == 4
    out = trainer.run(params["epochs"])
    check_zero_forgetting(out.R_test)
    majority, margin = majority_baseline(scenario)
    assert degenerate_tasks(learned_scores(out.R_test), majority, margin) == []
    assert out.R_test[-1].mean() > 0.85
