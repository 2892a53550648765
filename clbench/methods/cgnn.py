"""``cgnn``: ContinualGNN (Wang et al., "Streaming Graph Neural Networks via Continual
Learning", CIKM 2020), as BeGin applies it to Task-IL and Class-IL node classification.

Each task after the first trains on three sets of nodes together (one mean loss over
their union, each node among its own task's classes; in Class-IL among every class
seen so far, see below):

* the task's own training nodes;
* **detected** nodes (``detect_strategy = "bfs"``, at most ``new_nodes_size``): the
  training nodes of past tasks most influenced by the new task. The model as the
  previous task left it scores the graph seen so far (the nodes of tasks ``< t``, the
  edges among them) and the graph with task ``t``'s nodes added; each new training
  node's change of output ``|h_after - h_before|_1`` is spread two hops (mean over
  in-neighbours, twice, BeGin's ``bfs_sharp``) on the second graph, and the past
  training nodes with the largest positive influence are picked;
* the **memory** (``memory_size`` nodes at most): after each task, a class-balanced
  reservoir (``memory_strategy = "class"``: each class's quota is the floor of its
  share of the training nodes seen so far times the budget; a node enters a full class
  with probability ``p * quota / count * (1 + alpha * importance)``, importance being
  the sigmoid of its share of differently labelled neighbours) or a plain one
  (``"random"``) is updated with the task's training nodes. It only ever holds training
  nodes of finished tasks when it is replayed.

With the union's mean, the loss is ``(1 - beta) * task loss + beta * replay loss``,
``beta = |replayed| / (|replayed| + n_t)``. An EWC term is added:
``ewc_lambda / 2 * sum_i F[i] (theta[i] - theta*[i])^2``, with ``theta*`` the weights at
the start of the task and ``F`` the squared gradient of the loss on the memory (on all
past training nodes when ``memory_size = 0``, as BeGin), computed then (BeGin keeps
only this latest pair). ``fisher_norm = "mean"`` (default) divides ``F`` by its mean
entry, so that ``ewc_lambda`` has one meaning whatever the scale of the gradient: the
memory is fitted almost exactly (loss ~1e-5), so its raw ``F`` is ~1e-10 per entry and
BeGin's ``ewc_lambda = 80`` would leave the term ~1e-5 of the task loss's gradient (inert,
as EWC's raw Fisher; BeGin's code computes the Fisher but never adds the term, and
replays the previous task's whole training set: ``methods/cgnn.toml``).
``fisher_norm = "none"`` keeps the raw ``F`` (BeGin's).
``ewc_type = "l2"`` uses BeGin's constant ``1e-5`` for ``F`` (never normalised).

Class-IL (``--setting class``, as BeGin's Class-IL trainer): at task ``t`` the task's
and the replayed nodes are scored among the classes of tasks ``0..t``; the Fisher and
the detection use the model as task ``t - 1`` left it, over the classes it has seen
(tasks ``0..t-1``: BeGin computes both before the model observes task ``t``'s labels,
so the other outputs are masked to a constant). The memory is the same in both settings.

The detection picks among ALL past training nodes (BeGin's ``old_nodes_list``), so while
``new_nodes_size > 0`` (or the Fisher needs them) the method keeps their ids, labels and
features, and ``extraStorageBytes`` counts them with the memory. ``new_nodes_size = 0``
keeps only the memory. Random draws use torch's global generator (in resume points).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torch.optim import Optimizer
from torch_geometric.utils import scatter

from clbench.methods.anchored import normalise_importance
from clbench.methods.base import register_method
from clbench.methods.memory import buffer_bytes, stored_batches, stored_logits
from clbench.scenario import NCScenarioLoader, NodeBatch, TaskDataset
from clbench.trainer import NCTrainer

DETECT_STRATEGIES = ("bfs",)
MEMORY_STRATEGIES = ("class", "random")
EWC_TYPES = ("ewc", "l2")
#: BeGin's constant weight of ``ewc_type = "l2"`` (its ``10e-6``).
L2_WEIGHT = 1e-5
#: Hops the embedding change is spread over (BeGin's ``bfs_sharp``).
HOPS = 2


def spread(values: Tensor, edge_index: Tensor, hops: int = HOPS) -> Tensor:
    """``hops`` rounds of mean aggregation over in-neighbours (0 without any)."""
    src, dst = edge_index
    for _ in range(hops):
        values = scatter(values[src], dst, dim=0, dim_size=values.numel(), reduce="mean")
    return values


def node_importance(nodes: Tensor, labels: Tensor, known: Tensor, edge_index: Tensor
                    ) -> Tensor:
    """BeGin's importance of ``nodes``: ``sigmoid(10 * share - 5)``, ``share`` being the
    share of a node's in-neighbours with a known label (``known``) that differs from its
    own (0 without any). ``labels``: every node's label (only known ones are read)."""
    src, dst = edge_index
    valid = known[src].double()
    differs = valid * (labels[src] != labels[dst]).double()
    n = labels.numel()
    n_valid = scatter(valid, dst, dim=0, dim_size=n, reduce="sum")
    n_diff = scatter(differs, dst, dim=0, dim_size=n, reduce="sum")
    share = torch.where(n_valid > 0, n_diff / n_valid.clamp_min(1), torch.zeros_like(n_valid))
    return torch.sigmoid(share[nodes] * 10 - 5)


