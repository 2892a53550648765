"""Piggyback: what defines it (zero forgetting, frozen backbone, 1-bit masks, seed API)."""

import numpy as np
import pytest
import torch
from datahelpers import FAST

from clbench.experiment import make_optimizer_fn, run_experiment
from clbench.methods.piggyback import NCTaskILPiggybackTrainer, pack_mask, unpack_mask
from clbench.models import build_model
from clbench.scenario import NCScenarioLoader
from clbench.trainer import plateau_scheduler


def make_trainer(graph, tasks=4, per_task=2, seed=0, **params):
    sc = NCScenarioLoader(graph, tasks, per_task, seed=seed)
    torch.manual_seed(seed)
    model = build_model("gcn", graph.num_features, sc.num_classes, hidden=32)
    opt = make_optimizer_fn({"lr": 0.01, "weight_decay": params.pop("weight_decay", 0.0),
                             "optimizer": "adam"})
    return NCTaskILPiggybackTrainer(model, sc, opt, None, "cpu",
                                    scheduler_fn=plateau_scheduler(5), **params)


class Snapshots:
    """Records, after each task, everything Piggyback promises never to change again."""

    def __init__(self, trainer):
        self.after_task = []
        orig = trainer.processAfterTraining

        def hooked(task_id, *a):
            orig(task_id, *a)
            m = trainer.model
            sc = trainer.scenario
            rows = sc.task_classes[: task_id + 1].reshape(-1)
            self.after_task.append({
                "backbone": {k: v.clone() for k, v in m.convs.state_dict().items()},
                "norms": {k: v.clone() for k, v in m.norms.state_dict().items()},
                "head_w": m.classifier.weight[rows].clone(),
                "head_b": m.classifier.bias[rows].clone(),
                "rows": rows,
                "masks": [{n: tuple(p.copy() for p in planes) for n, planes in t.items()}
                          for t in trainer.training_states["done_masks"]],
            })

        trainer.processAfterTraining = hooked


@pytest.mark.parametrize("backbone_init", ["random", "first_task",
                                           pytest.param("dgi", marks=pytest.mark.slow)])
def test_zero_forgetting_and_bit_identical_frozen_state(synthetic, backbone_init):
    trainer = make_trainer(synthetic, threshold=0.1, backbone_init=backbone_init,
                           dgi_epochs=20, weight_decay=5e-4)
    snaps = Snapshots(trainer)
    init = {k: v.clone() for k, v in trainer.model.convs.state_dict().items()}
    out = trainer.run(epoch_per_task=25)
    R = out.R_test
    T = R.shape[0]
    for j in range(T):
        assert R[T - 1, j] == R[j, j]  # exactly: the task is evaluated as it was learned
        assert out.R_val[T - 1, j] == out.R_val[j, j]
    from clbench.metrics import average_forgetting
    assert average_forgetting(R) == 0.0
    final = snaps.after_task[-1]
    m = trainer.model
    for t, snap in enumerate(snaps.after_task):
        for k, v in snap["backbone"].items():
            assert torch.equal(v, m.convs.state_dict()[k]), (t, k)
        for k, v in snap["norms"].items():
            assert torch.equal(v, m.norms.state_dict()[k]), (t, k)
        assert torch.equal(snap["head_w"], m.classifier.weight[snap["rows"]])
        assert torch.equal(snap["head_b"], m.classifier.bias[snap["rows"]])
        for i, masks in enumerate(snap["masks"]):
            for n, planes in masks.items():
                for a, b in zip(planes, final["masks"][i][n], strict=True):
                    assert np.array_equal(a, b)
    if backbone_init == "random":  # the backbone never moved from its initialisation
        for k, v in init.items():
            assert torch.equal(v, m.convs.state_dict()[k])
    assert R[-1].mean() > 0.6


@pytest.mark.parametrize(("mask_type", "bits"), [("binary", 1), ("ternary", 2)])
def test_mask_storage_bits_per_weight(synthetic, mask_type, bits):
    trainer = make_trainer(synthetic, mask_type=mask_type, backbone_init="random")
    out = trainer.run(epoch_per_task=3)
    weights = sum(p.numel() for n, p in trainer.model.named_parameters()
                  if n in trainer.masked_names)
    T = trainer.num_tasks
    assert out.extra_storage_bytes <= T * (bits * weights / 8 + 8 * len(trainer.masked_names))
    assert out.extra_storage_bytes >= T * bits * weights / 8


