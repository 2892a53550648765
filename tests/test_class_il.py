"""Class-IL (``--setting class``): every node classified among every class seen so far.

The defining properties: with one task it is Task-IL bit for bit; a prediction can land
in another task's class (never in Task-IL); a task not seen yet scores 0; fine-tuning
forgets more than in Task-IL; the setting is part of a run's identity, while Task-IL runs
keep the identity they had before the setting existed.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from clbench.errors import ClbenchError
from clbench.experiment import build_scenario, build_trainer, run_experiment, seed_everything
from clbench.resolve import resolve_record, resolve_run
from clbench.scenario import NCScenarioLoader

pytestmark = pytest.mark.usefixtures("one_thread")


def _run(method: str, setting: str, dataset: str = "synthetic", **kw):
    return run_experiment(resolve_run(method, dataset, kw.pop("seed", 0), setting=setting,
                                      **kw))


@pytest.mark.parametrize("method", ["finetune", "ewc", "joint", "lwf", "mas", "twp", "gem",
                                    "ergnn"])
def test_one_task_is_task_il_bit_for_bit(method):
    """With one task the classes seen so far are the task's classes: same candidates in the
    same order, so the same numbers to the last bit (matrices, untrained row, epochs)."""
    kw = {"num_tasks": 1, "classes_per_task": 3, "params": {"epochs": 15}}
    task, cls = _run(method, "task", **kw), _run(method, "class", **kw)
    for key in ("R_test", "R_val", "init_test", "init_val", "ap_curve"):
        assert cls[key] == task[key], key
    assert cls["timing"]["task_epochs"] == task["timing"]["task_epochs"]
    assert cls["metrics"]["AP"] == task["metrics"]["AP"]
    assert cls["scenario"]["setting"] == "class" and task["scenario"]["setting"] == "task"


def _trained(setting: str, synthetic, tasks: int = 3):
    spec = resolve_run("finetune", "synthetic", 0, setting=setting, num_tasks=tasks,
                       classes_per_task=2, params={"epochs": 30})
    scenario = NCScenarioLoader(synthetic, tasks, 2, seed=0, setting=setting)
    seed_everything(0)
    trainer = build_trainer(spec, scenario)
    result = trainer.run(epoch_per_task=30)
    return trainer, scenario, result


def _predictions(trainer, scenario, seen: int):
    (batch,) = scenario.eval_batches("test", seen=seen)
    preds, _ = trainer.processEvalIteration(trainer.model, batch, trainer.training_states)
    return batch, preds


def test_a_class_il_prediction_can_land_in_another_tasks_class(synthetic):
    """After fine-tuning on the last task, Class-IL predicts the last task's classes for
    nodes of earlier tasks; in Task-IL every prediction is a class of the node's own task."""
    trainer, scenario, _ = _trained("class", synthetic)
    batch, preds = _predictions(trainer, scenario, seen=3)
    assert batch.candidates.shape == (len(batch), 6)
    assert (batch.candidates == scenario.seen_classes(3)).all()
    pred_task = scenario.class_to_task[preds]
    assert (pred_task != batch.task_ids).any()
    first = batch.task_ids == 0
    assert (pred_task[first] != 0).float().mean() > 0.5  # forgetting: later classes win

    trainer, scenario, _ = _trained("task", synthetic)
    batch, preds = _predictions(trainer, scenario, seen=3)
    assert batch.candidates.shape == (len(batch), 2)
    assert (scenario.class_to_task[preds] == batch.task_ids).all()


