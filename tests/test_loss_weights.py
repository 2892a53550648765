"""``loss_weights`` (a protocol setting): ``none`` is BeGin's mean cross-entropy,
``class_balanced`` is CGLB's ``cls_balance`` (each node weighted by 1 / its class's count
in the batch), balanced by global class even when a batch holds several tasks."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from clbench.errors import ClbenchError
from clbench.experiment import run_experiment
from clbench.loopstate import task_loss
from clbench.resolve import resolve_run
from clbench.scenario import NodeBatch


def _batch(labels: list[int], candidates: list[list[int]]) -> NodeBatch:
    labels_t = torch.tensor(labels)
    cand = torch.tensor(candidates)
    local = (cand == labels_t.view(-1, 1)).long().argmax(1)
    n = len(labels)
    return NodeBatch(None, torch.arange(n), labels_t, torch.zeros(n, dtype=torch.long), cand,
                     local)


def test_none_is_the_plain_loss_and_one_task_balanced_is_torchs_weighted_ce():
    torch.manual_seed(0)
    labels = [4] * 9 + [7] * 3
    batch = _batch(labels, [[4, 7]] * len(labels))
    preds = torch.randn(len(labels), 2)
    ce = torch.nn.CrossEntropyLoss()
    assert torch.equal(task_loss(ce, preds, batch, "none"), ce(preds, batch.local_labels))
    expected = F.cross_entropy(preds, batch.local_labels, weight=torch.tensor([1 / 9, 1 / 3]))
    got = task_loss(ce, preds, batch, "class_balanced")
    assert torch.allclose(got, expected, atol=1e-6, rtol=0)
    # each class counts the same: the mean of the two classes' mean losses
    per = F.cross_entropy(preds, batch.local_labels, reduction="none")
    assert torch.allclose(got, (per[:9].mean() + per[9:].mean()) / 2, atol=1e-6, rtol=0)


def test_a_batch_of_two_tasks_is_balanced_by_global_class():
    """Task-IL joint training: tasks (0, 1) and (2, 3) share local positions 0 and 1, but
    the four classes are weighted by their own counts, not by position."""
    torch.manual_seed(1)
    labels = [0] * 8 + [1] * 2 + [2] * 2 + [3] * 4
    cands = [[0, 1]] * 10 + [[2, 3]] * 6
    batch = _batch(labels, cands)
    preds = torch.randn(len(labels), 2)
    per = F.cross_entropy(preds, batch.local_labels, reduction="none")
    by_class = torch.stack([per[:8].mean(), per[8:10].mean(), per[10:12].mean(),
                            per[12:].mean()]).mean()
    got = task_loss(torch.nn.CrossEntropyLoss(), preds, batch, "class_balanced")
    assert torch.allclose(got, by_class, atol=1e-6, rtol=0)
    by_position = F.cross_entropy(preds, batch.local_labels,
                                  weight=1 / torch.bincount(batch.local_labels).float())
    assert not torch.allclose(got, by_position)


def test_the_setting_is_validated_hashed_only_when_used_and_changes_training(cora_root):
    with pytest.raises(ClbenchError, match="loss_weights"):
        resolve_run("finetune", "synthetic", 0, params={"loss_weights": "inverse"})
    plain = resolve_run("finetune", "synthetic", 0)
    balanced = resolve_run("finetune", "synthetic", 0, params={"loss_weights": "class_balanced"})
    assert "loss_weights" not in plain.config
    assert balanced.config["loss_weights"] == "class_balanced"
    assert balanced.config_hash != plain.config_hash
    # Cora's classes are unbalanced: the balanced loss trains another model
    fast = {"epochs": 8, "hidden": 16, "lr": 0.05}
    a = run_experiment(method="finetune", dataset="cora", seed=0, params=fast,
                       data_dir=str(cora_root))
    b = run_experiment(method="finetune", dataset="cora", seed=0, data_dir=str(cora_root),
                       params={**fast, "loss_weights": "class_balanced"})
    assert a["R_val"] != b["R_val"]


# ------------------------------------------------------------------ every method's losses
def _refuse(*_args, **_kwargs):
    raise AssertionError("a training loss bypassed the protocol's loss_weights")


def _methods_and_settings():
    from clbench.cards import read_card
    from clbench.methods import METHODS

    out = []
    for name in sorted(METHODS.names()):
        for setting in read_card(name, METHODS.get(name)).settings:
            out.append((name, setting))
    return out


@pytest.mark.parametrize(("method", "setting"), _methods_and_settings())
def test_every_training_loss_follows_loss_weights(method, setting):
    """Under ``class_balanced`` the trainer's plain ``loss_fn`` is never the right loss,
    so a trainer whose ``loss_fn`` refuses to run must still train: every loss a method
    adds (the current task's, a replay buffer's, a memory's, an importance's) goes through
    :meth:`NCTrainer.batch_loss`. GEM, HAT, ER-GNN, PI-GNN and ContinualGNN called
    ``loss_fn`` directly, so the cglb preset trained them on unweighted losses."""
    from clbench.experiment import (
        build_backbone,
        build_scenario,
        make_optimizer_fn,
        seed_everything,
    )
    from clbench.methods import METHODS

    params = {"epochs": 3, "hidden": 16, "loss_weights": "class_balanced"}
    if method == "cat":
        params["condense_steps"] = 3
    variants = [{}, {"fisher": "empirical"}] if method == "ewc" else [{}]
    for extra in variants:
        spec = resolve_run(method, "synthetic", 0, setting=setting, num_tasks=3,
                           classes_per_task=2, params={**params, **extra})
        seed_everything(0)
        scenario = build_scenario(spec)
        trainer = METHODS.get(method)(build_backbone(spec.protocol, scenario), scenario,
                                      make_optimizer_fn(spec.protocol), _refuse, spec.device,
                                      protocol=spec.protocol, **spec.params)
        out = trainer.run(spec.protocol.epochs)
        assert len(out.R_test) == 3


def test_no_method_computes_a_label_loss_of_its_own():
    """The static side of the test above: outside the trainer, only CaT (its memory loss
    is its own weighted sum, see its card) and EWC's per-node Fisher (weighted by hand)
    call the cross-entropy themselves."""
    from pathlib import Path

    import clbench.methods as pkg

    allowed = {"cat.py", "ewc.py"}
    for path in sorted(Path(pkg.__file__).parent.glob("*.py")):
        text = path.read_text()
        if path.name not in allowed:
            assert "cross_entropy" not in text and "CrossEntropy" not in text, path.name
        assert "self.loss_fn(" not in text or path.name == "ewc.py", path.name
