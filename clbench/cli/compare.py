"""``clbench compare``: the AP / AF table of an experiment (Markdown, CSV, bar chart)."""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from clbench.cli.app import ClbenchCommand, app, console
from clbench.cli.options import TrackingOpt, check_given, check_output_dir
from clbench.cli.stores import open_tracking
from clbench.errors import ClbenchError


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
) -> None:
    """Table of AP and AF per method x dataset from MLflow (Markdown, CSV, bar chart).

    AP and AF as mean ± std with the seed count, written as Markdown, CSV and
    a grouped bar chart PNG, with the selected hyperparameters, commit, wall
    time and commands (and a reference, if given).
    """
    import shlex

    from clbench.compare import compare as do_compare
    from clbench.tracking import Tracker

    if not (math.isfinite(tolerance) and 0.0 <= tolerance <= 1.0):
        raise ClbenchError(f"--tolerance is on a 0-1 scale, got {tolerance}")
    check_given(tracking_uri=tracking_uri, experiment=experiment)
    check_output_dir(out, "--out")
    uri, _ = open_tracking(tracking_uri, experiment, must_exist=True)
    command = shlex.join(["clbench", *sys.argv[1:]]) if sys.argv[1:2] == ["compare"] else ""
    report = do_compare(Tracker(uri, experiment, create=False), out, all_configs,
                        reference=reference, tolerance=tolerance, notes=notes, commit=commit,
                        run_command=run_command, compare_command=command)
    if not report.rows:
        raise ClbenchError(f"experiment {experiment!r} at {uri} has no finished runs to compare")
    datasets = list(dict.fromkeys(r.dataset for r in report.rows))
    table = Table(title=escape(f"{experiment}: AP / AF in % (mean ± std, n seeds)"))
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
            text = f"AP {r.cell('AP')}\nAF {r.cell('AF')} (n={len(r.seeds)})"
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
                          f"nothing (within one test node of the majority-class rate) in "
                          f"{escape(r.degenerate_text())}", highlight=False, soft_wrap=True)
    for path in (report.markdown, report.csv, report.figure):
        console.print(f"wrote {path}", markup=False, highlight=False)
