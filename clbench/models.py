"""Backbones: BeGin's node-classification GNNs, built from PyG layers.

Each backbone is ``num_layers`` graph convolutions, each followed by BatchNorm,
ReLU and dropout, then a linear classifier over all classes (the Task-IL
restriction to a task's classes is applied by the trainer, not here).
"""

from __future__ import annotations

from collections.abc import Callable
from operator import attrgetter

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch_geometric.nn import GATConv, GCNConv, SAGEConv
from torch_geometric.nn.dense.linear import Linear

from clbench.backbones import MODELS
from clbench.graph import Graph

ConvFactory = Callable[[int, int], nn.Module]


class _ConstSparseMatmul(torch.autograd.Function):
    """``x @ weight.T`` for a constant sparse CSR ``x``.

    torch's own backward for a sparse input densifies; here the weight gradient
    ``(x.T @ grad).T`` is one more sparse-dense product with the precomputed CSR
    transpose ``x_t`` (5x faster on Coauthor-CS, ~10x on Cora, than dense).
    """

    @staticmethod
    def forward(ctx, weight: Tensor, x: Tensor, x_t: Tensor) -> Tensor:
        ctx.x_t = x_t
        return x @ weight.t()

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None, None]:
        return (ctx.x_t @ grad).t(), None, None


class _ConstAdjMatmul(torch.autograd.Function):
    """``adj @ x`` for a constant sparse CSR ``adj`` whose CSR transpose ``adj_t`` is
    precomputed: the backward pass is ``adj_t @ grad``, where torch's own backward
    would transpose ``adj`` (a sort of every edge) at every step."""

    @staticmethod
    def forward(ctx, x: Tensor, adj: Tensor, adj_t: Tensor) -> Tensor:
        ctx.adj_t = adj_t
        return adj @ x

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None, None]:
        return ctx.adj_t @ grad, None, None


class AdjGCNConv(GCNConv):
    """PyG's ``GCNConv`` whose aggregation over a precomputed CSR adjacency carrying
    ``clbench_transpose`` (``Graph.adj_gcn``) uses :class:`_ConstAdjMatmul`; other
    inputs take PyG's own path."""

    def message_and_aggregate(self, adj_t: Tensor, x: Tensor) -> Tensor:
        transpose = getattr(adj_t, "clbench_transpose", None)
        if transpose is None or self.aggr != "add":
            return super().message_and_aggregate(adj_t, x)
        return _ConstAdjMatmul.apply(x, adj_t, transpose)


class SparseInputLinear(Linear):
    """PyG's ``Linear`` that multiplies sparse CSR inputs (from ``Graph.x_csr``) with
    sparse kernels in both directions; dense inputs take the usual path."""

    def forward(self, x: Tensor) -> Tensor:
        x_t = getattr(x, "clbench_transpose", None)
        if x_t is None:
            return super().forward(x)
        out = _ConstSparseMatmul.apply(self.weight, x, x_t)
        return out if self.bias is None else out + self.bias


def norm_rows(norm: nn.Module, h: Tensor, graph: Graph) -> Tensor:
    """``norm(h)``, except that a BatchNorm in training mode on an induced graph (a task's
    subgraph, ``graph.node_mask``) takes its statistics over the graph's own nodes only:
    the other rows (isolated nodes of other tasks) are left out and come out as zeros, so
    their features reach neither the batch statistics nor the running ones. In eval mode
    BatchNorm is row by row (running statistics) and needs no mask."""
    mask = graph.node_mask
    if mask is None or not norm.training or not isinstance(norm, nn.modules.batchnorm._BatchNorm):
        return norm(h)
    return h.new_zeros(h.shape).index_put((mask,), norm(h[mask]))


