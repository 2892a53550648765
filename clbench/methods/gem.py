"""``gem``: Gradient Episodic Memory (Lopez-Paz & Ranzato, 2017), as BeGin applies it.

After each task a random sample of its training nodes becomes that task's episodic
memory (``num_memories // num_tasks`` nodes per task: BeGin's ``num_memories`` is the
whole budget). While a later task trains, every step computes the gradient ``g`` of
the current loss and the gradient ``g_k`` of the loss on each memory ``k``. If some
``<g, g_k>`` is negative (the step would increase that memory's loss), ``g`` is
replaced by ``g~ = g + G^T v`` where ``v`` solves GEM's dual quadratic program::

    min_v  1/2 v^T (G G^T) v + (G g)^T v    subject to  v >= memory_strength

(``G``: the memory gradients as rows; ``memory_strength = 0`` is the paper's exact
projection; the default 0.5 is BeGin's, CGLB's and the authors' code's: under weight
decay, which the optimizer adds after the projection, 0 lets the decay erase what the
memories protect, ``methods/gem.toml`` has the measurements). The QP is solved
by quadprog through qpsolvers. When no memory is violated the gradient is left untouched.

``scope = "touched"`` (the default) solves it within the coordinates the current
loss has a gradient on: ``G``'s other columns are zeroed, so the projection never
moves the rest (earlier tasks' classifier rows) and ``G g~ >= 0`` still holds for
the full memory gradients. With ``scope = "all"`` (BeGin, CGLB) those rows receive
``v_k g_k``, which GEM's guarantee allows under plain gradient steps; under Adam
(the protocol's optimizer, BeGin's and CGLB's too), whose state for coordinates that
only ever see this component starts empty each task, it becomes a full learning-rate
step per iteration, and the rows drift towards the few memory nodes.

Class-IL (``--setting class``): the current loss and every memory's loss are taken
among all the classes seen so far (tasks ``0..t``), as BeGin's Class-IL trainer does;
the current loss then reaches every seen class's classifier row, old ones included,
so with ``touched`` too the projection may move them (it still leaves out what the
current loss has no gradient on, e.g. the rows of classes not seen yet).

The current loss and all memory losses come from one forward pass (``graph="full"``:
memories are nodes of the same graph); each memory gradient then costs one backward
pass. With ``graph="task"`` each memory is scored on its own task's subgraph (one
forward pass per memory). BeGin runs one forward pass per memory in either case, so
at dropout > 0 its memory losses and the current loss each have their own dropout draw;
here, with ``graph="full"``, they share one.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.optim import Optimizer

from clbench.methods.base import register_method
from clbench.methods.memory import buffer_bytes, stored_batch, stored_logits
from clbench.scenario import NCScenarioLoader, NodeBatch, TaskDataset
from clbench.trainer import NCTrainer

#: Ridge added to ``G G^T`` (relative to its mean diagonal) so that quadprog sees a
#: positive definite matrix; multiplied by 10 while the solver fails (as BeGin does).
RIDGE = 1e-6
MAX_RIDGE_TRIES = 8


def project_gradient(grad: Tensor, memory_grads: Tensor, margin: float) -> Tensor:
    """GEM's projection of ``grad`` [P] given the memory gradients ``memory_grads``
    [K, P]: ``grad + memory_grads^T v`` with ``v`` the solution of the dual QP (above),
    computed in float64 and returned in ``grad``'s dtype."""
    from qpsolvers import solve_qp  # imported on first use: it imports scipy
    from qpsolvers.exceptions import ProblemError

    G = memory_grads.detach().double()  # [K, P]; only the K x K problem goes to numpy
    g = grad.detach().double()
    P = (G @ G.T).cpu().numpy()
    P = 0.5 * (P + P.T)
    q = (G @ g).cpu().numpy()
    k = P.shape[0]
    scale = max(float(np.trace(P)) / k, np.finfo(np.float64).tiny)
    ridge = RIDGE * scale
    v = None
    for _ in range(MAX_RIDGE_TRIES):
        try:
            v = solve_qp(P + ridge * np.eye(k), q, lb=np.full(k, margin), solver="quadprog")
        except ProblemError:  # P not positive definite (numerically)
            v = None
        if v is not None:
            break
        ridge *= 10.0
    if v is None:
        raise RuntimeError("GEM: the quadratic program has no solution")
    return (g + torch.from_numpy(v).to(G) @ G).to(grad)


