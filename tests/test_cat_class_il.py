"""CaT in Class-IL (``--setting class``), as BeGin's NCClassILCaTTrainer: every step
trains on the condensed memory only, each synthetic node scored among every class seen
so far, and its Task-IL numbers unchanged by the Class-IL code.

* the memory keeps exactly the budgeted synthetic nodes per class, and no real node;
* every training step is on the memory (never the real nodes), with the logits of
  every class seen so far, at BeGin's Task-IL loss (the weighted sum);
* an empty memory is Class-IL fine-tuning, bit for bit;
* evaluation predicts among every seen class: a prediction can land in another task's;
* with one task Class-IL is Task-IL bit for bit;
* a Class-IL run resumes bit for bit;
* Task-IL equals, bit for bit, a frozen copy of the pre-Class-IL logic and the numbers
  recorded with it.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from test_class_il_methods import run, trainer_of

import clbench.methods.cat as cat
from clbench.experiment import (
    run_experiment,
)
from clbench.methods.cat import NCTaskILCaTTrainer
from clbench.models import batchnorm_modules
from clbench.resolve import resolve_run
from clbench.scenario import NodeBatch
from clbench.trainer import NCTrainer, TrainerCallback

FAST = {"epochs": 15, "hidden": 32, "condense_steps": 20}

pytestmark = pytest.mark.usefixtures("one_thread")


def spec_of(method: str, setting: str, seed: int = 0, num_tasks: int = 3,
            classes_per_task: int = 2, **params):
    fast = FAST if method == "cat" else {k: v for k, v in FAST.items() if k != "condense_steps"}
    return resolve_run(method, "synthetic", seed, setting=setting, num_tasks=num_tasks,
                       classes_per_task=classes_per_task, params={**fast, **params})


def assert_same_run(a, b, ta=None, tb=None) -> None:
    assert np.array_equal(a.R_test, b.R_test) and np.array_equal(a.R_val, b.R_val)
    assert np.array_equal(a.init_test, b.init_test) and a.task_epochs == b.task_epochs
    if ta is not None:
        wa, wb = ta.model.state_dict(), tb.model.state_dict()
        assert all(torch.equal(wa[k], wb[k]) for k in wa)


class MemorySteps(TrainerCallback):
    """Every memory batch a training step used, with the task being learned."""

    def __init__(self, trainer) -> None:
        self.calls: list[tuple[int, NodeBatch]] = []
        original = trainer.memory_batch

        def memory_batch(states):
            batch = original(states)
            self.calls.append((trainer.curr_task, batch))
            return batch

        trainer.memory_batch = memory_batch


@pytest.fixture(scope="module")
def class_il_run():
    """Class-IL on synthetic, 3 tasks x 2 classes, a memory of 30: 10 per task."""
    trainer, scenario = trainer_of(spec_of("cat", "class", seed=0, num_memories=30))
    steps = MemorySteps(trainer)
    out = trainer.run(FAST["epochs"])
    return trainer, scenario, out, steps.calls


# ----------------------------------------------------------------------------- memory
def test_class_il_memory_has_the_budget_per_class_and_no_real_node(class_il_run):
    trainer, scenario, out, _ = class_il_run
    states = trainer.training_states
    assert set(states) == set(cat.MEMORY_KEYS)
    assert len(states["memory_x"]) == scenario.num_tasks
    x = scenario.graph.x
    for t in range(scenario.num_tasks):
        train = scenario.get_task(t).train
        classes, counts = train.labels.unique(return_counts=True)
        y, rows = states["memory_y"][t], states["memory_x"][t]
        assert [int((y == c).sum()) for c in classes.tolist()] == cat.class_budgets(
            counts.tolist(), 10) == [5, 5]
        assert rows.shape == (10, scenario.graph.num_features)
        assert bool((states["memory_task"][t] == t).all())
        # synthetic rows only: none is (or rounds to) a real node's feature row
        assert float(torch.cdist(rows, x).min()) > 1e-3
    assert out.extra_storage_bytes == 30 * (4 * scenario.graph.num_features + 8 + 8 + 4)


def test_class_il_trains_on_the_memory_among_every_seen_class(class_il_run):
    """Every step of task t is on the memory of tasks 0..t (the current task's synthetic
    nodes included, no real node), each synthetic node among the classes of tasks
    0..t, its label at the right position."""
    _, scenario, out, calls = class_il_run
    assert len(calls) == sum(out.task_epochs)
    assert {t for t, _ in calls} == {0, 1, 2}
    for t, batch in calls:
        assert len(batch) == 10 * (t + 1) and batch.graph.num_edges == 0
        assert set(batch.task_ids.tolist()) == set(range(t + 1))
        assert bool((batch.candidates == scenario.seen_classes(t + 1)).all())
        assert torch.equal(batch.candidates.gather(1, batch.local_labels[:, None])[:, 0],
                           batch.labels)


def test_class_il_step_loss_is_the_weighted_sum_over_seen_classes():
    """The step's loss is BeGin's (Task-IL) sum of (n_t / |M_t|) x cross-entropy over
    the synthetic nodes of tasks 0..t among all 6 seen classes, and its gradients are
    that loss's."""
    trainer, scenario = trainer_of(spec_of("cat", "class", seed=3, num_memories=30))

    class StopAtTask2(TrainerCallback):
        def on_epoch_end(self, trainer, task_id, epoch, results):
            if task_id == 2:
                raise KeyboardInterrupt

    trainer.callbacks.append(StopAtTask2())
    with pytest.raises(KeyboardInterrupt):
        trainer.run(FAST["epochs"])
    states, model = trainer.training_states, trainer.model
    x, y = torch.cat(states["memory_x"]), torch.cat(states["memory_y"])
    seen = scenario.seen_classes(3)
    reference = copy.deepcopy(model).train()
    for norm in batchnorm_modules(reference):
        norm.eval()  # memory_bn = "running"
    logits = reference(x, cat.edgeless_graph(x, y))[:, seen]
    per_node = F.cross_entropy(logits, torch.searchsorted(seen, y), reduction="none")
    n_train = [len(scenario.get_task(t).train) for t in range(3)]
    tasks = torch.cat(states["memory_task"]).tolist()
    expected = (torch.tensor([n_train[t] / 10 for t in tasks]) * per_node).sum()
    expected.backward()

    model.train()
    stats = trainer.processTrainIteration(model, trainer.optimizer,
                                          scenario.get_task(0).val, states)
    assert stats["loss"] == pytest.approx(expected.item(), rel=1e-6)
    for p, q in zip(model.parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad)


