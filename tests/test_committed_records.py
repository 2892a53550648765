"""The committed run records behind the published tables (``results/sweeps/runs/``) are
consistent with what defines them.

Every table is written from these files (``clbench compare``, or a sweep that recovers
them into a fresh store), so a record that contradicts itself would put a wrong number in
a table. Each record is checked against the invariants that hold whatever the data:

* its metrics are the metric functions of its own matrices (AP, AF, BWT and FWT of
  ``R_test`` and of ``R_val``, and the AP curve);
* every score is a fraction in [0, 1];
* in Class-IL, a task not seen yet scores exactly 0 (it is not among the candidates);
* the methods that cannot forget by construction in Task-IL (PackNet's and HAT's masks,
  Piggyback's frozen backbone, PI-GNN's frozen blocks up to each task's own) score a
  finished task the same, bit for bit, after every later task, and their AF is exactly 0;
* the confusion matrices of the degenerate-task check (records that have them) agree
  with the record: each task's own-class score (the run's metric) is ``R_test[i][i]``
  (Task-IL) or ``own_class_test[i]`` (Class-IL), and its flags are the check's;
* the file is named after the record's method, dataset, configuration hash and seed
  (what the orchestrator's resume looks up).

The records accumulate as the sweeps run; this test covers whatever is committed.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from clbench import metrics
from clbench.degenerate import balanced_check, degenerate_from_confusion

RUNS = Path(__file__).resolve().parent.parent / "results" / "sweeps" / "runs"
RECORDS = sorted(RUNS.glob("*/*.json"))

#: Task-IL methods whose predictions for a finished task are frozen by construction.
ZERO_FORGETTING = {"packnet", "piggyback", "hat", "pignn"}


def _load(path: Path) -> dict:
    return json.loads(path.read_text())


def _folders() -> list[Path]:
    return sorted({p.parent for p in RECORDS})


def test_there_are_committed_records():
    """The tables' records are in the repository (a clone with nothing beside it has them)."""
    assert len(RECORDS) > 1000 and len(_folders()) >= 5


