"""The naive path: the same GCN with PyG's default ``edge_index`` message passing.

``GCNConv`` with its defaults (``normalize=True``, ``add_self_loops=True``,
``cached=False``) on ``edge_index``: every forward recomputes the symmetric
normalisation and gathers one message per edge (``[E, hidden]``), then scatters
them. Same weights, BatchNorm, ReLU and classifier as clbench's GCN backbone
(:class:`clbench.models.NodeClassifier`), so its parameters load one from the other.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torch_geometric.nn import GCNConv

from clbench.models import NodeClassifier
from clbench.scenario import NodeBatch


def naive_gcn(in_dim: int, hidden: int, num_classes: int, layers: int = 3) -> NodeClassifier:
    """BeGin's GCN backbone on ``edge_index`` with PyG's default ``GCNConv``."""
    return NodeClassifier(lambda i, o: GCNConv(i, o), in_dim, hidden, num_classes,
                          num_layers=layers, graph_input=lambda g: g.edge_index)


class NaiveStep:
    """A full-batch training step of :func:`naive_gcn` on one Task-IL batch (Adam)."""

    def __init__(self, model: NodeClassifier, batch: NodeBatch, lr: float = 1e-3) -> None:
        self.model, self.batch = model, batch
        self.optimizer = torch.optim.Adam(model.parameters(), lr=lr)

    def loss(self) -> Tensor:
        graph = self.batch.graph
        logits = self.batch.restrict(self.model(graph.x, graph))
        return F.cross_entropy(logits, self.batch.local_labels)

    def step(self) -> float:
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        loss = self.loss()
        loss.backward()
        self.optimizer.step()
        return loss.item()