def test_class_il_empty_memory_is_finetune_bit_for_bit():
    """num_memories=0: nothing condensed, the real task among the seen classes. Dropout
    on: an extra pass that drew dropout masks would show."""
    live, _, out = run(spec_of("cat", "class", seed=3, dropout=0.5, num_memories=0))
    bare_trainer, _, bare = run(spec_of("finetune", "class", seed=3, dropout=0.5))
    assert_same_run(out, bare, live, bare_trainer)
    assert out.extra_storage_bytes == 0
    assert not np.array_equal(np.triu(bare.R_test, 1), bare.R_test)  # it learned something


# ----------------------------------------------------------------------------- evaluation
def test_class_il_prediction_can_land_in_another_tasks_class(class_il_run):
    """After the last task every test node is predicted among the 6 seen classes, and
    some land in a class of another task (never in Task-IL)."""
    trainer, scenario, out, _ = class_il_run
    (batch,) = scenario.eval_batches("test", seen=3)
    preds, _ = trainer.processEvalIteration(trainer.model, batch, trainer.training_states)
    assert batch.candidates.shape == (len(batch), 6)
    assert set(preds.tolist()) <= set(scenario.seen_classes(3).tolist())
    assert bool((scenario.class_to_task[preds] != batch.task_ids).any())
    acc = [float((preds[batch.task_ids == t] == batch.labels[batch.task_ids == t]).float()
                 .mean()) for t in range(3)]
    assert acc == pytest.approx(out.R_test[2].tolist())

    task_trainer, task_scenario, _ = run(spec_of("cat", "task", seed=0, num_memories=30))
    (batch,) = task_scenario.eval_batches("test")
    preds, _ = task_trainer.processEvalIteration(task_trainer.model, batch,
                                                 task_trainer.training_states)
    assert bool((task_scenario.class_to_task[preds] == batch.task_ids).all())


def test_one_task_class_il_is_task_il_bit_for_bit():
    """One task: the seen classes are the task's, in the same order, and the memory loss
    is the same: matrices, epochs and final weights equal to the last bit."""
    kw = {"seed": 1, "num_tasks": 1, "classes_per_task": 3, "num_memories": 30}
    ct, _, c = run(spec_of("cat", "class", **kw))
    tt, _, t = run(spec_of("cat", "task", **kw))
    assert sum(len(m) for m in ct.training_states["memory_y"]) == 30  # the memory trained
    assert_same_run(c, t, ct, tt)


