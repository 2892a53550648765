"""Backbones: the three PyG models run the protocol; sparse features change nothing."""

import pytest
import torch
from torch_geometric.datasets import Planetoid

from clbench.experiment import run_experiment
from clbench.graph import prepare_graph
from clbench.models import build_model


@pytest.mark.parametrize("model", ["sage", "gat"])
def test_other_backbones_learn(model):
    r = run_experiment(method="finetune", seed=0,
                       params={"model": model, "epochs": 30, "hidden": 32})
    assert r["config"]["model"] == model
    assert r["metrics"]["AP"] > 0.6  # chance is 0.5


def test_sparse_feature_path_matches_dense(cora_root):
    graph = prepare_graph(Planetoid(str(cora_root), "Cora")[0], "cora")
    assert graph.sparse_features  # Cora's bag of words is ~1% dense
    torch.manual_seed(0)
    model = build_model("gcn", graph.num_features, 7, hidden=32).eval()
    x = model.inputs(graph)
    assert x.layout == torch.sparse_csr
    sparse_out = model(x, graph)
    sparse_out.square().sum().backward()
    g_sparse = model.convs[0].lin.weight.grad.clone()
    model.zero_grad()
    dense_out = model(graph.x, graph)
    dense_out.square().sum().backward()
    assert torch.allclose(sparse_out, dense_out, atol=1e-5)
    assert torch.allclose(g_sparse, model.convs[0].lin.weight.grad, rtol=1e-4, atol=1e-4)


def test_dense_features_stay_dense():
    from clbench.datasets import load_graph

    graph = load_graph("synthetic")
    model = build_model("gcn", graph.num_features, 10, hidden=16)
    assert not graph.sparse_features and model.inputs(graph) is graph.x


@pytest.mark.parametrize("undirected", [True, False])
def test_gcn_aggregation_with_precomputed_transpose_matches_pyg(undirected):
    """AdjGCNConv (backward through the stored transpose) gives PyG GCNConv's outputs and
    gradients, on a symmetric and on a directed adjacency."""
    from torch_geometric.data import Data
    from torch_geometric.nn import GCNConv

    from clbench.models import AdjGCNConv

    gen = torch.Generator().manual_seed(0)
    n = 300
    data = Data(x=torch.randn(n, 12, generator=gen), y=torch.zeros(n, dtype=torch.long),
                edge_index=torch.randint(0, n, (2, 1500), generator=gen),
                train_mask=torch.ones(n, dtype=torch.bool),
                val_mask=torch.zeros(n, dtype=torch.bool),
                test_mask=torch.zeros(n, dtype=torch.bool))
    graph = prepare_graph(data, undirected=undirected)
    adj = graph.adj_gcn
    dense_t = adj.clbench_transpose.to_dense()
    assert torch.equal(dense_t, adj.to_dense().t())
    assert (adj.clbench_transpose is adj) == undirected

    ref = GCNConv(12, 8, normalize=False, add_self_loops=False)
    ours = AdjGCNConv(12, 8, normalize=False, add_self_loops=False)
    ours.load_state_dict(ref.state_dict())
    x_ref = graph.x.clone().requires_grad_()
    x_ours = graph.x.clone().requires_grad_()
    out_ref, out_ours = ref(x_ref, adj), ours(x_ours, adj)
    torch.testing.assert_close(out_ours, out_ref)
    (out_ref ** 2).sum().backward()
    (out_ours ** 2).sum().backward()
    torch.testing.assert_close(x_ours.grad, x_ref.grad)
    torch.testing.assert_close(ours.lin.weight.grad, ref.lin.weight.grad)


def test_peak_rss_is_this_process_not_the_parent():
    """A run started by a large process reports its own peak memory (VmHWM), not the
    parent's: ru_maxrss is inherited across fork and exec on Linux."""
    import subprocess
    import sys

    if not sys.platform.startswith("linux"):
        pytest.skip("VmHWM is Linux-only")
    from clbench.experiment import peak_rss_mb

    big = torch.ones(300 * 2**20 // 4 * 4)  # 1.2 GB, touched: this process's peak grows
    assert peak_rss_mb() > 1100
    child = subprocess.run(
        [sys.executable, "-c", "from clbench.experiment import peak_rss_mb; print(peak_rss_mb())"],
        capture_output=True, text=True, check=True)
    del big
    assert float(child.stdout) < 1000, child.stdout


def test_first_layer_from_precomputed_aggregation_matches_the_plain_layer():
    """For dense features GCN's layer 0 computes (A x) W^T + b from Graph.adj_gcn_x; it
    must give the plain A (x W^T) + b, in outputs and in every gradient."""
    from clbench.datasets import load_graph

    graph = load_graph("synthetic")
    assert not graph.sparse_features
    torch.manual_seed(0)
    fast = build_model("gcn", graph.num_features, 10, hidden=16, dropout=0.0)
    plain = build_model("gcn", graph.num_features, 10, hidden=16, dropout=0.0)
    plain.load_state_dict(fast.state_dict())
    plain._first_aggregation = None
    assert fast._aggregates_first(graph.x, graph)
    assert not fast._aggregates_first(graph.x.clone(), graph)  # other inputs: plain path
    out_fast, out_plain = fast(graph.x, graph), plain(graph.x, graph)
    torch.testing.assert_close(out_fast, out_plain, rtol=1e-5, atol=1e-5)
    out_fast.square().sum().backward()
    out_plain.square().sum().backward()
    grads = dict(plain.named_parameters())
    # A conv bias right before BatchNorm has an exact gradient of 0 (BatchNorm removes
    # the mean), so its float gradient is rounding noise: compare on the overall scale.
    scale = max(float(p.grad.abs().max()) for p in plain.parameters())
    for name, p in fast.named_parameters():
        torch.testing.assert_close(p.grad, grads[name].grad, rtol=1e-4, atol=2e-6 * scale)
