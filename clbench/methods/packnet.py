"""``packnet``: iterative magnitude pruning, one slice of the backbone per task.

PackNet (Mallya & Lazebnik, 2018), as BeGin applies it to GNNs. Every weight
matrix of the GNN layers (:meth:`~clbench.models.NodeClassifier.backbone_weight_names`)
carries an *owner* per entry: the task that owns it, or "free". For each task ``t``:

1. **train** the free weights (the weights owned by earlier tasks are used but
   kept fixed);
2. **prune**: among the free weights of each matrix, task ``t`` keeps the fraction
   ``keep`` with the largest magnitude (BeGin: ``1 - (1/T)^(1/(T-1))``, so that
   every task ends up with about the same share; ``keep_ratio`` overrides it); the
   other free weights are set to zero and stay free for later tasks;
3. **retrain** only the weights task ``t`` kept;
4. **freeze** them. The last task takes all remaining free weights (no pruning).

Both phases run inside the task's epochs of the one training loop: the first
phase lasts at most ``train_ratio`` of the epoch budget (BeGin: a tenth) or until
the plateau scheduler stops it; the pruning happens at its best-validation
weights; the optimizer and scheduler are then reset and the retraining phase
gets the remaining epochs (with its own best-validation restore).

Task ``j`` is evaluated with the weights owned by tasks ``<= j`` only (the rest
zeroed): one forward pass per task present in the batch, the masked matrices
substituted with ``torch.func.functional_call`` (no model copies); tasks not
learned yet use the current network.

Besides the masked matrices: the other parameters of the GNN layers (biases,
GAT attention vectors) and BatchNorm (statistics and affine) are learned on the
first task and frozen afterwards; each task's classifier rows are its own and
are frozen after that task. Frozen entries are put back bit-exactly after every
optimizer step (:meth:`~clbench.trainer.NCTrainer.restore_frozen`), so neither
weight decay nor Adam's state can move them: forgetting is exactly zero.

Differences from BeGin, on purpose: the pre-pruning phase shares the task's epoch
budget instead of adding a tenth to it; BeGin also masks the GNN layers' biases
(1-D, where pruning is meaningless) and lets Adam's weight decay move frozen
weights; ownership is one ``int8`` per masked weight instead of an ``int64``.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn
from torch.optim import Optimizer

from clbench.methods.base import register_method
from clbench.methods.taskviews import eval_by_view
from clbench.models import batchnorm_modules, freeze_batchnorm
from clbench.scenario import NCScenarioLoader, NodeBatch, TaskDataset
from clbench.trainer import NCTrainer, TaskState

TRAIN, RETRAIN = "train", "retrain"


def begin_keep_ratio(num_tasks: int) -> float:
    """BeGin's share of the free weights each task keeps: ``1 - (1/T)^(1/(T-1))``.

    With it, task ``t`` ends up owning ``(1 - k)^t * k`` of every matrix and the last
    task the remaining ``(1 - k)^(T-1) = 1/T``.
    """
    if num_tasks <= 1:
        return 1.0
    return 1.0 - math.exp(math.log(1.0 / num_tasks) / (num_tasks - 1))


def owner_dtype(num_tasks: int) -> torch.dtype:
    """The smallest integer type holding every task id and the "free" marker."""
    return torch.int8 if num_tasks < torch.iinfo(torch.int8).max else torch.int16


@register_method("packnet")
class NCTaskILPackNetTrainer(NCTrainer):
    """PackNet for Task-IL node classification.

    Hyperparameters (see ``methods/packnet.toml``): ``keep_ratio`` (0 = BeGin's
    ``1 - (1/T)^(1/(T-1))``) and ``train_ratio`` (share of the epoch budget for
    training the free weights before pruning).

    Training states: ``owners`` (name -> owner-task tensor, ``free`` marks free
    entries), ``keep`` (the share of free weights a task keeps), ``phase``
    (``"train"`` or ``"retrain"``), ``phase_epoch`` and ``train_epochs``. Each phase
    has its own :class:`~clbench.trainer.TaskState` (scheduler, best weights).
    """

    def __init__(self, model, scenario, optimizer_fn, loss_fn=None, device="cpu",
                 **kwargs: Any) -> None:
        super().__init__(model, scenario, optimizer_fn, loss_fn, device, **kwargs)
        keep = float(self.hparams["keep_ratio"])
        ratio = float(self.hparams["train_ratio"])
        self.keep_ratio = keep if keep > 0 else begin_keep_ratio(self.num_tasks)
        self.train_ratio = ratio
        self.masked_names: list[str] = list(self.model.backbone_weight_names())
        self.owner_dtype = owner_dtype(self.num_tasks)
        self.free = torch.iinfo(self.owner_dtype).max

    # ------------------------------------------------------------------ helpers
    def _params(self) -> dict[str, nn.Parameter]:
        return dict(self.model.named_parameters())

    def _shared_conv_params(self) -> list[nn.Parameter]:
        """GNN-layer parameters that are not masked (biases, attention vectors)."""
        masked = set(self.masked_names)
        return [p for n, p in self.model.convs.named_parameters(prefix="convs")
                if n not in masked]

    def _takes_all(self, task_id: int) -> bool:
        return task_id == self.num_tasks - 1 or self.keep_ratio >= 1.0

    def _refreeze(self, states: dict) -> None:
        """Rebuild the frozen set for the current task and phase.

        Phase ``train``: every masked entry that is not free is frozen. Phase
        ``retrain``: every masked entry not owned by the current task is frozen
        (this keeps the pruned, zeroed free weights at zero). From the second task
        on, the GNN layers' other parameters and BatchNorm are frozen too; the
        classifier rows of earlier tasks always are.
        """
        t = self.curr_task
        self.unfreeze_all()
        params = self._params()
        for name, owner in states["owners"].items():
            trainable = owner == (self.free if states["phase"] == TRAIN else t)
            self.freeze_(params[name], ~trainable)
        if t > 0:
            for p in self._shared_conv_params():
                p.requires_grad_(False)
                self.freeze_(p)
            freeze_batchnorm(self.model)
            for bn in batchnorm_modules(self.model):
                for p in bn.parameters():
                    self.freeze_(p)
            old_classes = self.scenario.task_classes[:t].reshape(-1)
            head = self.model.classifier
            rows = torch.zeros(head.out_features, dtype=torch.bool, device=self.device)
            rows[old_classes] = True
            self.freeze_(head.weight, rows.view(-1, 1).expand_as(head.weight))
            if head.bias is not None:
                self.freeze_(head.bias, rows)

    def _start_phase(self, phase: str, optimizer: Optimizer, states: dict) -> None:
        """Fresh optimizer state and a new :class:`~clbench.trainer.TaskState` (scheduler
        and best-validation tracking) for a phase."""
        self.reset_optimizer(optimizer)
        self.task_state = TaskState(self.curr_task, self.scheduler_fn(optimizer))
        states["phase"] = phase
        states["phase_epoch"] = 0
        self._refreeze(states)

    @torch.no_grad()
    def _assign(self, model: nn.Module, states: dict) -> None:
        """Give the current task its share of the free weights; zero the rest of them.

        Per matrix, the ``round(keep * #free)`` free entries of largest magnitude
        (all of them for the last task) become the current task's.
        """
        t = self.curr_task
        params = self._params()
        for name, owner in states["owners"].items():
            w, own = params[name].view(-1), owner.view(-1)
            free_idx = (own == self.free).nonzero().view(-1)
            if self._takes_all(t):
                own[free_idx] = t
                continue
            k = int(free_idx.numel() * self.keep_ratio + 0.5)
            kept = torch.topk(w[free_idx].abs(), k, largest=True, sorted=False).indices
            own[free_idx[kept]] = t
            w[own == self.free] = 0.0

    def task_weights(self, task_id: int, states: dict | None = None) -> dict[str, Tensor]:
        """Masked matrices of task ``task_id``: entries owned by tasks ``<= task_id``."""
        states = states if states is not None else self.training_states
        params = self._params()
        out = {}
        for name, owner in states["owners"].items():
            w = params[name]
            out[name] = torch.where(owner <= task_id, w, torch.zeros((), dtype=w.dtype,
                                                                     device=w.device))
        return out

    # ------------------------------------------------------------------ events
    def initTrainingStates(self, scenario: NCScenarioLoader, model: nn.Module,
                           optimizer: Optimizer) -> dict:
        params = dict(model.named_parameters())
        owners = {n: torch.full(params[n].shape, self.free, dtype=self.owner_dtype,
                                device=self.device) for n in self.masked_names}
        states = {"owners": owners, "keep": self.keep_ratio, "phase": TRAIN,
                  "phase_epoch": 0, "train_epochs": 0}
        self.training_states = states
        return states

    def processBeforeTraining(self, task_id: int, curr_dataset: TaskDataset,
                              curr_model: nn.Module, curr_optimizer: Optimizer,
                              curr_training_states: dict) -> None:
        """Start the task in phase ``train`` (or straight in ``retrain`` when the task
        takes every free weight), with the right entries frozen."""
        super().processBeforeTraining(task_id, curr_dataset, curr_model, curr_optimizer,
                                      curr_training_states)
        epochs = getattr(self, "epoch_per_task", 1)
        curr_training_states["train_epochs"] = (
            min(max(1, round(self.train_ratio * epochs)), epochs - 1) if epochs > 1 else 1
        )
        if self._takes_all(task_id):
            self._assign(curr_model, curr_training_states)
            self._start_phase(RETRAIN, curr_optimizer, curr_training_states)
        else:
            self._start_phase(TRAIN, curr_optimizer, curr_training_states)

    def beforeInference(self, model: nn.Module, optimizer: Optimizer, _curr_batch: NodeBatch,
                        training_states: dict) -> None:
        """BatchNorm stays in eval mode after the first task (the loop calls ``train()``)."""
        if self.curr_task > 0:
            freeze_batchnorm(model)

    def processAfterEachIteration(self, curr_model: nn.Module, curr_optimizer: Optimizer,
                                  curr_training_states: dict, curr_iter_results: dict) -> bool:
        """Best-val tracking and the scheduler; at the end of phase ``train``, prune
        (at that phase's best weights) and switch to ``retrain``."""
        states = curr_training_states
        states["phase_epoch"] += 1
        go_on = super().processAfterEachIteration(curr_model, curr_optimizer, states,
                                                  curr_iter_results)
        if states["phase"] == TRAIN and (not go_on
                                         or states["phase_epoch"] >= states["train_epochs"]):
            self._prune(curr_model, curr_optimizer, states)
            return True
        return go_on

    def _prune(self, model: nn.Module, optimizer: Optimizer, states: dict) -> None:
        best, self.task_state.best_weights = self.task_state.best_weights, None
        if best is not None:
            self.loadCheckpoint(model, states, best)
        self._assign(model, states)
        self._start_phase(RETRAIN, optimizer, states)

    def processAfterTraining(self, task_id: int, curr_dataset: TaskDataset,
                             curr_model: nn.Module, curr_optimizer: Optimizer,
                             curr_training_states: dict) -> None:
        """Prune now if the epochs ran out during phase ``train``; restore the best
        retraining weights. The task's weights are frozen from the next task on."""
        if curr_training_states["phase"] == TRAIN:
            self._prune(curr_model, curr_optimizer, curr_training_states)
        super().processAfterTraining(task_id, curr_dataset, curr_model, curr_optimizer,
                                     curr_training_states)

    @torch.no_grad()
    def processEvalIteration(self, model: nn.Module, _curr_batch: NodeBatch,
                             training_states: dict | None = None) -> tuple[Tensor, dict]:
        """Each task with its own weights: one forward per task view in the batch.

        Task ``j`` < current task sees the entries owned by tasks ``<= j``; the current
        and later tasks see the current network.
        """
        t = self.curr_task
        batch = _curr_batch
        if t <= 0:
            return super().processEvalIteration(model, batch, training_states)
        return eval_by_view(
            batch, batch.task_ids.clamp(max=t),
            lambda j: self.forward(model, batch, self.task_weights(j, training_states)
                                   if j < t else None), self.batch_loss)

    def extraStorageBytes(self, training_states: dict) -> int:
        """The owner ids: one ``int8`` per masked weight (``int16`` beyond 126 tasks)."""
        return sum(o.numel() * o.element_size() for o in training_states["owners"].values())
