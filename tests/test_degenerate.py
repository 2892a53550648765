"""Degenerate tasks (a task whose balanced accuracy among its own classes, right after it
was learned, ends within one test node of chance learned nothing) are flagged in the
result, on the console, in MLflow and in compare; records made before the balanced check
keep their first form (accuracy against the majority-class rate), and compare says which
seeds were checked how, or not at all."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from mlflow.tracking import MlflowClient
from mlflow_server import cli, shared_server, unique

from clbench.compare.rows import Row
from clbench.compare.tables import degenerate_notes
from clbench.degenerate import (
    balanced_check,
    confusion,
    degenerate_from_confusion,
    degenerate_tasks,
    learned_balanced_accuracies,
    learned_scores,
    majority_baseline,
)
from clbench.experiment import build_scenario, run_experiment
from clbench.resolve import resolve_run
from clbench.tracking import (
    TAG_DEGENERATE,
    TAG_DEGENERATE_CHECK,
    TAG_WEAKEST_TASK,
    result_metrics,
    result_tags,
)

pytestmark = pytest.mark.usefixtures("one_thread")

#: classes 0..3 in the ratio 3:1:3:1 in every split; tasks (0, 1) and (2, 3)
PATTERN = [0, 0, 0, 1, 2, 2, 2, 3]


def featureless_graph(path, n: int = 400):
    """A graph whose nodes all look alike (zero features): a GCN can only learn each
    task's class prior, i.e. predict its majority class (test rate 0.75)."""
    idx = torch.arange(n)
    y = torch.tensor(PATTERN)[(idx // 5) % len(PATTERN)]
    gen = torch.Generator().manual_seed(0)
    torch.save({"x": torch.zeros(n, 4), "edge_index": torch.randint(0, n, (2, 800), generator=gen),
                "y": y, "train_mask": idx % 5 < 3, "val_mask": idx % 5 == 3,
                "test_mask": idx % 5 == 4}, path)
    return str(path)


def test_majority_baseline_and_margin(tmp_path):
    spec = resolve_run("finetune", featureless_graph(tmp_path / "g.pt"), 0,
                       class_order=(0, 1, 2, 3))
    scenario = build_scenario(spec)
    base, margin = majority_baseline(scenario)
    assert base == [0.75, 0.75] and margin == [1 / 40, 1 / 40]  # 40 test nodes per task
    spec = resolve_run("finetune", str(tmp_path / "g.pt"), 0, class_order=(0, 1, 2, 3),
                       metric="balanced_accuracy")
    base, margin = majority_baseline(build_scenario(spec))
    assert base == [0.5, 0.5] and margin == [1 / (2 * 10)] * 2  # 10 test nodes of class 1


def test_degenerate_tasks_is_within_one_node():
    R = np.array([[0.775, 0.0], [0.0, 0.7751]])
    assert degenerate_tasks(learned_scores(R), [0.75, 0.75], [0.025, 0.025]) == [0]
    assert degenerate_tasks(learned_scores(np.eye(2) * 0.5), [0.75, 0.75],
                            [0.025, 0.025]) == [0, 1]


def test_confusion_counts_true_against_predicted_among_the_tasks_classes():
    labels = torch.tensor([4, 4, 4, 9, 9])
    preds = torch.tensor([4, 9, 4, 9, 4])
    assert confusion(preds, labels, [4, 9]) == [[2, 1], [1, 1]]
    with pytest.raises(ValueError, match="outside"):
        confusion(torch.tensor([3]), torch.tensor([4]), [4, 9])


def test_balanced_check_is_robust_to_an_imbalanced_test_split():
    """The case that made the check balanced: EWC on CiteSeer, seed 1000, task 2 (77 and
    160 test nodes) scored 0.6751 accuracy, exactly its majority rate, with both classes
    predicted (recalls 67/77 and 93/160): it learned. Always predicting the majority class
    scores chance, whatever the split, and so does always predicting the minority one."""
    learned = [[67, 10], [67, 93]]
    assert 67 + 93 == 160  # correct nodes: accuracy = the majority rate, 160 / 237
    score, chance, margin = balanced_check(learned)
    assert score == pytest.approx((67 / 77 + 93 / 160) / 2) and chance == 0.5
    assert margin == 1 / (2 * 77)
    majority, minority = [[0, 77], [0, 160]], [[77, 0], [160, 0]]
    assert degenerate_from_confusion([learned, majority, minority]) == [1, 2]
    # one more correct node of the smallest class is still "nothing"; two are not
    assert degenerate_from_confusion([[[1, 76], [0, 160]], [[2, 75], [0, 160]]]) == [0]
    # a class without test nodes does not count, and a task without any is not judged
    assert balanced_check([[5, 5, 0], [0, 10, 0], [0, 0, 0]])[1:] == (0.5, 1 / 20)
    assert degenerate_from_confusion([[[0, 0], [0, 0]]]) == []


def test_records_tag_how_they_were_checked():
    """Recovered records: today's check from the matrices (a stored list from an older
    rule is not trusted), the stored list of a record made before the matrices, and no
    tag at all for a record from before the check."""
    balanced = {"learned_confusion_test": [[[67, 10], [67, 93]], [[0, 5], [0, 9]]],
                "degenerate_tasks": [0, 1]}
    assert result_tags(balanced) == {TAG_DEGENERATE: "1", TAG_DEGENERATE_CHECK: "balanced",
                                     TAG_WEAKEST_TASK: "1"}
    assert result_tags({"degenerate_tasks": [2]}) == {TAG_DEGENERATE: "2",
                                                      TAG_DEGENERATE_CHECK: "majority"}
    assert result_tags({"R_test": [[1.0]]}) == {}


def test_the_learned_diagonal_is_logged_per_task_with_its_weakest_task():
    """Each task's balanced accuracy right after it was learned, per task (step = task)
    and its minimum as a final metric, the task in a tag; a task without test nodes has
    none, and a record without the matrices logs none of it."""
    matrices = [[[4, 1], [1, 4]], [[0, 0], [0, 0]], [[9, 0], [3, 0]], [[2, 0], [1, 3]]]
    scores = learned_balanced_accuracies(matrices)
    assert scores[0] == pytest.approx(0.8) and np.isnan(scores[1])
    assert scores[2] == pytest.approx(0.5)  # one class for every node: chance
    assert scores[3] == pytest.approx((1 + 0.75) / 2)
    record = {"R_test": np.eye(4).tolist(), "R_val": np.eye(4).tolist(),
              "ap_curve": [1.0] * 4, "metrics": {"AP": 0.25}, "learned_confusion_test": matrices}
    logged = result_metrics(record)
    per_task = [(step, v) for k, v, step in logged if k == "learned/balanced_accuracy"]
    assert [step for step, _ in per_task] == [0, 2, 3]  # nan (no test node) is not logged
    assert [k for k, *_ in logged].count("learned_bacc_min") == 1
    assert dict((k, v) for k, v, _ in logged)["learned_bacc_min"] == pytest.approx(0.5)
    assert result_tags(record)[TAG_WEAKEST_TASK] == "2"
    del record["learned_confusion_test"]
    assert not {k for k, *_ in result_metrics(record)} & {"learned_bacc_min",
                                                           "learned/balanced_accuracy"}


def test_compare_notes_say_which_seeds_were_checked_how():
    def row(label, checks, degenerate=None):
        return Row(label, "citeseer", "h", label, sorted(checks), degenerate=degenerate or {},
                   degenerate_check=checks)

    rows = [row("ewc", {0: "majority", 1: "balanced"}, {0: "2"}),
            row("finetune", {0: "none", 1: "none"}), row("lwf", {0: "balanced"})]
    text = "\n".join(degenerate_notes(rows))
    assert "ewc/citeseer: seed 0: task 2." in text
    assert "first form" in text and "ewc/citeseer (seed 0)." in text
    assert "Not checked" in text and "finetune/citeseer (2 seeds)." in text
    assert "lwf" not in text
    assert degenerate_notes([row("lwf", {0: "balanced"})]) == []


def test_a_run_that_learns_nothing_is_flagged(tmp_path):
    result = run_experiment(method="finetune", dataset=featureless_graph(tmp_path / "g.pt"),
                            seed=0, class_order=(0, 1, 2, 3),
                            params={"epochs": 40, "hidden": 8, "lr": 0.05})
    R = np.array(result["R_test"])
    assert np.allclose(np.diag(R), 0.75)  # the majority class, every node
    assert result["majority_test"] == [0.75, 0.75]
    assert result["learned_confusion_test"] == [[[30, 0], [10, 0]]] * 2  # all class 0
    assert result["degenerate_tasks"] == [0, 1]


def test_a_normal_run_is_not_flagged():
    result = run_experiment(method="finetune", dataset="synthetic", seed=0,
                            params={"epochs": 30, "hidden": 32})
    assert result["degenerate_tasks"] == []
    assert min(np.diag(np.array(result["R_test"])) - result["majority_test"]) > 0.1


def test_flagged_on_the_console_in_mlflow_and_in_compare(tmp_path, workdir, capsys):
    graph = featureless_graph(tmp_path / "g [x].pt")
    args = ["--dataset", graph, "--class-order", "0,1,2,3", "--epochs", "40",
            "--param", "hidden=8", "--param", "lr=0.05"]
    assert cli("run", "--method", "finetune", "--json", str(tmp_path / "r.json"), *args) == 0
    err = capsys.readouterr().err
    line = next(x for x in err.splitlines() if "learned nothing" in x)
    assert "finetune on g [x] (seed 0)" in line  # the file's name, escaped for Rich
    assert "task 0 (balanced accuracy 0.5000 vs chance 0.5000), task 1" in line
    assert json.loads((tmp_path / "r.json").read_text())["degenerate_tasks"] == [0, 1]

    server = shared_server()
    exp = unique("degenerate")
    args[1] = f"{graph},synthetic"  # synthetic's classes 0-3 are learned: not flagged
    assert cli("run", "--method", "finetune", "--seeds", "0", "--tasks", "2x2", "--jobs", "1",
               "--tracking-uri", server.uri, "--experiment", exp, "-q", *args) == 0
    err = capsys.readouterr().err
    assert err.count("learned nothing") == 1 and "seed 0" in err
    client = MlflowClient(server.uri)
    eid = client.get_experiment_by_name(exp).experiment_id
    tags = {r.data.tags["clbench.dataset"]: (r.data.tags.get("clbench.degenerate_tasks"),
                                             r.data.tags.get("clbench.degenerate_check"))
            for r in client.search_runs([eid], "tags.`clbench.role` = 'child'")}
    assert tags == {graph: ("0,1", "balanced"), "synthetic": ("none", "balanced")}

    capsys.readouterr()
    assert cli("compare", "--experiment", exp, "--tracking-uri", server.uri) == 0
    assert "degenerate" in capsys.readouterr().out
    md = (workdir / "results" / f"compare-{exp}.md").read_text()
    assert md.count("⚠") == 2  # the marked cell and its note
    assert "finetune/" in md and "seed 0: task 0, 1" in md
    with open(workdir / "results" / f"compare-{exp}.csv", newline="") as fh:
        table = list(csv.DictReader(fh))
    rows = {r["dataset"]: r["degenerate_tasks"] for r in table}
    assert rows == {graph: "seed 0: task 0, 1", "synthetic": ""}

    # R's diagonal per task, in MLflow and in the table: the stuck graph's weakest task
    # is at chance (its first, on a tie), synthetic's is well above it
    weakest = {r.data.tags["clbench.dataset"]: (r.data.tags[TAG_WEAKEST_TASK],
                                                r.data.metrics["learned_bacc_min"])
               for r in client.search_runs([eid], "tags.`clbench.role` = 'child'")}
    assert weakest[graph] == ("0", 0.5) and weakest["synthetic"][1] > 0.8
    assert "## Each task right after it was learned" in md
    assert f"| finetune | {graph} | 0.500 (seed 0, task 0) | 0.500 | 1 |" in md
    by_dataset = {r["dataset"]: r for r in table}
    assert by_dataset[graph]["weakest_learned_task"] == "0.500 (seed 0, task 0)"
    assert float(by_dataset[graph]["learned_bacc_min_mean"]) == 0.5


def test_class_il_checks_the_score_among_the_tasks_own_classes(tmp_path, cora_root):
    """In Class-IL a node can also go to another task's class, so R[i][i] may fall below
    the majority rate for a task that was learned well: joint training on real Cora
    (seed 0) scores task 1 at 0.72 against its majority rate 0.83, yet tells task 1's
    classes apart at 0.90. The check reads that own-class score: not flagged. A task
    that learned only its class prior is still flagged in Class-IL."""
    result = run_experiment(method="joint", dataset="cora", seed=0, setting="class",
                            data_dir=str(cora_root))
    R, own, base = np.array(result["R_test"]), result["own_class_test"], result["majority_test"]
    assert R[1, 1] < base[1] < own[1]  # R's diagonal alone would flag task 1
    assert own[0] == R[0, 0]  # one task seen: the same candidates
    assert result["degenerate_tasks"] == []

    stalled = run_experiment(method="finetune", dataset=featureless_graph(tmp_path / "g.pt"),
                             seed=0, class_order=(0, 1, 2, 3), setting="class",
                             params={"epochs": 40, "hidden": 8, "lr": 0.05})
    assert np.allclose(stalled["own_class_test"], 0.75)  # each task's majority class
    assert stalled["degenerate_tasks"] == [0, 1]


def test_task_il_records_no_own_class_scores():
    result = run_experiment(method="finetune", dataset="synthetic", seed=0,
                            params={"epochs": 5, "hidden": 16})
    assert "own_class_test" not in result


@pytest.mark.slow
def test_a_task_that_learned_at_its_majority_rate_is_not_flagged(tmp_path):
    """The real run behind the balanced check (a committed record of the cora-citeseer
    sweep): EWC on CiteSeer, seed 1000, lr 1e-3, dropout 0.5, lamb 100. Its task 2 ends at
    accuracy 0.6751, exactly its majority rate, so the first form of the check flagged
    it; it predicts both classes (balanced accuracy 0.73), so it is not flagged."""
    from datahelpers import copy_shared

    copy_shared("citeseer", tmp_path)
    result = run_experiment(method="ewc", dataset="citeseer", seed=1000, threads=1,
                            data_dir=str(tmp_path),
                            params={"lr": 0.001, "dropout": 0.5, "lamb": 100.0})
    R = np.array(result["R_test"])
    assert R[2, 2] == pytest.approx(result["majority_test"][2]) == pytest.approx(160 / 237)
    assert result["learned_confusion_test"][2] == [[67, 10], [67, 93]]
    assert degenerate_tasks(learned_scores(R), result["majority_test"], [1 / 237] * 3) == [2]
    assert result["degenerate_tasks"] == []


@settings(max_examples=2000, deadline=None)
@given(st.integers(1, 400), st.integers(1, 400), st.data())
def test_two_class_tasks_the_first_form_passes_also_pass_the_balanced_check(n_a, n_b, data):
    """What lets a table keep records checked by the first form only (a Task-IL run
    scored by accuracy, tasks of 2 classes, e.g. amazon-computers and coauthor-cs): a task
    more than one test node above its majority-class rate has at least two more correct
    nodes than the majority count, so its balanced accuracy is at least 1/2 + 1/n_min,
    above the balanced check's threshold 1/2 + 1/(2 n_min)."""
    c_a = data.draw(st.integers(0, n_a))
    c_b = data.draw(st.integers(0, n_b))
    matrix = [[c_a, n_a - c_a], [n_b - c_b, c_b]]
    n = n_a + n_b
    accuracy = (c_a + c_b) / n
    first_form = degenerate_tasks([accuracy], [max(n_a, n_b) / n], [1 / n])
    if not first_form:
        assert degenerate_from_confusion([matrix]) == []
