"""The one training loop (Task-IL or Class-IL), with BeGin's event functions.

:class:`NCTrainer` owns the loop; a continual-learning method is a subclass that
overrides event functions (never the loop). The events, their arguments and
their meanings follow BeGin's ``NCTrainer`` so that BeGin trainers port over:

``initTrainingStates`` → per task: ``processBeforeTraining`` → per epoch:
[``processTrainIteration`` = ``beforeInference`` → ``inference`` →
``afterInference``] → validation with ``processEvalIteration`` (not under the fixed
schedule, which uses none) →
``processTrainingLogs`` → ``processAfterEachIteration`` (returns False to stop)
→ ``processAfterTraining`` → evaluation of every task with ``processEvalIteration``.

``docs/methods.md`` is the method author's page. In short, two kinds of state:

* ``training_states`` (the dict ``initTrainingStates`` returns, also
  ``self.training_states``) is the method's own: the loop passes it to every event,
  ``processEvalIteration`` included, and never reads or writes a key of it.
* :class:`TaskState` (``self.task_state``) is the loop's: the task's scheduler,
  best validation loss and best weights, started by ``processBeforeTraining`` and
  used by ``processAfterEachIteration`` and ``processAfterTraining``.

A method substitutes parameters in the forward pass by overriding
:meth:`NCTrainer.forward_weights`; ``beforeInference``'s return value reaches
``afterInference`` as ``results["_before_inference"]`` (as in BeGin).

Differences from BeGin, on purpose: no temporary files (initial weights are kept
in memory), no model copies at evaluation, Task-IL and Class-IL by the scenario's
setting (the restriction of logits to a node's candidate classes lives in
:class:`~clbench.scenario.NodeBatch`; a method's card declares the settings it runs in), and
``processEvalIteration`` receives the training states (a BeGin override with two
arguments, ``(model, _curr_batch)``, is still called without them).

Resume points. ``run(..., resume_file=path)`` saves :meth:`NCTrainer.state_dict` (the
model and every trainer attribute but those the constructor sets from its arguments)
after every task and continues after the last saved task (:mod:`clbench.resume`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.func import functional_call
from torch.optim import Optimizer

from clbench import resume, statefile
from clbench.cards import declared_params, declared_settings
from clbench.errors import ClbenchError
from clbench.evaluation import TrainerEvaluation
from clbench.loopstate import (
    OptimizerFn,
    TaskState,
    TrainerCallback,
    TrainerResult,
    mean_stats,
    penalty_ratio,
    plateau_scheduler,
    task_loss,
    train_stats,
)
from clbench.scenario import NCScenarioLoader, NodeBatch, TaskDataset
from clbench.spec import Protocol

#: Attributes the constructor sets from its arguments: not part of a resume point.
_NOT_SAVED = frozenset({"scenario", "callbacks", "optimizer_fn", "scheduler_fn", "loss_fn",
                        "protocol", "validate_every_epoch"})


class NCTrainer(TrainerEvaluation):
    """Base trainer for node classification, Task-IL or Class-IL (full-batch).

    Args:
        model: the backbone, e.g. from :func:`clbench.models.build_model`.
        scenario: the task sequence.
        optimizer_fn: ``params -> Optimizer`` (the optimizer is created once and reset
            at the start of every task, as in BeGin).
        loss_fn: loss over restricted logits and task-local labels (default cross-entropy).
        device: torch device.
        protocol: the run's :class:`~clbench.spec.Protocol` (read-only; default: BeGin's).
            Its ``patience`` and ``min_lr_ratio`` make the default ``scheduler_fn``
            (``optimizer -> scheduler``), which ``schedule="fixed"`` leaves unused.
        callbacks: :class:`TrainerCallback` s.
        **hparams: the method's hyperparameters, in ``self.hparams``. A run passes every
            one, resolved and validated; keys left out take the card's defaults.
    """

    def __init__(
        self,
        model: nn.Module,
        scenario: NCScenarioLoader,
        optimizer_fn: OptimizerFn,
        loss_fn: Callable[[Tensor, Tensor], Tensor] | None = None,
        device: str | torch.device = "cpu",
        *,
        protocol: Protocol | None = None,
        scheduler_fn: Callable | None = None,
        callbacks: Sequence[TrainerCallback] = (),
        **hparams: Any,
    ) -> None:
        settings, note = declared_settings(type(self))
        if scenario.setting not in settings:
            raise ClbenchError(f"{type(self).__name__} does not run in the "
                               f"{scenario.setting!r} setting" + (f": {note}" if note else ""))
        self.device = torch.device(device)
        self.model = model.to(self.device)
        self.scenario = scenario.to(self.device)
        self.protocol = protocol if protocol is not None else Protocol()
        self.optimizer_fn = optimizer_fn
        self.loss_fn = loss_fn if loss_fn is not None else nn.CrossEntropyLoss()
        self.scheduler_fn = scheduler_fn or plateau_scheduler(self.protocol.patience,
                                                              self.protocol.min_lr_ratio)
        self.callbacks: list[TrainerCallback] = list(callbacks or [])
        #: Score the validation nodes after every epoch (BeGin's loop: the plateau
        #: scheduler and the best-validation weights need it). The ``fixed`` schedule
        #: (CGLB's: constant lr, every epoch, the last weights) uses no validation score,
        #: so none is computed, as in CGLB, and ``val_metric`` is NaN in the epoch
        #: events; the numbers are the same either way (tests/test_trainer_validation.py).
        self.validate_every_epoch = self.protocol.schedule != "fixed"
        self.hparams: dict[str, Any] = {**declared_params(type(self), scenario.setting),
                                        **hparams}
        self.num_tasks = scenario.num_tasks
        self.optimizer = optimizer_fn(self.model.parameters())
        self._initial_lrs = [g["lr"] for g in self.optimizer.param_groups]
        self._initial_state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        self._frozen: list[tuple[Tensor, Tensor, Tensor]] = []
        self.curr_task = -1
        self.task_state: TaskState | None = None

    # ================================================================== the loop
    def run(self, epoch_per_task: int = 1, resume_file: str | Path | None = None,
            resume_tag: str = "") -> TrainerResult:
        """Learn every task in order; after each, evaluate on every task.

        With ``resume_file``, save a resume point there after every task and, if the
        file holds one with the same ``resume_tag`` (whatever identifies the run and the
        code; a mismatch or an unreadable file starts over, with a warning), continue
        after its last task.
        """
        if epoch_per_task < 1:
            raise ValueError(f"epoch_per_task must be >= 1, got {epoch_per_task}")
        T = self.num_tasks
        self.epoch_per_task = epoch_per_task
        started = time.perf_counter()
        for cb in self.callbacks:
            cb.on_run_start(self)
        out = resume.load_point(self, resume_file, resume_tag) if resume_file else None
        model, optimizer = self.model, self.optimizer
        if out is None:
            states = self.initTrainingStates(self.scenario, model, optimizer)
            self.training_states = states  # for helpers without a states argument
            init = self._evaluate(("val", "test"), NCTrainer.processEvalIteration)
            out = TrainerResult(np.zeros((T, T)), np.zeros((T, T)), init["test"], init["val"])
        else:
            states = self.training_states
            out.resumed_after_task = len(out.task_epochs) - 1
        earlier = out.earlier_seconds
        for task_id in range(len(out.task_epochs), T):
            self.curr_task = task_id
            for cb in self.callbacks:
                cb.on_task_start(self, task_id)
            start = time.perf_counter()
            curr_dataset = self.getTrainingDataset(task_id)
            train_loader, val_loader, _ = self.prepareLoader(curr_dataset, states)
            self.processBeforeTraining(task_id, curr_dataset, model, optimizer, states)
            epochs = 0
            for epoch in range(epoch_per_task):
                epochs = epoch + 1
                model.train()
                train_stats = mean_stats(
                    self.processTrainIteration(model, optimizer, batch, states)
                    for batch in train_loader
                )
                if self.validate_every_epoch:
                    model.eval()
                    val_metric, val_stats = self._score_loader(val_loader)
                else:
                    val_metric, val_stats = float("nan"), {}
                self.processTrainingLogs(task_id, epoch, val_metric, train_stats, val_stats)
                iter_results = {"val_metric": val_metric, "train_stats": train_stats,
                                "val_stats": val_stats}
                for cb in self.callbacks:
                    cb.on_epoch_end(self, task_id, epoch, iter_results)
                if not self.processAfterEachIteration(model, optimizer, states, iter_results):
                    break
            model.eval()
            self.processAfterTraining(task_id, curr_dataset, model, optimizer, states)
            out.task_train_seconds.append(time.perf_counter() - start)
            out.task_epochs.append(epochs)
            out.task_penalty_ratio.append(penalty_ratio(train_stats))
            start = time.perf_counter()
            task_il = self.scenario.setting == "task"
            scores = self._evaluate(("val", "test"), learned=task_id if task_il else None)
            out.R_val[task_id], out.R_test[task_id] = scores["val"], scores["test"]
            if task_il:
                out.learned_confusion_test.append(scores["confusion"])
            else:
                own, matrix = self._own_class_score(task_id)
                out.own_class_test.append(own)
                out.learned_confusion_test.append(matrix)
            out.task_eval_seconds.append(time.perf_counter() - start)
            for cb in self.callbacks:
                cb.on_task_end(self, task_id, out.R_test[task_id])
            if resume_file and task_id < T - 1:
                out.earlier_seconds = earlier + time.perf_counter() - started
                resume.save_point(self, Path(resume_file), resume_tag, out)
        out.earlier_seconds = earlier
        out.extra_storage_bytes = int(self.extraStorageBytes(states))
        return out

    # ================================================================== resume points
    def state_dict(self) -> dict[str, Any]:
        """Everything the next tasks depend on, as tensors and plain data.

        The model's tensors, and every trainer attribute (optimizers, the training
        states, the task state, a method's own attributes) encoded by
        :func:`clbench.statefile.encode`: what a method keeps needs no code of its own
        to be saved, as long as it is made of tensors, NumPy arrays, plain containers,
        ``torch.optim`` optimizers and schedulers. Attributes that the constructor sets
        from its arguments (the scenario, the protocol, the factories, the loss, the
        callbacks) are not saved. Raises :class:`clbench.statefile.Unsupported` for
        anything else; a method holding such objects overrides this pair.
        """
        attrs = {k: v for k, v in vars(self).items() if k not in _NOT_SAVED and k != "model"}
        return {"model": statefile.model_state(self.model),
                "attrs": statefile.encode(attrs, self.model)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` (into the same model, built the same way)."""
        statefile.load_model_state(self.model, state["model"])
        for name, value in statefile.decode(state["attrs"], self.model).items():
            setattr(self, name, value)

    # ================================================================== helpers
    def getTrainingDataset(self, task_id: int) -> TaskDataset:
        """The data learned at step ``task_id`` (joint training overrides this)."""
        return self.scenario.get_task(task_id)

    def prepareLoader(
        self, curr_dataset: TaskDataset, curr_training_states: dict
    ) -> tuple[list[NodeBatch], list[NodeBatch], list[NodeBatch]]:
        """Train, validation and test loaders; full-batch: one batch each."""
        return [curr_dataset.train], [curr_dataset.val], [curr_dataset.test]

    def reset_optimizer(self, optimizer: Optimizer) -> None:
        """Forget the optimizer's state and restore its initial learning rates."""
        optimizer.state.clear()
        self.restore_lrs(optimizer)

    def restore_lrs(self, optimizer: Optimizer) -> None:
        """Put the optimizer's initial learning rates back (a scheduler may have cut them)."""
        for group, lr in zip(optimizer.param_groups, self._initial_lrs, strict=False):
            group["lr"] = lr

    def reset_model(self, model: nn.Module) -> None:
        """Load the model's initial (untrained) weights, kept in memory."""
        model.load_state_dict(self._initial_state)

    def freeze_(self, param: Tensor, mask: Tensor | None = None) -> None:
        """Keep ``param`` (or the entries where ``mask`` is True) bit-identical from now on.

        Gradients and weight decay may still reach frozen entries inside the
        optimizer; :meth:`restore_frozen` puts their values back after each step,
        which is exact whatever the optimizer does.
        """
        mask = torch.ones_like(param, dtype=torch.bool) if mask is None else mask.bool()
        self._frozen.append((param, mask, param.detach().clone()))

    def unfreeze_all(self) -> None:
        self._frozen.clear()

    @torch.no_grad()
    def restore_frozen(self) -> None:
        for param, mask, value in self._frozen:
            torch.where(mask, value, param, out=param.data)

    def saveCheckpoint(self, model: nn.Module, training_states: dict) -> Any:
        """Copy of what the best-validation restore brings back (default: the model's
        state). Kept in ``self.task_state.best_weights``; a method whose learned state
        lives outside the model too (Piggyback's real-valued masks) adds it here."""
        return {k: v.detach().clone() for k, v in model.state_dict().items()}

    def loadCheckpoint(self, model: nn.Module, training_states: dict, checkpoint: Any) -> None:
        """Bring back what :meth:`saveCheckpoint` returned."""
        model.load_state_dict(checkpoint)

    def extraStorageBytes(self, training_states: dict) -> int:
        """Bytes the method keeps for past tasks beyond the model (masks, Fisher, ...)."""
        return 0

    # ================================================================== events
    def initTrainingStates(self, scenario: NCScenarioLoader, model: nn.Module,
                           optimizer: Optimizer) -> dict:
        """Once, before the first task: the method's training states (its own dict; the
        loop passes it to every event and never touches its keys). Default: empty."""
        return {}

    def processBeforeTraining(self, task_id: int, curr_dataset: TaskDataset,
                              curr_model: nn.Module, curr_optimizer: Optimizer,
                              curr_training_states: dict) -> None:
        """Before a task: reset the optimizer (``optimizer_state="keep"``: only its
        learning rates), then start the loop's :class:`TaskState` (a fresh scheduler, no
        best weights yet). An override calls it."""
        if self.protocol.optimizer_state == "keep":  # CGLB: one optimizer for the stream
            self.restore_lrs(curr_optimizer)
        else:
            self.reset_optimizer(curr_optimizer)
        self.task_state = TaskState(task_id, self.scheduler_fn(curr_optimizer))

    def beforeInference(self, model: nn.Module, optimizer: Optimizer, _curr_batch: NodeBatch,
                        training_states: dict) -> Any:
        """Right before the training forward pass; its return value reaches
        ``afterInference`` as ``results['_before_inference']``."""
        return None

    def forward(self, model: nn.Module, batch: NodeBatch,
                weights: dict[str, Tensor] | None = None) -> Tensor:
        """Full-graph forward pass (all nodes' logits over all classes).

        ``weights`` substitutes named parameters for this call only (e.g. masked
        weights), without copying or modifying the model.
        """
        graph = batch.graph
        x = model.inputs(graph) if hasattr(model, "inputs") else graph.x
        if weights:
            return functional_call(model, weights, (x, graph), strict=False)
        return model(x, graph)

    def forward_weights(self, model: nn.Module, batch: NodeBatch,
                        training_states: dict | None) -> dict[str, Tensor] | None:
        """Parameters (by name) that replace the model's in :meth:`inference`'s forward
        pass, e.g. masked weights; None (the default) uses the model as it is."""
        return None

    def inference(self, model: nn.Module, _curr_batch: NodeBatch,
                  training_states: dict | None) -> dict:
        """Forward and loss (:func:`~clbench.loopstate.task_loss`), each node's logits restricted
        to its candidate classes (its task's in Task-IL, every class seen so far in Class-IL).

        Called in training (``model.training``) and, by the default
        :meth:`processEvalIteration`, in validation and evaluation; the parameters
        :meth:`forward_weights` returns replace the model's for the forward pass.
        ``training_states`` is None only when an override (or a BeGin-style
        ``processEvalIteration``) passes None. Returns ``preds`` (the restricted logits),
        ``loss``, and for training-only terms the full ``logits`` and the ``weights`` used.
        """
        weights = self.forward_weights(model, _curr_batch, training_states)
        logits = self.forward(model, _curr_batch, weights)
        preds = _curr_batch.restrict(logits)
        return {"preds": preds, "loss": self.batch_loss(preds, _curr_batch), "logits": logits,
                "weights": weights}

    def batch_loss(self, preds: Tensor, batch: NodeBatch | Sequence[NodeBatch]) -> Tensor:
        """The loss of restricted logits ``preds`` against ``batch``'s labels (or those of
        several batches, their logits concatenated in order), weighted as the protocol's
        ``loss_weights`` says (:func:`~clbench.loopstate.task_loss`). Every training loss a
        method adds (a replay buffer's, a memory's) goes through here, so that a protocol
        setting such as the cglb preset's class-balanced loss reaches all of them."""
        return task_loss(self.loss_fn, preds, batch, self.protocol.loss_weights)

    def afterInference(self, results: dict, model: nn.Module, optimizer: Optimizer,
                       _curr_batch: NodeBatch, training_states: dict) -> dict:
        """Back-propagate and step; frozen entries are put back afterwards."""
        results["loss"].backward()
        optimizer.step()
        self.restore_frozen()
        return self._train_stats(results, _curr_batch)

    #: The step's stats (:func:`clbench.loopstate.train_stats`), for overrides of
    #: ``afterInference``.
    _train_stats = staticmethod(train_stats)

    def processTrainIteration(self, model: nn.Module, optimizer: Optimizer,
                              _curr_batch: NodeBatch, training_states: dict) -> dict:
        """One optimisation step: ``beforeInference`` → ``inference`` → ``afterInference``
        (as in BeGin, ``beforeInference``'s return value is put in the results as
        ``results["_before_inference"]``). Returns the step's stats."""
        optimizer.zero_grad(set_to_none=True)
        before = self.beforeInference(model, optimizer, _curr_batch, training_states)
        results = self.inference(model, _curr_batch, training_states)
        results["_before_inference"] = before
        return self.afterInference(results, model, optimizer, _curr_batch, training_states)

    def processEvalIteration(self, model: nn.Module, _curr_batch: NodeBatch,
                             training_states: dict | None = None) -> tuple[Tensor, dict]:
        """Evaluate a batch (in ``torch.no_grad``, ``model.eval()``): the predicted
        (global) class per node, and stats (``loss``, which drives the scheduler and the
        best-weights restore). Used for validation and for the evaluation of every task;
        ``_curr_batch`` may hold nodes of several tasks (``_curr_batch.task_ids``).
        ``training_states`` are the method's (an override with only ``(model,
        _curr_batch)``, as in BeGin, is called without them)."""
        results = self.inference(model, _curr_batch, training_states)
        preds = _curr_batch.to_global(results["preds"].argmax(-1))
        return preds, {"loss": results["loss"].item()}

    def processTrainingLogs(self, task_id: int, epoch_cnt: int, val_metric_result: float,
                            train_stats: dict, val_stats: dict) -> None:
        """Per-epoch logging hook (progress is reported through callbacks)."""

    def processAfterEachIteration(self, curr_model: nn.Module, curr_optimizer: Optimizer,
                                  curr_training_states: dict, curr_iter_results: dict) -> bool:
        """After each epoch's validation: keep the best-validation weights and step the
        scheduler (in :attr:`task_state`); False stops the task (the learning rate
        reached its floor); the ``fixed`` schedule does neither (constant lr, every epoch)."""
        if self.protocol.schedule == "fixed":  # CGLB: no scheduler, no best-weights restore
            return True
        task = self.task_state
        val_loss = curr_iter_results["val_stats"]["loss"]
        if val_loss < task.best_val_loss:
            task.best_val_loss = val_loss
            task.best_weights = self.saveCheckpoint(curr_model, curr_training_states)
        scheduler = task.scheduler
        scheduler.step(val_loss)
        floor = scheduler.min_lrs[0]
        return curr_optimizer.param_groups[0]["lr"] > floor * (1 + 1e-6) + 1e-12

    def processAfterTraining(self, task_id: int, curr_dataset: TaskDataset,
                             curr_model: nn.Module, curr_optimizer: Optimizer,
                             curr_training_states: dict) -> None:
        """After a task's last epoch (model in eval mode): restore the best-validation
        weights (:attr:`task_state`). An override calls it, then stores what the method
        keeps of the task."""
        best, self.task_state.best_weights = self.task_state.best_weights, None
        if best is not None:
            self.loadCheckpoint(curr_model, curr_training_states, best)
