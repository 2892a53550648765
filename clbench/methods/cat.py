"""``cat``: Condense and Train (Liu, Qiu & Huang, ICDM 2023), Task-IL and Class-IL.

At the start of every task (before it is trained, as in BeGin: the task is learned
through its own condensed graph), the task's training nodes are **condensed** into a
few synthetic nodes: ``num_memories // num_tasks`` per task, split among its classes
in proportion to their training nodes (:func:`class_budgets`, BeGin's rounding). The
synthetic features start from random real rows of their class and are optimised by
distribution matching with random encoders: at every step the backbone is
re-initialised at random (:func:`randomize_`) and::

    sum_c (n_c / n) * || mean_{real i in c} e(x_i) - mean_{synthetic j in c} e(s_j) ||^2

is minimised over the synthetic features ``s``, where ``e`` is the backbone without its
classifier followed by L2 normalisation, the real nodes embedded on the task's graph
and the synthetic ones on a graph of their own without edges (each node aggregates
only itself: BeGin's ``forward_without_classifier(None, x)``). ``condense_steps`` steps
of Adam at ``condense_lr`` without weight decay (the authors' ``feat_lr``), or with
``condense_lr = 0`` of the run's optimizer, lr and weight decay (BeGin:
``max_num_epochs`` steps of ``optimizer_fn``; the same at the protocol's defaults).

The memory keeps the synthetic nodes only (features, label, task and replay weight):
no real node, no node id. **Train in Memory**: every training step of a task is a step
on the whole memory (the past tasks' synthetic nodes and the current task's), never on
the task's real nodes (BeGin's ``processTrainIteration``)::

    loss = sum_t sum_{j in M_t} (n_t / |M_t|) * CE_j        (a sum, as in BeGin's Task-IL)

each synthetic node scored among its own task's classes (Task-IL) or among every class
seen so far, tasks ``0..t`` (Class-IL, as BeGin's ``NCClassILCaTTrainer``, whose head
masks the classes not observed yet): the same memory, the same condensation and the
same loss, only the candidates differ. (BeGin's Class-IL trainer divides the weights by
their sum, a weighted mean; clbench keeps the sum in both settings, so that with one
task Class-IL is Task-IL bit for bit; see the card.) With ``memory_bn = "running"``
(the default) BatchNorm uses its running statistics in these steps and never updates
them: the statistics of a batch of four synthetic nodes (Cora) are not those of the
real graph it is evaluated on, and with them (``"batch"``, BeGin) Cora's first task
stayed at its majority class. Validation and early stopping
use the current task's real validation nodes, as for every method. With
``num_memories < num_tasks`` nothing is condensed and the tasks are learned from their
real training nodes: fine-tuning, bit for bit.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.optim import Optimizer

from clbench.graph import Graph
from clbench.methods.base import register_method
from clbench.models import NodeClassifier, batchnorm_modules
from clbench.scenario import NCScenarioLoader, NodeBatch, TaskDataset
from clbench.trainer import NCTrainer

MEMORY_KEYS = ("memory_x", "memory_y", "memory_task", "memory_weight")


def class_budgets(counts: list[int], budget: int) -> list[int]:
    """Synthetic nodes per class (BeGin's split): ``max(1, n_c * budget // n)`` each, then
    one more for the classes with the largest remainders (ties: the later class) until
    the budget is used. The budget is capped at ``n`` (BeGin's Class-IL cap)."""
    n = sum(counts)
    budget = min(budget, n)
    sizes = [max(1, c * budget // n) for c in counts]
    remainders = sorted(((c * budget % n, i) for i, c in enumerate(counts) if c * budget >= n),
                        reverse=True)
    for _, i in remainders[: max(budget - sum(sizes), 0)]:
        sizes[i] += 1
    return sizes


def edgeless_graph(x: Tensor, y: Tensor) -> Graph:
    """A graph of the nodes ``x`` without edges (GCN, SAGE, GAT: each node sees itself)."""
    n = x.size(0)
    return Graph(x, y, torch.zeros(2, 0, dtype=torch.long, device=x.device),
                 torch.ones(n, dtype=torch.bool, device=x.device),
                 torch.zeros(n, dtype=torch.bool, device=x.device),
                 torch.zeros(n, dtype=torch.bool, device=x.device), name="cat-memory")


@torch.no_grad()
def randomize_(model: nn.Module) -> None:
    """Draw new random weights for every layer (BeGin's ``reset_parameters``)."""
    for module in model.modules():
        if module is not model and hasattr(module, "reset_parameters"):
            module.reset_parameters()


def embed(encoder: nn.Module, x: Tensor, graph: Graph) -> Tensor:
    """L2-normalised embeddings of ``x`` on ``graph`` (before the classifier)."""
    return F.normalize(encoder.encode(x, graph), dim=-1)


def real_view(encoder: nn.Module, train: NodeBatch) -> tuple[Graph, Tensor]:
    """The graph the real nodes are embedded on, and their rows in it: for a stack of
    message-passing layers (clbench's backbones), only the nodes within that many hops
    of them (:meth:`Graph.neighbourhood`: the same embeddings, since the encoder is in
    eval mode; Cora's tasks reach about half the graph, CiteSeer's a quarter); else
    the whole graph."""
    if not isinstance(encoder, NodeClassifier):  # a plugin's model: maybe not row-wise
        return train.graph, train.rows
    return train.graph.neighbourhood(train.rows, len(encoder.convs))


def class_means(h: Tensor, labels: Tensor, classes: Tensor) -> Tensor:
    """``[len(classes), d]``: the mean row of ``h`` per class."""
    return torch.stack([h[labels == c].mean(0) for c in classes.tolist()])


def matching_loss(encoder: nn.Module, real_means: Tensor, syn_x: Tensor, syn_y: Tensor,
                  classes: Tensor, weights: Tensor) -> Tensor:
    """CaT's distribution-matching loss of ``syn_x`` under ``encoder`` against the real
    nodes' per-class mean embeddings ``real_means`` (weights: ``n_c / n``)."""
    fake = class_means(embed(encoder, syn_x, edgeless_graph(syn_x.detach(), syn_y)),
                       syn_y, classes)
    return (weights * ((real_means - fake) ** 2).sum(1)).sum()


@register_method("cat")
class NCTaskILCaTTrainer(NCTrainer):
    """CaT for node classification, Task-IL or Class-IL.

    Hyperparameters (see ``methods/cat.toml``): ``num_memories`` (the whole memory,
    ``num_memories // num_tasks`` synthetic nodes per task), ``condense_steps`` and
    ``condense_lr``.

    Training states (lists with one entry per condensed task): ``memory_x`` (synthetic
    features), ``memory_y`` (their classes), ``memory_task`` and ``memory_weight``
    (``n_t / |M_t|`` per node).
    """

    def __init__(self, model, scenario, optimizer_fn, loss_fn=None, device="cpu",
                 **kwargs: Any) -> None:
        super().__init__(model, scenario, optimizer_fn, loss_fn, device, **kwargs)
        self.per_task = int(self.hparams["num_memories"]) // scenario.num_tasks
        self.condense_steps = int(self.hparams["condense_steps"])
        self.memory_bn = str(self.hparams["memory_bn"])
        self.condense_lr = float(self.hparams["condense_lr"])

    def condense_optimizer(self, syn_x: nn.Parameter) -> Optimizer:
        """Adam at ``condense_lr`` (CaT's own), or the run's optimizer (``0``: BeGin's)."""
        if self.condense_lr > 0:
            return torch.optim.Adam([syn_x], lr=self.condense_lr)
        return self.optimizer_fn([syn_x])

    # ------------------------------------------------------------------ condensation
    def initial_synthetic(self, train: NodeBatch) -> tuple[Tensor, Tensor]:
        """Classes of the task's synthetic nodes (:func:`class_budgets`) and their
        starting features: random real training rows of their class (BeGin)."""
        classes, counts = train.labels.unique(return_counts=True)
        sizes = class_budgets(counts.tolist(), self.per_task)
        init = []
        for c, k in zip(classes.tolist(), sizes, strict=True):
            own = train.rows[train.labels == c]  # rows of train.graph
            init.append(train.graph.x[own[torch.randperm(own.numel(), device=own.device)[:k]]])
        syn_y = classes.repeat_interleave(torch.tensor(sizes, device=classes.device))
        return torch.cat(init).clone(), syn_y

    def condense(self, train: NodeBatch, syn_x: Tensor, syn_y: Tensor) -> tuple[Tensor, list]:
        """``condense_steps`` steps of distribution matching from ``syn_x``, each with a
        new random encoder; the synthetic features and the loss at every step."""
        classes, counts = train.labels.unique(return_counts=True)
        weights = counts.to(syn_x.dtype) / counts.sum()
        syn_x = nn.Parameter(syn_x.clone())
        optimizer = self.condense_optimizer(syn_x)
        encoder = copy.deepcopy(self.model).eval()  # no dropout; BatchNorm: reset statistics
        encoder.requires_grad_(False)
        graph, rows = real_view(encoder, train)
        losses = []
        for _ in range(self.condense_steps):
            randomize_(encoder)
            with torch.no_grad():
                real = embed(encoder, encoder.inputs(graph), graph)[rows]
                real_means = class_means(real, train.labels, classes)
            optimizer.zero_grad(set_to_none=True)
            loss = matching_loss(encoder, real_means, syn_x, syn_y, classes, weights)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        return syn_x.detach().clone(), losses

    def memory_batch(self, training_states: dict) -> NodeBatch:
        """The whole memory as one batch on its own edgeless graph, each synthetic node
        restricted to its own task's classes (Task-IL) or to the classes of tasks
        ``0..curr_task`` (Class-IL: the current training batch's candidates)."""
        x = torch.cat(training_states["memory_x"])
        y = torch.cat(training_states["memory_y"])
        tasks = torch.cat(training_states["memory_task"])
        if self.scenario.setting == "task":
            candidates = self.scenario.task_classes[tasks]
            local = (candidates == y.view(-1, 1)).long().argmax(1)
        else:
            seen = self.curr_task + 1
            if bool((tasks >= seen).any()):
                raise ValueError(f"Class-IL: the memory holds a task beyond the {seen} seen")
            classes = self.scenario.seen_classes(seen)
            candidates = classes.expand(y.numel(), -1)
            local = torch.searchsorted(classes, y)
        return NodeBatch(edgeless_graph(x, y), torch.arange(y.numel(), device=y.device), y,
                         tasks, candidates, local)

    # ------------------------------------------------------------------ events
    def initTrainingStates(self, scenario: NCScenarioLoader, model: nn.Module,
                           optimizer: Optimizer) -> dict:
        return {key: [] for key in MEMORY_KEYS}

    def processBeforeTraining(self, task_id: int, curr_dataset: TaskDataset,
                              curr_model: nn.Module, curr_optimizer: Optimizer,
                              curr_training_states: dict) -> None:
        """Reset the optimizer and scheduler, then condense the task into the memory."""
        super().processBeforeTraining(task_id, curr_dataset, curr_model, curr_optimizer,
                                      curr_training_states)
        if self.per_task <= 0:
            return
        x, y = self.initial_synthetic(curr_dataset.train)
        x, _ = self.condense(curr_dataset.train, x, y)
        states = curr_training_states
        states["memory_x"].append(x)
        states["memory_y"].append(y)
        states["memory_task"].append(torch.full_like(y, task_id))
        states["memory_weight"].append(
            torch.full(y.shape, len(curr_dataset.train) / y.numel(), device=y.device))

    def processTrainIteration(self, model: nn.Module, optimizer: Optimizer,
                              _curr_batch: NodeBatch, training_states: dict) -> dict:
        """Train in Memory: the step is on the memory's synthetic nodes (BeGin's Task-IL
        weighted sum of their losses, in both settings) instead of ``_curr_batch``; an
        empty memory: fine-tuning."""
        if not training_states["memory_x"]:
            return super().processTrainIteration(model, optimizer, _curr_batch,
                                                 training_states)
        batch = self.memory_batch(training_states)
        norms = [m for m in batchnorm_modules(model) if m.training]
        if self.memory_bn == "running":
            for norm in norms:
                norm.eval()
        optimizer.zero_grad(set_to_none=True)
        before = self.beforeInference(model, optimizer, batch, training_states)
        results = self.inference(model, batch, training_states)
        per_node = F.cross_entropy(results["preds"], batch.local_labels, reduction="none")
        results["loss"] = (torch.cat(training_states["memory_weight"]) * per_node).sum()
        results["_before_inference"] = before
        stats = self.afterInference(results, model, optimizer, batch, training_states)
        for norm in norms:
            norm.train()
        return stats

    def extraStorageBytes(self, training_states: dict) -> int:
        """The memory: every synthetic node's features, class, task and weight."""
        return sum(t.numel() * t.element_size()
                   for key in MEMORY_KEYS for t in training_states[key])
