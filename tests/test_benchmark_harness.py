"""The performance harness compares like with like (``benchmarks/perf.py``).

On tiny graphs from the harness's own workload generator: the floor (plain
torch on precomputed tensors) and the naive PyG ``edge_index`` model compute
the same Task-IL loss and the same gradients as clbench's GCN backbone, and the
floor's Adam step moves the weights as clbench's trainer does. No timing here.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from clbench.experiment import make_optimizer_fn
from clbench.graph import Graph
from clbench.methods import METHODS
from clbench.models import build_model
from clbench.scenario import NCScenarioLoader

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from perfkit.floor import FloorGCN
from perfkit.naive import NaiveStep, naive_gcn
from perfkit.workload import (
    WorkloadSpec,
    arxiv_labels_and_years,
    homophilous_edges,
    synthetic_graph,
    time_split,
)

N, C, F, HIDDEN = 240, 8, 12, 16


def tiny_graph(sparse: bool = False) -> Graph:
    gen = torch.Generator().manual_seed(1)
    y = torch.randint(0, C, (N,), generator=gen)
    years = torch.randint(2012, 2021, (N,), generator=gen)
    graph = synthetic_graph(y, years, WorkloadSpec(num_edges=900, num_features=F, seed=3))
    if sparse:  # bag-of-words-like features: the first layer multiplies them as CSR
        graph.x = (torch.rand(N, F, generator=gen) < 0.08).float()
        assert graph.sparse_features
    return graph


def clbench_setup(graph: Graph, task: int = 1):
    scenario = NCScenarioLoader(graph, 4, 2, seed=0)
    torch.manual_seed(0)
    model = build_model("gcn", graph.num_features, graph.num_classes, hidden=HIDDEN)
    params = {"optimizer": "adam", "lr": 1e-2, "weight_decay": 0.0}
    trainer = METHODS.get("finetune")(model, scenario, make_optimizer_fn(params), None, "cpu")
    return trainer, model, scenario.get_task(task).train


def floor_for(model, batch, graph: Graph, **kw) -> FloorGCN:
    x = model.inputs(graph)
    floor = FloorGCN(x, graph.adj_gcn, batch.nodes, batch.candidates, batch.local_labels,
                     [graph.num_features] + [HIDDEN] * 3, graph.num_classes, lr=1e-2, **kw)
    floor.load_from(model)
    return floor


def grads_of(loss: torch.Tensor, named: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return dict(zip(named, torch.autograd.grad(loss, list(named.values())), strict=True))


def assert_close_dicts(a: dict, b: dict, **tol) -> None:
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], **tol, msg=lambda m, k=k: f"{k}: {m}")


@pytest.mark.parametrize(("sparse", "propagate_first"),
                         [(False, False), (True, False), (False, True)],
                         ids=["dense-features", "sparse-features", "dense-propagate-first"])
def test_floor_matches_clbench_loss_and_gradients(sparse: bool, propagate_first: bool) -> None:
    graph = tiny_graph(sparse)
    trainer, model, batch = clbench_setup(graph)
    model.train()
    loss = trainer.inference(model, batch, None)["loss"]
    theirs = grads_of(loss, dict(model.named_parameters()))
    floor = floor_for(model, batch, graph, propagate_first=propagate_first)
    floor_loss = floor.loss()
    ours = grads_of(floor_loss, floor.named_parameters())
    torch.testing.assert_close(floor_loss, loss, rtol=1e-5, atol=1e-6)
    assert_close_dicts(ours, theirs, rtol=1e-4, atol=1e-5)


def test_floor_step_matches_trainer_step() -> None:
    graph = tiny_graph()
    trainer, model, batch = clbench_setup(graph)
    floor = floor_for(model, batch, graph)
    states = trainer.initTrainingStates(trainer.scenario, model, trainer.optimizer)
    model.train()
    for _ in range(3):
        stats = trainer.processTrainIteration(model, trainer.optimizer, batch, states)
        floor_loss = floor.step()
        assert floor_loss == pytest.approx(stats["loss"], rel=1e-5, abs=1e-6)
    ours = {k: v.detach() for k, v in floor.named_parameters().items()}
    theirs = {k: v.detach() for k, v in model.named_parameters()}
    # A GCN layer's bias is followed by training-mode BatchNorm, which cancels it: its
    # gradient is rounding noise, which Adam scales up to steps of about lr in either
    # direction. Those biases can only be compared up to Adam's step size: at most
    # lr * (1 - beta1) / sqrt(1 - beta2) = 3.16 lr per step (Kingma & Ba, section 2.1),
    # in either direction on either side, over 3 steps.
    cancelled = [k for k in theirs if k.startswith("convs.") and k.endswith(".bias")]
    bound = 2 * 3 * 1e-2 * (1 - 0.9) / (1 - 0.999) ** 0.5
    for k in cancelled:
        assert (ours.pop(k) - theirs.pop(k)).abs().max() <= bound + 1e-6
    assert_close_dicts(ours, theirs, rtol=1e-4, atol=1e-5)
    for k, norm in enumerate(model.norms):
        # running means include those biases (momentum 0.1 over 3 steps)
        torch.testing.assert_close(floor.running[k][0], norm.running_mean, rtol=0, atol=1e-2)
        torch.testing.assert_close(floor.running[k][1], norm.running_var, rtol=1e-4, atol=1e-5)


def test_naive_model_matches_clbench() -> None:
    graph = tiny_graph()
    trainer, model, batch = clbench_setup(graph)
    model.train()
    loss = trainer.inference(model, batch, None)["loss"]
    theirs = grads_of(loss, dict(model.named_parameters()))
    naive = naive_gcn(graph.num_features, HIDDEN, graph.num_classes)
    naive.load_state_dict(model.state_dict())
    naive.train()
    naive_loss = NaiveStep(naive, batch).loss()
    ours = grads_of(naive_loss, dict(naive.named_parameters()))
    torch.testing.assert_close(naive_loss, loss, rtol=1e-5, atol=1e-6)
    assert_close_dicts(ours, theirs, rtol=1e-4, atol=1e-5)


def test_workload_generator_is_deterministic_and_homophilous() -> None:
    gen_a, gen_b = (torch.Generator().manual_seed(7) for _ in range(2))
    y = torch.arange(2000) % 5
    a = homophilous_edges(y, 4000, 0.8, 1.5, gen_a)
    b = homophilous_edges(y, 4000, 0.8, 1.5, gen_b)
    assert torch.equal(a, b)
    assert a.shape == (2, 4000) and int(a.min()) >= 0 and int(a.max()) < 2000
    same = (y[a[0]] == y[a[1]]).float().mean().item()
    assert 0.8 < same < 0.9  # homophily 0.8, plus 1/5 of the random targets
    graph = tiny_graph()
    assert torch.equal(graph.edge_index, tiny_graph().edge_index)
    assert torch.equal(graph.x, tiny_graph().x)
    ei = graph.edge_index
    assert (ei[0] != ei[1]).all()  # prepared like a real dataset: no self-loops, undirected
    assert torch.equal(torch.sort(ei[0] * N + ei[1]).values, torch.sort(ei[1] * N + ei[0]).values)


def test_arxiv_labels_years_and_time_split(shared_data: Path) -> None:
    y, years = arxiv_labels_and_years(shared_data)
    assert y.numel() == years.numel() == 169_343
    assert int(y.min()) == 0 and int(y.max()) == 39
    train, val, test = time_split(years)
    assert int(train.sum()) == 90_941 and int(val.sum()) == 29_799 and int(test.sum()) == 48_603
    assert not (train & val).any() and not (val & test).any()
