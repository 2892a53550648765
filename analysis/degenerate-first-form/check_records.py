"""The degenerate-task check for run records made before the check existed.

Such a record has R but neither ``majority_test`` nor confusion matrices. Its scenario
(class order from the seed, split, tasks) is rebuilt from the record's spec, without
training. Each task's majority-class rate on its test nodes is computed, and the
check's first form is applied: a task learned nothing if ``R[i][i]`` is at most one
test node above that rate. For tasks of 2 classes scored by accuracy, a task the first
form passes also passes today's balanced check
(``tests/test_degenerate.py::test_two_class_tasks_the_first_form_passes_also_pass_the_balanced_check``).

    CLBENCH_DATA=<data root> python analysis/degenerate-first-form/check_records.py \
        results/sweeps/runs/amazon-coauthor-all-11e63568/*.json

It prints one line per record: its check, the smallest margin above the majority rate
(in test nodes), the number of classes per task, and any flagged task.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from clbench.degenerate import degenerate_tasks, learned_scores, majority_baseline
from clbench.experiment import build_scenario
from clbench.resolve import resolve_record


def check(path: Path, data_dir: str | None) -> str:
    record = json.loads(path.read_text())
    if "learned_confusion_test" in record:
        return f"{path.name}: balanced check in the record, flags {record['degenerate_tasks']}"
    spec = resolve_record(record["spec"], data_dir=data_dir)
    scenario = build_scenario(spec)
    majority, margin = majority_baseline(scenario)
    learned = learned_scores(record["R_test"], record.get("own_class_test"))
    flagged = degenerate_tasks(learned, majority, margin)
    if "majority_test" in record:  # the record's own first-form numbers must agree
        assert all(abs(a - b) < 1e-12 for a, b in zip(majority, record["majority_test"],
                                                      strict=True)), path.name
    above = min((r - m) / g for r, m, g in zip(learned, majority, margin, strict=True))
    classes = sorted({len(c) for c in scenario.task_classes.tolist()})
    return (f"{path.name}: first form, {scenario.metric}, classes per task {classes}, "
            f"smallest margin {above:.1f} test nodes above the majority rate, "
            f"flags {flagged}")


def main(paths: list[str]) -> None:
    data_dir = os.environ.get("CLBENCH_DATA")
    for p in paths:
        print(check(Path(p), data_dir), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
