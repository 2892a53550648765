"""TWP: lambdas 0 are fine-tuning, the two scores (loss and edge scores, GCN and GAT),
the penalty, and its backbones."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from datahelpers import method_trainer as make_trainer
from torch_geometric.utils import softmax

import clbench.methods.twp  # noqa: F401  (registration)
from clbench.errors import ClbenchError
from clbench.experiment import ExperimentSpec, build_scenario, run_experiment, seed_everything
from clbench.scenario import NCScenarioLoader
from clbench.trainer import TrainerCallback

FAST = {"epochs": 30, "hidden": 64}

pytestmark = pytest.mark.usefixtures("one_thread")


def synthetic_scenario(seed: int = 0) -> NCScenarioLoader:
    seed_everything(seed)
    return build_scenario(ExperimentSpec(method="twp", dataset="synthetic", seed=seed))


@pytest.mark.parametrize("model", ["gcn", "gat"])
def test_zero_lambdas_are_finetune_bit_for_bit(model: str) -> None:
    params = {**FAST, "model": model, "dropout": 0.5}
    twp = run_experiment(method="twp", dataset="synthetic", seed=3, num_tasks=3,
                         params={**params, "lambda_l": 0.0, "lambda_t": 0.0})
    bare = run_experiment(method="finetune", dataset="synthetic", seed=3, num_tasks=3,
                          params=params)
    assert np.array_equal(np.array(twp["R_test"]), np.array(bare["R_test"]))
    assert np.array_equal(np.array(twp["R_val"]), np.array(bare["R_val"]))
    assert twp["timing"]["task_epochs"] == bare["timing"]["task_epochs"]


@pytest.mark.parametrize("setting", ["task", "class"])
def test_loss_term_alone_is_ewc_with_the_batch_fisher_bit_for_bit(setting: str) -> None:
    """TWP without its topology term (lambda_t = 0) is EWC: its loss importance is the
    squared gradient of the whole batch's task loss, EWC's ``fisher = "batch"``, with the
    same normalisation and the same quadratic penalty. So the topology term is the whole
    difference between the two methods (the Class-IL table's notes measure what it does)."""
    common = {**FAST, "dropout": 0.5}
    twp = run_experiment(method="twp", dataset="synthetic", seed=3, num_tasks=3,
                         setting=setting,
                         params={**common, "lambda_l": 5.0, "lambda_t": 0.0})
    ewc = run_experiment(method="ewc", dataset="synthetic", seed=3, num_tasks=3,
                         setting=setting,
                         params={**common, "lamb": 5.0, "fisher": "batch",
                                 "fisher_norm": "mean", "online": False})
    assert twp["R_test"] == ewc["R_test"] and twp["R_val"] == ewc["R_val"]
    bare = run_experiment(method="finetune", dataset="synthetic", seed=3, num_tasks=3,
                          setting=setting, params=common)
    assert twp["R_test"] != bare["R_test"]  # the penalty acts


def flat(grads, params) -> torch.Tensor:
    return torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1)
                      for g, p in zip(grads, params, strict=True)])


@pytest.mark.parametrize("model", ["gcn", "gat"])
def test_scores(model: str) -> None:
    """Fl = (grad of the task loss)^2; Ft = (grad of the loss + grad of the edge-score
    norm)^2, the edge scores being GAT's first-layer attention, or BeGin's GCN
    pseudo-attention; only the first layer's weights see the topology term."""
    scenario = synthetic_scenario(0)
    trainer, _ = make_trainer("twp", scenario, 0, model=model, **FAST)
    m = trainer.model.eval()
    batch = scenario.get_task(1).train
    params = list(m.parameters())
    loss = trainer.loss_fn(batch.restrict(trainer.forward(m, batch)), batch.local_labels)
    g_loss = flat(torch.autograd.grad(loss, params), params)
    graph = batch.graph
    if model == "gat":
        _, (_, alpha) = m.convs[0](graph.x, graph.edge_index, return_attention_weights=True)
        assert alpha.shape[0] >= graph.edge_index.size(1)  # GATConv adds self-loops
    else:
        src, dst = graph.edge_index
        deg = torch.bincount(src, minlength=graph.num_nodes).float().clamp(min=1)
        x = graph.x.to_dense() if graph.x.is_sparse else graph.x
        z = (x / deg.sqrt().unsqueeze(-1)) @ m.convs[0].lin.weight.t()
        e = F.leaky_relu((z[src] * torch.tanh(z[dst])).sum(-1), 0.2)
        alpha = softmax(e, dst, num_nodes=graph.num_nodes)
        ones = torch.zeros(graph.num_nodes).index_add_(0, dst, alpha.detach())
        assert torch.allclose(ones[torch.bincount(dst, minlength=graph.num_nodes) > 0],
                              torch.tensor(1.0))
    g_top = flat(torch.autograd.grad(alpha.norm(), params, allow_unused=True), params)
    fl, ft = trainer.task_scores(m, batch)
    torch.testing.assert_close(fl, g_loss ** 2)
    want = (g_loss + g_top) ** 2  # my edge scores: another summation order than clbench's
    torch.testing.assert_close(ft, want, rtol=1e-3, atol=1e-5 * float(want.max()))
    first = sum(p.numel() for p in m.convs[0].parameters())
    names = [n for n, _ in m.named_parameters()]
    assert names[0].startswith("convs.0")
    assert (g_top[first:] == 0).all() and (g_top[:first] != 0).any()
    assert torch.equal(ft[first:], fl[first:])


class Snapshots(TrainerCallback):
    def __init__(self) -> None:
        self.flat: list[torch.Tensor] = []

    def on_task_end(self, trainer, task_id, test_row) -> None:
        self.flat.append(trainer.flat_params().detach().clone())


def test_penalty_value_storage_and_effect() -> None:
    scenario = synthetic_scenario(1)
    snaps = Snapshots()
    trainer, params = make_trainer("twp", scenario, 1, callbacks=[snaps], lambda_l=2.0,
                                   lambda_t=3.0, **{**FAST, "epochs": 8})
    out = trainer.run(params["epochs"])
    states = trainer.training_states
    T, P = scenario.num_tasks, sum(p.numel() for p in trainer.model.parameters())
    for key in ("loss_scores", "topology_scores", "params"):
        assert states[key].shape == (T, P)
    for k in range(T):
        assert torch.equal(states["params"][k], snaps.flat[k])
    assert out.extra_storage_bytes == 3 * T * P * 4
    now = trainer.flat_params().detach()
    w = 2.0 * states["loss_scores"] + 3.0 * states["topology_scores"]
    expected = (w * (now - states["params"]) ** 2).sum()
    torch.testing.assert_close(trainer.penalty(states), expected)
    # the card's defaults act on training
    twp = run_experiment(method="twp", dataset="synthetic", seed=3, num_tasks=3, params=FAST)
    bare = run_experiment(method="finetune", dataset="synthetic", seed=3, num_tasks=3,
                          params=FAST)
    assert not np.array_equal(np.array(twp["R_test"]), np.array(bare["R_test"]))


def test_invalid_backbone_and_params() -> None:
    scenario = synthetic_scenario(0)
    with pytest.raises(ClbenchError, match="runs only on --model gcn/gat, not sage"):
        make_trainer("twp", scenario, 0, model="sage", **FAST)
    with pytest.raises(ClbenchError):
        make_trainer("twp", scenario, 0, lambda_t=-1.0)
