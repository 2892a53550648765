"""``clbench compare``: the methods x datasets table of an MLflow experiment.

Reads the runs back through the MLflow client (the same aggregation as the
parent runs: the latest FINISHED child per seed), and writes

* ``compare-<experiment>.md``: AP and AF as mean ± std (in %) with the seed count,
  methods as rows and datasets as columns;
* ``compare-<experiment>.csv``: one row per (method, dataset, config) with the mean,
  std and count of every final metric (fractions, not %);
* ``compare-<experiment>.png``: a grouped bar chart of AP and AF with std error bars
  (and the reference AP as black markers when one is given).

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
"""

from __future__ import annotations

import csv
import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from clbench import plots
from clbench import tracking as tr
from clbench.errors import ClbenchError
from clbench.parsing import slug
from clbench.provenance import git_commit

TABLE_METRICS = ("AP", "AF")
CSV_METRICS = ("AP", "AF", "BWT", "FWT", "INT", "val_AP", "time_total_seconds", "peak_rss_mb",
               "extra_storage_bytes")


#: Protocol keys shown beside a method's own hyperparameters.
SHOWN_PROTOCOL_KEYS = ("lr", "dropout", "weight_decay", "epochs")
#: The default tolerance on |clbench AP - reference AP| (issue 6's target).
DEFAULT_TOLERANCE = 0.02
MAX_PARTS_SHOWN = 12  # a table lists the busy stretches of a sweep up to this many
PAUSE_SECONDS = 600.0  # a longer time with no run in progress splits the wall time in parts


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
    #: the configuration's hyperparameters (method params and the main protocol keys)
    hparams: dict[str, str] = field(default_factory=dict)
    #: the sweep's label of this configuration (its varying keys), if any
    selection_label: str = ""
    #: how it was selected (the sweep's ``clbench.selection`` tag), if any
    selection: str = ""
    #: finished runs of this (method, dataset) in the experiment (grid and final) and
    #: their summed run time in seconds
    cell_runs: int = 0
    cell_seconds: float = 0.0
    #: the reference values of this (method, dataset), e.g. {"AP": 0.91}
    reference: dict[str, float] = field(default_factory=dict)
    #: every resolved hyperparameter of the configuration (protocol and method keys)
    config: dict[str, str] = field(default_factory=dict)
    #: each seed's AP
    per_seed_ap: dict[int, float] = field(default_factory=dict)

    def cell(self, metric: str, percent: bool = True) -> str:
        s = self.stats.get(metric)
        if s is None:
            return "-"
        k = 100.0 if percent else 1.0
        return f"{_signless_zero(s['mean'] * k, 1)} ± {s['std'] * k:.1f}"

    def delta(self, metric: str = "AP") -> float | None:
        """clbench's mean minus the reference (0-1 scale), or None."""
        s, ref = self.stats.get(metric), self.reference.get(metric)
        if s is None or ref is None:
            return None
        return s["mean"] - ref


@dataclass
class Provenance:
    """Where a table comes from: commit, wall time, commands, machine."""

    commit: str = ""
    commit_source: str = ""
    code: str = ""
    wall_seconds: float | None = None  # first run's start to last run's end
    busy_seconds: float | None = None  # at least one run in progress
    parts: list[tuple[str, str]] = field(default_factory=list)  # busy stretches (UTC)
    first_start: str = ""
    last_end: str = ""
    runs: int = 0
    run_seconds: float = 0.0
    threads: list[str] = field(default_factory=list)
    versions: dict[str, str] = field(default_factory=dict)
    run_command: str = ""
    run_command_source: str = ""
    compare_command: str = ""
    tracking_uri: str = ""
    sweep_file: str = ""


@dataclass
class Report:
    experiment: str
    rows: list[Row]
    markdown: Path | None = None
    csv: Path | None = None
    figure: Path | None = None
    provenance: Provenance | None = None


