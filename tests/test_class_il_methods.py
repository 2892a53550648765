"""LwF, MAS, TWP, GEM and ER-GNN in Class-IL: what defines each there, and their Task-IL
numbers unchanged by the Class-IL code.

* their limits (strength 0, an empty memory) are fine-tuning in Class-IL too;
* LwF distils every old class (by class id, in one softmax) from the frozen model;
* ER-GNN replays only past tasks' training nodes, within budget, among the seen classes;
* GEM scores its memories among the seen classes and a projected step raises none of
  their losses;
* Task-IL: each method equals, bit for bit, a copy of its Task-IL logic as it was before
  Class-IL (the pieces the Class-IL change touched, frozen below).
(With one task, Class-IL equals Task-IL bit for bit: tests/test_class_il.py.)
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from datahelpers import flat_grads, record_replays

from clbench.experiment import build_backbone, build_scenario, make_optimizer_fn, seed_everything
from clbench.methods import METHODS
from clbench.methods.ergnn import NCTaskILERGNNTrainer
from clbench.methods.gem import NCTaskILGEMTrainer
from clbench.methods.lwf import NCTaskILLwFTrainer
from clbench.methods.memory import stored_batch
from clbench.resolve import resolve_run
from clbench.scenario import NodeBatch
from clbench.trainer import NCTrainer, TrainerCallback

FAST = {"epochs": 15, "hidden": 32}

pytestmark = pytest.mark.usefixtures("one_thread")


def spec_of(method: str, setting: str, seed: int = 0, graph: str = "full",
            num_tasks: int = 3, **params):
    return resolve_run(method, "synthetic", seed, setting=setting, num_tasks=num_tasks,
                       classes_per_task=2, graph=graph, params={**FAST, **params})


def trainer_of(spec, cls: type[NCTrainer] | None = None, callbacks=()):
    """``(trainer, scenario)`` built as :func:`clbench.experiment.run_experiment` does,
    with ``cls`` (default: the spec's method) as the trainer class."""
    seed_everything(spec.seed)
    scenario = build_scenario(spec)
    seed_everything(spec.seed)
    cls = cls or METHODS.get(spec.method)
    trainer = cls(build_backbone(spec.protocol, scenario), scenario,
                  make_optimizer_fn(spec.protocol), None, spec.device, protocol=spec.protocol,
                  callbacks=list(callbacks), **spec.params)
    return trainer, scenario


def run(spec, cls=None, callbacks=()):
    trainer, scenario = trainer_of(spec, cls, callbacks)
    return trainer, scenario, trainer.run(spec.protocol.epochs)


def assert_same_run(a, b) -> None:
    assert np.array_equal(a.R_test, b.R_test) and np.array_equal(a.R_val, b.R_val)
    assert np.array_equal(a.init_test, b.init_test) and a.task_epochs == b.task_epochs


# ----------------------------------------------------------------------------- limits
@pytest.mark.parametrize(("method", "params"), [
    ("lwf", {"lamb": 0.0}),
    ("mas", {"lamb": 0.0}),
    ("twp", {"lambda_l": 0.0, "lambda_t": 0.0}),
    ("gem", {"num_memories": 2}),    # 3 tasks: 2 // 3 = 0 nodes per task
    ("ergnn", {"num_memories": 9}),  # 10 classes: 9 // 10 = 0 nodes per class
])
def test_strength_zero_or_no_memory_is_finetune_in_class_il(method, params):
    """Dropout on: an extra pass that drew dropout masks or moved BatchNorm statistics
    would show."""
    *_, out = run(spec_of(method, "class", seed=3, dropout=0.5, **params))
    *_, bare = run(spec_of("finetune", "class", seed=3, dropout=0.5))
    assert_same_run(out, bare)
    assert not np.array_equal(np.triu(bare.R_test, 1), bare.R_test)  # it learned something


# ----------------------------------------------------------------------------- LwF
class Snapshots(TrainerCallback):
    """The model when each task starts, after every epoch, each epoch's training stats,
    and the targets LwF kept for the task."""

    def __init__(self) -> None:
        self.start: dict[int, torch.nn.Module] = {}
        self.epochs: dict[int, list[tuple[torch.nn.Module, dict]]] = {}
        self.targets: dict[int, torch.Tensor] = {}

    def on_task_start(self, trainer, task_id) -> None:
        self.start[task_id] = copy.deepcopy(trainer.model)
        self.epochs[task_id] = []

    def on_epoch_end(self, trainer, task_id, epoch, iter_results) -> None:
        self.targets[task_id] = trainer.training_states["targets"].clone()
        self.epochs[task_id].append((copy.deepcopy(trainer.model),
                                     dict(iter_results["train_stats"])))


def test_lwf_class_il_distils_every_old_class_from_the_frozen_model():
    """Task t's targets are the softened outputs, in ONE softmax, of the model as task t
    started at exactly the classes of tasks 0..t-1 (by class id: with this class order a
    new class sorts before an old one, so the old classes are not the first columns of
    the candidates), and every step's penalty is lamb x the soft cross-entropy of the
    model before the step at those classes against them. Without dropout and BatchNorm
    the training forward pass equals the eval-mode one, so it can be recomputed."""
    lamb, T = 0.5, 1.5
    spec = spec_of("lwf", "class", seed=1, lamb=lamb, T=T, dropout=0.0, batch_norm=False)
    snaps = Snapshots()
    trainer, scenario, _ = run(spec, callbacks=[snaps])
    shifted = False
    for t in (1, 2):
        batch = scenario.get_task(t).train
        old = scenario.seen_classes(t)
        assert set(old.tolist()) == set(scenario.task_classes[:t].reshape(-1).tolist())
        assert not set(old.tolist()) & set(scenario.task_classes[t].tolist())
        cand = batch.candidates[0]
        shifted |= not torch.equal(cand[: old.numel()], old)

        def old_logits(model, batch=batch, old=old):
            with torch.no_grad():
                return trainer.forward(model.eval(), batch)[batch.nodes][:, old]

        teacher = snaps.start[t]
        want = F.softmax(old_logits(teacher) / T, -1)[:, None]
        assert snaps.targets[t].shape == (len(batch), 1, 2 * t)
        torch.testing.assert_close(snaps.targets[t], want, rtol=0, atol=1e-7)
        before = [teacher] + [m for m, _ in snaps.epochs[t][:-1]]
        for model, (_, stats) in zip(before, snaps.epochs[t], strict=True):
            p = F.softmax(old_logits(teacher) / T, -1)
            expected = -(p * F.log_softmax(old_logits(model) / T, -1)).sum(-1).mean()
            assert stats["penalty"] == pytest.approx(lamb * float(expected), rel=1e-4)
    assert shifted, "pick a seed whose class order puts a new class before an old one"
    # the student's old logits are picked by class id from the full logits
    marker = torch.arange(scenario.num_classes, dtype=torch.float).expand(
        scenario.graph.num_nodes, -1)
    picked = trainer.old_task_logits(marker, scenario.get_task(2).train, 2)
    assert torch.equal(picked[0, 0], scenario.seen_classes(2).float())


# ----------------------------------------------------------------------------- ER-GNN
@pytest.mark.parametrize("graph", ["full", "task"])
def test_ergnn_class_il_replays_past_training_nodes_among_seen_classes(graph):
    """At every step of task t the buffer is training nodes of tasks < t, within budget
    (40 // 10 = 4 per class), each classified among the classes of tasks 0..t (the
    current batch's candidates), with its label at the right position."""
    trainer, scenario = trainer_of(spec_of("ergnn", "class", graph=graph, num_memories=40))
    calls = record_replays(trainer)
    trainer.run(FAST["epochs"])
    g = scenario.graph
    assert {t for t, _ in calls} == {1, 2}
    for t, batches in calls:
        nodes = torch.cat([b.nodes for b in batches])
        assert nodes.numel() == 4 * 2 * t <= 40 and nodes.unique().numel() == nodes.numel()
        assert bool(g.train_mask[nodes].all())
        assert bool((scenario.node_task[nodes] < t).all())
        for b in batches:
            assert bool((b.candidates == scenario.seen_classes(t + 1)).all())
            assert torch.equal(b.candidates.gather(1, b.local_labels[:, None])[:, 0], b.labels)
            expected = g if graph == "full" else scenario.graph_for(b.task_ids.unique().tolist())
            assert b.graph is expected
    with pytest.raises(ValueError, match="Class-IL: stored nodes need"):
        stored_batch(scenario, nodes)  # the number of tasks seen is required
    with pytest.raises(ValueError, match="Class-IL: stored nodes need"):
        stored_batch(scenario, nodes, seen=1)  # and must cover the nodes' tasks


# ----------------------------------------------------------------------------- GEM
@pytest.mark.parametrize("scope", ["touched", "all"])
def test_gem_class_il_projected_steps_raise_no_memory_loss(scope):
    """Memories are scored among the classes of tasks 0..t; every step whose gradient
    points against a memory's applies the projection, whose dot product with every
    memory gradient is >= 0 up to the QP's ridge (and >= -1e-6 relative to the norms);
    other steps apply the gradient untouched."""
    trainer, scenario = trainer_of(spec_of("gem", "class", num_memories=60, scope=scope))
    decisions, applied, memories = [], [], []
    original_projected, original_batches = trainer.projected, trainer.memory_batches

    def projected(grad, memory_grads):
        out = original_projected(grad, memory_grads)
        decisions.append((grad.clone(), memory_grads.clone(), out))
        return out

    def memory_batches(states):
        batches = original_batches(states)
        memories.append((trainer.curr_task, batches))
        return batches

    step = trainer.optimizer.step

    def recording_step(*args, **kwargs):
        if trainer.training_states["memories"]:
            applied.append(flat_grads(trainer.model).clone())
        return step(*args, **kwargs)

    trainer.projected, trainer.memory_batches = projected, memory_batches
    trainer.optimizer.step = recording_step
    trainer.run(FAST["epochs"])

    assert {t for t, _ in memories} == {1, 2}
    for t, batches in memories:
        assert len(batches) == t
        for b in batches:
            assert len(b) == 20 and bool(scenario.graph.train_mask[b.nodes].all())
            assert bool((scenario.node_task[b.nodes] < t).all())
            assert bool((b.candidates == scenario.seen_classes(t + 1)).all())
            assert torch.equal(b.candidates.gather(1, b.local_labels[:, None])[:, 0], b.labels)
    assert len(decisions) == len(applied) > 0
    num_projected = 0
    for (grad, G, out), used in zip(decisions, applied, strict=True):
        if out is None:
            assert bool(((G @ grad) >= 0).all()) and torch.equal(used, grad)
            continue
        num_projected += 1
        assert torch.equal(used, out)
        tol = 1e-6 * torch.linalg.vector_norm(G, dim=1) * torch.linalg.vector_norm(grad)
        tol = torch.maximum(tol, torch.full_like(tol, 1e-6))
        assert bool(((G @ out) >= -tol).all()), (G @ out, tol)
    assert num_projected > 0


# ----------------------------------------------------------------------------- Task-IL
def frozen_task_il_batch(scenario, nodes, graph=None) -> NodeBatch:
    """Stored nodes each among its own task's classes: memory.stored_batch before Class-IL."""
    labels, task_ids = scenario.graph.y[nodes], scenario.node_task[nodes]
    candidates = scenario.task_classes[task_ids]
    local = (candidates == labels.view(-1, 1)).long().argmax(1)
    return NodeBatch(graph if graph is not None else scenario.graph, nodes, labels,
                     task_ids, candidates, local)


class FrozenLwF(NCTaskILLwFTrainer):
    """LwF's Task-IL logic before Class-IL: one softmax per old task's classes, as many
    old tasks as the targets hold."""

    def old_task_logits(self, logits, batch, num_old):
        return logits[batch.nodes][:, self.scenario.task_classes[:num_old]]

    def afterInference(self, results, model, optimizer, _curr_batch, training_states):
        targets = training_states["targets"]
        if targets.numel():
            student = self.old_task_logits(results["logits"], _curr_batch, targets.size(1))
            results["penalty"] = self.lamb * self.distillation(student, targets)
            results["loss"] = results["loss"] + results["penalty"]
        return NCTrainer.afterInference(self, results, model, optimizer, _curr_batch,
                                        training_states)


class FrozenGEM(NCTaskILGEMTrainer):
    def memory_batches(self, training_states):
        sc = self.scenario
        return [frozen_task_il_batch(sc, n, sc.graph_for((int(sc.node_task[n[0]]),)))
                for n in training_states["memories"]]


class FrozenERGNN(NCTaskILERGNNTrainer):
    def replay_batches(self, training_states):
        sc, nodes = self.scenario, training_states["buffer"]
        if not nodes.numel():
            return []
        if sc.graph_mode == "full":
            return [frozen_task_il_batch(sc, nodes)]
        tasks = sc.node_task[nodes]
        return [frozen_task_il_batch(sc, nodes[tasks == t], sc.graph_for((t,)))
                for t in tasks.unique().tolist()]


@pytest.mark.parametrize(("frozen", "method", "graph", "params"), [
    (FrozenLwF, "lwf", "full", {}),
    (FrozenGEM, "gem", "full", {"num_memories": 30}),
    (FrozenGEM, "gem", "task", {"num_memories": 30, "scope": "all"}),
    (FrozenERGNN, "ergnn", "full", {"num_memories": 40}),
    (FrozenERGNN, "ergnn", "task", {"num_memories": 40, "sampler": "random"}),
])
def test_task_il_is_unchanged_bit_for_bit(frozen, method, graph, params):
    """The Class-IL code leaves every Task-IL number as it was: matrices, epochs and the
    final weights equal those of the frozen pre-Class-IL logic, to the last bit."""
    spec = spec_of(method, "task", seed=2, graph=graph, **params)
    live, _, a = run(spec)
    old, _, b = run(spec, frozen)
    assert_same_run(a, b)
    wa, wb = live.model.state_dict(), old.model.state_dict()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
