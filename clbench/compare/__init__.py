"""``clbench compare``: the methods x datasets table of an MLflow experiment.

Reads the runs back through the MLflow client (the same aggregation as the
parent runs: the latest FINISHED child per seed), and writes

* ``compare-<experiment>.md``: AP and AF as mean ± std (in %) with the seed count,
  methods as rows and datasets as columns;
* ``compare-<experiment>.csv``: one row per (method, dataset, config) with the mean,
  std and count of every final metric (fractions, not %);
* ``compare-<experiment>.png``: a grouped bar chart of AP and AF with std error bars
  (and the reference AP as black markers when one is given);
* ``compare-<experiment>-cd.png``: the critical-difference diagram of the methods' average
  ranks across datasets (from 2 datasets and 3 methods on).

The statistics (:mod:`~clbench.compare.stats`, put together by
:mod:`~clbench.compare.significance`): a 95% t-interval of AP and AF over seeds per cell;
per dataset, each row against the best mean AP, paired by seed (Wilcoxon signed-rank, or
an exact permutation test below 6 seeds; Holm-adjusted), the rows not significantly worse
than the best in bold; across datasets, average ranks, the Friedman test and the Nemenyi
post-hoc test.

In a sweep's experiment only the selected configurations are shown (unless
``all_configs``); when several configurations of one method remain, each is its
own row, labelled with the start of its config hash.

With a reference (a CSV with columns ``method,dataset,AP[,AF]``, e.g. a paper's
numbers on a 0-1 scale) the Markdown and CSV also show the reference beside each
cell, the difference (clbench - reference) and whether it is within a tolerance.
The Markdown always records, per (method, dataset), the hyperparameters of the
shown configuration (the sweep's selection and its varying keys when there is
one), the number of runs and their summed run time (grid and final seeds), and
for the whole table: the git commit, the wall time (the time at least one run was in
progress, from MLflow's run start and end times, with its parts when a sweep was spread
over work sessions), torch threads per job, package versions, the command that
produced the runs and the command that wrote the table.

The modules: :mod:`~clbench.compare.rows` (the records and shared settings),
:mod:`~clbench.compare.reference` (the reference CSV), :mod:`~clbench.compare.collect`
(rows and provenance read from MLflow) and :mod:`~clbench.compare.tables` (Markdown, CSV,
bar chart); :func:`compare` here puts them together.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from clbench import plots
from clbench import tracking as tr
from clbench.compare.collect import _counted as _counted
from clbench.compare.collect import busy_intervals, collect, provenance
from clbench.compare.reference import load_reference
from clbench.compare.rows import (
    CSV_METRICS,
    DEFAULT_TOLERANCE,
    MAX_PARTS_SHOWN,
    PAUSE_SECONDS,
    SHOWN_PROTOCOL_KEYS,
    TABLE_METRICS,
    Provenance,
    Report,
    Row,
)
from clbench.compare.significance import analyse, markdown_section, to_json
from clbench.compare.tables import _duration as _duration
from clbench.compare.tables import bar_chart, markdown_table, write_csv
from clbench.errors import ClbenchError
from clbench.parsing import slug

__all__ = [
    "CSV_METRICS",
    "DEFAULT_TOLERANCE",
    "MAX_PARTS_SHOWN",
    "PAUSE_SECONDS",
    "SHOWN_PROTOCOL_KEYS",
    "TABLE_METRICS",
    "Provenance",
    "Report",
    "Row",
    "analyse",
    "bar_chart",
    "busy_intervals",
    "collect",
    "compare",
    "load_reference",
    "markdown_section",
    "markdown_table",
    "provenance",
    "to_json",
    "write_csv",
]


def compare(tracker: tr.Tracker, out_dir: str | Path = "results",
            all_configs: bool = False, *, reference: str | Path | None = None,
            tolerance: float = DEFAULT_TOLERANCE, notes: str | Path | None = None,
            commit: str | None = None, run_command: str | None = None,
            compare_command: str = "", seeds: Sequence[int] | None = None) -> Report:
    """Collect the experiment's table and write its Markdown, CSV and PNG into ``out_dir``.

    ``reference``: a CSV (``method,dataset,AP[,AF]``) shown beside each cell; ``notes``: a
    Markdown file appended to the table; ``commit``/``run_command``: recorded instead of
    ``git rev-parse HEAD`` / the command reconstructed from the experiment's tags;
    ``seeds``: only these seeds of each row (means, tests and ranks over them), in files
    named ``compare-<experiment>-seeds-<seeds>.*`` so that they sit beside the table of
    every seed.
    """
    ref = load_reference(reference) if reference is not None else None
    note_text = ""
    if notes is not None:
        try:
            note_text = Path(notes).read_text()
        except FileNotFoundError:
            raise ClbenchError(f"notes file not found: {notes}") from None
    only = None if seeds is None else sorted(set(seeds))
    rows = collect(tracker, all_configs, ref, only)
    report = Report(tracker.experiment_name, rows, seeds=only)
    if not rows:
        return report
    report.provenance = provenance(tracker, rows, commit=commit, run_command=run_command,
                                   compare_command=compare_command)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"compare-{slug(tracker.experiment_name)}"
    title = tracker.experiment_name
    if only is not None:
        stem += f"-seeds-{'-'.join(map(str, only))}"
        title += f" (seeds {', '.join(map(str, only))})"
    report.columns, report.ranking = analyse(rows)
    rk = report.ranking
    if not rk.note:
        report.cd_figure = plots.cd_diagram(
            rk.ranks, rk.nemenyi, out / f"{stem}-cd.png",
            f"{title}: average rank of the mean AP over "
            f"{len(rk.datasets)} datasets (Friedman p = {rk.friedman_p:.3g})"
            if rk.friedman_p is not None else title,
            order=list(dict.fromkeys(r.label for r in rows)))  # the bar chart's styles
    report.markdown = out / f"{stem}.md"
    report.markdown.write_text(markdown_table(
        rows, tracker.experiment_name, provenance=report.provenance, seeds=only,
        reference_name=f"the reference `{reference}`" if reference is not None else "",
        tolerance=tolerance, notes=note_text,
        statistics=markdown_section(rows, report.columns, rk,
                                    report.cd_figure.name if report.cd_figure else "")))
    report.csv = write_csv(rows, out / f"{stem}.csv", tolerance)
    report.figure = bar_chart(rows, out / f"{stem}.png", title)
    return report
