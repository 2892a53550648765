"""The outputs of ``clbench compare``: the Markdown table, the CSV and the bar chart."""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

from clbench import plots
from clbench.compare.rows import (
    CSV_METRICS,
    DEFAULT_TOLERANCE,
    MAX_PARTS_SHOWN,
    PAUSE_SECONDS,
    TABLE_METRICS,
    Provenance,
    Row,
    signless_zero,
)
from clbench.compare.stats import ALPHA


def _axes(rows: Sequence[Row]) -> tuple[list[str], list[str]]:
    labels = list(dict.fromkeys(r.label for r in rows))
    datasets = list(dict.fromkeys(r.dataset for r in rows))
    return labels, datasets


def _duration(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "-"
    seconds = round(seconds)
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h} h {m:02d} min" if h else f"{m} min {s:02d} s"


def _wall_time(p: Provenance) -> str:
    """The wall-time sentence: busy time, its parts, and the whole span."""
    span = (f"from the first run's start ({p.first_start}) to the last run's end "
            f"({p.last_end})")
    if len(p.parts) <= 1:
        return f"{_duration(p.wall_seconds)}, {span}"
    shown = p.parts if len(p.parts) <= MAX_PARTS_SHOWN else []
    listed = (": " + ", ".join(f"{a} to {b}" for a, b in shown)) if shown else ""
    return (f"{_duration(p.busy_seconds)} with at least one run in progress, in "
            f"{len(p.parts)} parts{listed} (pauses of over {PAUSE_SECONDS / 60:.0f} min "
            f"between runs excluded; "
            f"{_duration(p.wall_seconds)} {span})")


def _fraction(stats: Mapping[str, float] | None) -> str:
    return "-" if stats is None else f"{signless_zero(stats['mean'], 3)} ± {stats['std']:.3f}"


def _settings_line(rows: Sequence[Row]) -> str:
    names = list(dict.fromkeys(r.setting_name for r in rows))
    if len(names) == 1:
        return f"Setting: {names[0]}."
    return (f"Settings: {', '.join(names)}; each row is one setting (its label says which), "
            "so no cell mixes them.")


def _seeds_lines(rows: Sequence[Row], seeds: Sequence[int] | None) -> list[str]:
    """The restriction to some seeds, stated with the rows it left with fewer; without
    one, a warning when the rows ran different seeds (their means are over different
    seeds, and a seed fixes the class order and the split)."""
    if seeds is None:
        sets = {tuple(sorted(r.seeds)) for r in rows}
        if len(sets) < 2:
            return []
        shared = sorted(set.intersection(*(set(s) for s in sets)))

        by_label: dict[str, list[Row]] = {}
        for r in rows:
            by_label.setdefault(r.label, []).append(r)
        # a method whose rows on two or more datasets all ran the same seeds is named once
        whole = {label: tuple(sorted(mine[0].seeds)) for label, mine in by_label.items()
                 if len(mine) > 1 and len({tuple(sorted(r.seeds)) for r in mine}) == 1}

        def named(s: tuple[int, ...]) -> str:
            cells = [label for label, seeds_ in whole.items() if seeds_ == s]
            cells += [f"{r.label}/{r.dataset}" for r in rows
                      if r.label not in whole and tuple(sorted(r.seeds)) == s]
            return f"seeds {' '.join(map(str, s))}: {', '.join(cells)}"
        groups = "; ".join(named(s) for s in sorted(sets, key=lambda s: (-len(s), s)))
        alone = " (a method named without a dataset: on every dataset)" if whole else ""
        hint = (f" `clbench compare --seeds {','.join(map(str, shared))}` writes the table "
                f"on the seeds every row shares." if len(shared) > 1 else "")
        return [f"Seeds differ between rows, so their means are over different seeds "
                f"(a seed fixes the class order and the split){alone}: {groups}.{hint}", ""]
    text = (f"Seeds: only {', '.join(map(str, seeds))} of each row (`--seeds`): every mean, "
            f"interval, test and rank is over them.")
    short = [f"{r.label}/{r.dataset} ({len(r.seeds)})" for r in rows
             if len(r.seeds) < len(seeds)]
    if short:
        text += " Rows that ran fewer of them: " + "; ".join(short) + "."
    return [text, ""]