class NodeClassifier(nn.Module):
    """Stack of ``convs`` (+ ``norms``) and a ``classifier`` head.

    Parameter names follow BeGin (``convs``, ``norms``, ``classifier``) so that
    methods can tell backbone weights from the head by name.
    """

    def __init__(
        self,
        conv: ConvFactory,
        in_dim: int,
        hidden: int,
        num_classes: int,
        num_layers: int = 3,
        dropout: float = 0.0,
        batch_norm: bool = True,
        graph_input: Callable[[Graph], Tensor] | None = None,
        sparse_input: bool = False,
        first_aggregation: Callable[[Graph], Tensor] | None = None,
    ) -> None:
        super().__init__()
        dims = [in_dim] + [hidden] * num_layers
        self.convs = nn.ModuleList(conv(dims[i], dims[i + 1]) for i in range(num_layers))
        self.norms = nn.ModuleList(
            nn.BatchNorm1d(hidden) if batch_norm else nn.Identity() for _ in range(num_layers)
        )
        self.classifier = nn.Linear(hidden, num_classes)
        self.dropout = dropout
        self.n_hidden = hidden
        # attrgetter, not a lambda: the model pickles (resume points save it whole)
        self._graph_input = graph_input or attrgetter("adj_gcn")
        self.sparse_input = sparse_input
        # GCN: the first layer's aggregation of the raw features, precomputed
        # (Graph.adj_gcn_x); the layer then only applies its linear map and bias.
        self._first_aggregation = first_aggregation
        if sparse_input:  # the first layer's linear map also takes CSR features
            first = self.convs[0].lin
            fast = SparseInputLinear(first.in_channels, first.out_channels,
                                     bias=first.bias is not None)
            fast.load_state_dict(first.state_dict())
            self.convs[0].lin = fast

    def inputs(self, graph: Graph) -> Tensor:
        """The node features in the layout the first layer multiplies fastest: sparse CSR
        for sparse (bag-of-words) features when the first layer is a plain linear map."""
        if self.sparse_input and graph.sparse_features:
            return graph.x_csr
        return graph.x

    def encode(self, x: Tensor, graph: Graph) -> Tensor:
        """Node embeddings before the classifier (BeGin's ``forward_without_classifier``)."""
        adj = self._graph_input(graph)
        h = x
        for i, (conv, norm) in enumerate(zip(self.convs, self.norms, strict=True)):
            if i == 0 and self._aggregates_first(x, graph):
                h = conv.lin(self._first_aggregation(graph))
                h = h if conv.bias is None else h + conv.bias
            else:
                h = conv(h, adj)
            h = F.relu(norm_rows(norm, h, graph))
            h = F.dropout(h, self.dropout, self.training)
        return h

    def _aggregates_first(self, x: Tensor, graph: Graph) -> bool:
        """Whether layer 0 can start from the precomputed aggregation: the input is the
        graph's own dense features (sparse ones are cheaper through the sparse path)."""
        return (self._first_aggregation is not None and x is graph.x
                and not graph.sparse_features)

    def forward(self, x: Tensor, graph: Graph) -> Tensor:
        return self.classifier(self.encode(x, graph))

    def backbone_weight_names(self) -> list[str]:
        """Names of the GNN layers' weight matrices (what Piggyback and PackNet mask)."""
        return [n for n, p in self.convs.named_parameters(prefix="convs") if p.dim() == 2]


@MODELS.register("gcn")
def gcn(in_dim: int, hidden: int, num_classes: int, **kw) -> NodeClassifier:
    """GCN (Kipf & Welling) on the precomputed normalised CSR adjacency."""
    return NodeClassifier(
        lambda i, o: AdjGCNConv(i, o, normalize=False, add_self_loops=False),
        in_dim, hidden, num_classes, graph_input=attrgetter("adj_gcn"),
        sparse_input=True, first_aggregation=attrgetter("adj_gcn_x"), **kw,
    )


@MODELS.register("sage", aliases=("graphsage",))
def sage(in_dim: int, hidden: int, num_classes: int, **kw) -> NodeClassifier:
    """GraphSAGE with mean aggregation on the binary CSR adjacency."""
    return NodeClassifier(
        lambda i, o: SAGEConv(i, o, aggr="mean"),
        in_dim, hidden, num_classes, graph_input=attrgetter("adj_t"), **kw,
    )


GAT_HEADS = 4


@MODELS.register("gat")
def gat(in_dim: int, hidden: int, num_classes: int, **kw) -> NodeClassifier:
    """GAT with 4 concatenated heads of ``hidden // 4`` channels."""
    if hidden % GAT_HEADS:
        hidden += GAT_HEADS - hidden % GAT_HEADS
    return NodeClassifier(
        lambda i, o: GATConv(i, o // GAT_HEADS, heads=GAT_HEADS),
        in_dim, hidden, num_classes, graph_input=attrgetter("edge_index"), **kw,
    )


def build_model(
    name: str, in_dim: int, num_classes: int, *, hidden: int = 256, layers: int = 3,
    dropout: float = 0.0, batch_norm: bool = True,
) -> NodeClassifier:
    return MODELS.get(name)(
        in_dim, hidden, num_classes, num_layers=layers, dropout=dropout, batch_norm=batch_norm
    )


def batchnorm_modules(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def freeze_batchnorm(model: nn.Module) -> None:
    """Put BatchNorm in eval mode (running statistics frozen) and stop its affine grads."""
    for bn in batchnorm_modules(model):
        bn.eval()
        for p in bn.parameters():
            p.requires_grad_(False)
