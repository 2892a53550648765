"""Protocol presets (``--preset begin|cglb``): the documented values, overrides that win
and are marked as such, the listing, bad names, and unchanged identities."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from mlflow_server import cli_process

from clbench.datasets import DATASETS
from clbench.errors import ClbenchError
from clbench.resolve import resolve_run
from clbench.spec import Protocol, task_shape

#: What the presets' docstring (clbench/presets.py) documents, written out here.
BEGIN = {"model": "gcn", "hidden": 256, "layers": 3, "dropout": 0.0, "batch_norm": True,
         "optimizer": "adam", "lr": 1e-3, "weight_decay": 0.0, "epochs": 1000, "patience": 20,
         "min_lr_ratio": 0.002, "schedule": "plateau", "loss_weights": "none",
         "optimizer_state": "reset", "num_tasks": None, "classes_per_task": None,
         "class_order": None, "split_seed": 0, "graph": "full", "metric": "accuracy",
         "setting": "task", "split": "dataset"}
CGLB = {**BEGIN, "layers": 2, "batch_norm": False, "lr": 0.005, "weight_decay": 5e-4,
        "epochs": 200, "schedule": "fixed", "loss_weights": "class_balanced",
        "optimizer_state": "keep", "classes_per_task": 2, "graph": "task",
        "metric": "balanced_accuracy", "split": "random"}


def test_begin_is_todays_defaults_with_the_same_hashes():
    spec = resolve_run("ewc", "cora", 0, preset="begin")
    assert spec.protocol.resolved() == BEGIN == Protocol().resolved()
    plain = resolve_run("ewc", "cora", 0)
    assert (spec.config_hash, spec.protocol_hash) == (plain.config_hash, plain.protocol_hash)
    assert spec.preset == "begin" and plain.preset is None
    assert spec.protocol_sources["lr"] == "preset:begin"
    assert plain.protocol_sources["lr"] == "default"


def test_a_run_without_a_preset_keeps_todays_hashes():
    """Hashes computed with the code before presets existed (commit a900f80). EWC's
    Class-IL default has since changed (lamb 1, its card's [setting.class]); the case
    passes the lamb of that time."""
    cases = [(("finetune", "cora", 0), {}, "4b1b7757b9a5", "9fe5fbfcb184"),
             (("ewc", "citeseer", 0), {"setting": "class", "params": {"lamb": 100.0}},
              "1bddfe793a72", "057e97ea6a69"),
             (("lwf", "synthetic", 0), {"graph": "task", "metric": "balanced_accuracy",
                                        "num_tasks": 2, "classes_per_task": 2},
              "917de17efdda", "06025eb9d03f")]
    for args, tasks, config_hash, protocol_hash in cases:
        spec = resolve_run(*args, **tasks)
        assert (spec.config_hash, spec.protocol_hash) == (config_hash, protocol_hash), args
        assert "schedule" not in spec.config and "split" not in spec.record()
        assert "loss_weights" not in spec.config and "optimizer_state" not in spec.config


def test_cglb_resolves_to_cglbs_values_and_task_counts():
    spec = resolve_run("finetune", "corafull", 0, preset="cglb")
    assert spec.protocol.resolved() == {**CGLB, "class_order": list(range(70))}
    assert {k for k, v in spec.protocol_sources.items() if v == "preset:cglb"} == (
        set(CGLB) - {"split_seed", "setting"})
    assert spec.protocol_sources["split_seed"] == spec.protocol_sources["setting"] == "default"
    # CGLB: CoraFull-CL 35 tasks of 2, Arxiv-CL 20, Reddit-CL 20, Products-CL 23
    for name, tasks in (("corafull", 35), ("ogbn-arxiv", 20), ("reddit", 20),
                        ("ogbn-products", 23)):
        classes = DATASETS.get(name).stats["classes"]
        assert task_shape(classes, None, 2, name) == (tasks, 2)
        order = resolve_run("finetune", name, 0, preset="cglb").protocol.class_order
        assert order == tuple(range(classes))
    # the values make the hashes: away from BeGin, schedule and split are hashed
    assert spec.config["schedule"] == "fixed" and spec.record()["split"] == "random"
    assert spec.config["loss_weights"] == "class_balanced"
    assert spec.config["optimizer_state"] == "keep"
    assert spec.config_hash != resolve_run("finetune", "corafull", 0).config_hash


def test_flags_and_params_override_a_preset_and_are_marked():
    spec = resolve_run("finetune", "corafull", 0, preset="cglb", params={"lr": "0.01"},
                       graph="full", num_tasks=5, classes_per_task=None)
    p = spec.protocol
    assert (p.lr, p.graph, p.num_tasks, p.classes_per_task) == (0.01, "full", 5, None)
    assert p.epochs == 200 and p.schedule == "fixed"
    src = spec.protocol_sources
    assert (src["lr"], src["graph"], src["num_tasks"]) == ("flag", "flag", "flag")
    assert src["epochs"] == "preset:cglb"


def test_an_unknown_preset_is_one_line():
    with pytest.raises(ClbenchError, match="unknown preset 'nope'; known presets: begin, cglb"):
        resolve_run("finetune", "synthetic", 0, preset="nope")


def test_fixed_schedule_trains_every_epoch_and_keeps_the_last_weights():
    """CGLB's schedule: every epoch of every task (patience 0 and a floor at half the lr
    would stop BeGin's after the first epoch without progress), and the weights scored
    are those of the last epoch, not the best-validation ones."""
    import torch

    from clbench.experiment import run_experiment
    from clbench.trainer import TrainerCallback

    class LastWeights(TrainerCallback):
        def __init__(self):
            self.same = []

        def on_epoch_end(self, trainer, task_id, epoch, results):
            self.last = {k: v.clone() for k, v in trainer.model.state_dict().items()}

        def on_task_end(self, trainer, task_id, test_row):
            now = trainer.model.state_dict()
            self.same.append(all(torch.equal(now[k], v) for k, v in self.last.items()))

    params = {"epochs": 12, "hidden": 16, "patience": 0, "min_lr_ratio": 0.5}
    fixed, plateau = LastWeights(), LastWeights()
    a = run_experiment(resolve_run("finetune", "synthetic", 0, preset="cglb",
                                   params={**params, "lr": 0.05}), callbacks=[fixed])
    b = run_experiment(resolve_run("finetune", "synthetic", 0, preset="cglb",
                                   params={**params, "lr": 0.05, "schedule": "plateau"}),
                       callbacks=[plateau])
    assert a["timing"]["task_epochs"] == [12] * 5 and all(fixed.same)
    assert min(b["timing"]["task_epochs"]) < 12 and not all(plateau.same)


def test_random_split_replaces_an_official_split(cora_root):
    from clbench.datasets import load_graph

    official = load_graph("cora", cora_root)
    assert int(official.train_mask.sum()) == 140
    graph = load_graph("cora", cora_root, split_seed=3, split="random")
    n = graph.num_nodes
    sizes = [int(m.sum()) for m in (graph.train_mask, graph.val_mask, graph.test_mask)]
    assert sum(sizes) == n and abs(sizes[0] - 0.6 * n) <= 7 and abs(sizes[1] - 0.2 * n) <= 7
    for c in range(7):  # stratified: each class split 60/20/20 too
        in_c = graph.y == c
        share = float((graph.train_mask & in_c).sum() / in_c.sum())
        assert abs(share - 0.6) < 0.01


def test_list_presets_shows_every_value_whole_at_80_columns(tmp_path: Path):
    proc = cli_process("list", "presets", cwd=tmp_path, env={"COLUMNS": "80"})
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    rows = {}
    for line in lines:
        words = line.split()
        if words and words[0] == "preset":
            current = words[1].rstrip(":")
        elif len(words) >= 2 and words[0] in CGLB:
            rows[(current, words[0])] = words[1]
    for key in ("hidden", "layers", "lr", "weight_decay", "epochs", "metric", "split"):
        assert rows[("cglb", key)] == str(CGLB[key] if key != "weight_decay" else "0.0005")
        assert rows[("begin", key)] == str(BEGIN[key] if key not in ("weight_decay",)
                                           else "0")
    assert "train.py:17" in proc.stdout and "not reproduced:" in proc.stdout
    table = [ln for ln in lines if not ln.startswith("  not reproduced")]
    assert max(len(ln) for ln in table) <= 80


def test_run_with_a_preset_and_an_override_records_both(tmp_path: Path):
    out = tmp_path / "r.json"
    proc = cli_process("run", "-m", "finetune", "-d", "synthetic", "--preset", "cglb",
                       "--epochs", "3", "-p", "hidden=16", "--graph", "full", "--track",
                       "--tracking-uri", f"sqlite:///{tmp_path / 'm.db'}", "--json", out,
                       "-q", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(out.read_text())
    assert result["preset"] == "cglb"
    assert result["protocol"]["epochs"] == 3 and result["protocol"]["lr"] == 0.005
    assert result["protocol"]["graph"] == "full" and result["protocol"]["split"] == "random"
    src = result["protocol_sources"]
    assert (src["epochs"], src["hidden"], src["graph"]) == ("flag", "flag", "flag")
    assert src["lr"] == "preset:cglb" and src["setting"] == "default"
    assert result["timing"]["task_epochs"] == [3] * 5
    assert result["config"]["schedule"] == "fixed"

    from mlflow.tracking import MlflowClient
    client = MlflowClient(f"sqlite:///{tmp_path / 'm.db'}")
    exp = client.get_experiment_by_name("clbench")
    (child,) = client.search_runs([exp.experiment_id], "tags.`clbench.role` = 'child'")
    assert child.data.tags["clbench.preset"] == "cglb"
    assert json.loads(child.data.tags["clbench.protocol_sources"]) == src
    assert child.data.params["schedule"] == "fixed" and child.data.params["split"] == "random"


def test_an_unknown_preset_exits_2_with_one_line(tmp_path: Path):
    proc = cli_process("run", "--preset", "cglbb", cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0
    assert "unknown preset 'cglbb'; known presets: begin, cglb" in proc.stderr


def test_a_sweep_file_takes_a_preset(tmp_path: Path):
    from clbench.orchestrate.sweep import grid_jobs
    from clbench.orchestrate.sweepfile import load_sweep

    path = tmp_path / "s.toml"
    path.write_text('methods = ["finetune"]\ndatasets = ["synthetic"]\ngrid_seeds = "0"\n'
                    'final_seeds = "0"\npreset = "cglb"\n[protocol]\ngraph = "full"\n'
                    '[grid]\nlr = [0.001, 0.01]\n')
    jobs, _, _ = grid_jobs(load_sweep(path))
    assert [j.protocol.lr for j in jobs] == [0.001, 0.01]
    assert {(j.preset, j.protocol.epochs, j.protocol.graph, j.protocol.split) for j in jobs} == {
        ("cglb", 200, "full", "random")}
    path.write_text(path.read_text().replace('"cglb"', '"nope"'))
    with pytest.raises(ClbenchError, match="unknown preset 'nope'; known presets"):
        load_sweep(path)


def test_optimizer_state_keep_carries_adams_moments_across_tasks():
    """CGLB creates one Adam for the whole stream; BeGin clears its state before every
    task. Under ``keep`` the state at the start of task t is the one task t-1 ended with
    (step counts go on), under ``reset`` it starts empty; the learning rate starts at its
    initial value either way."""
    from clbench.experiment import run_experiment
    from clbench.trainer import TrainerCallback

    class AdamSteps(TrainerCallback):
        def __init__(self):
            self.steps, self.lrs = [], []

        def on_epoch_end(self, trainer, task_id, epoch, results):
            if epoch == 0:  # one step into the task
                state = trainer.optimizer.state
                self.steps.append(max(int(st["step"]) for st in state.values()))
                self.lrs.append(trainer.optimizer.param_groups[0]["lr"])

    params = {"epochs": 5, "hidden": 16}
    runs = {}
    for value in ("keep", "reset"):
        cb = AdamSteps()
        result = run_experiment(resolve_run("finetune", "synthetic", 0, preset="cglb",
                                            params={**params, "optimizer_state": value}),
                                callbacks=[cb])
        runs[value] = (cb, result)
    keep, reset = runs["keep"][0], runs["reset"][0]
    assert reset.steps == [1] * 5
    assert keep.steps == [1, 6, 11, 16, 21]
    assert keep.lrs == reset.lrs == [0.005] * 5
    # the same first task, then different numbers
    R_keep, R_reset = runs["keep"][1]["R_test"], runs["reset"][1]["R_test"]
    assert R_keep[0] == R_reset[0] and R_keep != R_reset
    assert runs["keep"][1]["config"]["optimizer_state"] == "keep"
    assert "optimizer_state" not in runs["reset"][1]["config"]  # BeGin's: left out, as before
    assert runs["reset"][1]["protocol_sources"]["optimizer_state"] == "flag"


def test_optimizer_state_is_a_checked_choice():
    with pytest.raises(ClbenchError, match="optimizer_state"):
        resolve_run("finetune", "synthetic", 0, params={"optimizer_state": "sometimes"})


def test_optimizer_state_keep_restarts_each_task_at_the_initial_lr():
    """Under the plateau schedule a task ends with its lr cut; under ``keep`` the next
    task still starts from the initial lr (only Adam's moments carry over)."""
    from clbench.experiment import run_experiment
    from clbench.trainer import TrainerCallback

    class Lrs(TrainerCallback):
        def __init__(self):
            self.before, self.first = [], []

        def on_task_start(self, trainer, task_id):  # before processBeforeTraining
            self.before.append(trainer.optimizer.param_groups[0]["lr"])

        def on_epoch_end(self, trainer, task_id, epoch, results):
            if epoch == 0:
                self.first.append(trainer.optimizer.param_groups[0]["lr"])

    cb = Lrs()
    run_experiment(resolve_run("finetune", "synthetic", 0, params={
        "optimizer_state": "keep", "epochs": 60, "hidden": 16, "lr": 0.05, "patience": 1,
        "min_lr_ratio": 0.01}), callbacks=[cb])
    assert min(cb.before[1:]) < 0.05  # an earlier task ended with its lr cut
    assert cb.first == [0.05] * 5


def test_the_begin_gap_on_ogbn_products_names_flags_that_give_begins_split():
    """The begin preset's listed gap tells how to get BeGin's ogbn-products Class-IL split
    (9 tasks of 5 of its 47 classes) and epoch cap; the hint must resolve to exactly that."""
    from clbench.parsing import parse_tasks
    from clbench.presets import get_preset

    (gap,) = [g for g in get_preset("begin").gaps if "ogbn-products" in g]
    assert "--tasks 9x5 --epochs 100" in gap
    num_tasks, per_task = parse_tasks("9x5")
    spec = resolve_run("cat", "ogbn-products", 0, preset="begin", setting="class",
                       num_tasks=num_tasks, classes_per_task=per_task,
                       params={"epochs": "100"})
    p = spec.protocol
    assert (p.num_tasks, p.classes_per_task, p.epochs) == (9, 5, 100)
    assert task_shape(DATASETS.get("ogbn-products").stats["classes"], 9, 5,
                      "ogbn-products") == (9, 5)