def _untested(r: Row) -> bool:
    v = r.vs_best
    return v is not None and not v.best and v.tie is None and bool(v.note)


def _ap_text(r: Row) -> str:
    """``AP 92.0 ± 2.4``, bold when the row ties with its column's best, † when untested."""
    text = f"AP {r.cell('AP')}"
    if r.vs_best is not None and r.vs_best.tie:
        return f"**{text}**"
    return f"{text} †" if _untested(r) else text


def markdown_table(rows: Sequence[Row], experiment: str, *,
                   provenance: Provenance | None = None, reference_name: str = "",
                   tolerance: float = DEFAULT_TOLERANCE, notes: str = "",
                   statistics: str = "", seeds: Sequence[int] | None = None) -> str:
    """The table in Markdown; ``statistics`` (the Markdown section of
    :func:`~clbench.compare.significance.markdown_section`) goes before the
    configurations; ``seeds``: the seeds the rows were restricted to, if they were."""
    labels, datasets = _axes(rows)
    cells = {(r.label, r.dataset): r for r in rows}
    lines = [
        f"# {experiment}: AP and AF (mean ± std over seeds, in %)",
        "",
        "AP = average accuracy after the last task; AF = average forgetting (positive = "
        "forgot); n = number of seeds; std = population standard deviation (ddof 0).",
        "",
        _settings_line(rows),
        "",
        *_seeds_lines(rows, seeds),
        "| method | " + " | ".join(datasets) + " |",
        "|---|" + "---|" * len(datasets),
    ]
    for label in labels:
        out = []
        for d in datasets:
            r = cells.get((label, d))
            out.append("-" if r is None else
                       f"{_ap_text(r)} · AF {r.cell('AF')} (n={len(r.seeds)})"
                       + (" ⚠" if r.degenerate else ""))
        lines.append(f"| {label} | " + " | ".join(out) + " |")
    if any(r.vs_best is not None and r.vs_best.tie for r in rows):
        lines += ["", f"**Bold** AP = the dataset's best mean AP, or not significantly worse "
                  f"than it (paired two-sided test over the seeds, Holm-adjusted, alpha = "
                  f"{ALPHA:g}); the intervals, tests and p-values are under Statistics."]
    untested: dict[tuple[str, str], list[str]] = {}  # (dataset, reason) -> rows
    for r in rows:
        if _untested(r) and r.vs_best is not None:
            untested.setdefault((r.dataset, r.vs_best.note), []).append(r.label)
    if untested:
        lines += ["", "† = not tested against the dataset's best: " + "; ".join(
            f"{', '.join(names)} on {dataset}: {note}"
            for (dataset, note), names in sorted(  # by dataset, as the columns
                untested.items(), key=lambda kv: datasets.index(kv[0][0]))) + "."]
    lines += degenerate_notes(rows)
    if any(r.reference for r in rows):
        ref = reference_name or "reference"
        lines += [
            "",
            f"## Against {ref}",
            "",
            f"On a 0-1 scale; Δ = clbench - reference; target: absolute Δ AP ≤ {tolerance:g}.",
            "",
            "| method | dataset | clbench AP | reference AP | Δ AP | within ±"
            f"{tolerance:g} | clbench AF | reference AF | n |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for r in rows:
            d = r.delta("AP")
            ok = "-" if d is None else ("yes" if abs(d) <= tolerance + 1e-12 else "**no**")
            ref_ap = r.reference.get("AP")
            ref_af = r.reference.get("AF")
            lines.append(
                f"| {r.label} | {r.dataset} | {_fraction(r.stats.get('AP'))} | "
                f"{'-' if ref_ap is None else f'{ref_ap:.3f}'} | "
                f"{'-' if d is None else f'{d:+.3f}'} | {ok} | "
                f"{_fraction(r.stats.get('AF'))} | "
                f"{'-' if ref_af is None else signless_zero(ref_af, 3)} | {len(r.seeds)} |")
    if statistics:
        lines += ["", statistics]
    lines += weakest_section(rows)
    lines += [
        "",
        "## Configurations",
        "",
        "The hyperparameters of each row's configuration; `selected` is what the sweep "
        "chose (its varying keys), `runs` and `run time` count every finished run of the "
        "(method, dataset) in the experiment (grid and final seeds; summed run time, not "
        "wall time).",
        "",
        "| method | dataset | selected | hyperparameters | seeds | runs | run time |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        hp = ", ".join(f"{k}={v}" for k, v in r.hparams.items()) or "-"
        lines.append(
            f"| {r.label} | {r.dataset} | {r.selection_label or '-'} | {hp} | "
            f"{' '.join(map(str, r.seeds))} | {r.cell_runs} | {_duration(r.cell_seconds)} |")
    selections = [r for r in rows if r.selection]
    if selections:
        lines += ["", "Selection: " + "; ".join(
            f"{r.label}/{r.dataset}: {r.selection_text()}" for r in selections) + "."]
    if provenance is not None:
        p = provenance
        lines += ["", "## Provenance", ""]
        lines.append(f"- Commit: `{p.commit}` ({p.commit_source}).")
        if p.code:
            lines.append(f"- Code the runs recorded: {p.code}.")
        if p.wall_seconds is not None:
            lines.append(f"- Wall time: {_wall_time(p)}; {p.runs} finished runs, "
                         f"{_duration(p.run_seconds)} of summed run time; torch threads per "
                         f"job: {', '.join(p.threads)}.")
        if p.run_command:
            lines.append(f"- Runs produced by: `{p.run_command}` ({p.run_command_source}).")
        if p.compare_command:
            lines.append(f"- Table written by: `{p.compare_command}`.")
        lines.append(f"- MLflow store: `{p.tracking_uri}`, experiment `{experiment}`.")
        if p.versions:
            lines.append("- Versions: " + ", ".join(f"{k} {v}" for k, v in p.versions.items())
                         + ".")
    body = _notes_body(notes)
    if body:
        lines += ["", "## Notes", "", body]
    return "\n".join(lines) + "\n"


def _notes_body(notes: str) -> str:
    """The notes without a leading ``## Notes`` heading of their own (the table adds
    one), so a notes file that starts with it is not headed twice."""
    body = notes.strip()
    first, _, rest = body.partition("\n")
    if first.strip().lstrip("#").strip().lower() == "notes" and first.lstrip().startswith("#"):
        body = rest.strip()
    return body


def write_csv(rows: Sequence[Row], path: Path, tolerance: float = DEFAULT_TOLERANCE) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["method", "dataset", "config_hash", "label", "n_seeds", "seeds",
                    *(f"{m}_{s}" for m in CSV_METRICS for s in ("mean", "std")), "parent_run_id",
                    "ref_AP", "delta_AP", "ref_AF", "delta_AF", "within_tolerance",
                    "selected_config", "hyperparameters", "cell_runs", "cell_run_seconds",
                    "AP_per_seed", "config", "degenerate_tasks", "setting", "AP_ci_low",
                    "AP_ci_high", "AF_ci_low", "AF_ci_high", "AF_per_seed", "best_in_dataset",
                    "vs_best_test", "vs_best_p", "vs_best_p_holm", "tie_with_best", "vs_best_note",
                    "weakest_learned_task"])
        for r in rows:
            vals = []
            for m in CSV_METRICS:
                s = r.stats.get(m)
                vals += [s["mean"], s["std"]] if s else ["", ""]
            d_ap, d_af = r.delta("AP"), r.delta("AF")
            within = "" if d_ap is None else str(abs(d_ap) <= tolerance + 1e-12).lower()
            w.writerow([r.method, r.dataset, r.config_hash, r.label, len(r.seeds),
                        " ".join(map(str, r.seeds)), *vals, r.parent_id,
                        r.reference.get("AP", ""), "" if d_ap is None else d_ap,
                        r.reference.get("AF", ""), "" if d_af is None else d_af, within,
                        r.selection_label, " ".join(f"{k}={v}" for k, v in r.hparams.items()),
                        r.cell_runs, r.cell_seconds,
                        " ".join(f"{k}:{v!r}" for k, v in r.per_seed_ap.items()),
                        " ".join(f"{k}={v}" for k, v in r.config.items()),
                        r.degenerate_text(), r.setting, *_csv_stats(r), r.weakest_text()])
    return path


def _csv_stats(r: Row) -> list[object]:
    """The intervals and the test against the column's best, as CSV cells."""
    cis: list[object] = []
    for m in TABLE_METRICS:
        ci = r.ci.get(m)
        cis += list(ci) if ci else ["", ""]
    v = r.vs_best
    if v is None:
        return [*cis, " ".join(f"{k}:{x!r}" for k, x in r.per_seed_af.items()),
                "", "", "", "", "", ""]
    return [*cis, " ".join(f"{k}:{x!r}" for k, x in r.per_seed_af.items()),
            str(v.best).lower(), v.test, "" if v.p is None else v.p,
            "" if v.p_holm is None else v.p_holm,
            "" if v.tie is None else str(v.tie).lower(), v.note]


def bar_chart(rows: Sequence[Row], path: Path, experiment: str) -> Path:
    labels, datasets = _axes(rows)
    values = {
        m: {(r.label, r.dataset): (r.stats[m]["mean"], r.stats[m]["std"], r.stats[m]["n"])
            for r in rows if m in r.stats and math.isfinite(r.stats[m]["mean"])}
        for m in TABLE_METRICS
    }
    refs = {(r.label, r.dataset): r.reference for r in rows if r.reference}
    return plots.grouped_bars(datasets, labels, values, path, title=experiment, refs=refs)


#: What the notes say of the seeds checked by the check's first form, or never checked.
_CHECK_NOTES = (
    ("majority", "Checked by the first form of the check (R[i][i] no more than one test node "
                 "above the majority-class rate, which also flags a task that learned but "
                 "scores at or below that rate on an imbalanced test split; records made "
                 "before the balanced check)"),
    ("none", "Not checked for degenerate tasks (runs recorded before the check existed)"),
)


def degenerate_notes(rows: Sequence[Row]) -> list[str]:
    """The notes on degenerate tasks under the table: the flagged cells, and the seeds
    that were checked only by the check's first form or not at all."""
    lines: list[str] = []
    flagged = [r for r in rows if r.degenerate]
    if flagged:
        cells = "; ".join(f"{r.label}/{r.dataset}: {r.degenerate_text()}" for r in flagged)
        lines += ["", "⚠ = degenerate tasks: a task whose balanced accuracy among its own "
                  "classes, right after it was learned, was no more than one test node above "
                  "chance (1/K: what predicting one class for every node scores) learned "
                  f"nothing, which AP and AF can hide: {cells}."]
    for kind, text in _CHECK_NOTES:
        found = [(r, r.seeds_checked(kind)) for r in rows if r.seeds_checked(kind)]
        if found:
            cells = "; ".join(f"{r.label}/{r.dataset} ({_seeds(s)})" for r, s in found)
            lines += ["", f"{text}: {cells}."]
    return lines


def weakest_section(rows: Sequence[Row]) -> list[str]:
    """The section on R's diagonal: per cell, its weakest task right after it was learned
    (none when no row's runs have the confusion matrices)."""
    shown = [r for r in rows if r.weakest]
    if not shown:
        return []
    lines = ["", "## Each task right after it was learned", "",
             "R's diagonal, read per task: each task's balanced accuracy (the mean recall over "
             "its classes, predicted among its own classes) on its test nodes right after it "
             "was learned. Per cell: the lowest over the tasks of every seed, where it was, and "
             "the mean over seeds of each run's lowest. Chance is 1/K for K classes (0.5 with "
             "two classes per task); a task near chance learned little, which AP and AF "
             "average away.", "",
             "| method | dataset | lowest (seed, task) | mean of each seed's lowest | n |",
             "|---|---|---|---|---|"]
    for r in shown:
        values = [v for v, _ in r.weakest.values()]
        lines.append(f"| {r.label} | {r.dataset} | {r.weakest_text()} | "
                     f"{sum(values) / len(values):.3f} | {len(values)} |")
    return lines


def _seeds(seeds: Sequence[int]) -> str:
    return f"seed {seeds[0]}" if len(seeds) == 1 else f"{len(seeds)} seeds"
