"""The node-classification scenario (BeGin's ``NCScenarioLoader``), Task-IL or Class-IL.

The classes of a graph are permuted (by the run's seed, or in a given order) and
cut into ``num_tasks`` consecutive groups of ``classes_per_task`` classes; the
remaining classes are dropped (and reported). Each node belongs to the task of
its class. In the default ``graph="full"`` setting the whole graph is visible in
every task and only the labels of the current task are used for training (as in
BeGin); ``graph="task"`` is CGLB's variant where each task trains and is
evaluated on the subgraph induced by its own nodes.

Which classes a node is classified among is encoded once, here, in :class:`NodeBatch`
(``candidates`` = the classes a node's logits are restricted to), so every method shares
the same restriction:

* ``setting="task"`` (Task-IL): its own task's classes;
* ``setting="class"`` (Class-IL): every class seen so far, the same for every node: the
  classes of tasks ``0..seen-1``, where ``seen`` is the number of tasks learned at the
  step (training on task ``t`` and evaluating after it: ``t + 1``; the untrained model
  is scored as at the start of task 0: ``1``). Nodes of tasks not seen yet cannot be
  predicted right (their class is not a candidate): they are left out of the evaluation
  batches and score 0.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import torch
from torch import Tensor

from clbench.errors import ClbenchError
from clbench.graph import Graph
from clbench.spec import SETTINGS, task_shape

SPLITS = ("train", "val", "test")
METRICS = ("accuracy", "balanced_accuracy")
GRAPH_MODES = ("full", "task")


@dataclass(eq=False)
class NodeBatch:
    """A set of labelled nodes, with the graph they are classified on.

    Attributes:
        graph: the graph the forward pass runs on.
        nodes: global node ids (their rows in ``graph``'s outputs: :attr:`rows`).
        labels: global class ids.
        task_ids: the task each node belongs to.
        candidates: ``[n, k]`` class ids each node is classified among (Task-IL: its
            task's ``classes_per_task``; Class-IL: the classes seen so far).
        local_labels: position of ``labels`` within ``candidates``.
    """

    graph: Graph
    nodes: Tensor
    labels: Tensor
    task_ids: Tensor
    candidates: Tensor
    local_labels: Tensor

    def __len__(self) -> int:
        return int(self.nodes.numel())

    @cached_property
    def rows(self) -> Tensor:
        """The nodes' rows in a forward pass over ``graph`` (their global ids, unless
        ``graph`` is a task's own subgraph)."""
        return self.graph.rows_of(self.nodes)

    def restrict(self, logits: Tensor) -> Tensor:
        """This batch's rows of ``logits`` (a forward pass over ``graph``), only at its
        candidate classes."""
        return logits[self.rows].gather(1, self.candidates)

    def subset(self, select: Tensor) -> NodeBatch:
        """The nodes where ``select`` (bool or index tensor) holds, on the same graph."""
        return NodeBatch(self.graph, self.nodes[select], self.labels[select],
                         self.task_ids[select], self.candidates[select],
                         self.local_labels[select])

    def to_global(self, local_pred: Tensor) -> Tensor:
        """Map positions within ``candidates`` back to global class ids."""
        return self.candidates.gather(1, local_pred.view(-1, 1)).view(-1)


@dataclass(eq=False)
class TaskDataset:
    """What a trainer sees for one task (BeGin's ``curr_dataset``)."""

    task_id: int
    tasks: tuple[int, ...]  # the tasks whose labels are used (one, or several for joint)
    graph: Graph
    train: NodeBatch
    val: NodeBatch
    test: NodeBatch


class NCScenarioLoader:
    """Splits a graph's classes into a sequence of tasks.

    Args:
        graph: the preprocessed graph.
        num_tasks: number of tasks; default ``num_classes // classes_per_task``.
        classes_per_task: classes per task; default ``num_classes // num_tasks``.
        class_order: explicit class sequence (a permutation of a subset of the classes);
            default: a permutation of all classes drawn from ``seed``.
        seed: seed of the class-order permutation.
        graph_mode: ``"full"`` (BeGin) or ``"task"`` (CGLB, no inter-task edges).
        metric: per-task accuracy, ``"accuracy"`` or ``"balanced_accuracy"``.
        setting: ``"task"`` (Task-IL) or ``"class"`` (Class-IL).
    """

    def __init__(
        self,
        graph: Graph,
        num_tasks: int | None = None,
        classes_per_task: int | None = None,
        *,
        class_order: Sequence[int] | None = None,
        seed: int = 0,
        graph_mode: str = "full",
        metric: str = "accuracy",
        setting: str = "task",
    ) -> None:
        if setting not in SETTINGS:
            raise ClbenchError(f"unknown setting {setting!r}; choose one of {SETTINGS}")
        if graph_mode not in GRAPH_MODES:
            raise ClbenchError(f"unknown graph mode {graph_mode!r}; choose one of {GRAPH_MODES}")
        if metric not in METRICS:
            raise ClbenchError(f"unknown metric {metric!r}; choose one of {METRICS}")
        self.graph = graph
        self.graph_mode = graph_mode
        self.metric = metric
        self.setting = setting
        C = graph.num_classes
        self.num_classes = C
        T, K = task_shape(C, num_tasks, classes_per_task, graph.name)
        self.num_tasks, self.classes_per_task = T, K
        if class_order is None:
            order = np.random.default_rng(seed).permutation(C).tolist()
        else:
            order = [int(c) for c in class_order]
            bad = [c for c in order if not 0 <= c < C]
            if bad or len(set(order)) != len(order):
                raise ClbenchError(
                    f"class order must list distinct classes in 0..{C - 1}; got {order}"
                )
            if len(order) < T * K:
                raise ClbenchError(
                    f"class order lists {len(order)} classes but {T} tasks x {K} classes "
                    f"need {T * K}"
                )
        self.class_order: list[int] = order
        used = order[: T * K]
        self.dropped_classes: list[int] = sorted(set(range(C)) - set(used))
        # Classes of a task are kept sorted, so ties in argmax resolve like a masked full softmax.
        self.task_classes = torch.tensor(
            [sorted(used[t * K : (t + 1) * K]) for t in range(T)], dtype=torch.long
        )
        self.class_to_task = torch.full((C,), -1, dtype=torch.long)
        for t in range(T):
            self.class_to_task[self.task_classes[t]] = t
        labelled = graph.y >= 0
        self.node_task = torch.full_like(graph.y, -1)
        self.node_task[labelled] = self.class_to_task[graph.y[labelled]]
        self._check_tasks()

    # ------------------------------------------------------------------ structure
    def _check_tasks(self) -> None:
        for split in SPLITS:
            mask = getattr(self.graph, f"{split}_mask")
            counts = torch.bincount(self.node_task[mask & (self.node_task >= 0)],
                                    minlength=self.num_tasks)
            empty = (counts == 0).nonzero().view(-1).tolist()
            if empty:
                t = empty[0]
                raise ClbenchError(
                    f"impossible task split on {self.graph.name}: task {t} (classes "
                    f"{self.task_classes[t].tolist()}) has no {split} nodes"
                )

    @cached_property
    def _task_graphs(self) -> list[Graph]:
        return [self.graph.subgraph(self.node_task == t) for t in range(self.num_tasks)]

    def graph_for(self, tasks: Sequence[int]) -> Graph:
        """The graph a forward pass over ``tasks`` runs on."""
        if self.graph_mode == "full":
            return self.graph
        if len(tasks) == 1:
            return self._task_graphs[tasks[0]]
        return self.graph.subgraph(torch.isin(self.node_task, torch.as_tensor(list(tasks))))

    def seen_classes(self, seen: int) -> Tensor:
        """The classes of tasks ``0..seen-1``, sorted (Class-IL's candidates)."""
        return self.task_classes[:seen].reshape(-1).sort().values

    def batch(self, tasks: Sequence[int], split: str | Sequence[str],
              graph: Graph | None = None, seen: int | None = None,
              own_classes: bool = False) -> NodeBatch:
        """The labelled ``split`` nodes of ``tasks`` (several splits: their union), as one
        batch. Class-IL: classified among the classes of the first ``seen`` tasks (default:
        up to the last of ``tasks``), which must cover ``tasks``; with ``own_classes``,
        each node among its own task's classes, as in Task-IL (the degenerate-task check
        of a Class-IL run: did the task learn to tell its own classes apart)."""
        tasks = list(tasks)
        splits = (split,) if isinstance(split, str) else tuple(split)
        in_split = getattr(self.graph, f"{splits[0]}_mask")
        for name in splits[1:]:
            in_split = in_split | getattr(self.graph, f"{name}_mask")
        mask = in_split & torch.isin(
            self.node_task, torch.as_tensor(tasks, device=self.node_task.device)
        )
        nodes = mask.nonzero().view(-1)
        labels = self.graph.y[nodes]
        task_ids = self.node_task[nodes]
        if self.setting == "task" or own_classes:
            candidates = self.task_classes[task_ids]
            local = (candidates == labels.view(-1, 1)).long().argmax(1)
        else:
            seen = max(tasks) + 1 if seen is None else seen
            if max(tasks) >= seen:
                raise ValueError(f"tasks {tasks} include a task beyond the {seen} seen")
            classes = self.seen_classes(seen)
            candidates = classes.expand(len(nodes), -1)
            local = torch.searchsorted(classes, labels)
        return NodeBatch(graph or self.graph_for(tasks), nodes, labels, task_ids,
                         candidates, local)

    def get_task(self, task_id: int) -> TaskDataset:
        """The dataset of task ``task_id`` alone."""
        return self._dataset(task_id, (task_id,))

    def get_accumulated(self, task_id: int) -> TaskDataset:
        """Tasks ``0..task_id`` together (what joint training learns at step ``task_id``)."""
        return self._dataset(task_id, tuple(range(task_id + 1)))

    def _dataset(self, task_id: int, tasks: tuple[int, ...]) -> TaskDataset:
        if not 0 <= task_id < self.num_tasks:
            raise IndexError(f"task {task_id} out of range 0..{self.num_tasks - 1}")
        g = self.graph_for(tasks)
        return TaskDataset(task_id, tasks, g, *(self.batch(tasks, s, g) for s in SPLITS))

    def eval_batches(self, split: str | Sequence[str], seen: int | None = None
                     ) -> list[NodeBatch]:
        """Batches covering every task's ``split`` nodes (several splits: their union, so
        that one forward pass scores them all): one batch on the full graph, or one per
        task when each task has its own subgraph. Class-IL: the nodes of the first
        ``seen`` tasks (default: all), classified among their classes."""
        T = self.num_tasks
        tasks = range(T) if self.setting == "task" else range(min(seen or T, T))
        if self.graph_mode == "full":
            return [self.batch(tasks, split, seen=seen)]
        return [self.batch((t,), split, seen=seen) for t in tasks]

    def to(self, device: torch.device | str) -> NCScenarioLoader:
        self.graph = self.graph.to(device)
        self.task_classes = self.task_classes.to(device)
        self.class_to_task = self.class_to_task.to(device)
        self.node_task = self.node_task.to(device)
        self.__dict__.pop("_task_graphs", None)
        return self

    # ------------------------------------------------------------------ scoring
    def per_task_scores(self, preds: Tensor, labels: Tensor, task_ids: Tensor) -> Tensor:
        """Accuracy (or balanced accuracy) of ``preds`` on each task; ``[num_tasks]``."""
        T = self.num_tasks
        preds, labels, task_ids = preds.cpu(), labels.cpu(), task_ids.cpu()
        if self.metric == "accuracy":
            correct = torch.bincount(task_ids, weights=(preds == labels).double(), minlength=T)
            total = torch.bincount(task_ids, minlength=T).double()
            return correct / total.clamp_min(1)
        # imported here: scikit-learn (with scipy and pandas) adds ~2 s to every process start
        from sklearn.metrics import balanced_accuracy_score

        out = torch.zeros(T, dtype=torch.float64)
        for t in range(T):
            sel = task_ids == t
            if sel.any():
                out[t] = balanced_accuracy_score(labels[sel].numpy(), preds[sel].numpy())
        return out

    def describe(self) -> dict:
        return {
            "num_tasks": self.num_tasks,
            "classes_per_task": self.classes_per_task,
            "class_order": self.class_order,
            "task_classes": self.task_classes.tolist(),
            "dropped_classes": self.dropped_classes,
            "graph_mode": self.graph_mode,
            "metric": self.metric,
            "setting": self.setting,
        }
