"""``--graph task`` (CGLB's tasks without inter-task edges): a task trains on the subgraph
induced by its own nodes, so nothing of another task's nodes may reach it. Nodes keep
their global ids (the others stay as isolated nodes), so the one place they could leak
in is BatchNorm's training statistics, which must be taken over the task's nodes only."""

from __future__ import annotations

import pytest
import torch

from clbench.experiment import ExperimentSpec, build_scenario, seed_everything
from clbench.methods.pignn import ProgressiveGCN
from clbench.models import build_model


def _scenario(graph: str = "task"):
    return build_scenario(ExperimentSpec(method="finetune", dataset="synthetic", seed=0,
                                         num_tasks=3, graph=graph))


def _perturbed(graph, mask):
    """The same induced graph with every feature outside ``mask`` replaced."""
    other = graph.induced(mask)
    x = graph.x.clone()
    x[~mask] = torch.randn_like(x[~mask]) * 5 + 3
    g = type(graph)(x, graph.y, other.edge_index, graph.train_mask, graph.val_mask,
                    graph.test_mask, name=graph.name, node_mask=mask)
    return other, g


@pytest.mark.parametrize("model", ["gcn", "sage", "gat"])
def test_other_tasks_nodes_do_not_reach_a_task_in_training(model):
    """Training-mode logits of a task's nodes (BatchNorm on, dropout off) are bit-identical
    whatever the features of the nodes outside the task; so are BatchNorm's running
    statistics after the step."""
    sc = _scenario()
    task = sc.get_task(1)
    mask = task.graph.node_mask
    assert mask is not None and int(mask.sum()) < sc.graph.num_nodes
    own, changed = _perturbed(sc.graph, mask)
    seed_everything(0)
    net = build_model(model, sc.graph.num_features, sc.num_classes, hidden=16, layers=2,
                      dropout=0.0, batch_norm=True).train()
    state = {k: v.clone() for k, v in net.state_dict().items()}
    out_a = net(net.inputs(own), own)[mask]
    stats_a = [n.running_mean.clone() for n in net.norms]
    net.load_state_dict(state)
    out_b = net(net.inputs(changed), changed)[mask]
    stats_b = [n.running_mean.clone() for n in net.norms]
    assert torch.equal(out_a, out_b)
    assert all(torch.equal(a, b) for a, b in zip(stats_a, stats_b, strict=True))


def test_pignn_blocks_take_batchnorm_statistics_over_the_task_only():
    """PI-GNN's grown network (its own BatchNorm per block) keeps to the task too."""
    sc = _scenario()
    mask = sc.get_task(2).graph.node_mask
    own, changed = _perturbed(sc.graph, mask)
    seed_everything(0)
    net = ProgressiveGCN(sc.graph.num_features, sc.num_classes, [8, 8, 8], num_layers=2)
    net.grow()
    net.train()
    state = {k: v.clone() for k, v in net.state_dict().items()}
    a = net(net.inputs(own), own)[mask]
    net.load_state_dict(state)
    assert torch.equal(a, net(net.inputs(changed), changed)[mask])


def test_full_graph_batchnorm_is_unchanged():
    """On the full graph (no node mask) BatchNorm sees every node, as before."""
    sc = _scenario("full")
    assert sc.get_task(0).graph.node_mask is None
    seed_everything(0)
    net = build_model("gcn", sc.graph.num_features, sc.num_classes, hidden=16, layers=2,
                      dropout=0.0).train()
    g = sc.graph
    ref = net.classifier(torch.relu(net.norms[1](net.convs[1](
        torch.relu(net.norms[0](net.convs[0](g.x, g.adj_gcn))), g.adj_gcn))))
    seed_everything(0)
    net2 = build_model("gcn", sc.graph.num_features, sc.num_classes, hidden=16, layers=2,
                       dropout=0.0).train()
    assert torch.allclose(net2(net2.inputs(g), g), ref, atol=1e-5)
