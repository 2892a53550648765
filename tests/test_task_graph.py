"""``--graph task`` (CGLB's tasks without inter-task edges): a task trains and is evaluated
on the subgraph induced by its own nodes. The scenario gives each task a compact subgraph
(``Graph.subgraph``: its own nodes' rows only), so nothing of another task's nodes can
reach it and a forward pass costs what the task's nodes cost. ``Graph.induced`` keeps the
global node set with the other nodes isolated (ContinualGNN compares outputs on two such
graphs); a BatchNorm in training mode on it takes its statistics over the mask's nodes
only. The two forms compute the same outputs for a task's nodes."""

from __future__ import annotations

import pytest
import torch
from datahelpers import method_trainer, record_replays

from clbench.experiment import ExperimentSpec, build_scenario, seed_everything
from clbench.graph import Graph
from clbench.methods.pignn import ProgressiveGCN
from clbench.models import build_model


def _scenario(graph: str = "task", setting: str = "task"):
    return build_scenario(ExperimentSpec(method="finetune", dataset="synthetic", seed=0,
                                         num_tasks=3, graph=graph, setting=setting))


def _perturbed(graph, mask):
    """The same graph with every feature outside ``mask`` replaced."""
    x = graph.x.clone()
    x[~mask] = torch.randn_like(x[~mask]) * 5 + 3
    return Graph(x, graph.y, graph.edge_index, graph.train_mask, graph.val_mask,
                 graph.test_mask, name=graph.name)


def test_a_task_graph_holds_its_own_nodes_and_edges_only():
    sc = _scenario()
    for t in range(sc.num_tasks):
        g = sc.get_task(t).graph
        own = (sc.node_task == t).nonzero().view(-1)
        assert torch.equal(g.node_ids, own) and g.num_nodes == own.numel() < sc.graph.num_nodes
        assert torch.equal(g.x, sc.graph.x[own]) and torch.equal(g.y, sc.graph.y[own])
        src, dst = g.global_edge_index
        assert g.num_edges > 0
        assert (sc.node_task[src] == t).all() and (sc.node_task[dst] == t).all()
        # every edge of the parent graph inside the task is kept
        psrc, pdst = sc.graph.edge_index
        inside = (sc.node_task[psrc] == t) & (sc.node_task[pdst] == t)
        assert int(inside.sum()) == g.num_edges
        batch = sc.get_task(t).train
        assert torch.equal(g.node_ids[batch.rows], batch.nodes)


def test_rows_of_rejects_nodes_outside_the_subgraph():
    sc = _scenario()
    g = sc.get_task(0).graph
    with pytest.raises(ValueError, match="outside"):
        g.rows_of((sc.node_task == 1).nonzero().view(-1)[:3])


@pytest.mark.parametrize("model", ["gcn", "sage", "gat"])
def test_subgraph_and_isolated_form_agree_and_other_tasks_do_not_reach(model):
    """Training-mode logits of a task's nodes (BatchNorm on, dropout off) and BatchNorm's
    running statistics after the step: the compact subgraph gives what the global graph
    with the other nodes isolated gives, and changing the other nodes' features changes
    neither (bit for bit)."""
    sc = _scenario()
    mask = sc.node_task == 1
    changed = _perturbed(sc.graph, mask)
    seed_everything(0)
    net = build_model(model, sc.graph.num_features, sc.num_classes, hidden=16, layers=2,
                      dropout=0.0, batch_norm=True).train()
    state = {k: v.clone() for k, v in net.state_dict().items()}
    outs, stats = [], []
    for g in (sc.graph.subgraph(mask), changed.subgraph(mask), sc.graph.induced(mask)):
        net.load_state_dict(state)
        out = net(net.inputs(g), g)
        outs.append(out if g.node_ids is not None else out[mask])
        stats.append([n.running_mean.clone() for n in net.norms])
    assert torch.equal(outs[0], outs[1])
    assert all(torch.equal(a, b) for a, b in zip(stats[0], stats[1], strict=True))
    assert torch.allclose(outs[0], outs[2], atol=1e-5)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(stats[0], stats[2], strict=True))


