"""Reading an experiment back from MLflow, through :class:`~clbench.tracking.Tracker`'s
methods: its rows (the same aggregation as the parent runs: the latest FINISHED child per
seed) and the provenance of its table."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timezone

from clbench import tracking as tr
from clbench.compare.rows import (
    PAUSE_SECONDS,
    SETTING_NAMES,
    SHOWN_PROTOCOL_KEYS,
    Provenance,
    Row,
)
from clbench.errors import ClbenchError
from clbench.parsing import parse_seed_list, slug
from clbench.provenance import git_commit


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
    """The sweep's experiment tags ``<TAG_SELECTED_PREFIX><method>.<dataset slug>`` =
    ``hash (label)``: ``(method, dataset slug) -> (hash, label)`` text."""
    out = {}
    prefix = tr.TAG_SELECTED_PREFIX
    for k, v in tracker.experiment_tags().items():
        if k.startswith(prefix):
            method, _, dataset = k[len(prefix):].partition(".")
            out[(method, dataset)] = v
    return out


def collect(tracker: tr.Tracker, all_configs: bool = False,
            reference: Mapping[tuple[str, ...], Mapping[str, float]] | None = None,
            seeds: Iterable[int] | None = None) -> list[Row]:
    """Aggregate the experiment's finished seeds per parent run (only ``seeds`` of them
    when given: a row then has those of its seeds it ran)."""
    only = None if seeds is None else set(seeds)
    parents = tracker.parents()
    children = tracker.children()
    selected = [p for p in parents if p.tags.get(tr.TAG_SELECTED) == "true"]
    if selected and not all_configs:
        parents = selected
    by_parent: dict[str, list[tr.RunRecord]] = {}
    cost: dict[tuple[str, str, str], list[float]] = {}
    for c in children:
        if c.parent_id:
            by_parent.setdefault(c.parent_id, []).append(c)
        if c.finished:
            cost.setdefault((c.method, c.dataset, c.params.get("setting", "task")), []).append(
                c.metrics.get("time_total_seconds", 0.0))
    labels = _selection_labels(tracker)
    rows: list[Row] = []
    for p in sorted(parents, key=lambda r: (r.method, r.dataset, r.start_time)):
        wanted = parse_seed_list(p.tags.get(tr.TAG_REPORT_SEEDS))
        if only is not None:
            wanted = only if wanted is None else wanted & only
        chosen = tr.select_seed_runs(by_parent.get(p.run_id, []), wanted)
        if not chosen:
            continue
        is_selected = p.tags.get(tr.TAG_SELECTED) == "true"
        label = ""
        tag = labels.get((p.method, slug(p.dataset)), "")
        if is_selected and tag.startswith(p.config_hash):
            label = tag[len(p.config_hash):].strip().strip("()")
        setting = p.params.get("setting", "task")
        runs = cost.get((p.method, p.dataset, setting), [])
        ref_key = (p.method, p.dataset) if setting == "task" else (p.method, p.dataset, setting)
        rows.append(Row(p.method, p.dataset, p.config_hash, p.method, list(chosen),
                        tr.aggregate([c.metrics for c in chosen.values()]), p.run_id,
                        is_selected, hparams=_hparams(p.method, p.params),
                        selection_label=label, selection=p.tags.get(tr.TAG_SELECTION, ""),
                        grid_seeds=_grid_seeds(p.tags),
                        cell_runs=len(runs), cell_seconds=float(sum(runs)),
                        reference=dict((reference or {}).get(ref_key, {})),
                        config=_config(p.method, p.params),
                        per_seed_ap={s: c.metrics["AP"] for s, c in chosen.items()
                                     if "AP" in c.metrics},
                        per_seed_af={s: c.metrics["AF"] for s, c in chosen.items()
                                     if "AF" in c.metrics},
                        degenerate={s: c.tags[tr.TAG_DEGENERATE] for s, c in chosen.items()
                                    if c.tags.get(tr.TAG_DEGENERATE, "none") != "none"},
                        degenerate_check={s: _check_kind(c.tags) for s, c in chosen.items()},
                        setting=setting, weakest=_weakest(chosen),
                        per_seed_val_ap={s: c.metrics["val_AP"] for s, c in chosen.items()
                                         if "val_AP" in c.metrics}))
    label_rows(rows)
    return rows


def _grid_seeds(tags: Mapping[str, str]) -> list[int] | None:
    """The grid seeds a sweep selected this configuration on, or None. Stores written
    before the ``clbench.grid_seeds`` tag have them only in the selection's text
    (``... over grid seeds 0,1000 among ...``)."""
    seeds = parse_seed_list(tags.get(tr.TAG_GRID_SEEDS))
    if seeds is None:
        found = re.search(r"over grid seeds ([0-9,]+)", tags.get(tr.TAG_SELECTION, ""))
        seeds = parse_seed_list(found.group(1)) if found else None
    return None if seeds is None else sorted(seeds)


def _weakest(chosen: dict[int, tr.RunRecord]) -> dict[int, tuple[float, int]]:
    """Per seed, the run's ``learned_bacc_min`` and the task it was on (runs logged with
    both)."""
    out = {}
    for s, c in chosen.items():
        value, task = c.metrics.get("learned_bacc_min"), c.tags.get(tr.TAG_WEAKEST_TASK, "")
        if value is not None and task.isdigit():
            out[s] = (float(value), int(task))
    return out


def _check_kind(tags: dict[str, str]) -> str:
    """How a run was checked for degenerate tasks: ``balanced``, ``majority`` (a run
    logged with the tag but before its kind was), or ``none`` (never checked)."""
    if tr.TAG_DEGENERATE not in tags:
        return "none"
    return tags.get(tr.TAG_DEGENERATE_CHECK, "majority")


def label_rows(rows: Sequence[Row]) -> None:
    """Each row's label: its method, with its setting when the rows have more than one
    (``finetune · Class-IL``), and the start of its config hash when its method has more
    than one configuration in that setting. A label is one configuration, so a table
    cell never mixes settings."""
    mixed = len({r.setting for r in rows}) > 1
    counts = Counter((r.method, r.setting, r.dataset) for r in rows)
    multi = {(m, s) for (m, s, _), n in counts.items() if n > 1}
    for r in rows:
        label = f"{r.method} · {SETTING_NAMES.get(r.setting, r.setting)}" if mixed else r.method
        r.label = f"{label} [{r.config_hash[:6]}]" if (r.method, r.setting) in multi else label


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
