"""How a trainer scores its model: every task's nodes after a task, the validation
loader after an epoch, and (Class-IL) a task among its own classes.

:class:`TrainerEvaluation` is a part of :class:`~clbench.trainer.NCTrainer`, kept in its own
file: it uses the trainer's ``model``, ``scenario``, ``curr_task``, ``training_states``
and ``processEvalIteration`` event, and defines nothing a method overrides.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from clbench.degenerate import confusion
from clbench.loopstate import mean_stats, takes_training_states
from clbench.scenario import NodeBatch


class TrainerEvaluation:
    """The evaluation helpers of :class:`~clbench.trainer.NCTrainer`."""

    model: Any
    scenario: Any
    curr_task: int
    processEvalIteration: Callable[..., tuple[Tensor, dict]]

    @torch.no_grad()
    def _evaluate(self, splits: Sequence[str], eval_fn: Callable | None = None,
                  learned: int | None = None) -> dict[str, Any]:
        """Per-task scores of the current model on every task's nodes of each split.

        The splits' nodes are predicted together (one ``processEvalIteration`` per
        evaluation batch: one forward pass for finetune, one per task for Piggyback/PackNet)
        and scored split by split. Class-IL: a task not seen yet scores 0 (not a candidate).
        ``learned`` (Task-IL): also the confusion matrix of that task's test nodes
        (``"confusion"``, for the degenerate-task check), from the same predictions.
        """
        self.model.eval()
        eval_fn = (eval_fn or type(self).processEvalIteration).__get__(self)
        preds, labels, tasks, nodes = [], [], [], []
        for batch in self.scenario.eval_batches(splits, seen=max(self.curr_task, 0) + 1):
            p, _ = self._eval_iteration(eval_fn, batch)
            preds.append(p)
            labels.append(batch.labels)
            tasks.append(batch.task_ids)
            nodes.append(batch.nodes)
        preds, labels, tasks, nodes = (torch.cat(v) for v in (preds, labels, tasks, nodes))
        graph = self.scenario.graph
        out = {}
        for split in splits:
            sel = getattr(graph, f"{split}_mask")[nodes]
            out[split] = self.scenario.per_task_scores(
                preds[sel], labels[sel], tasks[sel]).numpy()
        if learned is not None:
            if self.scenario.setting != "task":
                raise ValueError("the confusion of R[i][i]'s predictions is Task-IL's")
            sel = graph.test_mask[nodes] & (tasks == learned)
            out["confusion"] = confusion(preds[sel], labels[sel],
                                         self.scenario.task_classes[learned].tolist())
        return out

    @torch.no_grad()
    def _own_class_score(self, task_id: int) -> tuple[float, list[list[int]]]:
        """Task ``task_id``'s test score with each node classified among its own task's
        classes only (Task-IL's candidates), whatever the setting, and the confusion
        matrix of those predictions."""
        self.model.eval()
        scenario = self.scenario
        batch = scenario.batch((task_id,), "test", scenario.graph_for((task_id,)),
                               own_classes=True)
        preds, _ = self._eval_iteration(type(self).processEvalIteration.__get__(self), batch)
        score = float(scenario.per_task_scores(preds, batch.labels, batch.task_ids)[task_id])
        return score, confusion(preds, batch.labels, scenario.task_classes[task_id].tolist())

    @torch.no_grad()
    def _score_loader(self, loader: Sequence[NodeBatch]) -> tuple[float, dict]:
        """Accuracy and mean stats of :meth:`processEvalIteration` over ``loader``."""
        correct = total = 0
        stats = []
        for batch in loader:
            preds, s = self._eval_iteration(self.processEvalIteration, batch)
            correct += int((preds == batch.labels).sum())
            total += len(batch)
            stats.append(s)
        return correct / max(total, 1), mean_stats(stats)

    def _eval_iteration(self, eval_fn: Callable, batch: NodeBatch) -> tuple[Tensor, dict]:
        """Call ``eval_fn`` (a bound ``processEvalIteration``) with the training states,
        or without them if it is a BeGin override taking ``(model, _curr_batch)``."""
        if takes_training_states(getattr(eval_fn, "__func__", eval_fn),
                                  hasattr(eval_fn, "__self__")):
            return eval_fn(self.model, batch, getattr(self, "training_states", None))
        return eval_fn(self.model, batch)
