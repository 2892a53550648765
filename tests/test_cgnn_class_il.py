"""ContinualGNN in Class-IL (as BeGin's NCClassILCGNNTrainer), and its Task-IL numbers
unchanged by the Class-IL code:

* Task-IL equals, bit for bit, a frozen copy of the Task-IL logic as it was before
  Class-IL (detection over all outputs, Fisher and replay among each node's task's
  classes);
* the memory and the detected nodes are training nodes of finished tasks only (never
  validation or test nodes, never the current task's), the memory within its budget;
* no memory, no detection and no EWC term is Class-IL fine-tuning, bit for bit;
* the replayed nodes are scored among every class seen so far (tasks 0..t): a replayed
  node of task 0 can be predicted as a class of task 1;
* the Fisher is that of the memory's loss among the classes of tasks 0..t-1, and the
  detection compares outputs over those classes (the model as task t-1 left it has seen
  them: BeGin computes both before observing task t's labels);
* with one task, Class-IL is Task-IL bit for bit.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from datahelpers import method_trainer, record_replays
from test_cgnn import Stop, StopAtTask, Watch, _past_training_nodes
from test_class_il_methods import assert_same_run, frozen_task_il_batch, run, spec_of
from test_gem import many_task_scenario

import clbench.methods.cgnn as cgnn
from clbench.experiment import run_experiment
from clbench.scenario import NCScenarioLoader
from clbench.trainer import TrainerCallback

FAST = {"epochs": 15, "hidden": 32}

pytestmark = pytest.mark.usefixtures("one_thread")


# ----------------------------------------------------------------------------- Task-IL
class FrozenCGNN(cgnn.NCTaskILCGNNTrainer):
    """cgnn's Task-IL logic before Class-IL: the detection over all outputs, the Fisher
    and the replay with each node among its own task's classes."""

    def _frozen_batches(self, nodes):
        sc = self.scenario
        if not nodes.numel():
            return []
        if sc.graph_mode == "full":
            return [frozen_task_il_batch(sc, nodes)]
        tasks = sc.node_task[nodes]
        return [frozen_task_il_batch(sc, nodes[tasks == t], sc.graph_for((t,)))
                for t in tasks.unique().tolist()]

    @torch.no_grad()
    def detect(self, model, task_id, current, past):
        sc = self.scenario
        seen = torch.arange(task_id + 1, device=sc.node_task.device)
        before = sc.graph.induced(torch.isin(sc.node_task, seen[:-1]))
        after = sc.graph.induced(torch.isin(sc.node_task, seen))
        h_before = self.forward(model, sc.batch((task_id,), "train", graph=before))
        h_after = self.forward(model, sc.batch((task_id,), "train", graph=after))
        change = torch.zeros(sc.graph.num_nodes, dtype=h_after.dtype)
        change[current.nodes] = (h_after - h_before)[current.nodes].abs().sum(1)
        influence = cgnn.spread(change, after.edge_index)[past]
        hit = (influence > 0).nonzero().view(-1)
        order = torch.sort(influence[hit], descending=True, stable=True).indices
        return past[hit[order[: self.new_nodes_size]]]

    def fisher(self, model, nodes, seen=None):
        batches = self._frozen_batches(nodes)
        with torch.enable_grad():
            logits = torch.cat([b.restrict(self.forward(model, b)) for b in batches])
            loss = self.loss_fn(logits, torch.cat([b.local_labels for b in batches]))
            params = self._params()
            grads = torch.autograd.grad(loss, params, allow_unused=True)
        flat = torch.cat([(torch.zeros_like(p) if g is None else g).reshape(-1)
                          for g, p in zip(grads, params, strict=True)])
        return (flat * flat).detach()

    def replay_batches(self, training_states):
        return self._frozen_batches(training_states["replay"])


@pytest.mark.parametrize(("graph", "params"), [
    ("full", {"memory_size": 15, "new_nodes_size": 10, "dropout": 0.5}),
    ("full", {"memory_size": 15, "new_nodes_size": 10, "fisher_norm": "none"}),
    ("task", {"memory_size": 15, "new_nodes_size": 10, "memory_strategy": "random"}),
    ("full", {"memory_size": 0, "new_nodes_size": 8}),  # Fisher on all past nodes
])
def test_task_il_is_unchanged_bit_for_bit(graph, params):
    """Matrices, epochs and the final weights equal those of the frozen pre-Class-IL
    logic, to the last bit (memory, detection and EWC term all at work)."""
    spec = spec_of("cgnn", "task", seed=2, graph=graph, **params)
    live, _, a = run(spec)
    old, _, b = run(spec, FrozenCGNN)
    assert_same_run(a, b)
    wa, wb = live.model.state_dict(), old.model.state_dict()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert live.training_states["fisher"].numel() > 0


