"""``pignn``: PI-GNN, parameter isolation with a network that grows by one block per task.

PI-GNN (Zhang et al., "Continual Learning on Dynamic Graphs via Parameter Isolation",
SIGIR 2023), as BeGin applies it to Task-IL node classification
(``begin/algorithms/pignn/nodes.py`` and ``begin/utils/models_PIGNN.py``).

The backbone is a GCN whose hidden units are split into one *block* per task
(:class:`ProgressiveGCN`). Block ``t`` is added when task ``t`` starts; in every layer
its units read the previous layer's units of blocks ``0..t`` (the old ones and its
own), never a later block's, and it has its own BatchNorm and its own classifier slice
(``d_t`` units to every class; the logits are the sum over the blocks). So the units of
blocks ``0..j`` are a function of the parameters of blocks ``0..j`` only.

Training task ``t``: the parameters of blocks ``< t`` are frozen (no gradient, their
BatchNorm statistics fixed) and block ``t`` is trained on

    loss = task loss + retrain * loss on the memory

where the memory holds ``num_memories // num_tasks`` random training nodes of each
earlier task (each scored, with the whole network, on its own task's classes in
Task-IL, on every class seen so far in Class-IL): BeGin's
``retrain`` (``retrain_beta``, its parameter-isolation phase's weight for "the size
imbalance problem" between the new task's nodes and the few stored ones). PI-GNN's
other phase, knowledge rectification (fine-tuning the old parameters on nodes whose
neighbourhood the new snapshot did not change), only exists in BeGin's Time-IL trainer:
in Task-IL and Class-IL the graph does not change between tasks, and BeGin skips it.

Evaluation: a node of task ``j`` is predicted with blocks ``0..j`` only (one forward
per task view, as BeGin; tasks not learned yet use the whole network). Old tasks are
therefore scored by frozen parameters only: forgetting is exactly zero.

Class-IL (``--setting class``, BeGin's ``NCClassILPIGNNTrainer``): the same growth,
freezing and memory; the task's nodes and the memory's are scored among every class
seen so far (tasks ``0..t``), and prediction has no task identity: every node is
predicted with the whole network (every block learned so far, the logits summed over
their classifier slices) among the seen classes, in one forward pass. The frozen blocks
stay bit-identical, but the new block's classifier slice adds to every class's logit,
old ones included, so an old task's score can change: forgetting is not zero there.

Width: BeGin enlarges the hidden size until the grown network has at least as many
parameters as the plain backbone; here the total width ``H`` is the smallest with
``count(H) >= count(backbone)`` counted exactly (:func:`param_count`), and task ``t``
gets ``H*(t+1)//T - H*t//T`` units (BeGin's split). Only the GCN backbone is built
this way (its card declares ``backbones = ["gcn"]``).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.optim import Optimizer

from clbench.errors import ClbenchError
from clbench.graph import Graph
from clbench.methods.base import register_method
from clbench.methods.memory import buffer_bytes, stored_batches, stored_logits
from clbench.methods.taskviews import eval_by_view
from clbench.models import AdjGCNConv, NodeClassifier, SparseInputLinear, norm_rows
from clbench.scenario import NCScenarioLoader, NodeBatch, TaskDataset
from clbench.trainer import NCTrainer


def block_widths(total: int, num_tasks: int) -> list[int]:
    """BeGin's split of ``total`` hidden units: task ``t`` gets
    ``total*(t+1)//T - total*t//T``."""
    return [total * (t + 1) // num_tasks - total * t // num_tasks for t in range(num_tasks)]


def block_param_count(in_dim: int, num_classes: int, num_layers: int, widths: list[int],
                      t: int, batch_norm: bool = True) -> int:
    """Parameters block ``t`` adds: per layer a ``cum_t x d_t`` weight (``in_dim x d_t``
    in the first layer) and a bias of ``d_t``, BatchNorm's ``2 d_t``, and a classifier
    slice ``d_t x C`` with a bias of ``C``."""
    d, cum = widths[t], sum(widths[: t + 1])
    per_layer = d + (2 * d if batch_norm else 0)
    convs = in_dim * d + per_layer + (num_layers - 1) * (cum * d + per_layer)
    return convs + d * num_classes + num_classes


def param_count(in_dim: int, num_classes: int, num_layers: int, total: int, num_tasks: int,
                batch_norm: bool = True) -> int:
    """Parameters of the network grown for all ``num_tasks`` tasks with ``total`` units."""
    widths = block_widths(total, num_tasks)
    return sum(block_param_count(in_dim, num_classes, num_layers, widths, t, batch_norm)
               for t in range(num_tasks))


class TaskBlock(nn.Module):
    """One task's units: a GCN layer per depth, its BatchNorms and its classifier slice."""

    def __init__(self, in_dims: list[int], width: int, num_classes: int, batch_norm: bool,
                 sparse_input: bool) -> None:
        super().__init__()
        self.convs = nn.ModuleList(AdjGCNConv(i, width, normalize=False, add_self_loops=False)
                                   for i in in_dims)
        self.norms = nn.ModuleList(nn.BatchNorm1d(width) if batch_norm else nn.Identity()
                                   for _ in in_dims)
        self.classifier = nn.Linear(width, num_classes)
        self.width = width
        if sparse_input:  # as NodeClassifier: the first layer also takes CSR features
            first = self.convs[0].lin
            fast = SparseInputLinear(first.in_channels, first.out_channels,
                                     bias=first.bias is not None)
            fast.load_state_dict(first.state_dict())
            self.convs[0].lin = fast


class ProgressiveGCN(nn.Module):
    """A GCN grown by one :class:`TaskBlock` per task (``blocks``; starts with block 0).

    Same layer as the ``gcn`` backbone (:class:`~clbench.models.AdjGCNConv` on the
    normalised CSR adjacency, BatchNorm, ReLU, dropout; the first layer starts from the
    precomputed aggregation of dense features), per block.
    """

    def __init__(self, in_dim: int, num_classes: int, widths: list[int], num_layers: int = 3,
                 dropout: float = 0.0, batch_norm: bool = True, sparse_input: bool = True
                 ) -> None:
        super().__init__()
        self.in_dim, self.num_classes, self.widths = in_dim, num_classes, list(widths)
        self.num_layers, self.dropout = num_layers, dropout
        self.batch_norm, self.sparse_input = batch_norm, sparse_input
        self.blocks = nn.ModuleList()
        self.grow()

    def grow(self) -> TaskBlock:
        """Add the next task's block (on the device of the existing ones)."""
        t = len(self.blocks)
        cum = sum(self.widths[: t + 1])
        block = TaskBlock([self.in_dim] + [cum] * (self.num_layers - 1), self.widths[t],
                          self.num_classes, self.batch_norm, self.sparse_input)
        if t:
            block.to(next(self.blocks[0].parameters()).device)
        self.blocks.append(block)
        return block

    def inputs(self, graph: Graph) -> Tensor:
        """As :meth:`clbench.models.NodeClassifier.inputs`."""
        if self.sparse_input and graph.sparse_features:
            return graph.x_csr
        return graph.x

    def forward(self, x: Tensor, graph: Graph, upto: int | None = None) -> Tensor:
        """Logits over every class with blocks ``0..upto`` (default: all of them)."""
        blocks = list(self.blocks)[: None if upto is None else upto + 1]
        adj = graph.adj_gcn
        first_aggregated = x is graph.x and not graph.sparse_features
        h = x
        for layer in range(self.num_layers):
            outs = []
            for block in blocks:
                conv = block.convs[layer]
                if layer > 0:
                    z = conv(h[:, : conv.in_channels], adj)
                elif first_aggregated:  # (A x) W + b = A (x W) + b
                    z = conv.lin(graph.adj_gcn_x)
                    z = z if conv.bias is None else z + conv.bias
                else:
                    z = conv(x, adj)
                outs.append(F.relu(norm_rows(block.norms[layer], z, graph)))
            h = F.dropout(torch.cat(outs, 1), self.dropout, self.training)
        parts = torch.split(h, [b.width for b in blocks], dim=1)
        return torch.stack([b.classifier(p) for b, p in zip(blocks, parts, strict=True)]).sum(0)


def state_bytes(model: nn.Module) -> int:
    """Bytes of a model's parameters and buffers (its ``state_dict``)."""
    return sum(v.numel() * v.element_size() for v in model.state_dict().values())


@register_method("pignn")
class NCTaskILPIGNNTrainer(NCTrainer):
    """PI-GNN for node classification, Task-IL or Class-IL.

    The ``model`` argument (the protocol's ``gcn`` backbone) gives the architecture
    and the parameter budget; the trainer trains a :class:`ProgressiveGCN` instead.
    Hyperparameters (``methods/pignn.toml``): ``retrain`` (weight of the memory loss)
    and ``num_memories`` (the whole budget; ``num_memories // num_tasks`` per task).

    Training states: ``memories``, one tensor of node ids per finished task but the last.
    """

    def __init__(self, model, scenario, optimizer_fn, loss_fn=None, device="cpu",
                 **kwargs: Any) -> None:
        if not (isinstance(model, NodeClassifier) and isinstance(model.convs[0], AdjGCNConv)):
            raise ClbenchError("pignn grows a GCN: it runs with --model gcn only")
        T = scenario.num_tasks
        in_dim = model.convs[0].in_channels
        classes = model.classifier.out_features
        layers = len(model.convs)
        batch_norm = isinstance(model.norms[0], nn.BatchNorm1d)
        budget = sum(p.numel() for p in model.parameters())
        total = max(model.n_hidden, T)
        while param_count(in_dim, classes, layers, total, T, batch_norm) < budget:
            total += 1
        self.backbone_bytes = state_bytes(model)
        self.total_width = total
        grown = ProgressiveGCN(in_dim, classes, block_widths(total, T), layers,
                               model.dropout, batch_norm, model.sparse_input)
        super().__init__(grown, scenario, optimizer_fn, loss_fn, device, **kwargs)
        self.retrain = float(self.hparams["retrain"])
        self.per_task = int(self.hparams["num_memories"]) // T

    # ------------------------------------------------------------------ resume
    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Grow the model to the saved number of blocks, then restore it."""
        keys = state["model"]["tensors"]
        blocks = 1 + max(int(k.split(".")[1]) for k in keys if k.startswith("blocks."))
        while len(self.model.blocks) < blocks:
            self.model.grow()
        super().load_state_dict(state)

    # ------------------------------------------------------------------ events
    def initTrainingStates(self, scenario: NCScenarioLoader, model: nn.Module,
                           optimizer: Optimizer) -> dict:
        return {"memories": []}

    def processBeforeTraining(self, task_id: int, curr_dataset: TaskDataset,
                              curr_model: nn.Module, curr_optimizer: Optimizer,
                              curr_training_states: dict) -> None:
        """Add the task's block (a new parameter group of the optimizer) and freeze the
        earlier blocks; then the usual reset of the optimizer and scheduler."""
        if task_id >= len(curr_model.blocks):
            block = curr_model.grow()
            curr_optimizer.add_param_group({"params": list(block.parameters())})
            self._initial_lrs.append(self._initial_lrs[0])
        for block in curr_model.blocks[:task_id]:
            block.requires_grad_(False)
        super().processBeforeTraining(task_id, curr_dataset, curr_model, curr_optimizer,
                                      curr_training_states)

    def beforeInference(self, model: nn.Module, optimizer: Optimizer, _curr_batch: NodeBatch,
                        training_states: dict) -> None:
        """The earlier blocks' BatchNorm keeps its statistics (the loop calls ``train()``)."""
        for block in model.blocks[: self.curr_task]:
            block.eval()

    def memory_batches(self, training_states: dict) -> list[NodeBatch]:
        """The memory as batches to score (one per graph it is scored on): in Task-IL
        each node among its own task's classes, in Class-IL among every class seen so
        far (tasks ``0..t``, the current batch's candidates, as BeGin's observed classes)."""
        return stored_batches(self.scenario, torch.cat(training_states["memories"]),
                              seen=self.curr_task + 1)

    def afterInference(self, results: dict, model: nn.Module, optimizer: Optimizer,
                       _curr_batch: NodeBatch, training_states: dict) -> dict:
        """Add ``retrain`` x the memory's loss (whole network, each stored node among the
        setting's candidates, one mean over all of them as BeGin), then step."""
        logits = results.pop("logits")
        if training_states["memories"] and self.retrain > 0:
            batches = self.memory_batches(training_states)
            parts = [stored_logits(b, _curr_batch, logits,
                                   lambda b: self.forward(model, b)) for b in batches]
            memory_loss = self.batch_loss(torch.cat(parts), batches)
            results["loss"] = results["loss"] + self.retrain * memory_loss
        return super().afterInference(results, model, optimizer, _curr_batch, training_states)

    def processAfterTraining(self, task_id: int, curr_dataset: TaskDataset,
                             curr_model: nn.Module, curr_optimizer: Optimizer,
                             curr_training_states: dict) -> None:
        """Restore the best weights; keep a random sample of the task's training nodes
        (BeGin: ``torch.randperm``) unless it is the last task (nothing would use it)."""
        super().processAfterTraining(task_id, curr_dataset, curr_model, curr_optimizer,
                                     curr_training_states)
        if self.per_task <= 0 or task_id == self.num_tasks - 1:
            return
        train_nodes = curr_dataset.train.nodes
        chosen = torch.randperm(train_nodes.numel())[: self.per_task]
        curr_training_states["memories"].append(
            train_nodes[chosen.to(train_nodes.device)].clone())

    @torch.no_grad()
    def processEvalIteration(self, model: nn.Module, _curr_batch: NodeBatch,
                             training_states: dict | None = None) -> tuple[Tensor, dict]:
        """Task-IL: a node of task ``j`` is predicted with blocks ``0..j`` (tasks not
        learned yet: every block); one forward pass per task view in the batch.
        Class-IL: no task identity; every node with every block, among the seen classes."""
        if self.scenario.setting == "class":
            return super().processEvalIteration(model, _curr_batch, training_states)
        batch = _curr_batch
        x = model.inputs(batch.graph)
        return eval_by_view(batch, batch.task_ids.clamp(max=len(model.blocks) - 1),
                            lambda j: model(x, batch.graph, upto=j), self.batch_loss)

    def extraStorageBytes(self, training_states: dict) -> int:
        """Bytes beyond the plain backbone: the grown network's parameters and buffers
        minus the backbone's, plus the memories (each node's id, label and features)."""
        memory = buffer_bytes(self.scenario,
                              sum(m.numel() for m in training_states["memories"]))
        return state_bytes(self.model) - self.backbone_bytes + memory
