"""What clbench writes for the MLflow UI (no browser; tests/test_ui_browser.py drives one):
the experiment kind, the saved view of AP and AF, the links ``clbench ui`` prints, and
readable parent run names."""

from __future__ import annotations

import json

from mlflow.tracking import MlflowClient

from clbench.cli.ui import experiment_links
from clbench.resolve import resolve_run
from clbench.tracking import FINAL_METRICS, TAG_SOURCE, Tracker
from clbench.tracking.mlflow_ui import (
    KIND_MODEL_TRAINING,
    TAG_EXPERIMENT_KIND,
    VIEW_KEY,
    VIEW_METRICS,
    VIEW_TAG,
    config_label,
    metric_column,
    view_state,
)


def test_parent_names_say_what_differs_from_the_defaults():
    assert config_label(resolve_run("finetune", "synthetic", 0)) == "defaults"
    job = resolve_run("ewc", "synthetic", 3, params={"epochs": 3, "lr": 0.01},
                      num_tasks=3, classes_per_task=2)
    assert config_label(job) == "lr=0.01 epochs=3 num_tasks=3 classes_per_task=2"
    # the seed is not part of a configuration; a value equal to the default is no change
    assert config_label(resolve_run("ewc", "synthetic", 7, params={"epochs": 1000})) == \
        "defaults"
    long = resolve_run("finetune", "synthetic", 0, class_order=tuple(range(9, -1, -1)),
                       params={"lr": 0.0123456, "hidden": 17, "layers": 2, "dropout": 0.25})
    assert len(config_label(long)) <= 80


def test_the_view_shows_what_parents_log():
    state = view_state()
    assert {m.removesuffix("_mean").removesuffix("_std") for m in VIEW_METRICS
            if m != "n_seeds"} <= set(FINAL_METRICS)
    assert state["selectedColumns"] == [metric_column(m) for m in VIEW_METRICS]
    assert state["orderByKey"] == "metrics.`AP_mean`" and state["orderByAsc"] is False
    assert state["searchFilter"] == "tags.`clbench.role` = 'parent'"


def test_experiments_are_marked_and_linked(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    new = Tracker(uri, "fresh")
    client = new.client
    tags = client.get_experiment(new.experiment_id).tags
    assert tags[TAG_EXPERIMENT_KIND] == KIND_MODEL_TRAINING
    envelope = json.loads(tags[VIEW_TAG])
    assert json.loads(envelope["state"]) == view_state() and envelope["name"]

    # An experiment of an older clbench gets the marks; a kind the user chose stays,
    # and an experiment clbench did not make is left alone.
    old = client.create_experiment("old", tags={TAG_SOURCE: "clbench",
                                                TAG_EXPERIMENT_KIND: "genai_development"})
    other = client.create_experiment("someone-else")
    links = dict(experiment_links(uri, "http://127.0.0.1:5123"))
    assert set(links) == {"fresh", "old"}
    assert links["old"] == (f"http://127.0.0.1:5123/#/experiments/{old}/runs?"
                            f"workflowType=machine_learning&viewStateShareKey={VIEW_KEY}")
    old_tags = MlflowClient(uri).get_experiment(old).tags
    assert old_tags[TAG_EXPERIMENT_KIND] == "genai_development" and VIEW_TAG in old_tags
    assert not set(MlflowClient(uri).get_experiment(other).tags) & {VIEW_TAG,
                                                                    TAG_EXPERIMENT_KIND}
    assert experiment_links(f"sqlite:///{tmp_path / 'none.db'}", "http://x") == []
    assert not (tmp_path / "none.db").exists()