@register_method("gem")
class NCTaskILGEMTrainer(NCTrainer):
    """GEM for node classification, Task-IL or Class-IL.

    Hyperparameters (see ``methods/gem.toml``): ``memory_strength`` (the lower
    bound of the dual variables: 0, the paper's projection; BeGin's ``lamb``: 0.5),
    ``num_memories`` (the whole budget; each task keeps ``num_memories // num_tasks``
    of its training nodes) and ``scope`` (``touched``: project within the coordinates
    the current loss reaches; ``all``: every parameter, as BeGin).

    Training states: ``memories``, one tensor of node ids per finished task (empty
    tensors are not stored, so a budget below the number of tasks is fine-tuning).
    """

    def __init__(self, model, scenario, optimizer_fn, loss_fn=None, device="cpu",
                 **kwargs: Any) -> None:
        super().__init__(model, scenario, optimizer_fn, loss_fn, device, **kwargs)
        self.memory_strength = float(self.hparams["memory_strength"])
        self.per_task = int(self.hparams["num_memories"]) // self.num_tasks
        self.scope = str(self.hparams["scope"])

    def _params(self, model: nn.Module) -> list[nn.Parameter]:
        return [p for p in model.parameters() if p.requires_grad]

    # ------------------------------------------------------------------ events
    def initTrainingStates(self, scenario: NCScenarioLoader, model: nn.Module,
                           optimizer: Optimizer) -> dict:
        return {"memories": []}

    def memory_batches(self, training_states: dict) -> list[NodeBatch]:
        """One batch per stored memory, on the graph its task is trained on; in Task-IL
        among its task's classes, in Class-IL among every class seen so far (BeGin's
        Class-IL GEM scores its memories with the current model's observed classes)."""
        scenario = self.scenario
        out = []
        for nodes in training_states["memories"]:
            task = int(scenario.node_task[nodes[0]])
            out.append(stored_batch(scenario, nodes, scenario.graph_for((task,)),
                                    seen=self.curr_task + 1))
        return out

    def inference(self, model: nn.Module, _curr_batch: NodeBatch,
                  training_states: dict | None) -> dict:
        """The loss (among the setting's candidates); in training with memories, also
        each memory's loss (``memory_losses``, from the same forward pass when on the
        same graph)."""
        if not (model.training and training_states and training_states["memories"]):
            return super().inference(model, _curr_batch, training_states)
        weights = self.forward_weights(model, _curr_batch, training_states)
        logits = self.forward(model, _curr_batch, weights)
        preds = _curr_batch.restrict(logits)

        def forward(batch: NodeBatch) -> Tensor:
            return self.forward(model, batch, weights)

        losses = []
        for mem in self.memory_batches(training_states):
            mem_logits = stored_logits(mem, _curr_batch, logits, forward)
            losses.append(self.batch_loss(mem_logits, mem))
        return {"preds": preds, "loss": self.batch_loss(preds, _curr_batch),
                "memory_losses": losses}

    def afterInference(self, results: dict, model: nn.Module, optimizer: Optimizer,
                       _curr_batch: NodeBatch, training_states: dict) -> dict:
        """Back-propagate; if the step would raise a memory's loss, replace the
        gradient by its GEM projection; then step."""
        memory_losses = results.pop("memory_losses", None)
        if not memory_losses:
            return super().afterInference(results, model, optimizer, _curr_batch,
                                          training_states)
        params = self._params(model)
        rows = []
        for loss in memory_losses:
            grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
            rows.append(_flat(grads, params))
        memory_grads = torch.stack(rows)
        results["loss"].backward()
        projected = self.projected(_flat([p.grad for p in params], params), memory_grads)
        if projected is not None:
            _unflat_into_grads(projected, params)
        optimizer.step()
        self.restore_frozen()
        stats = self._train_stats(results, _curr_batch)
        stats["projected"] = float(projected is not None)
        return stats

    def projected(self, grad: Tensor, memory_grads: Tensor) -> Tensor | None:
        """The GEM projection of ``grad`` (flat) if it has a negative dot product with
        a memory gradient (a row of ``memory_grads``); None (keep ``grad``) otherwise.
        With ``scope="touched"`` the projection is restricted to ``grad``'s non-zero
        coordinates (the violation test is the same: ``grad`` is zero elsewhere)."""
        if not bool(((memory_grads @ grad) < 0).any()):
            return None
        if self.scope == "touched":  # leave what the current loss does not reach alone
            memory_grads = memory_grads * (grad != 0)
        return project_gradient(grad, memory_grads, self.memory_strength)

    def processAfterTraining(self, task_id: int, curr_dataset: TaskDataset,
                             curr_model: nn.Module, curr_optimizer: Optimizer,
                             curr_training_states: dict) -> None:
        """Restore the best weights, then keep a random sample of the task's training
        nodes as its memory (BeGin: ``torch.randperm`` of the training nodes)."""
        super().processAfterTraining(task_id, curr_dataset, curr_model, curr_optimizer,
                                     curr_training_states)
        if self.per_task <= 0:
            return
        train_nodes = curr_dataset.train.nodes
        chosen = torch.randperm(train_nodes.numel())[: self.per_task]
        curr_training_states["memories"].append(train_nodes[chosen.to(train_nodes.device)]
                                                .clone())

    def extraStorageBytes(self, training_states: dict) -> int:
        """The memories: each node's id, label and feature row."""
        return buffer_bytes(self.scenario, sum(m.numel() for m in training_states["memories"]))


def _flat(grads, params: list[nn.Parameter]) -> Tensor:
    """Gradients as one vector (None: zeros)."""
    return torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1)
                      for g, p in zip(grads, params, strict=True)])


def _unflat_into_grads(flat: Tensor, params: list[nn.Parameter]) -> None:
    """Write ``flat`` into the parameters' ``.grad``. A parameter without a gradient
    gets one only if its part of the projection is non-zero: one that nothing reaches
    keeps ``None``, and the optimizer skips it (no weight decay or momentum step), as
    in GEM's reference code. (That code also drops a non-zero projection on such a
    parameter, which only ``scope = "all"`` can produce; here it is applied, as the
    projected gradient says.)"""
    offset = 0
    for p in params:
        n = p.numel()
        chunk = flat[offset: offset + n].view_as(p)
        offset += n
        if p.grad is not None:
            p.grad.copy_(chunk)
        elif bool(chunk.any()):
            p.grad = chunk.clone()
