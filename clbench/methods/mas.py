"""``mas``: Memory Aware Synapses (Aljundi et al., 2018), as in BeGin (Task-IL and Class-IL).

After each task, at the restored best-validation weights (eval mode), the importance of
every parameter is measured from the model's *outputs* alone, with no labels: the
sensitivity of the squared L2 norm of each training node's output at its candidate
classes (Task-IL: its task's classes; Class-IL: every class seen so far, as in BeGin's
Class-IL trainer, whose logits of classes not seen yet are constants). Importances are
summed over tasks and the weights after the last task are kept; later tasks minimise::

    task loss + lamb * sum_i Omega[i] * (theta[i] - theta*[i])^2

``importance="batch"`` (BeGin, default) takes ``Omega_t = |d/dtheta mean_n ||f(x_n)||^2|``,
the absolute gradient of the full-batch mean; ``importance="node"`` (the paper) takes
``Omega_t = mean_n |d/dtheta ||f(x_n)||^2|``, one backward pass per training node.

All parameters that require gradients are regularised (as in BeGin), as one flat vector.
The penalty is added in ``afterInference``, so validation losses stay task losses.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torch.optim import Optimizer

from clbench.methods.anchored import AnchoredTrainer
from clbench.methods.base import register_method
from clbench.scenario import NCScenarioLoader, NodeBatch, TaskDataset

IMPORTANCE_KINDS = ("batch", "node")


@register_method("mas")
class NCTaskILMASTrainer(AnchoredTrainer):
    """MAS for node classification, Task-IL or Class-IL.

    Hyperparameters (see ``methods/mas.toml``): ``lamb`` (BeGin: 1) and ``importance``
    (batch | node).

    Training states: ``importance`` (``Omega``, summed over the learned tasks) and
    ``params`` (``theta*``, the weights after the last learned task), flat, empty
    ``[0]`` before the first task ends.
    """

    def __init__(self, model, scenario, optimizer_fn, loss_fn=None, device="cpu",
                 **kwargs: Any) -> None:
        super().__init__(model, scenario, optimizer_fn, loss_fn, device, **kwargs)
        self.lamb = float(self.hparams["lamb"])
        self.importance_kind = str(self.hparams["importance"])

    # ------------------------------------------------------------------ helpers
    def penalty(self, training_states: dict) -> Tensor | None:
        """``sum_i Omega[i] (theta[i] - theta*[i])^2`` (None before any task ends)."""
        omega, star = training_states["importance"], training_states["params"]
        if omega.numel() == 0:
            return None
        diff = self.flat_params() - star
        return (omega * diff * diff).sum()

    def output_sq_norms(self, model: nn.Module, batch: NodeBatch) -> Tensor:
        """``||f(x_n)||^2`` per node of ``batch``: its logits at its candidate classes (its
        task's in Task-IL, the classes seen so far in Class-IL). Reads the nodes and
        their candidates, never their labels."""
        return batch.restrict(self.forward(model, batch)).pow(2).sum(-1)

    def task_importance(self, model: nn.Module, batch: NodeBatch) -> Tensor:
        """This task's ``Omega_t``, flat, at the current weights, in eval mode."""
        params = self._reg_params()
        was_training = model.training
        model.eval()
        try:
            with torch.enable_grad():
                sq = self.output_sq_norms(model, batch)
                if self.importance_kind == "batch":
                    grads = torch.autograd.grad(sq.mean(), params)
                    return torch.cat([g.reshape(-1) for g in grads]).abs()
                acc = torch.zeros(sum(p.numel() for p in params), device=self.device)
                n = sq.numel()
                for i in range(n):
                    grads = torch.autograd.grad(sq[i], params, retain_graph=i < n - 1)
                    acc.add_(torch.cat([g.reshape(-1) for g in grads]).abs())
                return acc / max(n, 1)
        finally:
            model.train(was_training)

    # ------------------------------------------------------------------ events
    def initTrainingStates(self, scenario: NCScenarioLoader, model: nn.Module,
                           optimizer: Optimizer) -> dict:
        empty = torch.zeros(0, device=self.device)
        return {"importance": empty, "params": empty.clone()}

    def processAfterTraining(self, task_id: int, curr_dataset: TaskDataset,
                             curr_model: nn.Module, curr_optimizer: Optimizer,
                             curr_training_states: dict) -> None:
        """Restore the best weights, then add their importance and keep their values."""
        super().processAfterTraining(task_id, curr_dataset, curr_model, curr_optimizer,
                                     curr_training_states)
        omega = self.task_importance(curr_model, curr_dataset.train).detach()
        states = curr_training_states
        if states["importance"].numel():
            omega = states["importance"] + omega
        states["importance"] = omega
        with torch.no_grad():
            states["params"] = self.flat_params().detach().clone()

    def extraStorageBytes(self, training_states: dict) -> int:
        """The summed importance and the kept weights."""
        return sum(t.numel() * t.element_size()
                   for t in (training_states["importance"], training_states["params"]))
