"""``hat``: hard attention to the task, a learned gate per hidden unit and task.

HAT (Serra et al., ICML 2018). Every task ``t`` has an embedding ``e[l][t]`` per GNN
layer ``l``; the layer's output is multiplied unit-wise by the gate
``a = sigmoid(s * e[l][t])``. During a task, ``s`` is annealed from ``1/smax`` to
``smax``, so the gates become (nearly) binary; at prediction a task uses its *binary*
mask ``sigmoid(smax * e) > 0.5`` (that is, ``e > 0``). A weight whose two ends (its
output unit, and for hidden layers its input unit) are both in the union of the past
tasks' masks is used by a past task: its gradient is zeroed (HAT's gradient masking)
and, after every optimizer step, its value is put back bit-exactly (so neither Adam's
state nor weight decay can move it). The embeddings' gradient is compensated for the
annealing (``smax/s * (cosh(s e) + 1) / (cosh(e) + 1)``) and the embeddings are clamped
to ``[-6, 6]``, as in the paper's code. The regulariser ``lamb * sum(a * (1 - used)) /
sum(1 - used)`` (attention on units no past task uses, over the number of such units)
goes in ``results["penalty"]``.

What keeps past tasks' outputs identical, bit for bit, beyond the masked weights:

* the GNN layers' biases and BatchNorm's affine parameters of used units are frozen
  like the weights;
* BatchNorm's running statistics are **per task**: they are stored at the end of each
  task and substituted (``torch.func.functional_call``) when that task is evaluated;
* each task's classifier rows are frozen after the task (BeGin's weight decay moves them).

The gates are applied with forward hooks on ``model.norms[l]`` (registered for one
call): ``relu(x * a) = relu(x) * a`` for ``a >= 0`` and dropout is a unit-wise scaling,
so this equals gating the layer's output after ReLU and dropout, as BeGin's
``forward_hat`` does, without editing the backbone. Backbones whose layer parameters are
unit-wise (GCN, GraphSAGE) are supported; GAT's attention mixes all channels of a head
before the output, so an unused unit's weights would change a past task's attention
(refused).

Differences from BeGin's ``NCTaskILHATTrainer`` (see ``methods/hat.toml``): BeGin keeps
the embeddings outside every optimizer (they never train: its masks are the random
initial ``sigmoid(400 e)``, and its regulariser has no effect), never anneals ``s`` in
node classification, masks the gradients with the soft gates and lets BatchNorm and
Adam move weights of past tasks.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.optim import Optimizer

from clbench.errors import ClbenchError
from clbench.methods.base import register_method
from clbench.methods.taskviews import eval_by_subset
from clbench.scenario import NCScenarioLoader, NodeBatch, TaskDataset
from clbench.trainer import NCTrainer

THRES_COSH = 50.0  # clamp of s * e inside cosh (the paper's code)
THRES_EMB = 6.0  # embeddings are clamped to [-6, 6] after each step (the paper's code)


def unit_masks(model: nn.Module, used: Sequence[Tensor]) -> dict[str, Tensor]:
    """``name -> bool mask`` of the entries of the GNN layers and BatchNorm parameters
    that a unit in ``used`` (one bool vector per layer) needs: a weight ``[out, in]`` is
    used when its output unit and (hidden layers) its input unit both are; a vector
    ``[out]`` (bias, BatchNorm affine) when its unit is."""
    out: dict[str, Tensor] = {}
    for layer, (conv, norm) in enumerate(zip(model.convs, model.norms, strict=True)):
        units = used[layer]
        inputs = used[layer - 1] if layer > 0 else None
        for module, prefix in ((conv, f"convs.{layer}"), (norm, f"norms.{layer}")):
            for name, p in module.named_parameters(prefix=prefix):
                if p.dim() == 1:
                    out[name] = units.clone()
                else:  # [out, in], checked by check_backbone
                    cols = (inputs.view(1, -1) if inputs is not None
                            else torch.ones(1, p.shape[1], dtype=torch.bool, device=p.device))
                    out[name] = units.view(-1, 1) & cols
    return out


def check_backbone(model: nn.Module) -> None:
    """HAT needs unit-wise layers: each GNN-layer parameter is ``[hidden, in]`` or
    ``[hidden]``, so that a unit's output depends only on its own rows."""
    convs, norms = getattr(model, "convs", None), getattr(model, "norms", None)
    if convs is None or norms is None or not hasattr(model, "n_hidden"):
        raise ClbenchError("hat needs clbench's NodeClassifier backbone (convs, norms)")
    hidden = model.n_hidden
    for layer, conv in enumerate(convs):
        for name, p in conv.named_parameters():
            if (p.dim() not in (1, 2) or p.shape[0] != hidden
                    or (p.dim() == 2 and layer > 0 and p.shape[1] != hidden)):
                raise ClbenchError(
                    f"hat gates hidden units, but layer {layer}'s parameter {name!r} "
                    f"{tuple(p.shape)} mixes units (GAT's attention does): use --model gcn or sage")


