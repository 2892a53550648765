"""The floor: one training step of the benchmark GCN written directly in torch.

Same math as clbench's GCN backbone (``NodeClassifier`` with PyG's
``GCNConv(normalize=False)`` on the normalised CSR adjacency), on precomputed
tensors, with nothing else: per layer ``h = relu(BN(A @ (h @ W.T) + b))``, then
the classifier, the Task-IL restriction of the logits to each training node's
task classes, cross-entropy, ``backward`` and an Adam step.

What is precomputed (it does not change within a task): the CSR adjacency and
its CSR transpose (so the backward of ``A @ z`` is one CSR product ``A.T @ g``,
with no conversion), the training nodes, their candidate classes and local
labels. The classifier is applied to the training nodes' rows only (the loss
needs no other logits). BatchNorm uses batch statistics over all nodes, as in
training mode, and updates its running statistics.

:class:`FloorGCN` also has a ``propagate_first`` variant that multiplies
``(A @ X)`` once (X and A are constant) and reuses it every step: layer 1 then
costs one dense matmul and no sparse product. It is the same function, computed
in another order (results agree to float rounding), reported for information.
"""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F
from torch import Tensor


def csr_mm(adj: Tensor, z: Tensor) -> Tensor:
    """``adj @ z`` for CSR ``adj``, written straight into a fresh output.

    ``torch.addmm(out, adj, z, beta=0, out=out)`` skips the zero-fill and the copy
    that ``adj @ z`` makes around MKL's sparse kernel (about 15% of its time on
    the arxiv-sized graph); ``beta=0`` ignores the uninitialised ``out``.
    """
    out = torch.empty(adj.size(0), z.size(1), dtype=z.dtype, device=z.device)
    return torch.addmm(out, adj, z, beta=0, out=out)


class _CSRMatmul(torch.autograd.Function):
    """``adj @ z`` for a constant CSR ``adj``, with its CSR transpose precomputed."""

    @staticmethod
    def forward(ctx, z: Tensor, adj: Tensor, adj_t: Tensor) -> Tensor:
        ctx.adj_t = adj_t
        return csr_mm(adj, z)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None, None]:
        return csr_mm(ctx.adj_t, grad), None, None


class _ConstCSRLinear(torch.autograd.Function):
    """``x @ weight.T`` for constant CSR features ``x`` (transpose precomputed)."""

    @staticmethod
    def forward(ctx, weight: Tensor, x: Tensor, x_t: Tensor) -> Tensor:
        ctx.x_t = x_t
        return csr_mm(x, weight.t())

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None, None]:
        return csr_mm(ctx.x_t, grad).t(), None, None


def csr_transpose(adj: Tensor) -> Tensor:
    """The transpose of a CSR matrix, as CSR (computed once)."""
    return adj.t().to_sparse_coo().coalesce().to_sparse_csr()