# ----------------------------------------------------------------------------- reference
def load_reference(path: str | Path) -> dict[tuple[str, str], dict[str, float]]:
    """``(method, dataset) -> {"AP": .., "AF": ..}`` from a CSV with columns
    ``method,dataset,AP[,AF]`` (other columns are ignored; values on a 0-1 scale).

    Method and dataset names are resolved like everywhere else (``bare`` is
    ``finetune``); names clbench does not know are kept as written.
    """
    path = Path(path)
    try:
        with open(path, newline="") as fh:
            reader = csv.DictReader(fh)
            fields = [f.strip() for f in reader.fieldnames or []]
            missing = [f for f in ("method", "dataset", "AP") if f not in fields]
            if missing:
                raise ClbenchError(f"reference {path} needs the column(s) "
                                   f"{', '.join(missing)} (method,dataset,AP[,AF])")
            out: dict[tuple[str, str], dict[str, float]] = {}
            for n, raw in enumerate(reader, start=2):
                row = {(k or "").strip(): (v or "").strip() for k, v in raw.items()}
                if not row.get("method"):
                    continue
                values = {}
                for metric in TABLE_METRICS:
                    text = row.get(metric, "")
                    if text == "":
                        continue
                    try:
                        values[metric] = float(text)
                    except ValueError:
                        raise ClbenchError(f"reference {path} line {n}: {metric} must be a "
                                           f"number, got {text!r}") from None
                    if not 0.0 <= abs(values[metric]) <= 1.0:
                        raise ClbenchError(f"reference {path} line {n}: {metric} = {text} is "
                                           f"not on a 0-1 scale")
                if "AP" not in values:
                    raise ClbenchError(f"reference {path} line {n}: no AP value")
                out[(_canonical_method(row["method"]), _canonical_dataset(row["dataset"]))] = \
                    values
    except FileNotFoundError:
        raise ClbenchError(f"reference file not found: {path}") from None
    if not out:
        raise ClbenchError(f"reference {path} has no rows")
    return out


def _canonical_method(name: str) -> str:
    from clbench.methods import METHODS

    try:
        return METHODS.canonical(name)
    except ClbenchError:
        return name


def _canonical_dataset(name: str) -> str:
    from clbench.datasets import DATASETS

    try:
        return DATASETS.canonical(name)
    except ClbenchError:
        return name


# ----------------------------------------------------------------------------- collect
def _method_keys(method: str) -> list[str]:
    """The method's own hyperparameter names (from its card), if it has a card."""
    from clbench.config import load_card

    try:
        return list(load_card(method).params)
    except ClbenchError:
        return []


def _hparams(method: str, params: Mapping[str, str]) -> dict[str, str]:
    keys = [*SHOWN_PROTOCOL_KEYS, *_method_keys(method)]
    return {k: params[k] for k in keys if k in params}


def _config(method: str, params: Mapping[str, str]) -> dict[str, str]:
    from clbench.spec import PROTOCOL_DEFAULTS

    keys = [*PROTOCOL_DEFAULTS, *_method_keys(method)]
    return {k: params[k] for k in dict.fromkeys(keys) if k in params}


def _selection_labels(tracker: tr.Tracker) -> dict[tuple[str, str], str]:
    """The sweep's experiment tags ``clbench.selected.<method>.<dataset>`` = ``hash (label)``:
    ``(method, dataset slug) -> (hash, label)`` text."""
    out = {}
    prefix = tr.TAG_SELECTED_PREFIX
    for k, v in tracker.experiment_tags().items():
        if k.startswith(prefix):
            method, _, dataset = k[len(prefix):].partition(".")
            out[(method, dataset)] = v
    return out


def collect(tracker: tr.Tracker, all_configs: bool = False,
            reference: Mapping[tuple[str, str], Mapping[str, float]] | None = None
            ) -> list[Row]:
    """Aggregate the experiment's finished seeds per parent run."""
    parents = tracker.parents()
    children = tracker.children()
    selected = [p for p in parents if p.tags.get(tr.TAG_SELECTED) == "true"]
    if selected and not all_configs:
        parents = selected
    by_parent: dict[str, list[tr.RunRecord]] = {}
    cost: dict[tuple[str, str], list[float]] = {}
    for c in children:
        if c.parent_id:
            by_parent.setdefault(c.parent_id, []).append(c)
        if c.finished:
            cost.setdefault((c.method, c.dataset), []).append(
                c.metrics.get("time_total_seconds", 0.0))
    labels = _selection_labels(tracker)
    rows: list[Row] = []
    for p in sorted(parents, key=lambda r: (r.method, r.dataset, r.start_time)):
        chosen = tr.select_seed_runs(by_parent.get(p.run_id, []),
                                     tr.parse_seed_list(p.tags.get(tr.TAG_REPORT_SEEDS)))
        if not chosen:
            continue
        is_selected = p.tags.get(tr.TAG_SELECTED) == "true"
        label = ""
        tag = labels.get((p.method, slug(p.dataset)), "")
        if is_selected and tag.startswith(p.config_hash):
            label = tag[len(p.config_hash):].strip().strip("()")
        runs = cost.get((p.method, p.dataset), [])
        rows.append(Row(p.method, p.dataset, p.config_hash, p.method, list(chosen),
                        tr.aggregate([c.metrics for c in chosen.values()]), p.run_id,
                        is_selected, hparams=_hparams(p.method, p.params),
                        selection_label=label, selection=p.tags.get(tr.TAG_SELECTION, ""),
                        cell_runs=len(runs), cell_seconds=float(sum(runs)),
                        reference=dict((reference or {}).get((p.method, p.dataset), {})),
                        config=_config(p.method, p.params),
                        per_seed_ap={s: c.metrics["AP"] for s, c in chosen.items()
                                     if "AP" in c.metrics}))
    counts: dict[tuple[str, str], int] = {}
    for r in rows:
        counts[(r.method, r.dataset)] = counts.get((r.method, r.dataset), 0) + 1
    multi = {m for (m, _), n in counts.items() if n > 1}
    for r in rows:
        if r.method in multi:
            r.label = f"{r.method} [{r.config_hash[:6]}]"
    return rows


