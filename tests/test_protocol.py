"""The shared Task-IL loop: finetune, joint, determinism, event order, plugins."""

import inspect

import numpy as np
import pytest
import torch
from datahelpers import FAST, REPO

from clbench import NCTrainer
from clbench.experiment import run_experiment
from clbench.methods import METHODS
from clbench.plugins import load_plugin


@pytest.fixture(scope="module")
def finetune_runs():
    return [run_experiment(method="finetune", seed=s, params=FAST) for s in (0, 1)]


@pytest.mark.slow
def test_finetune_forgets_and_joint_is_an_upper_bound(finetune_runs):
    joint = [run_experiment(method="joint", seed=s, params=FAST) for s in (0, 1)]
    for ft in finetune_runs:
        assert ft["metrics"]["AF"] > 0
        assert ft["dataset"] == "synthetic" and len(ft["R_test"]) == 5
    assert np.mean([j["metrics"]["AP"] for j in joint]) >= np.mean(
        [f["metrics"]["AP"] for f in finetune_runs])
    for ft in finetune_runs:
        assert ft["metrics"]["AP"] > 0.7  # well above chance (0.5)


def test_same_seed_gives_identical_R(finetune_runs):
    again = run_experiment(method="finetune", seed=0, params=FAST)
    assert again["R_test"] == finetune_runs[0]["R_test"]
    assert again["R_val"] == finetune_runs[0]["R_val"]
    assert finetune_runs[1]["R_test"] != finetune_runs[0]["R_test"]


def test_result_records_everything(finetune_runs):
    r = finetune_runs[0]
    for key in ("R_test", "R_val", "init_test", "metrics", "val_metrics", "config",
                "scenario", "timing", "versions", "peak_rss_mb", "extra_storage_bytes"):
        assert key in r
    assert r["config"]["epochs"] == FAST["epochs"] and r["config"]["lr"] == 1e-3
    assert len(r["timing"]["task_train_seconds"]) == 5
    assert all(1 <= e <= FAST["epochs"] for e in r["timing"]["task_epochs"])


SEED_EVENTS = {
    "initTrainingStates": ["scenario", "model", "optimizer"],
    "processBeforeTraining": ["task_id", "curr_dataset", "curr_model", "curr_optimizer",
                              "curr_training_states"],
    "beforeInference": ["model", "optimizer", "_curr_batch", "training_states"],
    "inference": ["model", "_curr_batch", "training_states"],
    "afterInference": ["results", "model", "optimizer", "_curr_batch", "training_states"],
    "processAfterEachIteration": ["curr_model", "curr_optimizer", "curr_training_states",
                                  "curr_iter_results"],
    "processAfterTraining": ["task_id", "curr_dataset", "curr_model", "curr_optimizer",
                             "curr_training_states"],
    "processEvalIteration": ["model", "_curr_batch", "training_states"],
}


@pytest.mark.parametrize("method", ["finetune", "joint", "piggyback"])
def test_event_functions_have_begin_signatures(method):
    cls = METHODS.get(method)
    assert list(inspect.signature(cls.__init__).parameters)[1:6] == [
        "model", "scenario", "optimizer_fn", "loss_fn", "device"]
    for name, params in SEED_EVENTS.items():
        assert list(inspect.signature(getattr(cls, name)).parameters)[1:] == params, name


def test_events_run_in_begin_order():
    calls = []

    class Recorder(METHODS.get("finetune")):
        pass

    for name in SEED_EVENTS:
        def wrap(self, *a, _n=name, **k):
            calls.append(_n)
            return getattr(NCTrainer, _n)(self, *a, **k)
        setattr(Recorder, name, wrap)

    from clbench.datasets import load_graph
    from clbench.models import build_model
    from clbench.scenario import NCScenarioLoader

    sc = NCScenarioLoader(load_graph("synthetic"), 2, 2)
    model = build_model("gcn", 32, 10, hidden=16)
    trainer = Recorder(model, sc, lambda p: torch.optim.Adam(p, lr=0.01), None, "cpu")
    trainer.run(epoch_per_task=2)
    assert calls[0] == "initTrainingStates"
    # the untrained model is scored first (for FWT): one plain inference for val and test
    assert calls[1:3] == ["inference", "processBeforeTraining"]
    start = calls.index("processBeforeTraining")
    task0 = calls[start: calls.index("processAfterTraining") + 1]
    assert task0 == (["processBeforeTraining"]
                     + ["beforeInference", "inference", "afterInference",
                        "processEvalIteration", "inference",  # validation
                        "processAfterEachIteration"] * 2
                     + ["processAfterTraining"])
    # after each task every task is evaluated, val and test nodes in one pass
    end = start + len(task0)
    assert calls[end: end + 3] == ["processEvalIteration", "inference", "processBeforeTraining"]


def test_best_validation_weights_are_restored():
    from clbench.datasets import load_graph
    from clbench.models import build_model
    from clbench.scenario import NCScenarioLoader

    sc = NCScenarioLoader(load_graph("synthetic"), 1, 2)
    torch.manual_seed(0)
    model = build_model("gcn", 32, 10, hidden=16)
    seen = []

    class Spy(NCTrainer):
        def processAfterEachIteration(self, m, o, s, r):
            ok = super().processAfterEachIteration(m, o, s, r)
            seen.append((r["val_stats"]["loss"], self.task_state.best_val_loss))
            return ok

    trainer = Spy(model, sc, lambda p: torch.optim.Adam(p, lr=0.05), None, "cpu")
    trainer.run(epoch_per_task=60)
    best = min(loss for loss, _ in seen)
    _, stats = trainer._score_loader([sc.get_task(0).val])
    assert stats["loss"] == pytest.approx(best, rel=1e-5)
    assert seen[-1][0] > best  # the last epoch was not the best one: a restore happened


def test_plugins_with_the_same_file_name_are_both_loaded(tmp_path):
    """Two plugin files named alike in different folders (``a/methods.py``,
    ``b/methods.py``) are two plugins: the second is not mistaken for the first."""
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "methods.py").write_text(
            "from clbench import register_method\n"
            "from clbench.methods.finetune import NCTaskILBareTrainer\n"
            f"@register_method('same-stem-{folder}')\n"
            "class Plugged(NCTaskILBareTrainer):\n    pass\n")
        load_plugin(str(tmp_path / folder / "methods.py"))
    assert "same-stem-a" in METHODS and "same-stem-b" in METHODS
    # loading a file again is a no-op (no "already registered" error)
    load_plugin(str(tmp_path / "a" / "methods.py"))


def test_plugin_example_runs_and_registers(tmp_path):
    load_plugin(str(REPO / "examples" / "my_method.py"))
    assert "lwf-lite" in METHODS and "LWF_Lite" in METHODS
    r = run_experiment(method="lwf-lite", seed=0, params={**FAST, "alpha": 2.0})
    assert r["config"]["alpha"] == 2.0
    # its distillation term acts from the second task on, and is logged as a penalty
    ratios = r["task_penalty_ratio"]
    assert ratios[0] is None and all(x is not None and x > 0 for x in ratios[1:])
    # with alpha = 0 it is fine-tuning, bit for bit
    zero = run_experiment(method="lwf-lite", seed=0, params={**FAST, "alpha": 0.0})
    bare = run_experiment(method="finetune", seed=0, params=FAST)
    assert zero["R_test"] == bare["R_test"] and zero["R_val"] == bare["R_val"]
    assert r["R_test"] != bare["R_test"]
