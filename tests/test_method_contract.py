"""The method contract of docs/methods.md: the loop keeps its state out of the method's
training states, ``forward_weights`` substitutes parameters, ``processEvalIteration``
gets the training states (a BeGin two-argument override still works), and the page's
worked example runs as a plugin and does what it says."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from datahelpers import REPO

from clbench import NCTrainer, TrainerCallback, statefile
from clbench.experiment import run_experiment
from clbench.methods import METHODS
from clbench.models import build_model
from clbench.plugins import load_plugin
from clbench.scenario import NCScenarioLoader
from clbench.trainer import TaskState

DOC = REPO / "docs" / "methods.md"
SMALL = {"epochs": 5, "hidden": 16}
LOOP_KEYS = {"scheduler", "best_val_loss", "best_weights", "forward_weights"}


def make(cls: type[NCTrainer], graph, tasks: int = 2, seed: int = 0, **hparams) -> NCTrainer:
    scenario = NCScenarioLoader(graph, tasks, 2, seed=seed)
    torch.manual_seed(seed)
    model = build_model("gcn", graph.num_features, scenario.num_classes, hidden=16)
    return cls(model, scenario, lambda p: torch.optim.Adam(p, lr=0.01), None, "cpu",
               **hparams)


# ---------------------------------------------------------------------- loop state
def test_the_loop_keeps_no_keys_in_the_training_states(synthetic):
    trainer = make(METHODS.get("finetune"), synthetic)
    trainer.run(epoch_per_task=3)
    assert trainer.training_states == {}
    assert isinstance(trainer.task_state, TaskState)
    assert trainer.task_state.task_id == 1 and trainer.task_state.best_weights is None
    assert trainer.task_state.best_val_loss < float("inf")


@pytest.mark.parametrize("method", ["joint", "ewc", "lwf", "mas", "twp", "packnet", "piggyback"])
def test_no_builtin_method_finds_loop_keys_in_its_states(synthetic, method):
    trainer = make(METHODS.get(method), synthetic)
    trainer.run(epoch_per_task=3)
    assert not LOOP_KEYS & set(trainer.training_states)
    assert "step_weights" not in trainer.training_states  # Piggyback's, per step only


def test_task_state_is_saved_with_its_scheduler(synthetic):
    """The task state is a trainer attribute: resume points encode it as plain data, its
    scheduler still driving the trainer's own optimizer."""
    trainer = make(METHODS.get("finetune"), synthetic)
    trainer.run(epoch_per_task=2)
    attrs = statefile.decode(statefile.encode(
        {"optimizer": trainer.optimizer, "task_state": trainer.task_state}, trainer.model),
        trainer.model)
    back = attrs["task_state"]
    assert isinstance(back, TaskState) and back.task_id == trainer.task_state.task_id
    assert back.best_val_loss == trainer.task_state.best_val_loss
    assert back.scheduler.optimizer is attrs["optimizer"]


# ---------------------------------------------------------------------- forward_weights
def test_forward_weights_substitute_parameters_in_training_and_evaluation(synthetic):
    seen = []

    class ZeroHead(NCTrainer):
        def forward_weights(self, model, batch, training_states):
            seen.append((model.training, training_states is self.training_states))
            head = model.classifier
            return {"classifier.weight": torch.zeros_like(head.weight),
                    "classifier.bias": torch.zeros_like(head.bias)}

    trainer = make(ZeroHead, synthetic)
    before = {k: v.clone() for k, v in trainer.model.named_parameters()}
    trainer.curr_task = 0
    trainer.training_states = {}
    batch = trainer.scenario.get_task(0).train
    res = trainer.inference(trainer.model, batch, trainer.training_states)
    assert torch.equal(res["preds"], torch.zeros_like(res["preds"]))  # the zeroed head
    for k, v in trainer.model.named_parameters():
        assert torch.equal(v, before[k])  # the model's parameters are not touched
    seen.clear()
    trainer.run(epoch_per_task=2)
    # every training step, validation and evaluation went through the hook, with the states
    assert (True, True) in seen and (False, True) in seen
    assert all(states for _, states in seen)


def test_piggyback_trains_through_forward_weights(synthetic):
    trainer = make(METHODS.get("piggyback"), synthetic, threshold=0.1)
    model, opt = trainer.model, trainer.optimizer
    states = trainer.training_states = trainer.initTrainingStates(trainer.scenario, model, opt)
    trainer.curr_task = 0
    data = trainer.scenario.get_task(0)
    trainer.processBeforeTraining(0, data, model, opt, states)
    model.train()
    assert trainer.forward_weights(model, data.train, states) is None  # no step yet
    masked = trainer.beforeInference(model, opt, data.train, states)
    assert trainer.forward_weights(model, data.train, states) is masked
    res = trainer.inference(model, data.train, states)
    expected = data.train.restrict(trainer.forward(model, data.train, masked))
    assert torch.equal(res["preds"], expected)
    res["_before_inference"] = masked
    trainer.afterInference(res, model, opt, data.train, states)
    assert trainer.forward_weights(model, data.train, states) is None


# ---------------------------------------------------------------------- processEvalIteration
def test_process_eval_iteration_gets_the_training_states(synthetic):
    got = []

    class Eval(NCTrainer):
        def initTrainingStates(self, scenario, model, optimizer):
            return {"mine": 1}

        def processEvalIteration(self, model, _curr_batch, training_states=None):
            got.append(training_states)
            return super().processEvalIteration(model, _curr_batch, training_states)

    trainer = make(Eval, synthetic)
    trainer.run(epoch_per_task=2)
    # validation (2 epochs x 2 tasks) and the evaluation after each task
    assert len(got) == 2 * 2 + 2
    assert all(s is trainer.training_states and s == {"mine": 1} for s in got)