def _close(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or math.isclose(a, b, rel_tol=0, abs_tol=1e-12)


def record_problems(path: Path) -> list[str]:
    """What is inconsistent in the record at ``path`` (empty: nothing)."""
    rec = _load(path)
    name = path.name
    R, V = np.asarray(rec["R_test"]), np.asarray(rec["R_val"])
    T = R.shape[0]
    if R.shape != (T, T) or V.shape != (T, T):
        return [f"{name}: matrices of shape {R.shape}, {V.shape}"]
    problems = []
    for key, mat, init in (("metrics", R, rec["init_test"]),
                           ("val_metrics", V, rec["init_val"])):
        want = metrics.summarize(mat, init)
        bad = [k for k in ("AP", "AF", "BWT", "FWT") if not _close(rec[key][k], want[k])]
        if bad:
            problems.append(f"{name}: {key} {bad} differ from the functions of the matrix")
    curve = metrics.average_accuracy_curve(R)
    if not all(_close(a, b) for a, b in zip(rec["ap_curve"], curve, strict=True)):
        problems.append(f"{name}: ap_curve is not the AP of each row")
    if not ((R >= 0) & (R <= 1)).all() or not ((V >= 0) & (V <= 1)).all():
        problems.append(f"{name}: a score outside [0, 1]")
    # older records (before Class-IL) have no setting: they are Task-IL
    setting = rec["scenario"].get("setting") or rec.get("protocol", {}).get("setting", "task")
    if setting == "class" and (np.triu(R, 1).any() or np.triu(V, 1).any()):
        problems.append(f"{name}: Class-IL scores a task before it is seen")
    if setting == "task" and rec["method"] in ZERO_FORGETTING:
        for j in range(T):
            if not (R[j:, j] == R[j, j]).all() or not (V[j:, j] == V[j, j]).all():
                problems.append(f"{name}: task {j}'s score changes after it is learned")
        if rec["metrics"]["AF"] != 0.0 or rec["val_metrics"]["AF"] != 0.0:
            problems.append(f"{name}: AF is not exactly 0")
    problems += _confusion_problems(rec, R, setting)
    stem = (f"{rec['method']}__{rec['dataset']}__{rec['clbench']['config_hash']}"
            f"__seed{rec['seed']}")
    if path.stem != stem:
        problems.append(f"{name}: named differently from its record ({stem})")
    return problems


def _confusion_problems(rec: dict, R: np.ndarray, setting: str) -> list[str]:
    matrices = rec.get("learned_confusion_test")
    if matrices is None:  # recorded before the balanced check
        return []
    name = f"{rec['method']}__{rec['dataset']}__seed{rec['seed']}"
    if len(matrices) != R.shape[0]:
        return [f"{name}: {len(matrices)} confusion matrices for {R.shape[0]} tasks"]
    problems = []
    learned = np.diag(R) if setting == "task" else np.asarray(rec["own_class_test"])
    for i, m in enumerate(matrices):
        score = (balanced_check(m)[0] if rec["scenario"]["metric"] == "balanced_accuracy"
                 else float(np.trace(m) / np.sum(m)))
        if not math.isclose(score, float(learned[i]), rel_tol=0, abs_tol=1e-9):
            problems.append(f"{name}: task {i}'s confusion matrix is not its score")
    if rec["degenerate_tasks"] != degenerate_from_confusion(matrices):
        problems.append(f"{name}: degenerate_tasks is not the check of its matrices")
    return problems


@pytest.mark.parametrize("folder", _folders(), ids=lambda p: p.name)
def test_records_agree_with_their_own_matrices(folder: Path):
    problems = [p for path in sorted(folder.glob("*.json")) for p in record_problems(path)]
    assert not problems, "\n".join(problems[:20])


def _first(method: str) -> Path:
    return next(p for p in RECORDS if _load(p)["method"] == method)


def _altered(tmp_path: Path, source: Path, change) -> Path:
    rec = _load(source)
    change(rec)
    out = tmp_path / source.name
    out.write_text(json.dumps(rec))
    return out


def test_the_checks_catch_what_they_look_for(tmp_path):
    """Each check fails on a record altered to break it (the committed ones pass)."""
    packnet = _first("packnet")
    assert record_problems(packnet) == []

    def forget(rec):  # PackNet's task 0 one node worse after the last task
        rec["R_test"][-1][0] -= 1e-3

    assert any("changes after it is learned" in p
               for p in record_problems(_altered(tmp_path, packnet, forget)))

    def inflate(rec):
        rec["metrics"]["AP"] += 1e-6

    assert any("metrics ['AP']" in p
               for p in record_problems(_altered(tmp_path, packnet, inflate)))

    def peek(rec):  # a Class-IL record that scored a task before it was seen
        rec["scenario"]["setting"] = "class"
        rec["R_test"][0][1] = 0.5
        rec["metrics"] = metrics.summarize(rec["R_test"], rec["init_test"])
        rec["ap_curve"] = metrics.average_accuracy_curve(rec["R_test"])

    assert any("before it is seen" in p
               for p in record_problems(_altered(tmp_path, _first("finetune"), peek)))

    checked = next(p for p in RECORDS if "learned_confusion_test" in _load(p))
    assert record_problems(checked) == []

    def stale_flag(rec):  # flags from another rule than its matrices say
        rec["degenerate_tasks"] = [0]

    assert any("not the check of its matrices" in p
               for p in record_problems(_altered(tmp_path, checked, stale_flag)))

    def miscount(rec):  # one node moved to the wrong class
        m = rec["learned_confusion_test"][0]
        m[0][0], m[0][1] = m[0][0] - 1, m[0][1] + 1

    assert any("confusion matrix is not its score" in p
               for p in record_problems(_altered(tmp_path, checked, miscount)))