# ----------------------------------------------------------------------------- memory
def class_scenario(seed: int = 0, graph: str = "full") -> NCScenarioLoader:
    from clbench.experiment import build_scenario, seed_everything
    spec = spec_of("cgnn", "class", seed=seed, graph=graph)
    seed_everything(seed)
    return build_scenario(spec)


def watched(scenario, seed: int = 0, epochs: int = FAST["epochs"], **params):
    trainer, _ = method_trainer("cgnn", scenario, seed, **{**FAST, "epochs": epochs},
                                **params)
    watch = Watch()
    watch.wrap(trainer)
    trainer.callbacks.append(watch)
    return trainer, watch


@pytest.mark.parametrize(("strategy", "graph"), [("class", "full"), ("random", "task")])
def test_class_il_replay_holds_only_past_training_nodes_within_budget(strategy, graph):
    """At every task the memory and the detected nodes are training nodes of finished
    tasks (never validation or test nodes, never the current task's: BeGin's union may
    name a current training node, which it trains on once, as the task's own loss does
    here), the memory within its budget and wholly replayed."""
    scenario = class_scenario(0, graph)
    trainer, watch = watched(scenario, memory_size=15, new_nodes_size=10,
                             memory_strategy=strategy)
    trainer.run(FAST["epochs"])
    T = scenario.num_tasks
    assert scenario.setting == "class" and set(watch.replayed) == set(range(T))
    assert watch.replayed[0].numel() == 0
    for t in range(1, T):
        memory, replay = watch.memory_at_start[t], watch.replayed[t]
        assert 0 < memory.numel() <= 15
        assert bool(torch.isin(memory, replay).all())
        assert memory.numel() < replay.numel() <= 15 + 10  # some detected nodes too
        assert replay.unique().numel() == replay.numel()
        _past_training_nodes(scenario, replay, t)
        assert not bool(torch.isin(replay, scenario.get_task(t).train.nodes).any())
    assert max(watch.memory_sizes) <= 15


def test_class_il_memory_budget_with_many_tasks():
    """12 tasks x 2 classes, Class-IL: the memory never exceeds its 30 nodes and holds
    only past training nodes."""
    base = many_task_scenario(12)
    scenario = NCScenarioLoader(base.graph, 12, 2, seed=0, setting="class")
    trainer, watch = watched(scenario, epochs=1, memory_size=30, new_nodes_size=0)
    trainer.run(1)
    assert len(watch.memory_sizes) == 12 and max(watch.memory_sizes) <= 30
    assert watch.memory_sizes[-1] >= 24  # one node of each class at least
    for t in range(1, 12):
        _past_training_nodes(scenario, watch.memory_at_start[t], t)
        assert torch.equal(watch.replayed[t], watch.memory_at_start[t])


# ----------------------------------------------------------------------------- limits
def test_nothing_kept_is_class_il_finetune_bit_for_bit():
    """No memory, no detection, no EWC term: Class-IL fine-tuning to the last bit (with
    dropout, so that a random number drawn out of turn shows)."""
    params = {"memory_size": 0, "new_nodes_size": 0, "ewc_lambda": 0.0}
    live, _, out = run(spec_of("cgnn", "class", seed=3, dropout=0.5, **params))
    bare_trainer, _, bare = run(spec_of("finetune", "class", seed=3, dropout=0.5))
    assert_same_run(out, bare)
    wa, wb = live.model.state_dict(), bare_trainer.model.state_dict()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert out.extra_storage_bytes == 0
    assert not np.array_equal(np.triu(bare.R_test, 1), bare.R_test)  # it learned


def test_one_task_is_task_il_bit_for_bit():
    kw = {"num_tasks": 1, "classes_per_task": 3, "params": {**FAST, "memory_size": 10}}
    task = run_experiment(method="cgnn", dataset="synthetic", seed=0, setting="task", **kw)
    cls = run_experiment(method="cgnn", dataset="synthetic", seed=0, setting="class", **kw)
    for key in ("R_test", "R_val", "init_test", "init_val", "extra_storage_bytes"):
        assert cls[key] == task[key], key
    assert cls["timing"]["task_epochs"] == task["timing"]["task_epochs"]
    assert cls["scenario"]["setting"] == "class"


# ----------------------------------------------------------------------------- replay
class EpochModels(TrainerCallback):
    """The model after every epoch of every task."""

    def __init__(self) -> None:
        self.models: dict[int, list[torch.nn.Module]] = {}

    def on_task_start(self, trainer, task_id) -> None:
        self.models[task_id] = []

    def on_epoch_end(self, trainer, task_id, epoch, iter_results) -> None:
        self.models[task_id].append(copy.deepcopy(trainer.model).eval())


