"""Evaluation of methods that predict a node with its own task's parameters (PackNet,
Piggyback, HAT, PI-GNN): the batch's nodes are grouped by *view* (the task whose
weights, masks or blocks score them) and each group gets its own forward pass.

Two forms, with the arithmetic each method has always used (so that their recorded
numbers are unchanged): :func:`eval_by_view` gathers every node's logits into one
tensor and takes one loss; :func:`eval_by_subset` scores each view's sub-batch on its
own and averages the losses weighted by size.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from clbench.scenario import NodeBatch

#: the loss of restricted logits against a batch's labels (a trainer's ``batch_loss``:
#: weighted as the protocol's ``loss_weights`` says)
LossOf = Callable[[Tensor, NodeBatch], Tensor]


def eval_by_view(batch: NodeBatch, views: Tensor, forward_view: Callable[[int], Tensor],
                 loss_of: LossOf) -> tuple[Tensor, dict]:
    """Global predictions and ``{"loss"}`` of ``batch``; a node of view ``j`` takes its
    logits from ``forward_view(j)`` (logits of every row of ``batch.graph``)."""
    logits: Tensor | None = None
    for j in torch.unique(views).tolist():
        sel = (views == j).nonzero().view(-1)
        out = forward_view(j)
        if logits is None:
            logits = out.new_empty(batch.candidates.shape)
        logits[sel] = out[batch.rows[sel]].gather(1, batch.candidates[sel])
    loss = loss_of(logits, batch)
    return batch.to_global(logits.argmax(-1)), {"loss": loss.item()}


def eval_by_subset(batch: NodeBatch, views: Tensor,
                   logits_of: Callable[[int, NodeBatch], Tensor],
                   loss_of: LossOf) -> tuple[Tensor, dict]:
    """Global predictions and ``{"loss"}`` of ``batch``; the sub-batch of view ``j``
    takes its restricted logits from ``logits_of(j, sub_batch)``."""
    preds = torch.empty_like(batch.labels)
    loss_sum = 0.0
    for j in views.unique().tolist():
        select = views == j
        sub = batch.subset(select)
        logits = logits_of(j, sub)
        preds[select] = sub.to_global(logits.argmax(-1))
        loss_sum += loss_of(logits, sub).item() * len(sub)
    return preds, {"loss": loss_sum / max(len(batch), 1)}