def test_pignn_blocks_on_a_task_subgraph():
    """PI-GNN's grown network (its own BatchNorm per block) gives the same outputs on the
    compact subgraph as on the isolated form."""
    sc = _scenario()
    mask = sc.node_task == 2
    seed_everything(0)
    net = ProgressiveGCN(sc.graph.num_features, sc.num_classes, [8, 8, 8], num_layers=2)
    net.grow()
    net.train()
    state = {k: v.clone() for k, v in net.state_dict().items()}
    sub, iso = sc.graph.subgraph(mask), sc.graph.induced(mask)
    a = net(net.inputs(sub), sub)
    net.load_state_dict(state)
    assert torch.allclose(a, net(net.inputs(iso), iso)[mask], atol=1e-5)


def test_full_graph_batchnorm_is_unchanged():
    """On the full graph (no node mask) BatchNorm sees every node, as before."""
    sc = _scenario("full")
    assert sc.get_task(0).graph.node_mask is None and sc.get_task(0).graph.node_ids is None
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


@pytest.mark.parametrize("method", ["finetune", "joint", "ergnn", "gem", "lwf", "packnet",
                                    "cgnn", "cat"])
@pytest.mark.parametrize("setting", ["task", "class"])
def test_runs_on_compact_subgraphs_match_the_isolated_form(method, setting, monkeypatch):
    """A whole run (3 tasks, a few epochs) on compact task subgraphs ends with the weights
    and accuracy matrix of the same run on global graphs with the other tasks' nodes
    isolated (the form before compact subgraphs), up to float rounding. Two methods
    amplify rounding into whole Adam steps: PackNet's pruning ranks weights by magnitude
    (two near-equal weights can swap fates) and ContinualGNN's Fisher-weighted penalty
    (seen at 1 torch thread: a few weights 2-3 steps apart, R identical). Their weights
    are not compared; their accuracy matrices are, and ContinualGNN's replayed nodes
    (what its detection and memory chose, task by task) must be the same but for a
    near-tie at the detection's cut."""
    if setting == "class" and method == "packnet":
        pytest.skip("PackNet is Task-IL only")
    results = []
    for form in ("subgraph", "induced"):
        if form == "induced":
            monkeypatch.setattr(Graph, "subgraph", Graph.induced)
        sc = _scenario(setting=setting)
        fast = {"condense_steps": 20} if method == "cat" else {}
        trainer, params = method_trainer(method, sc, 0, epochs=4, hidden=16, **fast)
        replays = record_replays(trainer) if method == "cgnn" else []
        out = trainer.run(params["epochs"])
        results.append((out, {k: v.clone() for k, v in trainer.model.state_dict().items()},
                        _replayed(replays)))
    (a, wa, ra), (b, wb, rb) = results
    # the detection keeps the top new_nodes_size nodes by influence: a near-tie at that
    # cut may swap one node under rounding (seen in one CI run: 1 of 151 nodes)
    assert [t for t, _ in ra] == [t for t, _ in rb]
    for (_, x), (_, y) in zip(ra, rb, strict=True):
        assert len(set(x) ^ set(y)) <= 2, sorted(set(x) ^ set(y))
    assert wa.keys() == wb.keys()
    # A convolution's bias before BatchNorm has a zero gradient up to rounding, which
    # Adam scales to full steps: it differs between any two float orders, and BatchNorm
    # cancels it (its running mean follows it by the same amount). Every other tensor
    # must agree, to less than one Adam step (lr 1e-3; relative 1e-3 for statistics
    # such as BatchNorm's running variances, of order 1-10).
    cancelled = {f"{kind}.{i}.{name}" for i in range(len(trainer.model.convs))
                 for kind, name in (("convs", "bias"), ("norms", "running_mean"))}
    for k in (wa.keys() - cancelled) if method not in ("packnet", "cgnn") else ():
        assert torch.allclose(wa[k].float(), wb[k].float(), rtol=1e-3, atol=5e-4), k
    assert abs(a.R_test - b.R_test).max() <= 0.02


def _replayed(calls) -> list[tuple[int, list[int]]]:
    """Per task being learned, the distinct replayed nodes (global ids, sorted)."""
    seen: dict[int, set[int]] = {}
    for task, batches in calls:
        seen.setdefault(task, set()).update(n for b in batches for n in b.nodes.tolist())
    return sorted((t, sorted(nodes)) for t, nodes in seen.items())