class FloorGCN:
    """GCN parameters as plain leaf tensors, and a training step on fixed inputs.

    Args:
        x: node features ``[N, F]``, dense or ``torch.sparse_csr`` (bag-of-words
            features, as clbench passes them; their transpose is precomputed too).
        adj: normalised adjacency (transposed, PyG's convention) as ``torch.sparse_csr``.
        nodes: the training nodes; ``candidates``: ``[n, K]`` class ids each is
            classified among; ``local_labels``: the label's position in ``candidates``.
        dims: ``[F, hidden, ..., hidden]`` (one entry per layer plus the input).
        num_classes: width of the classifier.
        propagate_first: precompute ``A @ X`` for the first layer (see module docstring).
    """

    def __init__(self, x: Tensor, adj: Tensor, nodes: Tensor, candidates: Tensor,
                 local_labels: Tensor, dims: list[int], num_classes: int, *,
                 lr: float = 1e-3, propagate_first: bool = False, seed: int = 0) -> None:
        gen = torch.Generator().manual_seed(seed)
        self.x, self.adj, self.adj_t = x, adj, csr_transpose(adj)
        self.x_t = csr_transpose(x) if x.layout == torch.sparse_csr else None
        self.nodes, self.candidates, self.local_labels = nodes, candidates, local_labels
        if propagate_first and self.x_t is not None:
            raise ValueError("propagate_first needs dense features")
        self.ax = csr_mm(adj, x) if propagate_first else None
        self.weights: list[Tensor] = []
        self.biases: list[Tensor] = []
        self.bn_weights: list[Tensor] = []
        self.bn_biases: list[Tensor] = []
        self.running: list[tuple[Tensor, Tensor]] = []
        for i, o in itertools.pairwise(dims):
            bound = (6.0 / (i + o)) ** 0.5  # glorot, as PyG's Linear
            self.weights.append(_leaf(torch.rand(o, i, generator=gen) * 2 * bound - bound))
            self.biases.append(_leaf(torch.zeros(o)))
            self.bn_weights.append(_leaf(torch.ones(o)))
            self.bn_biases.append(_leaf(torch.zeros(o)))
            self.running.append((torch.zeros(o), torch.ones(o)))
        bound = 1.0 / dims[-1] ** 0.5
        self.cls_weight = _leaf(torch.rand(num_classes, dims[-1], generator=gen) * 2 * bound
                                - bound)
        self.cls_bias = _leaf(torch.rand(num_classes, generator=gen) * 2 * bound - bound)
        self.optimizer = torch.optim.Adam(self.parameters(), lr=lr)

    def named_parameters(self) -> dict[str, Tensor]:
        """The parameters under the names clbench's ``NodeClassifier`` (GCN) uses."""
        out: dict[str, Tensor] = {}
        for k in range(len(self.weights)):
            out[f"convs.{k}.lin.weight"] = self.weights[k]
            out[f"convs.{k}.bias"] = self.biases[k]
            out[f"norms.{k}.weight"] = self.bn_weights[k]
            out[f"norms.{k}.bias"] = self.bn_biases[k]
        out["classifier.weight"] = self.cls_weight
        out["classifier.bias"] = self.cls_bias
        return out

    def parameters(self) -> list[Tensor]:
        return list(self.named_parameters().values())

    @torch.no_grad()
    def load_from(self, model: torch.nn.Module) -> None:
        """Copy the weights and BatchNorm statistics of a clbench GCN ``NodeClassifier``."""
        theirs = dict(model.named_parameters())
        for name, p in self.named_parameters().items():
            p.copy_(theirs[name])
        for k, norm in enumerate(model.norms):
            self.running[k][0].copy_(norm.running_mean)
            self.running[k][1].copy_(norm.running_var)

    def loss(self) -> Tensor:
        """Forward pass to the Task-IL cross-entropy of the training nodes."""
        h = self.x
        for k, (w, b) in enumerate(zip(self.weights, self.biases, strict=True)):
            if k == 0 and self.ax is not None:
                z = self.ax @ w.t()
            else:
                hw = _ConstCSRLinear.apply(w, h, self.x_t) if k == 0 and self.x_t is not None \
                    else h @ w.t()
                z = _CSRMatmul.apply(hw, self.adj, self.adj_t)
            mean, var = self.running[k]
            z = F.batch_norm(z + b, mean, var, self.bn_weights[k], self.bn_biases[k],
                             training=True, momentum=0.1, eps=1e-5)
            h = F.relu(z)
        logits = h[self.nodes] @ self.cls_weight.t() + self.cls_bias
        return F.cross_entropy(logits.gather(1, self.candidates), self.local_labels)

    def step(self) -> float:
        """One full-batch training step (forward, backward, Adam); returns the loss."""
        self.optimizer.zero_grad(set_to_none=True)
        loss = self.loss()
        loss.backward()
        self.optimizer.step()
        return loss.item()


def _leaf(t: Tensor) -> Tensor:
    return t.contiguous().requires_grad_()