def test_unseen_tasks_score_zero_and_fwt_is_zero(synthetic):
    """Row i scores tasks j > i at exactly 0 (their classes are not candidates); the
    untrained model is scored as at the start of task 0: task 0 as in Task-IL, the others 0;
    so FWT is 0 for every method."""
    _, _, cls = _trained("class", synthetic)
    _, _, task = _trained("task", synthetic)
    R = cls.R_test
    assert np.all(R[np.triu_indices(3, 1)] == 0.0) and np.all(np.diag(R) > 0.5)
    assert np.all(cls.R_val[np.triu_indices(3, 1)] == 0.0)
    assert cls.init_test[0] == task.init_test[0] and np.all(cls.init_test[1:] == 0.0)
    result = run_experiment(resolve_run("finetune", "synthetic", 0, setting="class",
                                        num_tasks=3, classes_per_task=2,
                                        params={"epochs": 30}))
    assert result["metrics"]["FWT"] == 0.0
    assert result["R_test"] == cls.R_test.tolist()


def test_class_il_trains_among_every_class_seen_so_far(synthetic):
    """Task t's training and validation batches hold only task t's nodes, classified among
    the classes of tasks 0..t; joint training's among the same classes."""
    scenario = NCScenarioLoader(synthetic, 3, 2, seed=0, setting="class")
    for t in range(3):
        data = scenario.get_task(t)
        assert set(data.train.task_ids.tolist()) == {t}
        for batch in (data.train, data.val):
            assert (batch.candidates == scenario.seen_classes(t + 1)).all()
            assert (batch.candidates.gather(1, batch.local_labels.view(-1, 1)).view(-1)
                    == batch.labels).all()
        acc = scenario.get_accumulated(t)
        assert set(acc.train.task_ids.tolist()) == set(range(t + 1))
        assert acc.train.candidates.shape[1] == 2 * (t + 1)
    with pytest.raises(ValueError, match="beyond the 1 seen"):
        scenario.batch((0, 1), "test", seen=1)
    task_of = scenario.node_task[synthetic.test_mask]
    assert len(scenario.eval_batches("test", seen=2)[0].nodes.unique()) == int(
        ((task_of >= 0) & (task_of < 2)).sum())


def test_task_subgraphs_under_class_il(synthetic):
    """``--graph task``: one evaluation batch per seen task, on its own subgraph, still
    among every class seen."""
    scenario = NCScenarioLoader(synthetic, 3, 2, seed=0, setting="class", graph_mode="task")
    batches = scenario.eval_batches("test", seen=2)
    assert len(batches) == 2
    assert all(b.candidates.shape[1] == 4 for b in batches)


@pytest.mark.slow
def test_finetune_forgets_more_in_class_il_on_cora(cora_root):
    """Fine-tuning on Cora (3 tasks x 2 classes, 60 epochs at most): its Class-IL AF is
    larger than its Task-IL AF on every seed (and far larger on average)."""
    af = {}
    for setting in ("task", "class"):
        af[setting] = [
            _run("finetune", setting, "cora", seed=s, data_dir=str(cora_root),
                 params={"epochs": 60})["metrics"]["AF"] for s in (0, 1, 2)]
    assert all(c > t for c, t in zip(af["class"], af["task"], strict=True)), af
    assert np.mean(af["class"]) > np.mean(af["task"]) + 0.3, af


# ----------------------------------------------------------------------------- identity
def test_the_setting_is_part_of_a_runs_identity():
    task = resolve_run("finetune", "synthetic", 0)
    explicit = resolve_run("finetune", "synthetic", 0, setting="task")
    cls = resolve_run("finetune", "synthetic", 0, setting="class")
    assert explicit.protocol_hash == task.protocol_hash  # Task-IL: the hash it always had
    assert "setting" not in task.task_protocol and "setting" not in task.record()
    assert cls.protocol_hash != task.protocol_hash and cls.config_hash != task.config_hash
    assert cls.uid != task.uid and cls.task_protocol["setting"] == "class"
    assert cls.record()["setting"] == "class"
    back = resolve_record(cls.record())
    assert (back.config_hash, back.protocol_hash, back.record()) == (
        cls.config_hash, cls.protocol_hash, cls.record())
    assert resolve_record(task.record()).protocol.setting == "task"

    from clbench.tracking.mlflow_ui import config_label
    from clbench.tracking.records import job_params

    assert job_params(cls)["setting"] == "class" and job_params(task)["setting"] == "task"
    assert "setting=class" in config_label(cls) and config_label(task) == "defaults"


