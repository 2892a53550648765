"""Stored nodes of past tasks, shared by the memory-based methods (GEM, ER-GNN).

A method keeps the *ids* of some training nodes of each finished task. To compute a
loss on them it turns the ids into :class:`~clbench.scenario.NodeBatch` es classified
among the candidates of the setting: in Task-IL each node's own task's classes, in
Class-IL every class seen so far (``seen`` tasks: at task ``t``, ``t + 1``, the current
training batch's candidates), on the graph its task is trained and evaluated on: the
whole graph with ``graph="full"`` (so the current training forward pass already holds
their logits), each task's own subgraph with ``graph="task"`` (one forward pass per
stored task).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from clbench.scenario import NCScenarioLoader, NodeBatch


def stored_batch(scenario: NCScenarioLoader, nodes: Tensor, graph=None,
                 seen: int | None = None) -> NodeBatch:
    """The labelled nodes ``nodes`` (global ids) on ``graph`` (default: the scenario's
    whole graph), each restricted to its own task's classes (Task-IL) or to the classes
    of the first ``seen`` tasks (Class-IL, where ``seen`` is required and must cover
    the nodes' tasks)."""
    nodes = nodes.to(scenario.node_task.device)
    labels = scenario.graph.y[nodes]
    task_ids = scenario.node_task[nodes]
    if bool((task_ids < 0).any()):
        raise ValueError("stored nodes must belong to a task")
    if scenario.setting == "task":
        candidates = scenario.task_classes[task_ids]
        local = (candidates == labels.view(-1, 1)).long().argmax(1)
    else:
        if seen is None or bool((task_ids >= seen).any()):
            raise ValueError(f"Class-IL: stored nodes need the number of tasks seen "
                             f"(got {seen}), which must cover their tasks")
        classes = scenario.seen_classes(seen)
        candidates = classes.expand(len(nodes), -1)
        local = torch.searchsorted(classes, labels)
    return NodeBatch(graph if graph is not None else scenario.graph, nodes, labels,
                     task_ids, candidates, local)


def stored_batches(scenario: NCScenarioLoader, nodes: Tensor,
                   seen: int | None = None) -> list[NodeBatch]:
    """``nodes`` as batches to score: one on the whole graph (``graph="full"``), or one
    per task on that task's own subgraph (``graph="task"``), in task order. ``seen``:
    as in :func:`stored_batch` (Class-IL only)."""
    if nodes.numel() == 0:
        return []
    if scenario.graph_mode == "full":
        return [stored_batch(scenario, nodes, seen=seen)]
    task_ids = scenario.node_task[nodes.to(scenario.node_task.device)]
    return [stored_batch(scenario, nodes[task_ids == t], scenario.graph_for((t,)), seen)
            for t in task_ids.unique().tolist()]


def stored_logits(batch: NodeBatch, current: NodeBatch, current_logits: Tensor,
                  forward: Callable[[NodeBatch], Tensor]) -> Tensor:
    """Restricted logits of ``batch``: taken from the current forward pass when both
    run on the same graph, else from ``forward(batch)``."""
    logits = current_logits if batch.graph is current.graph else forward(batch)
    return batch.restrict(logits)


def buffer_bytes(scenario: NCScenarioLoader, num_nodes: int) -> int:
    """What ``num_nodes`` stored nodes take: an ``int64`` id, an ``int64`` label and the
    feature row of each (what a buffer would hold without the rest of the graph)."""
    x = scenario.graph.x
    per_node = 2 * torch.tensor([], dtype=torch.int64).element_size() \
        + x.size(1) * x.element_size()
    return int(num_nodes) * per_node
