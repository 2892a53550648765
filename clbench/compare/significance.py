"""The statistics of a comparison table, from its rows: confidence intervals per cell,
each row against its dataset column's best, the ranking across datasets; and how they are
written (the Markdown section and the JSON document). The numbers come from
:mod:`~clbench.compare.stats`."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from clbench.compare.rows import TABLE_METRICS, Report, Row, signless_zero
from clbench.compare.stats import (
    ALPHA,
    CONFIDENCE,
    MIN_WILCOXON_SEEDS,
    ColumnTests,
    Ranking,
    VsBest,
    rank_methods,
    t_interval,
    versus_best,
)

METHODS_TEXT = (
    f"Intervals: {CONFIDENCE:.0%} t-interval of the mean over seeds (mean ± Student's t "
    f"quantile with n - 1 degrees of freedom x the standard error from the sample std, "
    f"ddof 1; not clipped to the metric's range). Paired tests: each row against its "
    f"dataset column's best (the highest mean AP), on the AP of the same seeds (a seed "
    f"fixes the class order and the split, so results are paired by seed): the Wilcoxon "
    f"signed-rank test from {MIN_WILCOXON_SEEDS} seeds on (scipy's defaults: zero "
    f"differences dropped, exact or exact-permutation p-values), below that the exact "
    f"permutation test of the mean difference (every sign flip of the differences); "
    f"two-sided; p-values Holm-adjusted over the column's comparisons; *tie* = Holm p ≥ "
    f"{ALPHA:g}, not significantly worse than the best (a significant difference counts as "
    f"worse only when the test's statistic points to the best: Wilcoxon's signed ranks can "
    f"favour a row whose mean is lower). A row whose seeds are not exactly the best's is "
    f"not tested.")


def _finite(values: Mapping[int, float]) -> dict[int, float]:
    return {s: float(v) for s, v in values.items() if v is not None and math.isfinite(v)}


def analyse(rows: Sequence[Row]) -> tuple[dict[str, ColumnTests], Ranking]:
    """Fill each row's ``ci`` and ``vs_best``; the tests of each dataset column and the
    ranking of the rows' labels across datasets (by mean AP)."""
    for r in rows:
        r.ci = {}
        for m in TABLE_METRICS:
            ci = t_interval(list(_finite(r.per_seed(m)).values()))
            if ci is not None:
                r.ci[m] = ci
    columns: dict[str, ColumnTests] = {}
    for d in dict.fromkeys(column(r, rows) for r in rows):
        cells = [r for r in rows if column(r, rows) == d]
        col = versus_best({r.label: _finite(r.per_seed_ap) for r in cells})
        for r in cells:
            r.vs_best = col.rows.get(r.label)
        columns[d] = col
    means: dict[str, dict[str, float]] = {}
    for r in rows:
        s = r.stats.get("AP")
        if s is not None and math.isfinite(s["mean"]):
            means.setdefault(r.label, {})[column(r, rows)] = s["mean"]
    return columns, rank_methods(means)


def column(r: Row, rows: Sequence[Row]) -> str:
    """The column a row is tested in: its dataset, and its setting when the rows have
    more than one (a Class-IL row is never tested against a Task-IL best)."""
    if len({x.setting for x in rows}) > 1:
        return f"{r.dataset} ({r.setting_name})"
    return r.dataset


def _p(p: float | None) -> str:
    return "-" if p is None else f"{p:.3g}"


def verdict(v: VsBest | None) -> str:
    """``best``, ``tie``, ``worse``, ``not tested: ...`` or ``-``."""
    if v is None:
        return "-"
    if v.best:
        return f"best ({v.note})" if v.note else "best"
    if v.tie is None:
        return f"not tested: {v.note}" if v.note else "-"
    if v.tie:
        return f"tie ({v.note})" if v.note else "tie"
    return "worse"


def _pct(r: Row, metric: str) -> str:
    s = r.stats.get(metric)
    if s is None:
        return "-"
    return f"{signless_zero(s['mean'] * 100, 1)} {r.ci_text(metric)}"


def markdown_section(rows: Sequence[Row], columns: Mapping[str, ColumnTests],
                     ranking: Ranking | None, cd_figure: str = "") -> str:
    """The table's "Statistics" section (Markdown, no trailing newline)."""
    lines = ["## Statistics", "", METHODS_TEXT, "",
             f"| method | dataset | AP % ({CONFIDENCE:.0%} CI) | AF % ({CONFIDENCE:.0%} CI) | "
             "n | against the best | test | p | Holm p |",
             "|---|---|---|---|---|---|---|---|---|"]
    for d in columns:
        for r in rows:
            if column(r, rows) != d:
                continue
            v = r.vs_best
            lines.append(f"| {r.label} | {d} | {_pct(r, 'AP')} | {_pct(r, 'AF')} | "
                         f"{len(r.seeds)} | {verdict(v)} | {(v.test if v else '') or '-'} | "
                         f"{_p(v.p if v else None)} | {_p(v.p_holm if v else None)} |")
    lines += ["", "Per dataset:", ""]
    lines += [f"- {d}: {col.describe()}." for d, col in columns.items()]
    lines += ["", "### Across datasets", ""]
    lines += ranking_lines(ranking, cd_figure)
    return "\n".join(lines)


