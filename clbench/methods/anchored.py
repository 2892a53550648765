"""The shared part of the weight-anchoring regularisers (EWC, MAS, TWP): the task loss
plus a penalty that pulls each weight towards the value past tasks ended with, weighted
by how much it mattered to them. A subclass says how the penalty is weighted."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.optim import Optimizer

from clbench.scenario import NodeBatch
from clbench.trainer import NCTrainer


def normalise_importance(scores: Tensor, how: str) -> Tensor:
    """A task's importance scores as kept (EWC's and ContinualGNN's ``fisher_norm``, TWP's
    ``importance_norm``; the cards list the choices): ``"mean"`` divides them by their
    mean entry (left as is when all zero), so that a strength means the same on every
    dataset and task; ``"none"`` keeps the raw scores (BeGin's)."""
    if how == "none":
        return scores
    mean = scores.mean()
    return scores / mean if mean > 0 else scores


class AnchoredTrainer(NCTrainer):
    """Fine-tuning plus :meth:`weighted_penalty`, added in ``afterInference`` (training
    only: validation losses stay task losses) and reported as ``results["penalty"]``."""

    def _reg_params(self) -> list[nn.Parameter]:
        """The regularised parameters: every trainable one, in the model's order."""
        return [p for p in self.model.parameters() if p.requires_grad]

    def flat_params(self) -> Tensor:
        """The regularised parameters as one vector (differentiable)."""
        return torch.cat([p.reshape(-1) for p in self._reg_params()])

    def penalty(self, training_states: dict) -> Tensor | None:
        """The unweighted penalty; None before any task ended (nothing to anchor to)."""
        raise NotImplementedError

    def weighted_penalty(self, training_states: dict) -> Tensor | None:
        """The term added to the task loss: ``self.lamb`` x :meth:`penalty` (a method
        whose penalty holds its own weights overrides this)."""
        reg = self.penalty(training_states)
        return None if reg is None else self.lamb * reg

    def afterInference(self, results: dict, model: nn.Module, optimizer: Optimizer,
                       _curr_batch: NodeBatch, training_states: dict) -> dict:
        """Add the penalty to the task loss, then back-propagate and step."""
        reg = self.weighted_penalty(training_states)
        if reg is not None:
            results["penalty"] = reg
            results["loss"] = results["loss"] + reg
        return super().afterInference(results, model, optimizer, _curr_batch,
                                      training_states)
