"""``clbench compare``: the methods x datasets table of an MLflow experiment.

Reads the runs back through the MLflow client (the same aggregation as the
parent runs: the latest FINISHED child per seed), and writes

* ``compare-<experiment>.md``: AP and AF as mean ± std (in %) with the seed count,
  methods as rows and datasets as columns;
* ``compare-<experiment>.csv``: one row per (method, dataset, config) with the mean,
  std and count of every final metric (fractions, not %);
* ``compare-<experiment>.png``: a grouped bar chart of AP and AF with std error bars.

In a sweep's experiment only the selected configurations are shown (unless
``all_configs``); when several configurations of one method remain, each is its
own row, labelled with the start of its config hash.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from clbench import plots
from clbench import tracking as tr
from clbench.orchestrate import slug

TABLE_METRICS = ("AP", "AF")
CSV_METRICS = ("AP", "AF", "BWT", "FWT", "INT", "val_AP", "time_total_seconds", "peak_rss_mb",
               "extra_storage_bytes")


@dataclass
class Row:
    """One (method, dataset, configuration) of the experiment."""

    method: str
    dataset: str
    config_hash: str
    label: str
    seeds: list[int]
    stats: dict[str, dict[str, float]] = field(default_factory=dict)
    parent_id: str = ""
    selected: bool = False

    def cell(self, metric: str, percent: bool = True) -> str:
        s = self.stats.get(metric)
        if s is None:
            return "-"
        k = 100.0 if percent else 1.0
        return f"{s['mean'] * k:.1f} ± {s['std'] * k:.1f}"


@dataclass
class Report:
    experiment: str
    rows: list[Row]
    markdown: Path | None = None
    csv: Path | None = None
    figure: Path | None = None


def collect(tracker: tr.Tracker, all_configs: bool = False) -> list[Row]:
    """Aggregate the experiment's finished seeds per parent run."""
    parents = tracker.parents()
    children = tracker.children()
    selected = [p for p in parents if p.tags.get(tr.TAG_SELECTED) == "true"]
    if selected and not all_configs:
        parents = selected
    by_parent: dict[str, list[tr.RunRecord]] = {}
    for c in children:
        if c.parent_id:
            by_parent.setdefault(c.parent_id, []).append(c)
    rows: list[Row] = []
    for p in sorted(parents, key=lambda r: (r.method, r.dataset, r.start_time)):
        chosen = tr.select_seed_runs(by_parent.get(p.run_id, []),
                                     tr.parse_seed_list(p.tags.get(tr.TAG_REPORT_SEEDS)))
        if not chosen:
            continue
        rows.append(Row(p.method, p.dataset, p.config_hash, p.method, list(chosen),
                        tr.aggregate([c.metrics for c in chosen.values()]), p.run_id,
                        p.tags.get(tr.TAG_SELECTED) == "true"))
    counts: dict[tuple[str, str], int] = {}
    for r in rows:
        counts[(r.method, r.dataset)] = counts.get((r.method, r.dataset), 0) + 1
    multi = {m for (m, _), n in counts.items() if n > 1}
    for r in rows:
        if r.method in multi:
            r.label = f"{r.method} [{r.config_hash[:6]}]"
    return rows


def _axes(rows: Sequence[Row]) -> tuple[list[str], list[str]]:
    labels = list(dict.fromkeys(r.label for r in rows))
    datasets = list(dict.fromkeys(r.dataset for r in rows))
    return labels, datasets


def markdown_table(rows: Sequence[Row], experiment: str) -> str:
    labels, datasets = _axes(rows)
    cells = {(r.label, r.dataset): r for r in rows}
    lines = [
        f"# {experiment}: AP and AF (mean ± std over seeds, in %)",
        "",
        "AP = average accuracy after the last task; AF = average forgetting (positive = "
        "forgot); n = number of seeds.",
        "",
        "| method | " + " | ".join(datasets) + " |",
        "|---|" + "---|" * len(datasets),
    ]
    for label in labels:
        out = []
        for d in datasets:
            r = cells.get((label, d))
            out.append("-" if r is None else
                       f"AP {r.cell('AP')} · AF {r.cell('AF')} (n={len(r.seeds)})")
        lines.append(f"| {label} | " + " | ".join(out) + " |")
    return "\n".join(lines) + "\n"


def write_csv(rows: Sequence[Row], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["method", "dataset", "config_hash", "label", "n_seeds", "seeds",
                    *(f"{m}_{s}" for m in CSV_METRICS for s in ("mean", "std")), "parent_run_id"])
        for r in rows:
            vals = []
            for m in CSV_METRICS:
                s = r.stats.get(m)
                vals += [s["mean"], s["std"]] if s else ["", ""]
            w.writerow([r.method, r.dataset, r.config_hash, r.label, len(r.seeds),
                        " ".join(map(str, r.seeds)), *vals, r.parent_id])
    return path


def bar_chart(rows: Sequence[Row], path: Path, experiment: str) -> Path:
    labels, datasets = _axes(rows)
    values = {
        m: {(r.label, r.dataset): (r.stats[m]["mean"], r.stats[m]["std"], r.stats[m]["n"])
            for r in rows if m in r.stats and math.isfinite(r.stats[m]["mean"])}
        for m in TABLE_METRICS
    }
    return plots.grouped_bars(datasets, labels, values, path, title=experiment)


def compare(tracker: tr.Tracker, out_dir: str | Path = "results",
            all_configs: bool = False) -> Report:
    """Collect the experiment's table and write its Markdown, CSV and PNG into ``out_dir``."""
    rows = collect(tracker, all_configs)
    report = Report(tracker.experiment_name, rows)
    if not rows:
        return report
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"compare-{slug(tracker.experiment_name)}"
    report.markdown = out / f"{stem}.md"
    report.markdown.write_text(markdown_table(rows, tracker.experiment_name))
    report.csv = write_csv(rows, out / f"{stem}.csv")
    report.figure = bar_chart(rows, out / f"{stem}.png", tracker.experiment_name)
    return report