def test_class_il_replays_among_every_seen_class():
    """At task t every replayed batch is classified among the classes of tasks 0..t, its
    labels at the right positions; so, during task 1, a replayed node of task 0 is
    predicted as a class of task 1 (never possible in Task-IL)."""
    scenario = class_scenario(0)
    epochs = EpochModels()
    trainer, _ = method_trainer("cgnn", scenario, 0, callbacks=[epochs], **FAST,
                                memory_size=20, new_nodes_size=10, ewc_lambda=0.0)
    calls = record_replays(trainer)
    trainer.run(FAST["epochs"])
    assert {t for t, _ in calls} == set(range(1, scenario.num_tasks))
    for t, batches in calls:
        for b in batches:
            assert bool((b.candidates == scenario.seen_classes(t + 1)).all())
            assert torch.equal(b.candidates.gather(1, b.local_labels[:, None])[:, 0],
                               b.labels)
    (first, *_), task1 = next(b for t, b in calls if t == 1), scenario.task_classes[1]
    crossed = 0
    with torch.no_grad():
        for model in epochs.models[1]:
            preds = first.to_global(first.restrict(trainer.forward(model, first)).argmax(1))
            crossed += int((torch.isin(preds, task1) & (first.task_ids == 0)).sum())
    assert crossed > 0


def _class_trainer_at_task(task: int, **params):
    """A Class-IL trainer stopped as ``task`` starts, then its processBeforeTraining."""
    scenario = class_scenario(1)
    trainer, _ = method_trainer("cgnn", scenario, 1, **{**FAST, **params})
    trainer.callbacks.append(StopAtTask(task))
    with pytest.raises(Stop):
        trainer.run(FAST["epochs"])
    before = copy.deepcopy(trainer.model).eval()
    trainer.processBeforeTraining(task, scenario.get_task(task), trainer.model,
                                  trainer.optimizer, trainer.training_states)
    return trainer, scenario, scenario.get_task(task).train, before


def _cross_entropy_among(model, scenario, nodes, classes, trainer):
    logits = trainer.forward(model, scenario.batch((0,), "train"))[nodes][:, classes]
    local = torch.searchsorted(classes, scenario.graph.y[nodes])
    return F.cross_entropy(logits, local)


def test_class_il_step_loss_is_the_union_mean_among_seen_classes():
    """The step's loss is the cross-entropy over the task's and the replayed nodes
    together, every node among the classes of tasks 0..2; the gradients match."""
    trainer, scenario, batch, _ = _class_trainer_at_task(2, memory_size=30,
                                                         new_nodes_size=10, ewc_lambda=0.0)
    model, states = trainer.model, trainer.training_states
    assert states["replay"].numel() > 0
    nodes = torch.cat([batch.nodes, states["replay"]])
    reference = copy.deepcopy(model).train()
    expected = _cross_entropy_among(reference, scenario, nodes, scenario.seen_classes(3),
                                    trainer)
    expected.backward()
    model.train()
    trainer.optimizer.zero_grad(set_to_none=True)
    stats = trainer.afterInference(trainer.inference(model, batch, states), model,
                                   trainer.optimizer, batch, states)
    assert stats["loss"] == pytest.approx(expected.item(), rel=1e-6)
    for p, q in zip(model.parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad)


# ----------------------------------------------------------------------------- Fisher
def _squared_grad(model, loss):
    params = [p for p in model.parameters() if p.requires_grad]
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    return torch.cat([(torch.zeros_like(p) if g is None else g).reshape(-1)
                      for g, p in zip(grads, params, strict=True)]) ** 2


def test_class_il_fisher_is_the_memory_loss_among_the_classes_seen_before():
    """At the start of task 2 the Fisher is the squared gradient of the memory's loss
    (divided by its mean: the default fisher_norm) with every memory node among the
    classes of tasks 0 and 1 (the model as task 1 left it, eval mode): not among tasks
    0..2's, nor each among its own task's."""
    trainer, scenario, _, before = _class_trainer_at_task(2, memory_size=30,
                                                          new_nodes_size=0, ewc_lambda=80.0)
    memory = trainer.memory_nodes(trainer.training_states)
    assert bool((scenario.node_task[memory] < 2).all()) and memory.numel() > 0
    fisher = trainer.training_states["fisher"]

    def among(classes):
        raw = _squared_grad(before, _cross_entropy_among(before, scenario, memory,
                                                         classes, trainer))
        return raw / raw.mean()

    torch.testing.assert_close(fisher, among(scenario.seen_classes(2)))
    assert not torch.allclose(fisher, among(scenario.seen_classes(3)))
    own = scenario.task_classes[scenario.node_task[memory]]  # Task-IL's candidates
    with torch.enable_grad():
        logits = trainer.forward(before, scenario.batch((0,), "train"))[memory].gather(1, own)
        local = (own == scenario.graph.y[memory].view(-1, 1)).long().argmax(1)
        task_il = _squared_grad(before, F.cross_entropy(logits, local))
        task_il = task_il / task_il.mean()
    assert not torch.allclose(fisher, task_il)
    assert float(trainer.penalty(trainer.training_states).detach()) == 0.0