def test_methods_declare_their_settings():
    """Piggyback, PackNet and HAT need the node's task at prediction: Task-IL only,
    refused with the reason; every other built-in method runs in both."""
    from clbench.config import load_card
    from clbench.methods import BUILTIN_METHODS

    task_only = ("piggyback", "packnet", "hat")
    for name in sorted(set(BUILTIN_METHODS) - set(task_only)):
        assert load_card(name).settings == ("task", "class"), name
        resolve_run(name, "synthetic", 0, setting="class")
    for name in task_only:
        card = load_card(name)
        assert card.settings == ("task",) and "task" in card.settings_note
        with pytest.raises(ClbenchError, match=f"method '{name}' runs only in Task-IL"):
            resolve_run(name, "synthetic", 0, setting="class")


def test_a_trainer_refuses_a_setting_its_card_does_not_declare(synthetic):
    """The loop checks the declaration too: a Task-IL-only method given a Class-IL scenario
    by hand, or a method whose card declares no settings, fails before training."""
    from clbench.methods import METHODS
    from clbench.models import build_model
    from clbench.trainer import NCTrainer

    scenario = NCScenarioLoader(synthetic, 2, 2, seed=0, setting="class")
    model = build_model("gcn", synthetic.num_features, synthetic.num_classes, hidden=8)
    opt = lambda ps: torch.optim.Adam(ps)  # noqa: E731
    with pytest.raises(ClbenchError, match="does not run in the 'class' setting: it chooses"):
        METHODS.get("piggyback")(model, scenario, opt, None, "cpu")

    class Undeclared(NCTrainer):
        pass

    class Declared(NCTrainer):
        card = {"settings": ["task", "class"]}

    with pytest.raises(ClbenchError, match="Undeclared does not run in the 'class' setting"):
        Undeclared(model, scenario, opt)
    Declared(model, scenario, opt)


def test_a_card_with_bad_settings_is_refused():
    from clbench.cards import MethodCard

    for bad in ([], ["domain"], "class"):
        with pytest.raises(ClbenchError, match="settings must be a non-empty list"):
            MethodCard.from_dict("m", {"settings": bad})


def test_build_scenario_follows_the_spec():
    spec = resolve_run("finetune", "synthetic", 0, setting="class", num_tasks=2,
                       classes_per_task=2)
    assert build_scenario(spec).setting == "class"


# ----------------------------------------------------------------------------- records
def test_run_logs_the_setting_and_compare_keeps_settings_apart(workdir, capsys):
    """Task-IL and Class-IL runs of one method in one experiment: the setting is an MLflow
    param and in the result files' names (through the config hash); compare gives each
    setting its own row, says which, and never puts both in one cell."""
    import csv

    from mlflow.tracking import MlflowClient
    from mlflow_server import cli, parent_runs, shared_server, unique

    server = shared_server()
    exp = unique("classil")
    common = ("--method", "finetune", "--seeds", "0", "--tasks", "2x2", "--epochs", "3",
              "--jobs", "1", "--tracking-uri", server.uri, "--experiment", exp, "-q")
    assert cli("run", *common) == 0
    assert cli("run", "--setting", "class", *common) == 0
    client = MlflowClient(server.uri)
    eid = client.get_experiment_by_name(exp).experiment_id
    parents = parent_runs(client, eid)
    assert sorted(p.data.params["setting"] for p in parents) == ["class", "task"]
    files = sorted(p.name for p in (workdir / "results" / "runs").rglob("*.json"))
    assert len(files) == 2 and files[0] != files[1]
    capsys.readouterr()

    assert cli("compare", "--experiment", exp, "--tracking-uri", server.uri) == 0
    md = (workdir / "results" / f"compare-{exp}.md").read_text()
    assert "Settings: Task-IL, Class-IL" in md or "Settings: Class-IL, Task-IL" in md
    assert "| finetune · Task-IL |" in md and "| finetune · Class-IL |" in md
    with open(workdir / "results" / f"compare-{exp}.csv", newline="") as fh:
        rows = {r["label"]: r for r in csv.DictReader(fh)}
    assert {r["setting"] for r in rows.values()} == {"task", "class"}
    assert rows["finetune · Task-IL"]["setting"] == "task"
    assert rows["finetune · Class-IL"]["config_hash"] != rows["finetune · Task-IL"][
        "config_hash"]
    assert all(r["n_seeds"] == "1" and r["cell_runs"] == "1" for r in rows.values())


