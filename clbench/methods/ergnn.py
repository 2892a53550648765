"""``ergnn``: Experience Replay GNN (Zhou & Cao, AAAI 2021), as BeGin applies it.

After each task, a sampler picks ``num_memories // num_classes`` training nodes of
each of the task's classes (BeGin's ``num_experience_nodes``; ``num_classes`` counts
all classes of the graph, so the buffer never exceeds ``num_memories`` whatever the
number of tasks) and adds them to the experience buffer. Every later training step
replays the buffer::

    loss = (1 - beta) * task loss + beta * loss on the buffer,   beta = |B| / (|B| + n_t)

with ``n_t`` the current task's training nodes (BeGin's weighting). In Task-IL each
buffered node is scored among its own task's classes; in Class-IL among every class
seen so far, like the current task's nodes (as BeGin's Class-IL trainer). With
``graph="full"`` its logits come from the same full-graph forward pass as the current
task's (as in BeGin); with ``graph="task"`` each buffered task is scored on its own
subgraph.

Samplers (on the node features, as BeGin's defaults; ``sampler_features = "l1"``
row-normalises them first, which is what BeGin's DGL Cora and CiteSeer hold):

* ``CM``, coverage maximisation: the nodes with the fewest training nodes of the
  task's *other* classes within ``distance_threshold`` (Euclidean);
* ``MF``, mean of feature: the nodes closest to their class's mean feature vector;
* ``random``: a uniform sample.

Ties, and the subsample of at most 1000 nodes per other class that ``CM`` compares
with (BeGin's cap), are drawn from torch's global generator (saved in resume points).
Influence maximisation is not offered: it needs an influence-function estimate (an
inverse-Hessian-vector product) per candidate node.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torch.optim import Optimizer

from clbench.methods.base import register_method
from clbench.methods.memory import buffer_bytes, stored_batches, stored_logits
from clbench.scenario import NCScenarioLoader, NodeBatch, TaskDataset
from clbench.trainer import NCTrainer

SAMPLERS = ("CM", "MF", "random")
#: CM compares each node with at most this many nodes of every other class (BeGin).
CM_MAX_OTHERS = 1000


def _ranked(scores: Tensor) -> Tensor:
    """Indices of ``scores`` from smallest to largest, ties in random order."""
    shuffle = torch.randperm(scores.numel(), device=scores.device)
    return shuffle[torch.sort(scores[shuffle], stable=True).indices]


def coverage_max(own: Tensor, others: list[Tensor], budget: int, threshold: float) -> Tensor:
    """CM: positions in ``own`` [n, F] of the ``budget`` rows with the fewest rows of
    ``others`` (one [m_j, F] per other class, each subsampled to 1000) closer than
    ``threshold``."""
    counts = torch.zeros(own.size(0), dtype=torch.long, device=own.device)
    for other in others:
        if other.size(0) > CM_MAX_OTHERS:
            other = other[torch.randperm(other.size(0), device=other.device)[:CM_MAX_OTHERS]]
        counts += (torch.cdist(own, other) < threshold).sum(1)
    return _ranked(counts)[:budget]


def mean_of_feature(own: Tensor, budget: int) -> Tensor:
    """MF: positions in ``own`` of the ``budget`` rows closest to their mean."""
    dist = torch.linalg.vector_norm(own - own.mean(0, keepdim=True), dim=1)
    return _ranked(dist)[:budget]


@register_method("ergnn")
class NCTaskILERGNNTrainer(NCTrainer):
    """ER-GNN for node classification, Task-IL or Class-IL.

    Hyperparameters (see ``methods/ergnn.toml``): ``num_memories`` (the whole buffer
    budget), ``sampler`` (CM | MF | random), ``distance_threshold`` (CM) and
    ``sampler_features`` (raw | l1).

    Training states: ``buffer``, the ids of the buffered nodes (int64, in the order
    they were added).
    """

    def __init__(self, model, scenario, optimizer_fn, loss_fn=None, device="cpu",
                 **kwargs: Any) -> None:
        super().__init__(model, scenario, optimizer_fn, loss_fn, device, **kwargs)
        self.per_class = int(self.hparams["num_memories"]) // scenario.num_classes
        self.sampler = str(self.hparams["sampler"])
        self.distance_threshold = float(self.hparams["distance_threshold"])
        self.sampler_features = str(self.hparams["sampler_features"])

    # ------------------------------------------------------------------ sampling
    def _features(self) -> Tensor:
        x = self.scenario.graph.x
        if self.sampler_features == "l1":
            return x / x.abs().sum(1, keepdim=True).clamp_min(torch.finfo(x.dtype).tiny)
        return x

    def select(self, train: NodeBatch) -> Tensor:
        """The nodes of ``train`` (one task's training nodes) the sampler keeps:
        ``per_class`` of each class (all of a smaller class)."""
        x = self._features()
        classes = train.labels.unique().tolist()
        members = {c: train.nodes[train.labels == c] for c in classes}
        chosen = []
        for c in classes:
            own = members[c]
            if self.sampler == "CM":
                others = [x[members[o]] for o in classes if o != c]
                pos = coverage_max(x[own], others, self.per_class, self.distance_threshold)
            elif self.sampler == "MF":
                pos = mean_of_feature(x[own], self.per_class)
            else:
                pos = torch.randperm(own.numel(), device=own.device)[: self.per_class]
            chosen.append(own[pos])
        return torch.cat(chosen)

    # ------------------------------------------------------------------ events
    def initTrainingStates(self, scenario: NCScenarioLoader, model: nn.Module,
                           optimizer: Optimizer) -> dict:
        return {"buffer": torch.zeros(0, dtype=torch.long, device=self.device)}

    def replay_batches(self, training_states: dict) -> list[NodeBatch]:
        """The buffer as batches to score (one per graph it is scored on): in Task-IL
        each node among its own task's classes, in Class-IL among every class seen so
        far (the current batch's candidates)."""
        return stored_batches(self.scenario, training_states["buffer"],
                              seen=self.curr_task + 1)

    def afterInference(self, results: dict, model: nn.Module, optimizer: Optimizer,
                       _curr_batch: NodeBatch, training_states: dict) -> dict:
        """Mix the buffer's loss into the task loss (BeGin's beta), then step."""
        logits, weights = results.pop("logits"), results.pop("weights")
        if not training_states["buffer"].numel():
            return super().afterInference(results, model, optimizer, _curr_batch,
                                          training_states)
        batches = self.replay_batches(training_states)
        parts = [stored_logits(b, _curr_batch, logits,
                               lambda b: self.forward(model, b, weights)) for b in batches]
        replay_loss = self.batch_loss(torch.cat(parts), batches)
        size = sum(len(b) for b in batches)
        beta = size / (size + len(_curr_batch))
        task_loss = results["loss"]
        results["loss"] = (1 - beta) * task_loss + beta * replay_loss
        stats = super().afterInference(results, model, optimizer, _curr_batch,
                                       training_states)
        stats["replay_loss"] = replay_loss.item()
        return stats

    def processAfterTraining(self, task_id: int, curr_dataset: TaskDataset,
                             curr_model: nn.Module, curr_optimizer: Optimizer,
                             curr_training_states: dict) -> None:
        """Restore the best weights, then add the sampled nodes of this task."""
        super().processAfterTraining(task_id, curr_dataset, curr_model, curr_optimizer,
                                     curr_training_states)
        if self.per_class <= 0:
            return
        chosen = self.select(curr_dataset.train)
        buffer = curr_training_states["buffer"]
        curr_training_states["buffer"] = torch.cat([buffer, chosen.to(buffer.device)])

    def extraStorageBytes(self, training_states: dict) -> int:
        """The buffer: each node's id, label and feature row."""
        return buffer_bytes(self.scenario, training_states["buffer"].numel())