# ----------------------------------------------------------------------------- Task-IL
class FrozenCaT(NCTaskILCaTTrainer):
    """CaT's Task-IL memory batch and step as they were before Class-IL."""

    def memory_batch(self, training_states):
        x = torch.cat(training_states["memory_x"])
        y = torch.cat(training_states["memory_y"])
        tasks = torch.cat(training_states["memory_task"])
        candidates = self.scenario.task_classes[tasks]
        local = (candidates == y.view(-1, 1)).long().argmax(1)
        return NodeBatch(cat.edgeless_graph(x, y), torch.arange(y.numel(), device=y.device),
                         y, tasks, candidates, local)

    def processTrainIteration(self, model, optimizer, _curr_batch, training_states):
        if not training_states["memory_x"]:
            return NCTrainer.processTrainIteration(self, model, optimizer, _curr_batch,
                                                   training_states)
        batch = self.memory_batch(training_states)
        norms = [m for m in batchnorm_modules(model) if m.training]
        if self.memory_bn == "running":
            for norm in norms:
                norm.eval()
        optimizer.zero_grad(set_to_none=True)
        before = self.beforeInference(model, optimizer, batch, training_states)
        results = self.inference(model, batch, training_states)
        per_node = F.cross_entropy(results["preds"], batch.local_labels, reduction="none")
        results["loss"] = (torch.cat(training_states["memory_weight"]) * per_node).sum()
        results["_before_inference"] = before
        stats = self.afterInference(results, model, optimizer, batch, training_states)
        for norm in norms:
            norm.train()
        return stats


@pytest.mark.parametrize("params", [{"num_memories": 30},
                                    {"num_memories": 60, "memory_bn": "batch"}])
def test_task_il_is_unchanged_bit_for_bit(params):
    spec = spec_of("cat", "task", seed=2, **params)
    live, _, a = run(spec)
    old, _, b = run(spec, FrozenCaT)
    assert_same_run(a, b, live, old)


#: R_test x 48 (48 test nodes per task) of a Task-IL run recorded before Class-IL
#: existed: synthetic (5 tasks x 2 classes), seed 0, epochs 10, hidden 32,
#: condense_steps 20, num_memories 60.
PINNED_TASK_IL = [[30, 24, 24, 26, 24], [29, 24, 24, 24, 24], [29, 24, 23, 24, 24],
                  [29, 28, 29, 24, 24], [30, 31, 29, 24, 25]]


def test_task_il_numbers_recorded_before_class_il():
    spec = resolve_run("cat", "synthetic", 0, params={"epochs": 10, "hidden": 32,
                                                     "condense_steps": 20,
                                                     "num_memories": 60})
    *_, out = run(spec)
    assert np.array_equal(np.rint(out.R_test * 48).astype(int), np.array(PINNED_TASK_IL))
    assert np.array_equal(out.R_test * 48, np.rint(out.R_test * 48))
    assert out.task_epochs == [10] * 5


# ----------------------------------------------------------------------------- resume
def test_class_il_interrupted_run_continues_bit_identically(tmp_path):
    """Stopped when task 2 starts and resumed from the point saved after task 1: the
    memory and the task count its candidates come from are restored (dropout on, so a
    wrongly restored generator shows)."""
    class Stop(TrainerCallback):
        def on_task_start(self, trainer, task_id):
            if task_id == 2:
                raise KeyboardInterrupt

    spec = spec_of("cat", "class", seed=3, num_memories=30, dropout=0.5, epochs=8)
    reference = run_experiment(spec)
    path = tmp_path / "run.resume.pt"
    with pytest.raises(KeyboardInterrupt):
        run_experiment(spec, callbacks=[Stop()], resume_file=path, resume_tag="t")
    torch.manual_seed(12345)  # the resumed run must not depend on the process's generator
    resumed = run_experiment(spec, resume_file=path, resume_tag="t")
    assert resumed["resumed"]["after_task"] == 1
    for key in ("R_test", "R_val", "init_test", "ap_curve", "extra_storage_bytes"):
        assert resumed[key] == reference[key], key
    assert resumed["timing"]["task_epochs"] == reference["timing"]["task_epochs"]