def test_a_begin_two_argument_eval_override_still_works(synthetic):
    """BeGin trainers override ``processEvalIteration(self, model, _curr_batch)``: the
    loop calls them without the states, with the same results as the default."""
    calls = []

    class BeGinStyle(METHODS.get("finetune")):
        def processEvalIteration(self, model, _curr_batch):
            calls.append(len(_curr_batch))
            return super().processEvalIteration(model, _curr_batch)

    plain = make(METHODS.get("finetune"), synthetic, tasks=3).run(epoch_per_task=4)
    trainer = make(BeGinStyle, synthetic, tasks=3)
    out = trainer.run(epoch_per_task=4)
    assert len(calls) == sum(out.task_epochs) + 3
    assert np.array_equal(out.R_test, plain.R_test)
    assert np.array_equal(out.R_val, plain.R_val)
    assert out.task_epochs == plain.task_epochs

    # the same for an override set on one trainer
    other = make(METHODS.get("finetune"), synthetic, tasks=3)
    base = other.processEvalIteration
    other.processEvalIteration = lambda model, batch: base(model, batch)
    again = other.run(epoch_per_task=4)
    assert np.array_equal(again.R_test, plain.R_test)


# ---------------------------------------------------------------------- the page
def worked_example() -> str:
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), re.S)
    found = [b for b in blocks if '@register_method("l2-anchor")' in b]
    assert len(found) == 1, "docs/methods.md has one worked example"
    return found[0]


def test_the_page_names_every_event_and_hook():
    text = DOC.read_text()
    for name in ("initTrainingStates", "processBeforeTraining", "processTrainIteration",
                 "beforeInference", "inference", "afterInference", "processEvalIteration",
                 "processTrainingLogs", "processAfterEachIteration", "processAfterTraining",
                 "forward", "forward_weights", "saveCheckpoint", "loadCheckpoint",
                 "extraStorageBytes", "getTrainingDataset", "prepareLoader", "freeze_",
                 "_before_inference", "self.hparams", "self.protocol", "self.task_state",
                 "state_dict", "load_state_dict"):
        assert name in text, name
    order = ["initTrainingStates", "processBeforeTraining", "beforeInference -> inference "
             "-> afterInference", "processEvalIteration", "processTrainingLogs",
             "processAfterEachIteration", "processAfterTraining"]
    loop = text[text.index("for each task:"):]
    positions = [loop.index(name) if name != "initTrainingStates" else -1 for name in order]
    assert positions == sorted(positions)
    assert worked_example().count("\n") <= 40  # about thirty lines


def test_worked_example_runs_as_a_plugin(tmp_path):
    path = tmp_path / "l2_anchor.py"
    path.write_text(worked_example())
    load_plugin(str(path))
    assert "l2-anchor" in METHODS
    runs = {s: run_experiment(method="l2-anchor", dataset="synthetic", seed=0,
                              params={**SMALL, "strength": s}) for s in (0.0, 10.0)}
    finetune = run_experiment(method="finetune", dataset="synthetic", seed=0, params=SMALL)
    # strength 0 is fine-tuning, bit for bit; a pull changes the trajectory
    assert runs[0.0]["R_test"] == finetune["R_test"]
    assert runs[0.0]["R_val"] == finetune["R_val"]
    assert runs[10.0]["R_test"] != finetune["R_test"]
    assert runs[10.0]["config"]["strength"] == 10.0
    assert runs[10.0]["extra_storage_bytes"] > 0  # the anchor: one copy of the weights


class _Stop(TrainerCallback):
    def on_task_start(self, trainer, task_id):
        if task_id == 2:
            raise KeyboardInterrupt


def test_worked_example_resumes_without_code_of_its_own(tmp_path):
    """Its state (a list of tensors in the training states) needs no code to be saved."""
    path = tmp_path / "l2_anchor.py"
    path.write_text(worked_example())
    load_plugin(str(path))
    kwargs = {"method": "l2-anchor", "dataset": "synthetic", "seed": 1,
              "params": {**SMALL, "strength": 10.0, "dropout": 0.5}}
    reference = run_experiment(**kwargs)
    point = tmp_path / "run.resume.pt"
    with pytest.raises(KeyboardInterrupt):
        run_experiment(callbacks=[_Stop()], resume_file=point, resume_tag="t", **kwargs)
    resumed = run_experiment(resume_file=point, resume_tag="t", **kwargs)
    assert resumed["resumed"]["after_task"] == 1
    assert resumed["R_test"] == reference["R_test"]


def test_a_plugin_card_may_bound_a_protocol_hyperparameter():
    """A card's ``[bounds]`` may name a protocol hyperparameter such as ``lr``: the run
    enforces the bound and still builds the trainer (which reads its card's defaults)."""
    from clbench import register_method
    from clbench.errors import ClbenchError

    fast = {"epochs": 2, "hidden": 8}
    with METHODS.scoped():
        @register_method("lr-bounded")
        class LrBounded(NCTrainer):
            card = {"params": {"alpha": 0.5}, "bounds": {"lr": "(0, 0.1]"}}

        result = run_experiment(method="lr-bounded", dataset="synthetic", seed=0,
                                num_tasks=2, params=fast)
        assert result["config"]["alpha"] == 0.5
        with pytest.raises(ClbenchError, match=r"'lr' must be in \(0, 0.1\]"):
            run_experiment(method="lr-bounded", dataset="synthetic", seed=0, num_tasks=2,
                           params={**fast, "lr": 0.5})
