"""The in-memory graph every method trains on.

A :class:`Graph` wraps a PyG ``Data`` object after the protocol's preprocessing:
self-loops removed, duplicate edges merged, and the adjacency matrices the
backbones need built once, as ``torch.sparse_csr`` tensors (PyG's message-passing
layers accept them directly and aggregate with one sparse-dense matmul, far
cheaper than scattering over ``edge_index``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import torch
from torch import Tensor
from torch_geometric.data import Data
from torch_geometric.nn.conv.gcn_conv import gcn_norm
from torch_geometric.utils import (
    coalesce,
    is_undirected,
    k_hop_subgraph,
    remove_self_loops,
    subgraph,
    to_torch_csr_tensor,
    to_undirected,
)

from clbench.errors import DataError


@dataclass(eq=False)
class Graph:
    """A node-classification graph, preprocessed for the Task-IL protocol.

    ``edge_index`` holds directed pairs ``(source, target)`` without self-loops.
    Adjacency matrices are *transposed* in PyG's convention (row ``i`` lists the
    sources that send to ``i``), so ``adj_t @ x`` aggregates incoming messages.
    """

    x: Tensor
    y: Tensor
    edge_index: Tensor
    train_mask: Tensor
    val_mask: Tensor
    test_mask: Tensor
    name: str = "graph"
    meta: dict = field(default_factory=dict)
    #: The nodes of an :meth:`induced` graph (None: every node). The others stay in the
    #: graph as isolated nodes, so that node ids stay global; BatchNorm's training
    #: statistics are taken over these nodes only (:func:`clbench.models.norm_rows`).
    node_mask: Tensor | None = None
    #: The global id of each row of a :meth:`subgraph` (sorted; None: row ``i`` is node
    #: ``i``). Tensors of a subgraph hold its own nodes only, indexed by row.
    node_ids: Tensor | None = None

    @property
    def num_nodes(self) -> int:
        return int(self.y.numel())

    @property
    def num_edges(self) -> int:
        return int(self.edge_index.size(1))

    @property
    def num_features(self) -> int:
        return int(self.x.size(1))

    @cached_property
    def num_classes(self) -> int:
        return int(self.y.max().item()) + 1 if self.y.numel() else 0

    #: Feature matrices at most this dense are multiplied as sparse CSR in the first layer.
    SPARSE_FEATURE_DENSITY = 0.1

    @cached_property
    def sparse_features(self) -> bool:
        """True for bag-of-words-like features (e.g. Cora: 1.3% non-zero)."""
        n = self.x.numel()
        return n > 0 and int(torch.count_nonzero(self.x)) <= self.SPARSE_FEATURE_DENSITY * n

    @cached_property
    def x_csr(self) -> Tensor:
        """``x`` as a ``torch.sparse_csr`` matrix (same values).

        It carries its transpose (also CSR) as the attribute ``clbench_transpose``,
        so that a first layer can compute its weight gradient as a sparse product
        (see :class:`clbench.models.SparseInputLinear`).
        """
        csr = self.x.to_sparse_csr()
        csr.clbench_transpose = self.x.t().to_sparse_csr()
        return csr

    @cached_property
    def adj_gcn(self) -> Tensor:
        """GCN's normalised adjacency D^-1/2 (A + I) D^-1/2, transposed, as CSR.

        It carries its own transpose as the attribute ``clbench_transpose`` (the
        matrix itself when the graph is undirected: the symmetric normalisation of a
        symmetric matrix is symmetric), so that the backward pass of the aggregation
        is one sparse product instead of a transpose of the CSR matrix per layer and
        step (see :class:`clbench.models.AdjGCNConv`).
        """
        size = (self.num_nodes, self.num_nodes)
        ei, w = gcn_norm(self.edge_index, None, self.num_nodes, add_self_loops=True)
        csr = to_torch_csr_tensor(ei.flip(0), w, size=size)
        if is_undirected(self.edge_index, num_nodes=self.num_nodes):
            csr.clbench_transpose = csr
        else:
            csr.clbench_transpose = to_torch_csr_tensor(ei, w, size=size)
        return csr

    @cached_property
    def adj_gcn_x(self) -> Tensor:
        """``adj_gcn @ x``, dense: GCN's first aggregation, which never changes.

        ``conv1(x) = A (x W^T) + b = (A x) W^T + b``, so a GCN can start from this and
        skip two of its six sparse products per training step (forward and backward
        of the first layer). Used only for dense features (see ``NodeClassifier``).
        """
        return self.adj_gcn @ self.x

    @cached_property
    def adj_t(self) -> Tensor:
        """Binary adjacency (no self-loops), transposed, as CSR (for mean aggregation)."""
        return to_torch_csr_tensor(self.edge_index.flip(0), size=(self.num_nodes, self.num_nodes))

    def to(self, device: torch.device | str) -> Graph:
        """The graph on ``device``: itself (with its cached adjacencies) when every
        tensor is there already, as ``Tensor.to`` does; else a moved copy."""
        keys = ("x", "y", "edge_index", "train_mask", "val_mask", "test_mask")
        optional = ("node_mask", "node_ids")
        tensors = [getattr(self, k) for k in keys + optional]
        if all(t is None or t.device == torch.device(device) for t in tensors):
            return self
        moved = Graph(
            **{k: getattr(self, k).to(device) for k in keys},
            name=self.name,
            meta=self.meta,
            **{k: None if getattr(self, k) is None else getattr(self, k).to(device)
               for k in optional},
        )
        return moved

    def rows_of(self, nodes: Tensor) -> Tensor:
        """The rows of global node ids ``nodes`` in this graph's tensors (``nodes``
        itself unless this is a :meth:`subgraph`); ValueError for a node not in it."""
        if self.node_ids is None:
            return nodes
        rows = torch.searchsorted(self.node_ids, nodes).clamp_max(self.num_nodes - 1)
        if nodes.numel() and not torch.equal(self.node_ids[rows], nodes):
            raise ValueError("nodes outside the subgraph")
        return rows

    @property
    def global_edge_index(self) -> Tensor:
        """``edge_index`` in global node ids."""
        return self.edge_index if self.node_ids is None else self.node_ids[self.edge_index]

    def subgraph(self, node_mask: Tensor) -> Graph:
        """The subgraph induced by ``node_mask``, holding those nodes only: features,
        labels, masks and adjacency matrices have one row per node of the mask, in
        global id order (``node_ids`` maps rows back to global ids), and only edges
        with both ends in the mask. A forward pass over it costs what its own nodes
        and edges cost, and nothing of the other nodes can reach it (CGLB's tasks
        without inter-task edges). Sparse or dense, the features keep the parent's
        layout (the same first-layer path)."""
        return self._compact(node_mask)

    def _compact(self, node_mask: Tensor) -> Graph:
        node_mask = node_mask.bool()
        ids = node_mask.nonzero().view(-1)
        ei, _ = subgraph(node_mask, self.edge_index, relabel_nodes=True,
                         num_nodes=self.num_nodes)
        out = Graph(
            self.x[ids], self.y[ids], ei, self.train_mask[ids], self.val_mask[ids],
            self.test_mask[ids], name=self.name, meta=self.meta,
            node_ids=ids if self.node_ids is None else self.node_ids[ids],
        )
        out.__dict__["sparse_features"] = self.sparse_features
        return out

    def neighbourhood(self, rows: Tensor, hops: int) -> tuple[Graph, Tensor]:
        """The part of this graph that a ``hops``-layer message-passing model reads to
        compute its outputs at ``rows``: the :meth:`subgraph` of the nodes within
        ``hops`` edges of them, and the rows of ``rows`` in it.

        Unlike a plain subgraph, its GCN adjacency is this graph's own, restricted to
        those nodes, so GCN's normalisation keeps the full degrees; SAGE's mean and
        GAT's softmax see every neighbour of the nodes within ``hops - 1`` edges. So
        layer ``k`` (from 1) computes this graph's values at the nodes within
        ``hops - k`` edges of ``rows``, and a model whose other layers act row by row
        (BatchNorm in eval mode, no dropout) gives ``rows`` the same outputs as the
        whole graph does.
        """
        subset, _, _, _ = k_hop_subgraph(rows, hops, self.edge_index, num_nodes=self.num_nodes)
        mask = torch.zeros(self.num_nodes, dtype=torch.bool, device=rows.device)
        mask[subset] = True
        out = self._compact(mask)
        out.__dict__["adj_gcn"] = _restrict_csr(self.adj_gcn, subset)
        return out, torch.searchsorted(subset, rows)

    def induced(self, node_mask: Tensor) -> Graph:
        """The same node set, keeping only edges whose two ends are in ``node_mask``
        (for comparing outputs on two graphs node by node, as ContinualGNN's detection
        does; a task's own graph is a :meth:`subgraph`).

        Node indices stay global, so a task's nodes keep their ids; nodes outside
        the mask become isolated (their own features only) and are left out of
        BatchNorm's training statistics (``node_mask``), so nothing of them reaches the
        mask's nodes. The features are the same tensor, so their sparse form is built
        once, here, and shared.
        """
        ei, _ = subgraph(node_mask, self.edge_index, num_nodes=self.num_nodes)
        out = Graph(
            self.x, self.y, ei, self.train_mask, self.val_mask, self.test_mask,
            name=self.name, meta=self.meta, node_mask=node_mask.bool(),
        )
        out.__dict__["sparse_features"] = self.sparse_features  # functions of x alone
        if self.sparse_features:
            out.__dict__["x_csr"] = self.x_csr
        return out


def _restrict_csr(csr: Tensor, keep: Tensor) -> Tensor:
    """The rows and columns ``keep`` (sorted) of a square CSR matrix carrying its
    transpose as ``clbench_transpose``, with the same values, as CSR carrying its own."""

    def restrict(m: Tensor) -> Tensor:
        coo = m.to_sparse_coo().index_select(0, keep).index_select(1, keep).coalesce()
        return coo.to_sparse_csr()

    out = restrict(csr)
    transpose = csr.clbench_transpose
    out.clbench_transpose = out if transpose is csr else restrict(transpose)
    return out


def _check_field(data: Data, key: str, source: str) -> Tensor:
    value = getattr(data, key, None)
    if value is None:
        raise DataError(f"{source}: missing field {key!r}")
    if not isinstance(value, Tensor):
        raise DataError(f"{source}: field {key!r} must be a tensor, got {type(value).__name__}")
    return value


def prepare_graph(data: Data, name: str = "graph", *, undirected: bool = True) -> Graph:
    """Validate a PyG ``Data`` object and apply the protocol's preprocessing.

    Requires ``x`` [N, F], ``edge_index`` [2, E], ``y`` [N] (integer classes,
    ``-1`` for unlabelled) and boolean ``train_mask``/``val_mask``/``test_mask``.
    """
    x = _check_field(data, "x", name)
    y = _check_field(data, "y", name)
    edge_index = _check_field(data, "edge_index", name)
    if x.dim() != 2:
        raise DataError(f"{name}: x must be 2-D [num_nodes, num_features], got {tuple(x.shape)}")
    y = y.view(-1) if y.dim() == 2 and y.size(1) == 1 else y
    if y.dim() != 1 or y.numel() != x.size(0):
        raise DataError(f"{name}: y must have shape [{x.size(0)}], got {tuple(y.shape)}")
    if y.is_floating_point():
        raise DataError(f"{name}: y must hold integer class ids, got {y.dtype}")
    if edge_index.dim() != 2 or edge_index.size(0) != 2:
        raise DataError(f"{name}: edge_index must have shape [2, E], got {tuple(edge_index.shape)}")
    n = x.size(0)
    edge_index = edge_index.long()
    if edge_index.numel() and (edge_index.min() < 0 or edge_index.max() >= n):
        raise DataError(f"{name}: edge_index refers to nodes outside 0..{n - 1}")
    masks = {}
    for key in ("train_mask", "val_mask", "test_mask"):
        m = _check_field(data, key, name)
        if m.dtype != torch.bool or m.shape != (n,):
            raise DataError(f"{name}: {key} must be a bool tensor of shape [{n}]")
        masks[key] = m
    edge_index, _ = remove_self_loops(edge_index)
    if undirected and not is_undirected(edge_index, num_nodes=n):
        edge_index = to_undirected(edge_index, num_nodes=n)
    else:
        edge_index = coalesce(edge_index, num_nodes=n)
    x = x.to_dense() if x.is_sparse else x
    return Graph(x.float(), y.long(), edge_index, name=name, **masks)
