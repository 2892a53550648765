"""``twp``: Topology-aware Weight Preserving (Liu, Yang and Wang, AAAI 2021), as in BeGin.

After each task ``k``, at the restored best-validation weights (eval mode), two squared
gradients are kept with the weights ``theta_k``: ``Fl_k`` of the task loss, and ``Ft_k``
of the norm of the first layer's per-edge aggregation scores (the topology the layer
learned). Later tasks minimise::

    task loss + sum_k sum_i (lambda_l Fl_k[i] + lambda_t Ft_k[i]) (theta[i] - theta_k[i])^2

``importance_norm="mean"`` (default) divides each task's ``Fl_k`` by its mean entry, and
its ``Ft_k`` by its own, before they are kept, so that the lambdas mean the same on every
dataset and task. The raw scores (``importance_norm="none"``, BeGin's) leave BeGin's
lambdas inert wherever a task is fitted almost exactly: on Cora after a task the mean
``Fl`` is ~1e-10 (so ``lambda_l = 1e4`` weighs nothing), and 99% of
``lambda_l Fl + lambda_t Ft`` sits on the first layer's weights through the edge-score
term, which GCN's aggregation does not use; TWP was then fine-tuning within noise
(``methods/twp.toml`` has the measurements).

The aggregation scores depend on the backbone:

* ``gat``: the first GATConv's attention coefficients (the paper's backbone);
* ``gcn`` (the default backbone, BeGin's variant): GCN has no attention, so BeGin scores
  each edge ``u -> v`` from the first layer's linear map ``z = D^-1/2 X W`` as
  ``softmax_v(leaky_relu(<z_u, tanh(z_v)>, 0.2))``, softmax over ``v``'s incoming edges.
  The scores only measure; GCN's aggregation is unchanged. ``gcn_scores="begin"``
  (default) is BeGin's layer on BeGin's graph exactly: the edges include each node's
  self-loop (BeGin's scenarios add them; they enter the softmax and the degree ``D``),
  and where the layer widens its input (``in <= out``, e.g. ogbn-arxiv's 128 features to
  256) the destination side is ``tanh(X W)``, unnormalised, as in BeGin's other branch.
  ``gcn_scores="no_self_loops"`` is the formula clbench used before: the graph's edges
  only, ``tanh(z_v)`` on both branches (its records keep their identity).

As in the official code, CGLB and BeGin, the two backward passes share the gradient
buffers, so the raw ``Ft_k`` is the square of the loss gradient *plus* the topology gradient
(for every layer but the first, ``Ft_k = Fl_k``). Differences from them, on purpose:
the reference codes add ``beta * ||grad||_1`` computed from detached gradients (a
constant: it changes the printed loss and nothing else), so there is no ``beta`` here;
and they back-propagate the task loss twice per step (``2 grad L + grad penalty``),
which halves the penalty's weight against the task loss under Adam: BeGin's
``lambda`` s correspond to about half of them here. The penalty is added in
``afterInference``, so validation losses stay task losses. In Class-IL the task loss
(trained on, and the one ``Fl_k`` is measured on) is among every class seen so far, as
in BeGin's Class-IL trainer; the edge scores do not depend on the setting.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.optim import Optimizer
from torch_geometric.nn import GATConv, GCNConv
from torch_geometric.utils import add_remaining_self_loops, degree, softmax

from clbench.errors import ClbenchError
from clbench.methods.anchored import AnchoredTrainer, normalise_importance
from clbench.methods.base import register_method
from clbench.scenario import NCScenarioLoader, NodeBatch, TaskDataset


@register_method("twp")
class NCTaskILTWPTrainer(AnchoredTrainer):
    """TWP for node classification, Task-IL or Class-IL (GCN or GAT backbone).

    Hyperparameters (see ``methods/twp.toml``): ``lambda_l`` and ``lambda_t`` (on the
    mean-normalised scores), ``importance_norm`` (mean | none; BeGin: none, with
    ``lambda_l`` 1e4 and ``lambda_t`` in {100, 1000}), ``gcn_scores`` (begin |
    no_self_loops: the GCN edge scores, module docs).

    Training states: ``loss_scores``, ``topology_scores`` and ``params``, each ``[K, P]``
    (one row per past task), empty ``[0, P]`` before the first task ends.
    """

    def __init__(self, model, scenario, optimizer_fn, loss_fn=None, device="cpu",
                 **kwargs: Any) -> None:
        super().__init__(model, scenario, optimizer_fn, loss_fn, device, **kwargs)
        first = getattr(self.model, "convs", [None])[0]
        if not isinstance(first, GATConv | GCNConv):
            raise ClbenchError("twp needs per-edge aggregation scores: use --model gcn or gat")
        self.lambda_l = float(self.hparams["lambda_l"])
        self.lambda_t = float(self.hparams["lambda_t"])
        self.importance_norm = str(self.hparams["importance_norm"])
        self.gcn_scores = str(self.hparams["gcn_scores"])

    # ------------------------------------------------------------------ helpers
    def penalty(self, training_states: dict) -> Tensor | None:
        """``sum_k (lambda_l Fl_k + lambda_t Ft_k) (theta - theta_k)^2`` (None before any
        task ends)."""
        fl, ft, stars = (training_states[k] for k in ("loss_scores", "topology_scores",
                                                      "params"))
        if fl.size(0) == 0:
            return None
        diff = self.flat_params().unsqueeze(0) - stars
        return ((self.lambda_l * fl + self.lambda_t * ft) * diff * diff).sum()

    def edge_scores(self, model: nn.Module, batch: NodeBatch) -> Tensor:
        """The first layer's per-edge aggregation scores on ``batch``'s graph."""
        graph = batch.graph
        conv = model.convs[0]
        x = model.inputs(graph) if hasattr(model, "inputs") else graph.x
        if isinstance(conv, GATConv):
            _, (_, alpha) = conv(x, graph.edge_index, return_attention_weights=True)
            return alpha
        n = graph.num_nodes
        edge_index = graph.edge_index
        if self.gcn_scores == "begin":  # BeGin's graph: every node has its self-loop
            edge_index, _ = add_remaining_self_loops(edge_index, num_nodes=n)
        src, dst = edge_index
        norm = degree(src, n).clamp(min=1).pow(-0.5)  # out-degree, as DGL's layer
        xw = conv.lin(x)
        z = xw * norm.unsqueeze(-1)  # (D^-1/2 X) W
        widens = conv.in_channels <= conv.out_channels
        target = xw if self.gcn_scores == "begin" and widens else z
        e = F.leaky_relu((z[src] * torch.tanh(target[dst])).sum(-1), 0.2)
        return softmax(e, dst, num_nodes=n)

    def task_scores(self, model: nn.Module, batch: NodeBatch) -> tuple[Tensor, Tensor]:
        """``(Fl, Ft)`` of a task, flat, at the current weights, in eval mode."""
        params = self._reg_params()
        was_training = model.training
        model.eval()
        try:
            with torch.enable_grad():
                loss = self.inference(model, batch, None)["loss"]
                g_loss = torch.autograd.grad(loss, params, allow_unused=True)
                eloss = self.edge_scores(model, batch).norm()
                g_top = torch.autograd.grad(eloss, params, allow_unused=True)
        finally:
            model.train(was_training)
        zero = [torch.zeros_like(p) for p in params]
        g_loss = torch.cat([(g if g is not None else z).reshape(-1)
                            for g, z in zip(g_loss, zero, strict=True)])
        g_top = torch.cat([(g if g is not None else z).reshape(-1)
                           for g, z in zip(g_top, zero, strict=True)])
        both = g_loss + g_top  # the reference codes' shared gradient buffers
        return g_loss * g_loss, both * both

    # ------------------------------------------------------------------ events
    def initTrainingStates(self, scenario: NCScenarioLoader, model: nn.Module,
                           optimizer: Optimizer) -> dict:
        P = sum(p.numel() for p in self._reg_params())
        empty = torch.zeros(0, P, device=self.device)
        return {"loss_scores": empty, "topology_scores": empty.clone(),
                "params": empty.clone()}

    def weighted_penalty(self, training_states: dict) -> Tensor | None:
        """The TWP penalty (its two lambdas are inside it)."""
        return self.penalty(training_states)

    def processAfterTraining(self, task_id: int, curr_dataset: TaskDataset,
                             curr_model: nn.Module, curr_optimizer: Optimizer,
                             curr_training_states: dict) -> None:
        """Restore the best weights, then keep their two (normalised) scores and their values."""
        super().processAfterTraining(task_id, curr_dataset, curr_model, curr_optimizer,
                                     curr_training_states)
        fl, ft = (normalise_importance(s, self.importance_norm)
                  for s in self.task_scores(curr_model, curr_dataset.train))
        with torch.no_grad():
            theta = self.flat_params().detach().clone()
        states = curr_training_states
        for key, row in (("loss_scores", fl), ("topology_scores", ft), ("params", theta)):
            states[key] = torch.cat([states[key], row.detach()[None]])

    def extraStorageBytes(self, training_states: dict) -> int:
        """The two score vectors and the weight copy kept per past task."""
        return sum(training_states[k].numel() * training_states[k].element_size()
                   for k in ("loss_scores", "topology_scores", "params"))