def test_a_reference_applies_to_its_setting_only(tmp_path):
    from clbench.compare import load_reference

    path = tmp_path / "ref.csv"
    path.write_text("method,dataset,AP,setting\nfinetune,cora,0.9,\nfinetune,cora,0.3,class\n")
    ref = load_reference(path)
    assert ref[("finetune", "cora")]["AP"] == 0.9
    assert ref[("finetune", "cora", "class")]["AP"] == 0.3
    path.write_text("method,dataset,AP,setting\nfinetune,cora,0.9,domain\n")
    with pytest.raises(ClbenchError, match="setting must be task or class"):
        load_reference(path)


def test_a_card_can_set_other_defaults_for_class_il(synthetic):
    """EWC's and TWP's Task-IL strengths make them forget more than finetune in Class-IL
    (methods/ewc.toml): their cards set weaker Class-IL defaults (``[setting.class]``);
    GEM's sets a stronger margin (methods/gem.toml). Each default is
    used by a run, by a trainer built by hand and by ``clbench list methods``; a
    ``--param`` still wins, and Task-IL keeps its defaults."""
    from typer.testing import CliRunner

    from clbench.cli import app
    from clbench.methods import METHODS
    from clbench.models import build_model
    from clbench.tracking.mlflow_ui import config_label

    for method, key, task_il, class_il in (("ewc", "lamb", 100.0, 1.0),
                                           ("twp", "lambda_l", 10.0, 0.1)):
        assert resolve_run(method, "cora", 0).params[key] == task_il
        assert resolve_run(method, "cora", 0, setting="class").params[key] == class_il
        assert resolve_run(method, "cora", 0, setting="class",
                           params={key: 5.0}).params[key] == 5.0
        scenario = NCScenarioLoader(synthetic, 2, 2, seed=0, setting="class")
        model = build_model("gcn", synthetic.num_features, synthetic.num_classes, hidden=8)
        trainer = METHODS.get(method)(model, scenario, lambda ps: torch.optim.Adam(ps))
        assert trainer.hparams[key] == class_il
        assert config_label(resolve_run(method, "cora", 0, setting="class")) == "setting=class"
    out = CliRunner().invoke(app, ["list", "methods"], env={"COLUMNS": "400"}).output
    assert "in Class-IL: lamb=1" in out and "in Class-IL: lambda_l=0.1" in out


def test_a_card_with_a_bad_setting_table_is_refused():
    from clbench.cards import MethodCard

    base = {"settings": ["task", "class"], "params": {"lamb": 1.0}}
    for table, match in (({"domain": {"lamb": 2.0}}, r"\[setting.domain\] must name"),
                         ({"class": {"other": 2.0}}, r"\[setting.class\] other must name"),
                         ({"class": {"lamb": "x"}}, r"\[setting.class\] lamb must name")):
        with pytest.raises(ClbenchError, match=match):
            MethodCard.from_dict("m", {**base, "setting": table})
    with pytest.raises(ClbenchError, match=r"\[setting.class\] must name"):
        MethodCard.from_dict("m", {"params": {"lamb": 1.0}, "setting": {"class": {"lamb": 2.0}}})
    card = MethodCard.from_dict("m", {**base, "setting": {"class": {"lamb": 2.0}}})
    assert card.setting_params == {"class": {"lamb": 2.0}}