@register_method("hat")
class NCTaskILHATTrainer(NCTrainer):
    """HAT for Task-IL node classification.

    Hyperparameters (see ``methods/hat.toml``): ``lamb``, ``smax``, ``anneal_epochs``
    (epochs over which ``s`` goes from ``1/smax`` to ``smax``) and ``emb_lr``.

    Training states: ``embeddings`` (one ``[T, hidden]`` parameter per layer),
    ``emb_optimizer``, ``masks`` (per finished task, one bool vector per layer),
    ``bn_stats`` (per finished task, BatchNorm's running statistics by name), ``used``
    (the union of the finished tasks' masks) and ``epoch`` (in the current task).
    """

    def __init__(self, model, scenario, optimizer_fn, loss_fn=None, device="cpu",
                 **kwargs: Any) -> None:
        super().__init__(model, scenario, optimizer_fn, loss_fn, device, **kwargs)
        check_backbone(self.model)
        self.lamb = float(self.hparams["lamb"])
        self.smax = float(self.hparams["smax"])
        self.anneal_epochs = int(self.hparams["anneal_epochs"])
        self.emb_lr = float(self.hparams["emb_lr"])

    # ------------------------------------------------------------------ helpers
    def anneal(self, epoch: int) -> float:
        """``s`` at ``epoch`` of a task: linear from ``1/smax`` (epoch 0) to ``smax``
        over ``min(anneal_epochs, epoch budget)`` epochs, then ``smax``."""
        span = min(self.anneal_epochs, getattr(self, "epoch_per_task", self.anneal_epochs)) - 1
        if span <= 0:
            return self.smax
        return 1.0 / self.smax + (self.smax - 1.0 / self.smax) * min(epoch / span, 1.0)

    def gated_forward(self, model: nn.Module, batch: NodeBatch, gates: Sequence[Tensor],
                      buffers: dict[str, Tensor] | None = None) -> Tensor:
        """All nodes' logits with layer ``l``'s units multiplied by ``gates[l]``
        (``buffers`` replace BatchNorm statistics for the call)."""
        handles = [norm.register_forward_hook(lambda _m, _i, out, g=g: out * g)
                   for norm, g in zip(model.norms, gates, strict=True)]
        try:
            return self.forward(model, batch, buffers)
        finally:
            for h in handles:
                h.remove()

    def bn_stats(self, model: nn.Module) -> dict[str, Tensor]:
        """BatchNorm's running statistics, by name (copies)."""
        return {n: b.detach().clone() for n, b in model.named_buffers()
                if n.startswith("norms.") and n.endswith(("running_mean", "running_var"))}

    def eval_view(self, task_id: int, states: dict) -> tuple[list[Tensor], dict | None]:
        """Binary gates and BatchNorm statistics that task ``task_id`` is evaluated with:
        the stored ones for a finished task, else the current embeddings' ``e > 0`` and
        the model's own statistics."""
        if task_id < len(states["masks"]):
            return ([m.float() for m in states["masks"][task_id]],
                    states["bn_stats"][task_id] or None)
        return [(e[task_id] > 0).float() for e in states["embeddings"]], None

    # ------------------------------------------------------------------ events
    def initTrainingStates(self, scenario: NCScenarioLoader, model: nn.Module,
                           optimizer: Optimizer) -> dict:
        """Embeddings ``N(0, 1)`` (the paper's code); nothing used yet."""
        shape = (self.num_tasks, model.n_hidden)
        embeddings = [nn.Parameter(torch.randn(shape, device=self.device))
                      for _ in model.convs]
        used = [torch.zeros(model.n_hidden, dtype=torch.bool, device=self.device)
                for _ in model.convs]
        return {"embeddings": embeddings, "emb_optimizer": None, "masks": [],
                "bn_stats": [], "used": used, "epoch": 0}

    def processBeforeTraining(self, task_id: int, curr_dataset: TaskDataset,
                              curr_model: nn.Module, curr_optimizer: Optimizer,
                              curr_training_states: dict) -> None:
        """Fresh optimizers; freeze what past tasks use (their weights, biases and
        BatchNorm affine entries, their classifier rows)."""
        super().processBeforeTraining(task_id, curr_dataset, curr_model, curr_optimizer,
                                      curr_training_states)
        states = curr_training_states
        states["epoch"] = 0
        emb_opt = self.optimizer_fn(states["embeddings"])
        for group in emb_opt.param_groups:
            group["lr"] = self.emb_lr
            group["weight_decay"] = 0.0  # decay would pull every gate towards 0.5
        states["emb_optimizer"] = emb_opt
        self.unfreeze_all()
        if task_id == 0:
            return
        params = dict(curr_model.named_parameters())
        for name, mask in unit_masks(curr_model, states["used"]).items():
            self.freeze_(params[name], mask)
        rows = torch.zeros(self.scenario.num_classes, dtype=torch.bool, device=self.device)
        rows[self.scenario.task_classes[:task_id].reshape(-1)] = True
        head = curr_model.classifier
        self.freeze_(head.weight, rows.view(-1, 1).expand_as(head.weight))
        if head.bias is not None:
            self.freeze_(head.bias, rows)

    def inference(self, model: nn.Module, _curr_batch: NodeBatch,
                  training_states: dict | None) -> dict:
        """Training: the current task's soft gates ``sigmoid(s e)`` at the epoch's ``s``.
        Otherwise the current task's binary mask (before the first task: no gates)."""
        t, states = self.curr_task, training_states
        if t < 0 or states is None:
            return super().inference(model, _curr_batch, training_states)
        if model.training:
            s = self.anneal(states["epoch"])
            gates, buffers = [torch.sigmoid(s * e[t]) for e in states["embeddings"]], None
        else:
            s = self.smax
            gates, buffers = self.eval_view(t, states)
        logits = self.gated_forward(model, _curr_batch, gates, buffers)
        preds = _curr_batch.restrict(logits)
        return {"preds": preds, "loss": self.batch_loss(preds, _curr_batch),
                "logits": logits, "weights": None, "gates": gates, "s": s}

    def penalty(self, gates: Sequence[Tensor], used: Sequence[Tensor]) -> Tensor:
        """``sum(a * (1 - used)) / sum(1 - used)`` over all layers (0 if no unit is free)."""
        free = [(~u).float() for u in used]
        count = sum(f.sum() for f in free)
        reg = sum((a * f).sum() for a, f in zip(gates, free, strict=True))
        return reg / count if count > 0 else reg * 0.0

    def afterInference(self, results: dict, model: nn.Module, optimizer: Optimizer,
                       _curr_batch: NodeBatch, training_states: dict) -> dict:
        """Loss plus ``lamb`` x the penalty; backward; zero the gradients of used entries;
        compensate the embeddings' gradient for ``s``; step; put frozen entries back and
        clamp the embeddings."""
        states = training_states
        results["penalty"] = self.lamb * self.penalty(results["gates"], states["used"])
        results["loss"] = results["loss"] + results["penalty"]
        results["loss"].backward()
        for param, mask, _ in self._frozen:
            if param.grad is not None:
                param.grad.masked_fill_(mask, 0.0)
        s = results["s"]
        with torch.no_grad():
            for e in states["embeddings"]:
                if e.grad is not None:
                    num = torch.cosh(torch.clamp(s * e, -THRES_COSH, THRES_COSH)) + 1
                    e.grad.mul_(self.smax / s * num / (torch.cosh(e) + 1))
        optimizer.step()
        states["emb_optimizer"].step()
        states["emb_optimizer"].zero_grad(set_to_none=True)
        self.restore_frozen()
        with torch.no_grad():
            for e in states["embeddings"]:
                e.clamp_(-THRES_EMB, THRES_EMB)
        return self._train_stats(results, _curr_batch)

    def processAfterEachIteration(self, curr_model: nn.Module, curr_optimizer: Optimizer,
                                  curr_training_states: dict, curr_iter_results: dict) -> bool:
        """Base behaviour; the embeddings' lr follows the main one's; next epoch's ``s``."""
        go_on = super().processAfterEachIteration(curr_model, curr_optimizer,
                                                  curr_training_states, curr_iter_results)
        ratio = curr_optimizer.param_groups[0]["lr"] / self._initial_lrs[0]
        for group in curr_training_states["emb_optimizer"].param_groups:
            group["lr"] = self.emb_lr * ratio
        curr_training_states["epoch"] += 1
        return go_on

    def saveCheckpoint(self, model: nn.Module, training_states: dict) -> dict:
        return {"model": super().saveCheckpoint(model, training_states),
                "embeddings": [e.detach().clone() for e in training_states["embeddings"]]}

    def loadCheckpoint(self, model: nn.Module, training_states: dict, checkpoint: Any) -> None:
        super().loadCheckpoint(model, training_states, checkpoint["model"])
        with torch.no_grad():
            for e, saved in zip(training_states["embeddings"], checkpoint["embeddings"],
                                strict=True):
                e.copy_(saved)

    def processAfterTraining(self, task_id: int, curr_dataset: TaskDataset,
                             curr_model: nn.Module, curr_optimizer: Optimizer,
                             curr_training_states: dict) -> None:
        """Restore the best weights and embeddings; store the task's binary mask and
        BatchNorm statistics; add the mask to the union of used units."""
        super().processAfterTraining(task_id, curr_dataset, curr_model, curr_optimizer,
                                     curr_training_states)
        states = curr_training_states
        masks = [(e[task_id] > 0).detach().clone() for e in states["embeddings"]]
        states["masks"].append(masks)
        states["bn_stats"].append(self.bn_stats(curr_model))
        states["used"] = [u | m for u, m in zip(states["used"], masks, strict=True)]

    @torch.no_grad()
    def processEvalIteration(self, model: nn.Module, _curr_batch: NodeBatch,
                             training_states: dict | None = None) -> tuple[Tensor, dict]:
        """Each task with its own binary mask and BatchNorm statistics: one forward pass
        per task in the batch; tasks not learned yet use the current task's."""
        states = training_states
        if self.curr_task < 0 or states is None:
            return super().processEvalIteration(model, _curr_batch, training_states)
        return eval_by_subset(
            _curr_batch, _curr_batch.task_ids.clamp(max=self.curr_task),
            lambda j, sub: sub.restrict(self.gated_forward(model, sub, *self.eval_view(j, states))),
            self.batch_loss)

    def extraStorageBytes(self, training_states: dict) -> int:
        """The embeddings, the stored masks (one bool per unit per finished task), their
        union and BatchNorm statistics per finished task."""
        tensors = [*training_states["embeddings"], *training_states["used"],
                   *(m for task in training_states["masks"] for m in task),
                   *(b for task in training_states["bn_stats"] for b in task.values())]
        return sum(t.numel() * t.element_size() for t in tensors)