def test_pack_roundtrip():
    m = torch.tensor([[1.0, 0.0, -1.0], [0.0, 1.0, 1.0]])
    assert torch.equal(unpack_mask(pack_mask(m, True), m.shape, "cpu"), m)
    b = (m > 0).float()
    packed = pack_mask(b, False)
    assert len(packed) == 1 and packed[0].dtype == np.uint8
    assert torch.equal(unpack_mask(packed, b.shape, "cpu"), b)


def test_events_do_their_documented_jobs(synthetic):
    # a random frozen backbone: task 0 is learned through masks too
    trainer = make_trainer(synthetic, threshold=0.1, mask_type="ternary",
                           backbone_init="random")
    model, opt = trainer.model, trainer.optimizer
    states = trainer.initTrainingStates(trainer.scenario, model, opt)
    trainer.training_states = states
    trainer.curr_task = 0
    data = trainer.scenario.get_task(0)
    trainer.processBeforeTraining(0, data, model, opt, states)
    real = states["real_masks"]
    assert set(real) == set(model.backbone_weight_names()) and real
    assert all(torch.all(r == 0.2) for r in real.values())  # 2 x threshold
    assert states["mask_optimizer"] is not None
    # beforeInference: ternary masks applied to the (unchanged) weights
    with torch.no_grad():
        name = next(iter(real))
        real[name][0, :3] = torch.tensor([0.5, 0.0, -0.5])
    before = {k: v.clone() for k, v in model.convs.state_dict().items()}
    model.train()
    masked = trainer.beforeInference(model, opt, data.train, states)
    w = dict(model.named_parameters())[name]
    assert torch.equal(masked[name][0, :3], w[0, :3] * torch.tensor([1.0, 0.0, -1.0]))
    # inference: Task-IL restricted logits and a loss, through the masked weights
    assert trainer.forward_weights(model, data.train, states) is masked
    res = trainer.inference(model, data.train, states)
    assert res["preds"].shape == (len(data.train), 2)
    res["_before_inference"] = masked
    # afterInference: straight-through gradient = grad(masked weight) * weight
    trainer.afterInference(res, model, opt, data.train, states)
    assert torch.equal(real[name].grad, masked[name].grad * w)
    assert trainer.forward_weights(model, data.train, states) is None  # that step's only
    for k, v in model.convs.state_dict().items():
        assert torch.equal(v, before[k])  # the backbone is left exactly as it was
    # processAfterEachIteration: the two optimisers' lrs are kept equal; the real masks
    # are part of the best-validation checkpoint (in the loop's task state)
    opt.param_groups[0]["lr"] = 0.0037
    trainer.processAfterEachIteration(model, opt, states, {
        "val_stats": {"loss": 1.0}, "train_stats": {}, "val_metric": 0.5})
    assert states["mask_optimizer"].param_groups[0]["lr"] == opt.param_groups[0]["lr"]
    best = trainer.task_state.best_weights
    assert trainer.task_state.best_val_loss == 1.0 and torch.equal(best["masks"][name],
                                                                    real[name])
    # processAfterTraining: the mask is stored packed (uint8), 2 bit-planes for ternary
    trainer.processAfterTraining(0, data, model, opt, states)
    stored = states["done_masks"][0][name]
    assert len(stored) == 2 and all(p.dtype == np.uint8 for p in stored)


def test_evaluation_costs_one_forward_per_task_and_no_copies(synthetic, monkeypatch):
    import copy

    trainer = make_trainer(synthetic, tasks=4)
    calls = []
    orig = trainer.forward
    monkeypatch.setattr(trainer, "forward", lambda *a, **k: calls.append(1) or orig(*a, **k))
    monkeypatch.setattr(copy, "deepcopy", lambda *a, **k: pytest.fail("model copied"))
    counts = []
    orig_eval = trainer._evaluate

    def counting(splits, fn=None, **kw):  # kw: learned (the degenerate check's matrix)
        calls.clear()
        r = orig_eval(splits, fn, **kw)
        counts.append((trainer.curr_task, len(calls)))
        return r

    monkeypatch.setattr(trainer, "_evaluate", counting)
    trainer.run(epoch_per_task=2)
    after_tasks = [c for c in counts if c[0] >= 0]
    assert after_tasks and all(n <= t + 1 for t, n in after_tasks)
    assert (3, 4) in after_tasks