@register_method("cgnn", aliases=("continualgnn",))
class NCTaskILCGNNTrainer(NCTrainer):
    """ContinualGNN for node classification, Task-IL or Class-IL.

    Hyperparameters (see ``methods/cgnn.toml``): ``memory_size``, ``memory_strategy``
    (class | random), ``p``, ``alpha``, ``new_nodes_size``, ``detect_strategy`` (bfs),
    ``ewc_lambda``, ``ewc_type`` (ewc | l2), ``fisher_norm`` (mean | none; BeGin: none).

    Training states: ``memory`` (lists of node ids: one per class for the class
    strategy, one list for random), ``class_counts`` and ``seen`` (the class strategy's
    counts of training nodes seen), ``past_train`` (ids of past tasks' training nodes, kept
    only when needed), ``replay`` (the current task's detected and memory nodes),
    ``fisher`` and ``anchor`` (flat; empty before the second task).
    """

    def __init__(self, model, scenario, optimizer_fn, loss_fn=None, device="cpu",
                 **kwargs: Any) -> None:
        super().__init__(model, scenario, optimizer_fn, loss_fn, device, **kwargs)
        hp = self.hparams
        self.memory_size = int(hp["memory_size"])
        self.memory_strategy = str(hp["memory_strategy"])
        self.p = float(hp["p"])
        self.alpha = float(hp["alpha"])
        self.new_nodes_size = int(hp["new_nodes_size"])
        self.detect_strategy = str(hp["detect_strategy"])
        self.ewc_lambda = float(hp["ewc_lambda"])
        self.ewc_type = str(hp["ewc_type"])
        self.fisher_norm = str(hp["fisher_norm"])
        # past training nodes are kept for the detection, and for a Fisher without memory
        self.keep_past = self.new_nodes_size > 0 or (
            self.memory_size == 0 and self.ewc_lambda > 0 and self.ewc_type == "ewc")

    # ------------------------------------------------------------------ helpers
    def _params(self) -> list[nn.Parameter]:
        return [p for p in self.model.parameters() if p.requires_grad]

    def memory_nodes(self, states: dict) -> Tensor:
        """The memory's node ids (sorted)."""
        ids = [v for lst in states["memory"] for v in lst]
        return torch.tensor(sorted(ids), dtype=torch.long, device=self.device)

    def _empty(self) -> Tensor:
        return torch.zeros(0, dtype=torch.long, device=self.device)

    @torch.no_grad()
    def detect(self, model: nn.Module, task_id: int, current: NodeBatch, past: Tensor
               ) -> Tensor:
        """BFS detection: the (at most ``new_nodes_size``) nodes of ``past`` with the
        largest positive influence of task ``task_id``'s training nodes ``current``."""
        sc = self.scenario
        seen = torch.arange(task_id + 1, device=sc.node_task.device)
        before = sc.graph.induced(torch.isin(sc.node_task, seen[:-1]))
        after = sc.graph.induced(torch.isin(sc.node_task, seen))
        h_before = self.forward(model, sc.batch((task_id,), "train", graph=before))
        h_after = self.forward(model, sc.batch((task_id,), "train", graph=after))
        if sc.setting == "class":  # the outputs over the classes the model has seen
            cols = sc.seen_classes(task_id).to(h_after.device)
            h_before, h_after = h_before[:, cols], h_after[:, cols]
        change = torch.zeros(sc.graph.num_nodes, dtype=h_after.dtype, device=h_after.device)
        # before/after keep every node (Graph.induced): their rows are global ids
        change[current.nodes] = (h_after - h_before)[current.nodes].abs().sum(1)
        influence = spread(change, after.edge_index)[past]
        hit = (influence > 0).nonzero().view(-1)
        order = torch.sort(influence[hit], descending=True, stable=True).indices
        return past[hit[order[: self.new_nodes_size]]]

    def fisher(self, model: nn.Module, nodes: Tensor, seen: int | None = None) -> Tensor:
        """Squared gradient of the mean loss on ``nodes``, flat, at the current weights
        (model in eval mode). Each node among its task's classes (Task-IL) or among the
        classes of the first ``seen`` tasks (Class-IL)."""
        batches = stored_batches(self.scenario, nodes, seen=seen)
        with torch.enable_grad():  # one batch on the whole graph, or one per task
            logits = torch.cat([b.restrict(self.forward(model, b)) for b in batches])
            loss = self.batch_loss(logits, batches)
            params = self._params()
            grads = torch.autograd.grad(loss, params, allow_unused=True)
        flat = torch.cat([(torch.zeros_like(p) if g is None else g).reshape(-1)
                          for g, p in zip(grads, params, strict=True)])
        return (flat * flat).detach()

    def penalty(self, states: dict) -> Tensor | None:
        """``ewc_lambda / 2 * sum F (theta - theta*)^2`` (None without an anchor or at 0)."""
        anchor = states["anchor"]
        if self.ewc_lambda == 0 or anchor.numel() == 0:
            return None
        diff = torch.cat([p.reshape(-1) for p in self._params()]) - anchor
        weight = states["fisher"] if self.ewc_type == "ewc" else L2_WEIGHT
        return self.ewc_lambda / 2 * (weight * diff * diff).sum()

    # ------------------------------------------------------------------ memory
    def update_memory(self, states: dict, graph, nodes: Tensor) -> None:
        """Add ``nodes`` (the task's training nodes) to the memory (BeGin's
        ``MemoryHandler.update``)."""
        if self.memory_strategy == "random":
            self._update_random(states["memory"][0], nodes.tolist())
            return
        y = self.scenario.graph.y
        imp = [0.0] * nodes.numel()
        if self.alpha != 0:
            known = torch.zeros_like(y, dtype=torch.bool)
            known[nodes] = True
            imp = node_importance(nodes, y, known, graph.global_edge_index).tolist()
        self._update_class(states, nodes.tolist(), y[nodes].tolist(), imp)

    def _update_random(self, memory: list[int], nodes: list[int]) -> None:
        draws = torch.rand(len(nodes), dtype=torch.float64).tolist()
        slots = torch.rand(len(nodes), dtype=torch.float64).tolist()
        held = set(memory)
        for v, r, s in zip(nodes, draws, slots, strict=True):
            if v in held:
                continue
            if len(memory) < self.memory_size:
                memory.append(v)
            elif r <= self.p:
                i = int(s * len(memory))
                held.discard(memory[i])
                memory[i] = v
            else:
                continue
            held.add(v)

    def _update_class(self, states: dict, nodes: list[int], labels: list[int],
                      importance: list[float]) -> None:
        counts, memory = states["class_counts"], states["memory"]
        states["seen"] += len(nodes)
        for c in labels:
            counts[c] += 1
        # each class's quota: its share of the training nodes seen (floor; sum <= budget)
        quota = [counts[c] * self.memory_size // states["seen"] for c in range(len(counts))]
        for c, lst in enumerate(memory):
            while len(lst) > quota[c]:
                del lst[int(torch.randint(len(lst), ()))]
        draws = torch.rand(len(nodes), dtype=torch.float64).tolist()
        slots = torch.rand(len(nodes), dtype=torch.float64).tolist()
        held = [set(lst) for lst in memory]
        for v, c, imp, r, s in zip(nodes, labels, importance, draws, slots, strict=True):
            lst = memory[c]
            if v in held[c]:
                continue
            if quota[c] > len(lst):
                lst.append(v)
            else:
                prob = self.p * quota[c] / counts[c] * (1 + self.alpha * imp)
                if r > prob or not lst:
                    continue
                i = int(s * len(lst))
                held[c].discard(lst[i])
                lst[i] = v
            held[c].add(v)

    def replay_batches(self, training_states: dict) -> list[NodeBatch]:
        """The replayed nodes as batches to score: in Task-IL each among its own task's
        classes, in Class-IL among every class seen so far (the current batch's)."""
        return stored_batches(self.scenario, training_states["replay"],
                              seen=self.curr_task + 1)

    # ------------------------------------------------------------------ events
    def initTrainingStates(self, scenario: NCScenarioLoader, model: nn.Module,
                           optimizer: Optimizer) -> dict:
        lists = 1 if self.memory_strategy == "random" else scenario.num_classes
        flat = torch.zeros(0, device=self.device)
        return {"memory": [[] for _ in range(lists)],
                "class_counts": [0] * scenario.num_classes, "seen": 0,
                "past_train": self._empty(), "replay": self._empty(),
                "fisher": flat, "anchor": flat.clone()}

    def processBeforeTraining(self, task_id: int, curr_dataset: TaskDataset,
                              curr_model: nn.Module, curr_optimizer: Optimizer,
                              curr_training_states: dict) -> None:
        """Detect the influenced past nodes, gather the replayed ones, and (with
        ``ewc_lambda > 0``) anchor the weights with the memory's Fisher."""
        super().processBeforeTraining(task_id, curr_dataset, curr_model, curr_optimizer,
                                      curr_training_states)
        states = curr_training_states
        states["replay"] = self._empty()
        if task_id == 0:
            return
        was_training = curr_model.training
        curr_model.eval()
        try:
            past, current = states["past_train"], curr_dataset.train
            parts = [self.memory_nodes(states)]
            if self.new_nodes_size > 0 and past.numel():
                parts.append(self.detect(curr_model, task_id, current, past))
            replay = torch.cat(parts).unique()
            states["replay"] = replay[~torch.isin(replay, current.nodes)]
            if self.ewc_lambda > 0:  # a new pair replaces the last one (BeGin)
                states["fisher"], states["anchor"] = (torch.zeros(0, device=self.device),
                                                      torch.zeros(0, device=self.device))
                important = parts[0] if self.memory_size > 0 else past
                if self.ewc_type == "ewc" and important.numel():
                    states["fisher"] = normalise_importance(
                        self.fisher(curr_model, important, seen=task_id), self.fisher_norm)
                if self.ewc_type == "l2" or important.numel():
                    states["anchor"] = torch.cat(
                        [p.detach().reshape(-1) for p in self._params()]).clone()
        finally:
            curr_model.train(was_training)

    def afterInference(self, results: dict, model: nn.Module, optimizer: Optimizer,
                       _curr_batch: NodeBatch, training_states: dict) -> dict:
        """The union's mean loss (task and replayed nodes) plus the EWC term, then step."""
        logits, weights = results.pop("logits"), results.pop("weights")
        replay_loss = None
        replay = training_states["replay"]
        if replay.numel():
            batches = self.replay_batches(training_states)
            parts = [stored_logits(b, _curr_batch, logits,
                                   lambda b: self.forward(model, b, weights)) for b in batches]
            replay_loss = self.batch_loss(torch.cat(parts), batches)
            beta = replay.numel() / (replay.numel() + len(_curr_batch))
            results["loss"] = (1 - beta) * results["loss"] + beta * replay_loss
        reg = self.penalty(training_states)
        if reg is not None:
            results["penalty"] = reg
            results["loss"] = results["loss"] + reg
        stats = super().afterInference(results, model, optimizer, _curr_batch,
                                       training_states)
        if replay_loss is not None:
            stats["replay_loss"] = replay_loss.item()
        return stats

    def processAfterTraining(self, task_id: int, curr_dataset: TaskDataset,
                             curr_model: nn.Module, curr_optimizer: Optimizer,
                             curr_training_states: dict) -> None:
        """Restore the best weights, then update the memory with the task's training
        nodes and keep them for the detection."""
        super().processAfterTraining(task_id, curr_dataset, curr_model, curr_optimizer,
                                     curr_training_states)
        states = curr_training_states
        train = curr_dataset.train.nodes
        if self.memory_size > 0:  # a reservoir over the stream of training nodes
            self.update_memory(states, curr_dataset.graph, train)
        if self.keep_past:
            states["past_train"] = torch.cat([states["past_train"], train])
        states["replay"] = self._empty()

    def extraStorageBytes(self, training_states: dict) -> int:
        """The memory and the kept past training nodes (id, label and feature row of
        each distinct node), the class counts, and the Fisher and anchor."""
        states = training_states
        nodes = torch.cat([self.memory_nodes(states), states["past_train"]]).unique()
        counts = 8 * (len(states["class_counts"]) + 1) if self.memory_strategy == "class" \
            and self.memory_size > 0 else 0
        flat = sum(t.numel() * t.element_size() for t in (states["fisher"], states["anchor"]))
        return buffer_bytes(self.scenario, nodes.numel()) + counts + flat
