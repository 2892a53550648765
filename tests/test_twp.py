"""TWP: lambdas 0 are fine-tuning, the two scores (loss and edge scores, GCN and GAT),
the penalty, and its backbones."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from datahelpers import method_trainer as make_trainer

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


def begin_gcn_edge_score_norm(x: torch.Tensor, edge_index: torch.Tensor, weight: torch.Tensor,
                              self_loops: bool) -> torch.Tensor:
    """The norm of BeGin's TWP GCN layer's edge scores (begin/utils/models_TWP.py), written
    densely: ``A[u, v] = 1`` for an edge ``u -> v``, with every self-loop when
    ``self_loops`` (BeGin's scenarios add them); source side ``(D_out^-1/2 X) W``;
    destination side ``tanh`` of the same where the layer narrows (``in > out``), else
    ``tanh(X W)``; softmax over each destination's incoming edges. A norm, so the edges'
    order does not matter. ``self_loops=False`` is clbench's earlier formula (the
    normalised destination side on both branches)."""
    n = x.size(0)
    adj = torch.zeros(n, n)
    adj[edge_index[0], edge_index[1]] = 1.0
    if self_loops:
        adj.fill_diagonal_(1.0)
    out_deg = adj.sum(1).clamp(min=1)
    src = (x * out_deg.pow(-0.5).unsqueeze(-1)) @ weight.t()
    narrows = weight.size(1) > weight.size(0)
    dst = torch.tanh(src if narrows or not self_loops else x @ weight.t())
    logits = F.leaky_relu(src @ dst.t(), 0.2).masked_fill(adj == 0, float("-inf"))
    alpha = torch.softmax(logits, dim=0).nan_to_num(0.0)  # over u, for each v
    return alpha.masked_select(adj > 0).norm()


@pytest.mark.parametrize(("model", "gcn_scores", "hidden"),
                         [("gat", "begin", 64), ("gcn", "begin", 64), ("gcn", "begin", 16),
                          ("gcn", "no_self_loops", 64)])
def test_scores(model: str, gcn_scores: str, hidden: int) -> None:
    """Fl = (grad of the task loss)^2; Ft = (grad of the loss + grad of the edge-score
    norm)^2, the edge scores being GAT's first-layer attention, or BeGin's GCN
    pseudo-attention on BeGin's graph (written independently above; the synthetic graph's
    32 features are widened at hidden 64, narrowed at 16: the layer's two branches);
    only the first layer's weights see the topology term."""
    scenario = synthetic_scenario(0)
    trainer, _ = make_trainer("twp", scenario, 0, model=model, gcn_scores=gcn_scores,
                              **{**FAST, "hidden": hidden})
    m = trainer.model.eval()
    batch = scenario.get_task(1).train
    params = list(m.parameters())
    loss = trainer.loss_fn(batch.restrict(trainer.forward(m, batch)), batch.local_labels)
    g_loss = flat(torch.autograd.grad(loss, params), params)
    graph = batch.graph
    if model == "gat":
        _, (_, alpha) = m.convs[0](graph.x, graph.edge_index, return_attention_weights=True)
        assert alpha.shape[0] >= graph.edge_index.size(1)  # GATConv adds self-loops
        score_norm = alpha.norm()
    else:
        x = graph.x.to_dense() if graph.x.is_sparse else graph.x
        score_norm = begin_gcn_edge_score_norm(x, graph.edge_index, m.convs[0].lin.weight,
                                               self_loops=gcn_scores == "begin")
    g_top = flat(torch.autograd.grad(score_norm, params, allow_unused=True), params)
    fl, ft = trainer.task_scores(m, batch)
    torch.testing.assert_close(fl, g_loss ** 2)
    want = (g_loss + g_top) ** 2  # my edge scores: another summation order than clbench's
    torch.testing.assert_close(ft, want, rtol=1e-3, atol=1e-5 * float(want.max()))
    first = sum(p.numel() for p in m.convs[0].parameters())
    names = [n for n, _ in m.named_parameters()]
    assert names[0].startswith("convs.0")
    assert (g_top[first:] == 0).all() and (g_top[:first] != 0).any()
    assert torch.equal(ft[first:], fl[first:])


def test_gcn_scores_variants_differ() -> None:
    """The self-loops change the topology score (the reference check above would pass
    for both variants if the option did nothing)."""
    scenario = synthetic_scenario(0)
    fts = []
    for variant in ("begin", "no_self_loops"):
        trainer, _ = make_trainer("twp", scenario, 0, gcn_scores=variant, **FAST)
        fts.append(trainer.task_scores(trainer.model.eval(), scenario.get_task(1).train)[1])
    assert not torch.allclose(fts[0], fts[1], rtol=1e-2)


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
