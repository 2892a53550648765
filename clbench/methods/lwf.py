"""``lwf``: Learning without Forgetting (Li & Hoiem, 2017), as in BeGin (Task-IL and Class-IL).

While task ``t`` is learned, the model's outputs for every old task ``k < t`` on the
current task's training nodes are pulled towards those of the model as it was when
task ``t`` started (the previous tasks' best weights, in eval mode)::

    task loss + lamb * sum_{k<t} mean_nodes CE(softmax(z_old_k / T), softmax(z_k / T))

where ``z_k`` are the logits at task ``k``'s classes (its head, in Task-IL). This is
BeGin's loss exactly: a soft cross-entropy summed over the old tasks, averaged over the
nodes, without the ``T^2`` factor of Hinton et al.

Class-IL (``--setting class``), as BeGin's Class-IL trainer: one softmax over all the
old classes together (the classes of tasks ``0..t-1``, taken by class id from the full
logits, so the growing candidate set never shifts them), i.e. the sum over ``k`` above
becomes a single group ``z_old = z[seen_classes(t)]``.

The previous model is frozen for the whole task, so its softened outputs are computed
once, at the start of the task, and kept (``targets``, ``[n_train, groups, classes]``:
Task-IL ``[n_train, t, classes_per_task]``, Class-IL ``[n_train, 1, t * classes_per_task]``)
instead of a copy of the model run at every step as BeGin does; the values are the same.
The current model's old-task logits come from the training forward pass itself
(``inference``'s full ``logits``) (BeGin
runs a second forward pass per old task, each with its own dropout mask). The term is
added in ``afterInference``, so validation losses stay task losses.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.optim import Optimizer

from clbench.methods.base import register_method
from clbench.scenario import NCScenarioLoader, NodeBatch, TaskDataset
from clbench.trainer import NCTrainer


@register_method("lwf")
class NCTaskILLwFTrainer(NCTrainer):
    """LwF for node classification, Task-IL or Class-IL.

    Hyperparameters (see ``methods/lwf.toml``): ``lamb`` (weight of the distillation
    term; BeGin: 1) and ``T`` (softmax temperature; BeGin: 2).

    Training states: ``targets``, the previous model's softened outputs at the old
    classes for the current task's training nodes (empty during task 0), and ``nodes``,
    those nodes.
    """

    def __init__(self, model, scenario, optimizer_fn, loss_fn=None, device="cpu",
                 **kwargs: Any) -> None:
        super().__init__(model, scenario, optimizer_fn, loss_fn, device, **kwargs)
        self.lamb = float(self.hparams["lamb"])
        self.T = float(self.hparams["T"])

    # ------------------------------------------------------------------ helpers
    def old_task_logits(self, logits: Tensor, batch: NodeBatch, num_old: int) -> Tensor:
        """The batch nodes' logits at the old classes (tasks ``0..num_old-1``), by class
        id, grouped by softmax: Task-IL ``[n, num_old, classes_per_task]`` (one group per
        old task's head), Class-IL ``[n, 1, num_old * classes_per_task]`` (one group: all
        old classes, sorted)."""
        if self.scenario.setting == "class":
            return logits[batch.rows][:, self.scenario.seen_classes(num_old)].unsqueeze(1)
        return logits[batch.rows][:, self.scenario.task_classes[:num_old]]

    def distillation(self, student: Tensor, targets: Tensor) -> Tensor:
        """Soft cross-entropy of ``student`` logits (``[n, K, c]``) against the target
        probabilities, at temperature ``T``: summed over the K groups (old tasks; one
        group in Class-IL), mean over nodes."""
        log_q = F.log_softmax(student / self.T, dim=-1)
        return -(targets * log_q).sum(-1).mean(0).sum()

    # ------------------------------------------------------------------ events
    def initTrainingStates(self, scenario: NCScenarioLoader, model: nn.Module,
                           optimizer: Optimizer) -> dict:
        return {"targets": torch.zeros(0, device=self.device),
                "nodes": torch.zeros(0, dtype=torch.long, device=self.device)}

    def processBeforeTraining(self, task_id: int, curr_dataset: TaskDataset,
                              curr_model: nn.Module, curr_optimizer: Optimizer,
                              curr_training_states: dict) -> None:
        """Keep the frozen previous model's softened old-task outputs on this task's
        training nodes (the model is the previous tasks' result until the first step)."""
        super().processBeforeTraining(task_id, curr_dataset, curr_model, curr_optimizer,
                                      curr_training_states)
        if task_id == 0:
            return
        batch = curr_dataset.train
        was_training = curr_model.training
        curr_model.eval()  # as in BeGin: the copy is in eval mode (no dropout, BN stats)
        try:
            with torch.no_grad():
                logits = self.forward(curr_model, batch)
        finally:
            curr_model.train(was_training)
        old = self.old_task_logits(logits, batch, task_id)
        curr_training_states["targets"] = F.softmax(old / self.T, dim=-1)
        curr_training_states["nodes"] = batch.nodes.clone()

    def afterInference(self, results: dict, model: nn.Module, optimizer: Optimizer,
                       _curr_batch: NodeBatch, training_states: dict) -> dict:
        """Add ``lamb`` x the distillation term to the task loss, then back-propagate."""
        targets = training_states["targets"]
        if targets.numel():
            if not torch.equal(_curr_batch.nodes, training_states["nodes"]):
                raise RuntimeError("lwf: the training batch is not the task's training "
                                   "nodes its targets were computed on (full batch only)")
            student = self.old_task_logits(results["logits"], _curr_batch, self.curr_task)
            if student.shape != targets.shape:
                raise RuntimeError("lwf: the old classes changed within the task")
            results["penalty"] = self.lamb * self.distillation(student, targets)
            results["loss"] = results["loss"] + results["penalty"]
        return super().afterInference(results, model, optimizer, _curr_batch,
                                      training_states)

    def extraStorageBytes(self, training_states: dict) -> int:
        """The kept targets (the largest is the last task's: its nodes x old classes)."""
        return sum(t.numel() * t.element_size()
                   for t in (training_states["targets"], training_states["nodes"]))