def ranking_lines(ranking: Ranking | None, cd_figure: str = "") -> list[str]:
    """The ranking across datasets in Markdown lines."""
    if ranking is None:
        return ["Not computed."]
    if ranking.note:
        return [f"Not computed: {ranking.note}."]
    rk = ranking
    lines = [f"Average rank of the mean AP over the {len(rk.datasets)} datasets "
             f"({', '.join(rk.datasets)}; 1 = best, ties share the average rank)"
             + (f"; left out (missing on some dataset): {', '.join(rk.left_out)}"
                if rk.left_out else "") + ":", "",
             "| method | average rank |", "|---|---|"]
    lines += [f"| {m} | {r:.2f} |" for m, r in sorted(rk.ranks.items(), key=lambda x: x[1])]
    lines += ["", f"Friedman test over {len(rk.datasets)} datasets and {len(rk.methods)} "
              f"methods: χ² = {_p(rk.friedman_statistic)}, p = {_p(rk.friedman_p)} (the "
              f"chi-square approximation, rough with fewer than about 10 datasets). "
              f"Nemenyi post-hoc (scikit-posthocs), alpha = {ALPHA:g}: "
              + _pairs_text(rk) + "."]
    if cd_figure:
        lines += ["", f"![critical-difference diagram]({cd_figure})"]
    return lines


def _pairs_text(rk: Ranking) -> str:
    ties = set(rk.ties())
    ms = rk.methods
    apart = [(a, b) for i, a in enumerate(ms) for b in ms[i + 1:] if (a, b) not in ties]
    if not apart:
        return "no pair of methods is significantly different"
    return "significantly different: " + ", ".join(
        f"{a} vs {b} (p = {_p(rk.nemenyi[a][b])})" for a, b in apart)


def _num(v: float | None) -> float | None:
    return float(v) if v is not None and math.isfinite(v) else None


def to_json(report: Report) -> dict[str, Any]:
    """The comparison as a JSON-ready document (0-1 scale; non-finite numbers as null)."""
    rows = []
    for r in report.rows:
        metrics: dict[str, Any] = {}
        for m in TABLE_METRICS:
            s = r.stats.get(m)
            if s is None:
                continue
            ci = r.ci.get(m)
            metrics[m] = {"mean": _num(s["mean"]), "std": _num(s["std"]), "n": int(s["n"]),
                          "ci": [_num(ci[0]), _num(ci[1])] if ci else None,
                          "per_seed": {str(k): _num(v) for k, v in r.per_seed(m).items()}}
        v = r.vs_best
        outside = r.val_ap_outside_grid()
        rows.append({
            "method": r.method, "dataset": r.dataset, "label": r.label,
            "config_hash": r.config_hash, "seeds": r.seeds, "metrics": metrics,
            "other_metrics": {k: {"mean": _num(s["mean"]), "std": _num(s["std"]),
                                  "n": int(s["n"])}
                              for k, s in r.stats.items() if k not in TABLE_METRICS},
            "against_best": None if v is None else {
                "verdict": verdict(v), "best": v.best, "test": v.test or None, "n": v.n,
                "p": _num(v.p), "p_holm": _num(v.p_holm), "tie": v.tie,
                "note": v.note or None},
            "reference": r.reference or None, "hyperparameters": r.hparams,
            "degenerate": {str(k): t for k, t in r.degenerate.items()},
            "weakest_learned": {str(k): {"balanced_accuracy": _num(v), "task": t}
                                for k, (v, t) in r.weakest.items()},
            "selection": r.selection or None,
            "val_AP_outside_grid": None if outside is None else {
                "seeds": outside[0], "mean": _num(outside[1])},
        })
    rk = report.ranking
    return {
        "experiment": report.experiment,
        "seeds_only": report.seeds,
        "alpha": ALPHA, "confidence": CONFIDENCE, "methods": METHODS_TEXT,
        "rows": rows,
        "columns": {d: {"best": c.best, "tested": c.tested, "seeds": c.seeds,
                        "summary": c.describe(), "note": c.note or None}
                    for d, c in report.columns.items()},
        "across_datasets": None if rk is None else {
            "datasets": rk.datasets, "methods": rk.methods, "left_out": rk.left_out,
            "average_ranks": rk.ranks, "friedman": {
                "statistic": _num(rk.friedman_statistic), "p": _num(rk.friedman_p)},
            "nemenyi_p": rk.nemenyi, "note": rk.note or None,
            "figure": _path(report.cd_figure)},
        "files": {"markdown": _path(report.markdown), "csv": _path(report.csv),
                  "figure": _path(report.figure)},
    }


def _path(p: Path | None) -> str | None:
    return None if p is None else str(p)