# ----------------------------------------------------------------------------- detection
def test_class_il_detection_compares_outputs_over_the_classes_seen_before():
    """The detected nodes at task 2 are the past training nodes with the largest
    positive influence of the output change over the classes of tasks 0 and 1 (not over
    all outputs), and they are replayed."""
    trainer, scenario, batch, before = _class_trainer_at_task(2, memory_size=0,
                                                              new_nodes_size=6,
                                                              ewc_lambda=0.0)
    past = trainer.training_states["past_train"]

    def picked(classes):
        g = scenario.graph
        tasks = scenario.node_task
        graphs = [g.induced((tasks >= 0) & (tasks < 2)), g.induced((tasks >= 0) & (tasks <= 2))]
        with torch.no_grad():
            h0, h1 = (trainer.forward(before, scenario.batch((2,), "train", graph=x))
                      for x in graphs)
        cols = classes if classes is not None else torch.arange(scenario.num_classes)
        change = torch.zeros(g.num_nodes)
        change[batch.nodes] = (h1[:, cols] - h0[:, cols])[batch.nodes].abs().sum(1)
        influence = cgnn.spread(change, graphs[1].edge_index)[past]
        order = torch.argsort(influence, descending=True, stable=True)[:6]
        assert bool((influence[order] > 0).all())
        return set(past[order].tolist())

    replay = set(trainer.training_states["replay"].tolist())
    assert replay == picked(scenario.seen_classes(2))
    assert replay != picked(None)  # over all outputs: other nodes


# ----------------------------------------------------------------------------- resume
class Interrupt(TrainerCallback):
    def on_task_start(self, trainer, task_id: int) -> None:
        if task_id == 3:
            raise KeyboardInterrupt


def test_class_il_interrupted_run_continues_bit_identically(tmp_path):
    """A Class-IL run stopped as task 3 starts continues from its resume point with the
    same numbers (memory, kept past nodes, Fisher and anchor restored; dropout on)."""
    kw = {"method": "cgnn", "dataset": "synthetic", "seed": 3, "setting": "class",
          "params": {"epochs": 8, "hidden": 32, "dropout": 0.5, "memory_size": 20,
                     "new_nodes_size": 10, "ewc_lambda": 80.0}}
    reference = run_experiment(**kw)
    path = tmp_path / "run.resume.pt"
    with pytest.raises(KeyboardInterrupt):
        run_experiment(**kw, callbacks=[Interrupt()], resume_file=path, resume_tag="t")
    torch.manual_seed(12345)  # the resumed run must not depend on the process's generator
    resumed = run_experiment(**kw, resume_file=path, resume_tag="t")
    assert resumed["resumed"]["after_task"] == 2
    for key in ("R_test", "R_val", "extra_storage_bytes"):
        assert resumed[key] == reference[key], key
    assert resumed["timing"]["task_epochs"] == reference["timing"]["task_epochs"]


# ----------------------------------------------------------------------------- fisher_norm
# BeGin's raw Fisher (fisher_norm = none) in Class-IL, recorded on the code before
# fisher_norm existed (commit 230382c), with test_cgnn.PINNED's setting.
RAW_FISHER_CLASS_IL = {
    "R_test": [[0.75, 0.0, 0.0, 0.0, 0.0],
               [0.1875, 0.6458333333333334, 0.0, 0.0, 0.0],
               [0.0, 0.3125, 0.4791666666666667, 0.0, 0.0],
               [0.0, 0.0, 0.375, 0.5208333333333334, 0.0],
               [0.0, 0.0, 0.16666666666666666, 0.3125, 0.4375]],
    "ratio": [None, 0.0006023232358947658, 0.001896599230411692, 0.001796896307708016,
              0.003393890359391085],
}


def test_class_il_raw_fisher_gives_the_numbers_from_before_fisher_norm():
    from test_cgnn import PINNED, assert_pinned

    out = run_experiment(method="cgnn", dataset="synthetic", seed=2, setting="class",
                         params={**PINNED, "fisher_norm": "none"})
    assert_pinned(out, RAW_FISHER_CLASS_IL)