def _utc(ms: float) -> str:
    return datetime.fromtimestamp(ms / 1000.0, tz=timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def busy_intervals(spans: Iterable[tuple[float, float]], join_gap: float = 0.0
                   ) -> list[tuple[float, float]]:
    """The union of ``(start, end)`` spans, as sorted disjoint intervals.

    Spans that overlap, or are less than ``join_gap`` apart, merge: with a gap of a few
    minutes, the stretches of a sweep spread over work sessions come out one interval
    each, while the short gaps inside a command (start-up, selection, logging between
    jobs) count as part of its work.
    """
    out: list[tuple[float, float]] = []
    for start, end in sorted((s, max(s, e)) for s, e in spans):
        if out and start - out[-1][1] <= join_gap:
            out[-1] = (out[-1][0], max(out[-1][1], end))
        else:
            out.append((start, end))
    return out


def _run_commit(run: tr.RunRecord) -> str:
    """The git revision a run logged ("" if none), marked when its tree was dirty."""
    rev = run.params.get("git_commit") or run.tags.get(tr.TAG_GIT_COMMIT) or ""
    if rev and run.tags.get(tr.TAG_GIT_DIRTY) == "True":
        rev += " with uncommitted changes"
    return rev


def _counted(counts: Counter[str], what: str, missing: str) -> str:
    """``"abc (12 runs)"``, or ``"abc (10 runs), def (2 runs)"``, most frequent first."""
    def runs(n: int) -> str:
        return f"{n} run{'s' if n != 1 else ''}"
    if len(counts) == 1 and "" not in counts:
        value, n = next(iter(counts.items()))
        return f"{what} {value} (all {runs(n)})".strip()
    parts = [f"{value or missing} ({runs(n)})" for value, n in counts.most_common()]
    return f"{what}s: {', '.join(parts)}".strip() if what else ", ".join(parts)


def provenance(tracker: tr.Tracker, rows: Sequence[Row], *, commit: str | None = None,
               run_command: str | None = None, compare_command: str = "") -> Provenance:
    """The table's provenance, read from MLflow (times, threads, versions, sweep file)."""
    children = [c for c in tracker.children() if c.finished]
    prov = Provenance(compare_command=compare_command, tracking_uri=tracker.uri)
    prov.sweep_file = tracker.experiment_tags().get(tr.TAG_SWEEP_FILE, "")
    commits = Counter(_run_commit(c) for c in children)
    digests = Counter(c.tags.get(tr.TAG_SOURCE_DIGEST, "") for c in children)
    if any(digests):
        prov.code = _counted(digests, "clbench source digest", "no digest (older clbench)")
    if commit:
        prov.commit, prov.commit_source = commit, "given to `clbench compare --commit`"
    elif len(commits) == 1 and "" not in commits:
        prov.commit, prov.commit_source = next(iter(commits)), "logged by the runs"
    elif any(commits):
        prov.commit = _counted(commits, "", "not logged")
        prov.commit_source = "logged by the runs, which ran more than one version"
    else:
        rev, dirty = git_commit()
        prov.commit = rev or "unknown (not a git checkout)"
        prov.commit_source = (
            "the runs do not log a git revision; this is `git rev-parse HEAD` when the table "
            "was written" + (", and the working tree had uncommitted changes" if dirty else ""))
    if children:
        start = min(c.start_time for c in children)
        end = max((c.end_time or c.start_time) for c in children)
        prov.wall_seconds = (end - start) / 1000.0
        busy = busy_intervals(((c.start_time, c.end_time or c.start_time) for c in children),
                              join_gap=PAUSE_SECONDS * 1000.0)
        prov.busy_seconds = sum(e - s for s, e in busy) / 1000.0
        prov.parts = [(_utc(s), _utc(e)) for s, e in busy]
        prov.first_start, prov.last_end = _utc(start), _utc(end)
        prov.runs = len(children)
        prov.run_seconds = float(sum(c.metrics.get("time_total_seconds", 0.0)
                                     for c in children))
        prov.threads = sorted({c.params.get("threads", "?") for c in children})
        sample = next((c for c in children if any(k.startswith("version.") for k in c.params)),
                      None)
        if sample is not None:
            prov.versions = {k[len("version."):]: v for k, v in sorted(sample.params.items())
                             if k.startswith("version.")}
    if run_command:
        prov.run_command, prov.run_command_source = run_command, "given to `clbench compare`"
    elif prov.sweep_file:
        prov.run_command = f"clbench sweep {prov.sweep_file} --tracking-uri {tracker.uri}"
        prov.run_command_source = ("reconstructed from the experiment's sweep-file tag; "
                                   "options such as --jobs are not recorded")
    return prov


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


def _signless_zero(value: float, digits: int) -> str:
    """``value`` to ``digits`` decimals, without the sign of a negative value that rounds
    to zero (joint training's AF is often -0.0001: a table should say 0.0, not -0.0)."""
    text = f"{value:.{digits}f}"
    return text[1:] if text.startswith("-") and float(text) == 0 else text


def _fraction(stats: Mapping[str, float] | None) -> str:
    return "-" if stats is None else f"{_signless_zero(stats['mean'], 3)} ± {stats['std']:.3f}"


def markdown_table(rows: Sequence[Row], experiment: str, *,
                   provenance: Provenance | None = None, reference_name: str = "",
                   tolerance: float = DEFAULT_TOLERANCE, notes: str = "") -> str:
    labels, datasets = _axes(rows)
    cells = {(r.label, r.dataset): r for r in rows}
    lines = [
        f"# {experiment}: AP and AF (mean ± std over seeds, in %)",
        "",
        "AP = average accuracy after the last task; AF = average forgetting (positive = "
        "forgot); n = number of seeds; std = population standard deviation (ddof 0).",
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
                f"{'-' if ref_af is None else _signless_zero(ref_af, 3)} | {len(r.seeds)} |")
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
            f"{r.label}/{r.dataset}: {r.selection}" for r in selections) + "."]
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
    if notes.strip():
        lines += ["", "## Notes", "", notes.strip()]
    return "\n".join(lines) + "\n"


