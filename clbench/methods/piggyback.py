"""``piggyback``: per-task binary (or ternary) masks over a fixed backbone.

Piggyback (Mallya et al., 2018) keeps the GNN layers' weights fixed and learns,
for every task, a real-valued score per weight; thresholding the scores gives
the task's mask, and the task's network is ``weight * mask``. Masks of finished
tasks are stored bit-packed, so old tasks are evaluated exactly as they were
learned: forgetting is zero by construction.

Event functions keep the roles documented for BeGin's ``NCTaskILPiggybackTrainer``.
Differences from BeGin, on purpose:

* the default backbone is trained on the first task, then frozen
  (``backbone_init = first_task``): BeGin's random backbone, frozen with BatchNorm at its
  initial statistics, can leave a task at its majority class (see the card);
  ``backbone_init = random`` is BeGin's setting;

* masked weights are passed to the forward pass (the
  :meth:`~clbench.trainer.NCTrainer.forward_weights` hook, ``torch.func.functional_call``)
  instead of being written into the model and restored, so the backbone is never
  modified (no weight copies per step);
* the real-valued masks are part of the best-validation checkpoint;
* old tasks' classifier rows are kept bit-identical (BeGin's Adam weight decay
  moves them);
* evaluation runs one forward pass per task, with no model copies.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor, nn
from torch_geometric.nn import DeepGraphInfomax

from clbench.methods.base import register_method
from clbench.methods.taskviews import eval_by_subset
from clbench.models import freeze_batchnorm
from clbench.scenario import NodeBatch
from clbench.trainer import NCTrainer, plateau_scheduler


class _Encoder(nn.Module):
    """The backbone without its classifier, as DGI's encoder."""

    def __init__(self, model: nn.Module, graph) -> None:
        super().__init__()
        self.model = model
        self.graph = graph

    def forward(self, x: Tensor) -> Tensor:
        return self.model.encode(x, self.graph)


def _corrupt(x: Tensor) -> tuple[Tensor]:
    """DGI's corruption: shuffle the rows of the feature matrix (dense or CSR)."""
    perm = torch.randperm(x.size(0), device=x.device)
    if x.layout == torch.sparse_csr:
        return (x.to_sparse_coo().index_select(0, perm).to_sparse_csr(),)
    return (x[perm],)


def _summary(z: Tensor, *args) -> Tensor:
    return torch.sigmoid(z.mean(dim=0))


def pack_mask(mask: Tensor, ternary: bool) -> tuple[np.ndarray, ...]:
    """Bit-pack a {0,1} (1 bit/weight) or {-1,0,1} (2 bits/weight) mask."""
    flat = mask.detach().cpu().view(-1)
    planes = [(flat != 0)] + ([flat < 0] if ternary else [])
    return tuple(np.packbits(p.numpy()) for p in planes)


def unpack_mask(packed: tuple[np.ndarray, ...], shape: torch.Size, device) -> Tensor:
    n = math.prod(shape)
    nonzero = torch.from_numpy(np.unpackbits(packed[0], count=n).astype(np.float32))
    if len(packed) > 1:
        negative = torch.from_numpy(np.unpackbits(packed[1], count=n).astype(bool))
        nonzero[negative] = -1.0
    return nonzero.view(shape).to(device)