@pytest.mark.slow
def test_default_cli_run_is_piggyback_with_zero_forgetting():
    r = run_experiment(seed=0, params=FAST)
    assert r["method"] == "piggyback"
    assert r["metrics"]["AF"] == 0.0
    assert r["metrics"]["AP"] > 0.7


@pytest.mark.slow
def test_piggyback_on_real_cora(cora_root):
    from torch_geometric.datasets import Planetoid

    from clbench.graph import prepare_graph

    graph = prepare_graph(Planetoid(str(cora_root), "Cora")[0], "cora")
    assert graph.num_nodes == 2708
    trainer = make_trainer(graph, tasks=3, per_task=2, threshold=0.01)
    snaps = Snapshots(trainer)
    R = trainer.run(epoch_per_task=60).R_test
    assert all(R[2, j] == R[j, j] for j in range(3))
    for k, v in snaps.after_task[0]["backbone"].items():
        assert torch.equal(v, trainer.model.convs.state_dict()[k])
    assert R[2].mean() > 0.8


def _dense_graph_file(path, seed: int = 2, n: int = 600, f: int = 300):
    """A small graph with dense binary (bag-of-words-like) features, 35% of them on at
    every node, a weak class signal on 10 features per class, and 4 classes (2 tasks)."""
    gen = torch.Generator().manual_seed(seed)
    y = torch.empty(n, dtype=torch.long)
    half = n // 2
    for t in range(2):
        y[t * half:(t + 1) * half] = 2 * t + (torch.rand(half, generator=gen) < 0.3).long()
    x = (torch.rand(n, f, generator=gen) < 0.35).float()
    for c in range(4):
        idx = (y == c).nonzero().squeeze(1)
        x[idx[:, None], torch.arange(c * 10, (c + 1) * 10)] = (
            torch.rand(len(idx), 10, generator=gen) < 0.5).float()
    src, dst = torch.randint(0, n, (2, 4 * n), generator=gen)
    keep = (y[src] == y[dst]) | (torch.rand(4 * n, generator=gen) < 0.3)
    r = torch.rand(n, generator=gen)
    torch.save({"x": x, "edge_index": torch.stack([src[keep], dst[keep]]), "y": y,
                "train_mask": r < 0.5, "val_mask": (r >= 0.5) & (r < 0.7),
                "test_mask": r >= 0.7}, path)
    return path


def _task_scores(result) -> list[tuple[float, float, int]]:
    """Per task: accuracy after learning it, its test majority-class rate, test nodes."""
    from clbench.experiment import build_scenario
    from clbench.resolve import resolve_record

    scenario = build_scenario(resolve_record(result["spec"]))
    out = []
    for t in range(scenario.num_tasks):
        labels = scenario.get_task(t).test.local_labels
        out.append((result["R_test"][t][t], torch.bincount(labels).max().item() / len(labels),
                    len(labels)))
    return out


@pytest.mark.usefixtures("one_thread")
def test_default_learns_every_task_where_the_begin_setting_stalls(tmp_path):
    """On dense features, a random backbone frozen with BatchNorm at its initial
    statistics gives small, nearly collinear features: the head alone barely moves the
    val loss, the masks do not move for threshold / lr steps, and the plateau scheduler
    cuts the lr three times (1 + 3 x 21 = 64 epochs) and restores the epoch-0 weights, so
    task 1 ends below its majority-class rate. The default (a backbone trained on the
    first task) learns both tasks; the BeGin setting stays available as a parameter."""
    path = str(_dense_graph_file(tmp_path / "dense.pt"))
    begin = run_experiment(method="piggyback", dataset=path, seed=0,
                           params={"backbone_init": "random"})
    acc, majority, n = _task_scores(begin)[1]
    assert acc * n <= majority * n + 1  # learned nothing: within one test node
    assert begin["timing"]["task_epochs"][1] == 64
    default = run_experiment(method="piggyback", dataset=path, seed=0)
    for t, (acc, majority, n) in enumerate(_task_scores(default)):
        assert acc * n >= majority * n + 0.05 * n, (t, acc, majority)
