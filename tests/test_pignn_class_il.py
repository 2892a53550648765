"""PI-GNN in Class-IL (``--setting class``): what defines it there, and its Task-IL
numbers unchanged by the Class-IL code.

* the isolated blocks of past tasks stay bit-identical and the network grows by what
  the card says, as in Task-IL (but forgetting is not zero: the new block's classifier
  slice adds to every class's logit);
* the memory (the ``retrain`` replay) holds only past tasks' training nodes, within the
  budget, scored among every class seen so far;
* prediction uses no task identity: the whole network over every seen class, so a node
  of task 0 can be predicted as a later task's class;
* with one task, Class-IL is Task-IL bit for bit;
* a stopped Class-IL run resumes bit for bit;
* Task-IL equals, bit for bit, a copy of the Task-IL logic as it was before Class-IL.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from datahelpers import Snapshots, record_replays
from test_pignn import MemoryLossProbe as TaskILMemoryLossProbe

import clbench.methods.pignn  # noqa: F401  (registration)
from clbench.experiment import build_scenario, build_trainer, run_experiment, seed_everything
from clbench.methods.memory import stored_batches
from clbench.methods.pignn import NCTaskILPIGNNTrainer, block_param_count, block_widths
from clbench.methods.taskviews import eval_by_view
from clbench.resolve import resolve_run
from clbench.trainer import NCTrainer, TrainerCallback

FAST = {"epochs": 25, "hidden": 32, "lr": 0.01, "num_memories": 30, "retrain": 1.0}

pytestmark = pytest.mark.usefixtures("one_thread")


def spec_of(setting: str, seed: int = 0, graph: str = "full", num_tasks: int = 3,
            classes_per_task: int = 2, **params):
    return resolve_run("pignn", "synthetic", seed, setting=setting, num_tasks=num_tasks,
                       classes_per_task=classes_per_task, graph=graph,
                       params={**FAST, **params})


def trainer_of(spec, cls: type[NCTrainer] | None = None, callbacks=()):
    """``(trainer, scenario)`` built as :func:`clbench.experiment.run_experiment` does,
    with ``cls`` (default: PI-GNN) as the trainer class."""
    seed_everything(spec.seed)
    scenario = build_scenario(spec)
    seed_everything(spec.seed)
    if cls is None:
        return build_trainer(spec, scenario, callbacks), scenario
    from clbench.experiment import build_backbone, make_optimizer_fn

    trainer = cls(build_backbone(spec.protocol, scenario), scenario,
                  make_optimizer_fn(spec.protocol), None, spec.device, protocol=spec.protocol,
                  callbacks=list(callbacks), **spec.params)
    return trainer, scenario


# ----------------------------------------------------------------------------- isolation
def test_class_il_isolated_blocks_are_bit_identical_and_grow_as_the_card_says() -> None:
    """With weight decay and dropout: every block (weights, biases, BatchNorm affine and
    running statistics, classifier slice over all classes) is unchanged after its task,
    and each task adds exactly the card's count. Old tasks' scores still move (the new
    block adds to every class's logit): forgetting is not zero in Class-IL."""
    snaps = Snapshots()
    spec = spec_of("class", seed=0, num_tasks=4, hidden=64, weight_decay=0.01,
                   dropout=0.25)
    trainer, scenario = trainer_of(spec, callbacks=[snaps])
    out = trainer.run(spec.protocol.epochs)
    T = scenario.num_tasks
    final = snaps.states[-1]
    for t in range(T - 1):
        own = [k for k in snaps.states[t] if k.startswith(f"blocks.{t}.")]
        assert any(k.endswith("running_mean") for k in own)
        assert any(k.endswith("classifier.weight") for k in own)
        for key in own:
            assert torch.equal(final[key], snaps.states[t][key]), key
    in_dim, C = scenario.graph.num_features, scenario.num_classes
    widths = block_widths(trainer.total_width, T)
    counts = [snaps.counts_at_start, *snaps.counts]  # at the start, after each task
    for t in range(T):  # block t is added when task t starts
        added = block_param_count(in_dim, C, 3, widths, t)
        assert counts[t + 1] - (counts[t] if t else 0) == added, t
    assert [b.width for b in trainer.model.blocks] == widths
    R = out.R_test
    assert np.diag(R).mean() > 0.6
    assert any(R[i, j] != R[j, j] for j in range(T) for i in range(j + 1, T))


# ----------------------------------------------------------------------------- memory
@pytest.mark.parametrize("graph", ["full", "task"])
def test_class_il_memory_is_past_training_nodes_within_budget_among_seen_classes(graph):
    """At every step of task t the memory is num_memories // T = 10 training nodes of each
    task < t (never validation or test nodes, never the current task's), within the
    budget, each classified among the classes of tasks 0..t with its label at the
    right position; on its own task's subgraph with ``--graph task``."""
    trainer, scenario = trainer_of(spec_of("class", seed=1, graph=graph, epochs=6))
    calls = record_replays(trainer, "memory_batches")
    trainer.run(6)
    g = scenario.graph
    assert {t for t, _ in calls} == {1, 2}
    for t, batches in calls:
        nodes = torch.cat([b.nodes for b in batches])
        assert nodes.numel() == 10 * t <= FAST["num_memories"]
        assert nodes.unique().numel() == nodes.numel()
        assert bool(g.train_mask[nodes].all())
        assert not bool((g.val_mask[nodes] | g.test_mask[nodes]).any())
        tasks = scenario.node_task[nodes]
        assert torch.equal(torch.bincount(tasks, minlength=t), torch.full((t,), 10))
        for b in batches:
            assert bool((b.candidates == scenario.seen_classes(t + 1)).all())
            assert torch.equal(b.candidates.gather(1, b.local_labels[:, None])[:, 0], b.labels)
            expected = g if graph == "full" else scenario.graph_for(b.task_ids.unique().tolist())
            assert b.graph is expected


class MemoryLossProbe(TaskILMemoryLossProbe):
    """As Task-IL's probe, with the memory's loss recomputed here among the classes seen
    so far (tasks 0..t), not through the method's own memory batches."""

    def memory_loss(self, trainer, task_id, batch) -> float:
        model = trainer.model
        seen = trainer.scenario.seen_classes(task_id + 1)
        nodes = torch.cat(trainer.training_states["memories"])
        logits = model(model.inputs(batch.graph), batch.graph)[nodes][:, seen]
        labels = torch.searchsorted(seen, trainer.scenario.graph.y[nodes])
        return torch.nn.functional.cross_entropy(logits, labels).item()


@pytest.mark.parametrize("retrain", [0.0, 2.5])
def test_class_il_loss_adds_retrain_times_the_memory_loss_over_seen_classes(retrain):
    probe = MemoryLossProbe()
    trainer, _ = trainer_of(spec_of("class", seed=3, epochs=3, retrain=retrain),
                            callbacks=[probe])
    with pytest.raises(KeyboardInterrupt):
        trainer.run(3)
    total, task_loss, memory_loss = probe.seen
    assert memory_loss > 0
    assert total == pytest.approx(task_loss + retrain * memory_loss, rel=1e-6)


# ----------------------------------------------------------------------------- prediction
def test_class_il_predicts_every_node_with_the_whole_network_among_seen_classes():
    """After the last task: each prediction is the argmax of the whole network's logits
    over every seen class (recomputed here), whatever task identity the batch carries;
    some node of task 0 is predicted as a class of a later task (never in Task-IL)."""
    trainer, scenario = trainer_of(spec_of("class", seed=0, epochs=30))
    trainer.run(30)
    model = trainer.model.eval()
    (batch,) = scenario.eval_batches("test", seen=3)
    seen = scenario.seen_classes(3)
    assert (batch.candidates == seen).all()
    preds, _ = trainer.processEvalIteration(model, batch, trainer.training_states)
    with torch.no_grad():
        logits = model(model.inputs(batch.graph), batch.graph)[batch.nodes][:, seen]
    assert torch.equal(preds, seen[logits.argmax(-1)])
    for fake in (torch.zeros_like(batch.task_ids), torch.full_like(batch.task_ids, 2)):
        blind = batch.subset(torch.arange(len(batch)))
        blind.task_ids = fake
        assert torch.equal(trainer.processEvalIteration(model, blind, None)[0], preds)
    pred_task = scenario.class_to_task[preds]
    first = batch.task_ids == 0
    assert bool((pred_task[first] > 0).any())
    assert bool((pred_task != batch.task_ids).any())


def test_one_task_class_il_is_task_il_bit_for_bit():
    """One task: the seen classes are the task's, in the same order, so the same numbers
    to the last bit (matrices, untrained row, epochs, AP)."""
    kw = {"num_tasks": 1, "classes_per_task": 3, "params": {**FAST, "epochs": 15,
                                                            "dropout": 0.25}}
    task = run_experiment(resolve_run("pignn", "synthetic", 0, setting="task", **kw))
    cls = run_experiment(resolve_run("pignn", "synthetic", 0, setting="class", **kw))
    for key in ("R_test", "R_val", "init_test", "init_val", "ap_curve",
                "extra_storage_bytes"):
        assert cls[key] == task[key], key
    assert cls["timing"]["task_epochs"] == task["timing"]["task_epochs"]
    assert cls["metrics"]["AP"] == task["metrics"]["AP"]
    assert cls["scenario"]["setting"] == "class" and task["scenario"]["setting"] == "task"



class StopAtTask2(TrainerCallback):
    def on_task_start(self, trainer, task_id: int) -> None:
        if task_id == 2:
            raise KeyboardInterrupt


def test_class_il_run_resumes_bit_identically(tmp_path):
    """A Class-IL run stopped after task 1 regrows its blocks, keeps its memory and
    continues to the same numbers (dropout on: a wrongly restored generator shows)."""
    spec = spec_of("class", seed=5, epochs=6, dropout=0.5)
    reference = run_experiment(spec)
    path = tmp_path / "run.resume.pt"
    with pytest.raises(KeyboardInterrupt):
        run_experiment(spec, [StopAtTask2()], resume_file=path, resume_tag="t")
    torch.manual_seed(12345)
    resumed = run_experiment(spec, resume_file=path, resume_tag="t")
    assert resumed["resumed"]["after_task"] == 1
    for key in ("R_test", "R_val", "init_test", "extra_storage_bytes"):
        assert resumed[key] == reference[key], key
    assert resumed["timing"]["task_epochs"] == reference["timing"]["task_epochs"]

# ----------------------------------------------------------------------------- Task-IL
class FrozenPIGNN(NCTaskILPIGNNTrainer):
    """PI-GNN's Task-IL logic before Class-IL (the two events the change touched)."""

    def afterInference(self, results, model, optimizer, _curr_batch, training_states):
        from clbench.methods.memory import stored_logits

        logits = results.pop("logits")
        if training_states["memories"] and self.retrain > 0:
            batches = stored_batches(self.scenario, torch.cat(training_states["memories"]))
            parts = [stored_logits(b, _curr_batch, logits,
                                   lambda b: self.forward(model, b)) for b in batches]
            memory_loss = self.loss_fn(torch.cat(parts),
                                       torch.cat([b.local_labels for b in batches]))
            results["loss"] = results["loss"] + self.retrain * memory_loss
        return NCTrainer.afterInference(self, results, model, optimizer, _curr_batch,
                                        training_states)

    @torch.no_grad()
    def processEvalIteration(self, model, _curr_batch, training_states=None):
        batch = _curr_batch
        x = model.inputs(batch.graph)
        return eval_by_view(batch, batch.task_ids.clamp(max=len(model.blocks) - 1),
                            lambda j: model(x, batch.graph, upto=j),
                            lambda logits, b: self.loss_fn(logits, b.local_labels))


@pytest.mark.parametrize("graph", ["full", "task"])
def test_task_il_is_unchanged_bit_for_bit(graph):
    """The Class-IL code leaves every Task-IL number as it was: matrices, epochs and the
    final weights equal those of the frozen pre-Class-IL logic, to the last bit."""
    spec = spec_of("task", seed=2, graph=graph, epochs=12, dropout=0.25, weight_decay=0.01)
    live, _ = trainer_of(spec)
    a = live.run(spec.protocol.epochs)
    old, _ = trainer_of(spec, FrozenPIGNN)
    b = old.run(spec.protocol.epochs)
    assert np.array_equal(a.R_test, b.R_test) and np.array_equal(a.R_val, b.R_val)
    assert np.array_equal(a.init_test, b.init_test) and a.task_epochs == b.task_epochs
    wa, wb = live.model.state_dict(), old.model.state_dict()
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)

