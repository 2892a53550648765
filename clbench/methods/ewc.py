"""``ewc``: Elastic Weight Consolidation (Kirkpatrick et al., 2017), as in BeGin.

After each task, at the restored best-validation weights, the diagonal Fisher
information ``F`` of the task's training loss is computed and kept with the
weights ``theta*``. Later tasks minimise::

    task loss + lamb * sum_k sum_i F_k[i] * (theta[i] - theta*_k[i])^2

``fisher_norm="mean"`` (default) divides each task's Fisher by its mean entry before it
is kept, so that ``lamb`` has one meaning on every dataset: the Fisher of a task that is
fitted almost exactly is tiny (train loss ~1e-4) and its scale varies by orders of
magnitude between datasets and tasks, so that a fixed ``lamb`` on the raw Fisher is
inert on one dataset and overpowering on another. ``fisher_norm="none"`` keeps the raw
Fisher (BeGin; with ``lamb=10000`` it is BeGin's EWC).

``fisher="batch"`` (BeGin, default) takes ``F`` as the squared gradient of the
full-batch task loss; ``fisher="empirical"`` as the mean over the task's training
nodes of the squared per-node loss gradients. With ``online=true`` a single
running pair is kept (``F <- gamma * F + F_t``, ``theta* <- theta_t``; Schwarz
et al., 2018) instead of one pair per past task.

All parameters of the model that require gradients are regularised (as BeGin
does); they are handled as one flat vector, and the per-task pairs as ``[K, P]``
matrices, so the penalty is a few tensor operations whatever the depth of the
model. The penalty is added in ``afterInference`` (as BeGin does), so validation
losses (which drive the scheduler and the best-weights restore) are task losses.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.optim import Optimizer

from clbench.loopstate import class_balance_weights
from clbench.methods.anchored import AnchoredTrainer, normalise_importance
from clbench.methods.base import register_method
from clbench.scenario import NCScenarioLoader, NodeBatch, TaskDataset

FISHER_KINDS = ("batch", "empirical")


@register_method("ewc")
class NCTaskILEWCTrainer(AnchoredTrainer):
    """EWC for node classification, Task-IL or Class-IL.

    Hyperparameters (see ``methods/ewc.toml``): ``lamb``, ``fisher_norm`` (mean | none;
    BeGin: none with lamb 10000), ``fisher`` (batch | empirical), ``online`` and ``gamma``
    (decay of the online Fisher).

    Training states: ``fishers`` and ``params``, each ``[K, P]`` (one row per past
    task, or a single row when online), empty ``[0, P]`` before the first task ends.
    """

    def __init__(self, model, scenario, optimizer_fn, loss_fn=None, device="cpu",
                 **kwargs: Any) -> None:
        super().__init__(model, scenario, optimizer_fn, loss_fn, device, **kwargs)
        self.lamb = float(self.hparams["lamb"])
        self.fisher_kind = str(self.hparams["fisher"])
        self.fisher_norm = str(self.hparams["fisher_norm"])
        self.online = bool(self.hparams["online"])
        self.gamma = float(self.hparams["gamma"])

    # ------------------------------------------------------------------ helpers
    def penalty(self, training_states: dict) -> Tensor | None:
        """``sum_k sum_i F_k[i] (theta[i] - theta*_k[i])^2`` (None before any task ends)."""
        fishers, stars = training_states["fishers"], training_states["params"]
        if fishers.size(0) == 0:
            return None
        diff = self.flat_params().unsqueeze(0) - stars
        return (fishers * diff * diff).sum()

    def _task_loss(self, model: nn.Module, batch: NodeBatch) -> Tensor:
        return self.inference(model, batch, None)["loss"]

    def fisher_diagonal(self, model: nn.Module, batch: NodeBatch) -> Tensor:
        """Diagonal Fisher of the task loss on ``batch``, flat, at the current weights.

        ``batch``: the squared gradient of the full-batch loss (BeGin).
        ``empirical``: the mean over nodes of squared per-node gradients. The forward
        pass is shared; each node needs its own backward pass (per-sample gradients
        with ``torch.func.vmap`` are not available through PyG's sparse CSR
        aggregation), so this costs one backward pass per training node.
        """
        params = self._reg_params()
        was_training = model.training
        model.eval()
        try:
            with torch.enable_grad():
                if self.fisher_kind == "batch":
                    grads = torch.autograd.grad(self._task_loss(model, batch), params)
                    flat = torch.cat([g.reshape(-1) for g in grads])
                    return flat * flat
                logits = batch.restrict(self.forward(model, batch))
                labels = batch.local_labels
                acc = torch.zeros(sum(p.numel() for p in params), device=self.device)
                n = logits.size(0)
                # weighted as the task loss is (the cglb preset's class-balanced loss)
                w = (class_balance_weights(batch.labels, logits.dtype)
                     if self.protocol.loss_weights == "class_balanced" else None)
                loss_fn = self.loss_fn if w is None else F.cross_entropy
                for i in range(n):
                    loss_i = loss_fn(logits[i:i + 1], labels[i:i + 1])
                    grads = torch.autograd.grad(loss_i, params, retain_graph=i < n - 1)
                    flat = torch.cat([g.reshape(-1) for g in grads])
                    if w is None:
                        acc.addcmul_(flat, flat)
                    else:
                        acc.addcmul_(flat, flat, value=float(w[i]))
                return acc / max(n, 1) if w is None else acc / w.sum()
        finally:
            model.train(was_training)

    # ------------------------------------------------------------------ events
    def initTrainingStates(self, scenario: NCScenarioLoader, model: nn.Module,
                           optimizer: Optimizer) -> dict:
        P = sum(p.numel() for p in self._reg_params())
        empty = torch.zeros(0, P, device=self.device)
        states = {"fishers": empty, "params": empty.clone()}
        self.training_states = states
        return states

    def processAfterTraining(self, task_id: int, curr_dataset: TaskDataset,
                             curr_model: nn.Module, curr_optimizer: Optimizer,
                             curr_training_states: dict) -> None:
        """Restore the best weights, then store (or accumulate) their Fisher and values."""
        super().processAfterTraining(task_id, curr_dataset, curr_model, curr_optimizer,
                                     curr_training_states)
        fisher = normalise_importance(
            self.fisher_diagonal(curr_model, curr_dataset.train).detach(), self.fisher_norm)
        with torch.no_grad():
            theta = self.flat_params().detach().clone()
        states = curr_training_states
        if self.online and states["fishers"].size(0) > 0:
            fisher = self.gamma * states["fishers"][0] + fisher
            states["fishers"], states["params"] = fisher[None], theta[None]
        else:
            states["fishers"] = torch.cat([states["fishers"], fisher[None]])
            states["params"] = torch.cat([states["params"], theta[None]])

    def extraStorageBytes(self, training_states: dict) -> int:
        """The stored Fisher diagonals and weight copies."""
        return sum(t.numel() * t.element_size()
                   for t in (training_states["fishers"], training_states["params"]))
