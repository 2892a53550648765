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