@register_method("piggyback")
class NCTaskILPiggybackTrainer(NCTrainer):
    """Piggyback for Task-IL node classification.

    Hyperparameters (see ``methods/piggyback.toml``): ``threshold``,
    ``mask_type`` (binary | ternary), ``backbone_init`` (random | first_task | dgi),
    ``dgi_epochs``.

    Training states: ``done_masks`` (per finished task, name -> bit-packed mask),
    ``real_masks`` (name -> the current task's real-valued scores), ``mask_optimizer``
    (over them) and, during a training step only, ``step_weights`` (the masked
    weights of that step, which :meth:`forward_weights` hands to the forward pass).
    """

    def __init__(self, model, scenario, optimizer_fn, loss_fn, device, **kwargs) -> None:
        super().__init__(model, scenario, optimizer_fn, loss_fn, device, **kwargs)
        self.threshold = float(self.hparams["threshold"])
        self.ternary = self.hparams["mask_type"] == "ternary"
        self.backbone_init = self.hparams["backbone_init"]
        self.masked_names = self.model.backbone_weight_names()

    # ------------------------------------------------------------------ helpers
    def _named(self, model: nn.Module) -> dict[str, Tensor]:
        params = dict(model.named_parameters())
        return {n: params[n] for n in self.masked_names}

    def _threshold(self, real: Tensor) -> Tensor:
        """Real-valued scores -> {0,1} (or {-1,0,1} for ternary masks)."""
        mask = (real >= self.threshold).float()
        if self.ternary:
            mask = mask - (real <= -self.threshold).float()
        return mask

    def _trains_backbone(self, task_id: int) -> bool:
        return self.backbone_init == "first_task" and task_id == 0

    def _pretrain_dgi(self, model: nn.Module) -> None:
        """Self-supervised pre-training of the backbone on the whole graph (DGI)."""
        graph = self.scenario.graph
        dgi = DeepGraphInfomax(model.n_hidden, _Encoder(model, graph), _summary, _corrupt)
        dgi = dgi.to(self.device)
        optimizer = self.optimizer_fn(dgi.parameters())
        scheduler = plateau_scheduler(self.protocol.patience, self.protocol.min_lr_ratio)(optimizer)
        best, best_state = math.inf, None
        model.train()
        for _ in range(int(self.hparams["dgi_epochs"])):
            optimizer.zero_grad(set_to_none=True)
            loss = dgi.loss(*dgi(model.inputs(graph)))
            loss.backward()
            optimizer.step()
            value = loss.item()
            if value < best:
                best = value
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            scheduler.step(value)
            if optimizer.param_groups[0]["lr"] <= scheduler.min_lrs[0] * (1 + 1e-6):
                break
        if best_state is not None:
            model.load_state_dict(best_state)

    def _freeze_backbone(self, model: nn.Module) -> None:
        for p in model.convs.parameters():
            p.requires_grad_(False)
        freeze_batchnorm(model)

    def _eval_weights(self, model: nn.Module, key: int,
                      training_states: dict) -> dict[str, Tensor] | None:
        """Masked weights for evaluating task ``key``."""
        done = training_states["done_masks"]
        named = self._named(model)
        if key < len(done):
            return {n: w * unpack_mask(done[key][n], w.shape, w.device)
                    for n, w in named.items()}
        real = training_states.get("real_masks")
        if not real:  # no mask yet (untrained, or the backbone's own task)
            return None
        return {n: w * self._threshold(real[n]) for n, w in named.items()}

    # ------------------------------------------------------------------ events
    def initTrainingStates(self, scenario, model, optimizer) -> dict:
        """State: stored masks of finished tasks, current real-valued masks, mask optimizer."""
        return {"done_masks": [], "real_masks": {}, "mask_optimizer": None}

    def processBeforeTraining(self, task_id, curr_dataset, curr_model, curr_optimizer,
                              curr_training_states) -> None:
        """Prepare the backbone (task 0), initialise the task's real-valued masks at
        2 x threshold and their optimizer, and let the head learn only this task's rows."""
        if task_id == 0:
            if self.backbone_init == "dgi":
                self._pretrain_dgi(curr_model)
            if not self._trains_backbone(task_id):
                self._freeze_backbone(curr_model)
        if self._trains_backbone(task_id):
            real = {}
        else:
            real = {n: nn.Parameter(torch.full_like(w, 2.0 * self.threshold))
                    for n, w in self._named(curr_model).items()}
        curr_training_states["real_masks"] = real
        curr_training_states["mask_optimizer"] = (
            self.optimizer_fn(list(real.values())) if real else None)
        # The classifier learns only the rows of this task's classes.
        self.unfreeze_all()
        others = torch.ones(self.scenario.num_classes, dtype=torch.bool, device=self.device)
        others[self.scenario.task_classes[task_id]] = False
        head = curr_model.classifier
        self.freeze_(head.weight, others.view(-1, 1).expand_as(head.weight))
        self.freeze_(head.bias, others)
        super().processBeforeTraining(task_id, curr_dataset, curr_model, curr_optimizer,
                                      curr_training_states)

    def beforeInference(self, model, optimizer, _curr_batch, training_states):
        """Threshold the real-valued masks and apply them to the (fixed) weights.

        The masked weights are leaf tensors so that ``afterInference`` can read
        their gradient (they reach it as ``results["_before_inference"]``, and the
        forward pass through :meth:`forward_weights`); the backbone itself is left
        untouched.
        """
        if not self._trains_backbone(self.curr_task):
            freeze_batchnorm(model)  # the loop put the model in train mode
        real = training_states["real_masks"]
        if not real:
            return None
        named = self._named(model)
        masked = {n: (w * self._threshold(real[n])).requires_grad_()
                  for n, w in named.items()}
        training_states["step_weights"] = masked
        return masked

    def forward_weights(self, model, batch, training_states) -> dict[str, Tensor] | None:
        """In a training step, the masked weights ``beforeInference`` made (None when
        the backbone itself trains). Evaluation has its own per-task weights
        (:meth:`processEvalIteration`)."""
        return training_states.get("step_weights") if training_states else None

    def afterInference(self, results, model, optimizer, _curr_batch, training_states) -> dict:
        """Back-propagate; the real-valued masks get the straight-through gradient
        (grad of the masked weight x weight); step both optimizers; frozen entries
        (old classifier rows) are put back; the backbone never changes."""
        results["loss"].backward()
        masked = results["_before_inference"]
        if masked:
            named = self._named(model)
            for n, real in training_states["real_masks"].items():
                real.grad = masked[n].grad * named[n]
        optimizer.step()
        if training_states["mask_optimizer"] is not None:
            training_states["mask_optimizer"].step()
        self.restore_frozen()
        training_states.pop("step_weights", None)
        return self._train_stats(results, _curr_batch)

    def processAfterEachIteration(self, curr_model, curr_optimizer, curr_training_states,
                                  curr_iter_results) -> bool:
        """Base behaviour, then keep the mask optimizer's lr equal to the main one's."""
        ret = super().processAfterEachIteration(curr_model, curr_optimizer,
                                                curr_training_states, curr_iter_results)
        mask_opt = curr_training_states["mask_optimizer"]
        if mask_opt is not None:
            for group in mask_opt.param_groups:
                group["lr"] = curr_optimizer.param_groups[0]["lr"]
        return ret

    def saveCheckpoint(self, model, training_states) -> dict:
        ckpt = super().saveCheckpoint(model, training_states)
        real = training_states["real_masks"]
        return {"model": ckpt, "masks": {n: m.detach().clone() for n, m in real.items()}}

    def loadCheckpoint(self, model, training_states, checkpoint) -> None:
        super().loadCheckpoint(model, training_states, checkpoint["model"])
        with torch.no_grad():
            for n, m in training_states["real_masks"].items():
                m.copy_(checkpoint["masks"][n])

    def processAfterTraining(self, task_id, curr_dataset, curr_model, curr_optimizer,
                             curr_training_states) -> None:
        """Restore the best weights and masks, then store this task's mask bit-packed."""
        super().processAfterTraining(task_id, curr_dataset, curr_model, curr_optimizer,
                                     curr_training_states)
        named = self._named(curr_model)
        real = curr_training_states["real_masks"]
        if real:
            masks = {n: self._threshold(real[n]) for n in named}
        else:  # the backbone was trained on this task: it uses every weight
            masks = {n: torch.ones_like(w) for n, w in named.items()}
        curr_training_states["done_masks"].append(
            {n: pack_mask(m, self.ternary) for n, m in masks.items()})
        if self._trains_backbone(task_id):
            self._freeze_backbone(curr_model)

    def processEvalIteration(self, model, _curr_batch: NodeBatch,
                             training_states=None) -> tuple[Tensor, dict]:
        """Evaluate each task with its own stored mask: one forward pass per task.

        Nodes of tasks not learned yet use the current mask.
        """
        states = training_states
        return eval_by_subset(
            _curr_batch, _curr_batch.task_ids.clamp(max=max(self.curr_task, 0)),
            lambda key, sub: sub.restrict(self.forward(
                model, sub, self._eval_weights(model, key, states) if states else None)),
            self.batch_loss)

    def extraStorageBytes(self, training_states) -> int:
        """Bytes of the stored bit-packed masks (1 bit per masked weight per task, 2 for
        ternary masks; rounded up to whole bytes per tensor)."""
        return sum(p.nbytes for task in training_states["done_masks"]
                   for planes in task.values() for p in planes)