def write_csv(rows: Sequence[Row], path: Path, tolerance: float = DEFAULT_TOLERANCE) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["method", "dataset", "config_hash", "label", "n_seeds", "seeds",
                    *(f"{m}_{s}" for m in CSV_METRICS for s in ("mean", "std")), "parent_run_id",
                    "ref_AP", "delta_AP", "ref_AF", "delta_AF", "within_tolerance",
                    "selected_config", "hyperparameters", "cell_runs", "cell_run_seconds",
                    "AP_per_seed", "config"])
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
                        " ".join(f"{k}={v}" for k, v in r.config.items())])
    return path


def bar_chart(rows: Sequence[Row], path: Path, experiment: str) -> Path:
    labels, datasets = _axes(rows)
    values = {
        m: {(r.label, r.dataset): (r.stats[m]["mean"], r.stats[m]["std"], r.stats[m]["n"])
            for r in rows if m in r.stats and math.isfinite(r.stats[m]["mean"])}
        for m in TABLE_METRICS
    }
    refs = {(r.label, r.dataset): r.reference for r in rows if r.reference}
    return plots.grouped_bars(datasets, labels, values, path, title=experiment, refs=refs)


def compare(tracker: tr.Tracker, out_dir: str | Path = "results",
            all_configs: bool = False, *, reference: str | Path | None = None,
            tolerance: float = DEFAULT_TOLERANCE, notes: str | Path | None = None,
            commit: str | None = None, run_command: str | None = None,
            compare_command: str = "") -> Report:
    """Collect the experiment's table and write its Markdown, CSV and PNG into ``out_dir``.

    ``reference``: a CSV (``method,dataset,AP[,AF]``) shown beside each cell; ``notes``: a
    Markdown file appended to the table; ``commit``/``run_command``: recorded instead of
    ``git rev-parse HEAD`` / the command reconstructed from the experiment's tags.
    """
    ref = load_reference(reference) if reference is not None else None
    note_text = ""
    if notes is not None:
        try:
            note_text = Path(notes).read_text()
        except FileNotFoundError:
            raise ClbenchError(f"notes file not found: {notes}") from None
    rows = collect(tracker, all_configs, ref)
    report = Report(tracker.experiment_name, rows)
    if not rows:
        return report
    report.provenance = provenance(tracker, rows, commit=commit, run_command=run_command,
                                   compare_command=compare_command)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"compare-{slug(tracker.experiment_name)}"
    report.markdown = out / f"{stem}.md"
    report.markdown.write_text(markdown_table(
        rows, tracker.experiment_name, provenance=report.provenance,
        reference_name=f"the reference `{reference}`" if reference is not None else "",
        tolerance=tolerance, notes=note_text))
    report.csv = write_csv(rows, out / f"{stem}.csv", tolerance)
    report.figure = bar_chart(rows, out / f"{stem}.png", tracker.experiment_name)
    return report


