"""``clbench compare``: the AP / AF table of an experiment (Markdown, CSV, bar chart)."""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape
from rich.table import Table

from clbench.cli.app import ClbenchCommand, app, console
from clbench.cli.options import (
    TrackingOpt,
    check_given,
    check_output_dir,
    check_output_file,
)
from clbench.cli.stores import open_tracking
from clbench.errors import ClbenchError
from clbench.parsing import parse_seeds, seeds_text

if TYPE_CHECKING:
    from clbench.compare.rows import Row


@app.command(cls=ClbenchCommand)
def compare(
    experiment: Annotated[str, typer.Option(help="MLflow experiment to read.")] = "clbench",
    tracking_uri: TrackingOpt = None,
    out: Annotated[Path, typer.Option(help="Directory for the .md, .csv and .png.")]
        = Path("results"),
    all_configs: Annotated[bool, typer.Option(
        "--all-configs", help="In a sweep, show every configuration, not only the selected.")]
        = False,
    reference: Annotated[Path | None, typer.Option(
        help="CSV of published numbers (columns method,dataset,AP[,AF], 0-1 scale) shown "
             "beside each cell with the difference.")] = None,
    tolerance: Annotated[float, typer.Option(
        help="Target on |clbench AP - reference AP| (0-1 scale).")] = 0.02,
    notes: Annotated[Path | None, typer.Option(
        help="Markdown file appended to the table as its notes.")] = None,
    commit: Annotated[str | None, typer.Option(
        help="Git revision the runs used (default: the commit the runs logged, each version "
             "with its run count if they differ; if none logged one, `git rev-parse HEAD` "
             "now, said so).")]
        = None,
    run_command: Annotated[str | None, typer.Option(
        help="The exact command that produced the runs (default: reconstructed from the "
             "experiment's sweep-file tag).")] = None,
    json_out: Annotated[Path | None, typer.Option(
        "--json", help="Also write the table as JSON here: per row the mean, std, 95% CI "
                       "and per-seed values of AP and AF and the test against its "
                       "dataset's best; per dataset the tests; the ranking across datasets.")]
        = None,
    seeds: Annotated[str | None, typer.Option(
        help="Only these seeds of each row, e.g. 0,1000,2000 or 0-4: means, intervals, "
             "tests and ranks over them (to compare rows on the seeds they share). Files "
             "are named compare-<experiment>-seeds-<seeds>.*")] = None,
) -> None:
    """Table of AP and AF per method x dataset from MLflow (Markdown, CSV, bar chart).

    AP and AF as mean ± std with the seed count, written as Markdown, CSV and
    a grouped bar chart PNG, with the selected hyperparameters, commit, wall
    time and commands (and a reference, if given). With the statistics: a 95%
    confidence interval per cell, each method against its dataset's best
    (paired over seeds, Holm-adjusted; ties in bold), and across datasets the
    average ranks, the Friedman test and a critical-difference diagram PNG.
    """
    import json
    import shlex

    from clbench.compare import compare as do_compare
    from clbench.tracking import Tracker

    if not (math.isfinite(tolerance) and 0.0 <= tolerance <= 1.0):
        raise ClbenchError(f"--tolerance is on a 0-1 scale, got {tolerance}")
    check_given(tracking_uri=tracking_uri, experiment=experiment)
    check_output_dir(out, "--out")
    check_output_file(json_out, "--json")
    only = None if seeds is None else parse_seeds(seeds)
    uri, _ = open_tracking(tracking_uri, experiment, must_exist=True)
    command = shlex.join(["clbench", *sys.argv[1:]]) if sys.argv[1:2] == ["compare"] else ""
    report = do_compare(Tracker(uri, experiment, create=False), out, all_configs,
                        reference=reference, tolerance=tolerance, notes=notes, commit=commit,
                        run_command=run_command, compare_command=command, seeds=only)
    if not report.rows:
        among = "" if only is None else f" among seeds {seeds_text(only)}"
        raise ClbenchError(f"experiment {experiment!r} at {uri} has no finished runs"
                           f"{among} to compare")
    datasets = list(dict.fromkeys(r.dataset for r in report.rows))
    restricted = "" if only is None else f", only seeds {seeds_text(only)}"
    table = Table(title=escape(f"{experiment}: AP / AF in % (mean ± std [95% CI], n seeds"
                               f"{restricted})"),
                  caption="bold AP: the dataset's best, or not significantly worse than it "
                          "(paired over seeds, Holm-adjusted, alpha = 0.05)")
    table.add_column("method")
    for d in datasets:
        table.add_column(escape(d), justify="right")
    cells = {(r.label, r.dataset): r for r in report.rows}
    for label in dict.fromkeys(r.label for r in report.rows):
        row = []
        for d in datasets:
            r = cells.get((label, d))
            if r is None:
                row.append("-")
                continue
            ap = f"AP {r.cell('AP')} {r.ci_text('AP')}"
            text = (f"[bold]{ap}[/]" if r.vs_best and r.vs_best.tie else ap) + (
                f"\nAF {r.cell('AF')} {r.ci_text('AF')} (n={len(r.seeds)})"
                f"\n{escape(_against(r))}")
            delta = r.delta("AP")
            if delta is not None:
                text += f"\nref {r.reference['AP'] * 100:.1f}, Δ {delta * 100:+.1f}"
            if r.degenerate:
                text += "\n[yellow]⚠ degenerate[/]"
            row.append(text)
        table.add_row(escape(label), *row)
    console.print(table)
    for r in report.rows:
        if r.degenerate:
            console.print(f"[yellow]⚠[/] {escape(r.label)} on {escape(r.dataset)}: learned "
                          f"nothing (see the table's notes for the check) in "
                          f"{escape(r.degenerate_text())}", highlight=False, soft_wrap=True)
    for d, col in report.columns.items():
        console.print(f"{escape(d)}: {escape(col.describe())}", highlight=False,
                      soft_wrap=True)
    rk = report.ranking
    if rk is not None:
        ranks = ", ".join(f"{m} {v:.2f}" for m, v in sorted(rk.ranks.items(),
                                                             key=lambda x: x[1]))
        friedman = "-" if rk.friedman_p is None else f"{rk.friedman_p:.3g}"
        text = (f"across datasets: not computed: {rk.note}" if rk.note else
                f"across datasets: average rank of the mean AP (1 = best): {ranks}; "
                f"Friedman p = {friedman}")
        console.print(escape(text), highlight=False, soft_wrap=True)
    if json_out is not None:
        from clbench.compare import to_json

        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(to_json(report), indent=2, allow_nan=False) + "\n")
    for path in (report.markdown, report.csv, report.figure, report.cd_figure, json_out):
        if path is not None:
            console.print(f"wrote {path}", markup=False, highlight=False)


def _against(r: Row) -> str:
    """The row against its dataset's best, one short line."""
    v = r.vs_best
    if v is None or (v.best and not v.tie):
        return ""
    if v.best:
        return "best"
    if v.tie is None:
        return "not tested" if v.note else ""
    word = "tie with best" if v.tie else "worse than best"
    return f"{word}, Holm p {v.p_holm:.3g}"
