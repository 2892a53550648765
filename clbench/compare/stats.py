"""The statistics of a comparison, as pure functions: arrays (or mappings of them) in,
numbers out; no MLflow, no files.

* :func:`t_interval`: a confidence interval of a mean over seeds (Student's t);
* :func:`paired_test`: a two-sided paired test of two methods over the same seeds
  (Wilcoxon signed-rank from 6 seeds on, an exact sign-flip permutation test below);
* :func:`holm`: Holm's step-down adjustment of a family of p-values (statsmodels);
* :func:`versus_best`: each method of a dataset column against the column's best;
* :func:`rank_methods`: average ranks across datasets, the Friedman test and the Nemenyi
  post-hoc p-values (scikit-posthocs).

Results are paired by seed: a seed fixes the class order and the split, so two methods'
values on the same seed are one pair. A test is only ever computed on pairs; methods that
do not share the same seeds are not tested, with the reason.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

#: Significance level of every test, and the confidence of the intervals.
ALPHA = 0.05
CONFIDENCE = 0.95
#: From this many paired seeds on, the Wilcoxon signed-rank test; below it, the exact
#: permutation test of the mean difference (its null distribution has only 2**n points).
MIN_WILCOXON_SEEDS = 6
#: Paired differences are rounded to this many decimals before testing, so that floating
#: point noise (0.95 - 0.9 vs 0.9 - 0.85) neither makes nor breaks a tie or a zero.
DIFF_DECIMALS = 12

WILCOXON = "Wilcoxon signed-rank"
PERMUTATION = "exact permutation"


def t_interval(values: Sequence[float] | np.ndarray, confidence: float = CONFIDENCE
               ) -> tuple[float, float] | None:
    """The ``confidence`` interval of the mean of ``values`` (one per seed): mean ± t
    quantile (n - 1 degrees of freedom) x standard error (sample std, ddof 1). None for
    fewer than two values; ``(mean, mean)`` when all values are equal. Not clipped to the
    metric's range."""
    from scipy import stats

    x = np.asarray(values, dtype=float)
    if x.size < 2:
        return None
    mean = float(x.mean())
    sem = float(stats.sem(x))
    if sem == 0.0:
        return mean, mean
    low, high = stats.t.interval(confidence, x.size - 1, loc=mean, scale=sem)
    return float(low), float(high)


def _mean(d: np.ndarray, axis: int = -1) -> np.ndarray:
    return np.mean(d, axis=axis)


def paired_test(x: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray
                ) -> tuple[str, float]:
    """``(test name, two-sided p-value)`` of the paired differences ``x - y`` (``x[i]`` and
    ``y[i]`` from the same seed): Wilcoxon signed-rank (scipy's default: exact, or an exact
    permutation of the signed ranks when there are ties or zeros) from
    :data:`MIN_WILCOXON_SEEDS` pairs on, else the exact permutation test of the mean
    difference (every sign flip of the differences). Identical values give p = 1."""
    from scipy import stats

    a, b = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if a.shape != b.shape or a.ndim != 1 or a.size < 2:
        raise ValueError(f"paired_test needs two equal-length series of at least 2 values, "
                         f"got shapes {a.shape} and {b.shape}")
    d = np.round(a - b, DIFF_DECIMALS)
    name = WILCOXON if d.size >= MIN_WILCOXON_SEEDS else PERMUTATION
    if not d.any():
        return name, 1.0
    if name == WILCOXON:
        return name, float(stats.wilcoxon(d).pvalue)
    res = stats.permutation_test((d,), _mean, permutation_type="samples",
                                 n_resamples=np.inf, alternative="two-sided")
    return name, float(res.pvalue)


def favours_first(x: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray) -> bool:
    """Whether :func:`paired_test`'s statistic points to ``x`` above ``y``: the mean
    difference for the permutation test; for Wilcoxon, its one-sided p-value for ``x > y``
    below the one for ``x < y`` (the signed ranks can favour ``y`` while the mean favours
    ``x``: one large win against many small losses)."""
    from scipy import stats

    d = np.round(np.asarray(x, dtype=float) - np.asarray(y, dtype=float), DIFF_DECIMALS)
    if not d.any():
        return False
    if d.size < MIN_WILCOXON_SEEDS:
        return float(d.mean()) > 0.0
    greater = stats.wilcoxon(d, alternative="greater").pvalue
    return bool(greater < stats.wilcoxon(d, alternative="less").pvalue)


def smallest_p(n: int) -> float:
    """The smallest two-sided p-value either test can reach with ``n`` paired seeds (all
    differences of one sign): 2 / 2**n. With 5 seeds it is 0.0625, so no difference can
    be significant at 0.05."""
    return min(1.0, 2.0 / 2.0**n)


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values (statsmodels' ``multipletests``), in input order."""
    if len(pvalues) == 0:
        return []
    from statsmodels.stats.multitest import multipletests

    return [float(p) for p in multipletests(list(pvalues), alpha=ALPHA, method="holm")[1]]


@dataclass
class VsBest:
    """One method of a dataset column against the column's best (by mean AP)."""

    best: bool = False  # this is the column's best
    test: str = ""  # WILCOXON or PERMUTATION; "" when not tested
    n: int = 0  # paired seeds
    p: float | None = None
    p_holm: float | None = None
    #: not significantly worse than the best (True for the best itself when at least one
    #: method of the column was tested): the Holm-adjusted p is at least alpha, or the
    #: test's statistic does not point to the best; None when not tested
    tie: bool | None = None
    note: str = ""  # why not tested (or why a significant difference is still a tie)


@dataclass
class ColumnTests:
    """The tests of one dataset column."""

    best: str = ""
    rows: dict[str, VsBest] = field(default_factory=dict)
    tested: int = 0  # the Holm family's size
    seeds: int = 0  # paired seeds of the tests (they all share the best's seeds)
    note: str = ""  # why nothing was tested, if so

    def describe(self, alpha: float = ALPHA) -> str:
        """One line: best, test, family, and the smallest p the seeds allow."""
        if not self.tested:
            return f"best {self.best}; no paired test: {self.note}"
        tests = sorted({v.test for v in self.rows.values() if v.test})
        floor = smallest_p(self.seeds)
        text = (f"best {self.best} (by mean AP); {' / '.join(tests)} test, two-sided, over "
                f"the {self.seeds} shared seeds; Holm over {self.tested} comparison"
                f"{'s' if self.tested != 1 else ''} at alpha = {alpha:g}; smallest p possible "
                f"with {self.seeds} seeds {floor:.3g}")
        if floor * self.tested >= alpha:
            text += (f" (x {self.tested} after Holm: no difference can be significant with "
                     f"this many seeds)" if self.tested > 1 else
                     " (no difference can be significant with this many seeds)")
        return text


def _seed_list(seeds: Sequence[int]) -> str:
    return " ".join(map(str, sorted(seeds)))


def versus_best(per_seed: Mapping[str, Mapping[int, float]], alpha: float = ALPHA
                ) -> ColumnTests:
    """Each method of one dataset column (``method -> seed -> value``, higher is better)
    against the method with the highest mean, paired by seed, Holm-adjusted over the
    tested methods. A method whose seeds are not exactly the best's is not tested (its
    ``note`` says why); so is every method when there are fewer than two seeds."""
    means = {m: float(np.mean(list(v.values()))) for m, v in per_seed.items() if v}
    out = ColumnTests()
    if not means:
        out.note = "no values"
        return out
    best = max(means, key=lambda m: means[m])  # the first of equal means
    out.best = best
    out.rows = {m: VsBest(best=m == best) for m in means}
    if len(means) < 2:
        out.note = out.rows[best].note = "only one method"
        return out
    seeds = sorted(per_seed[best])
    ref = np.array([per_seed[best][s] for s in seeds])
    tested: list[str] = []
    pvalues: list[float] = []
    for m in means:
        if m == best:
            continue
        row = out.rows[m]
        if sorted(per_seed[m]) != seeds:
            row.note = (f"seeds not shared with the best ({_seed_list(per_seed[m])} vs "
                        f"{_seed_list(seeds)})")
            continue
        if len(seeds) < 2:
            row.note = "fewer than 2 seeds"
            continue
        row.test, row.p = paired_test(ref, [per_seed[m][s] for s in seeds])
        row.n = len(seeds)
        tested.append(m)
        pvalues.append(row.p)
    for m, p_adj in zip(tested, holm(pvalues), strict=True):
        row = out.rows[m]
        row.p_holm = p_adj
        row.tie = p_adj >= alpha
        if not row.tie and not favours_first(ref, [per_seed[m][s] for s in seeds]):
            row.tie = True  # a difference, but not one that makes this method worse
            row.note = ("significant, but the signed ranks favour this method; its mean is "
                        "lower: not worse")
    out.tested, out.seeds = len(tested), (len(seeds) if tested else 0)
    if tested:
        out.rows[best].tie = True
        out.rows[best].n = len(seeds)
    else:
        notes = sorted({r.note for r in out.rows.values() if r.note})
        out.note = "; ".join(notes)
        out.rows[best].note = "no other method tested"
    return out


@dataclass
class Ranking:
    """Methods ranked across datasets (rank 1 = the highest value on a dataset)."""

    methods: list[str] = field(default_factory=list)
    datasets: list[str] = field(default_factory=list)
    ranks: dict[str, float] = field(default_factory=dict)  # average rank per method
    friedman_statistic: float | None = None
    friedman_p: float | None = None
    #: Nemenyi post-hoc p-values, ``nemenyi[a][b]``
    nemenyi: dict[str, dict[str, float]] = field(default_factory=dict)
    note: str = ""  # why it was skipped, if so
    left_out: list[str] = field(default_factory=list)  # methods missing on some dataset

    def ties(self, alpha: float = ALPHA) -> list[tuple[str, str]]:
        """Pairs of methods the post-hoc test does not separate."""
        ms = self.methods
        return [(a, b) for i, a in enumerate(ms) for b in ms[i + 1:]
                if self.nemenyi.get(a, {}).get(b, 1.0) >= alpha]


def _finite(v: float) -> float | None:
    return float(v) if v is not None and math.isfinite(v) else None


def rank_methods(values: Mapping[str, Mapping[str, float]]) -> Ranking:
    """Average ranks (1 = best, ties share their average rank), the Friedman test and the
    Nemenyi post-hoc p-values (scikit-posthocs) of ``method -> dataset -> value`` (higher
    is better), over the methods that have every dataset. Skipped, with the reason in
    ``note``, below 2 datasets or 3 methods."""
    datasets = list(dict.fromkeys(d for v in values.values() for d in v))
    methods = [m for m, v in values.items() if all(d in v for d in datasets)]
    out = Ranking(methods=methods, datasets=datasets,
                  left_out=[m for m in values if m not in methods])
    if len(datasets) < 2:
        out.note = f"{len(datasets)} dataset; ranks need at least 2"
        return out
    if len(methods) < 3:
        out.note = (f"{len(methods)} method{'s' if len(methods) != 1 else ''} on every "
                    f"dataset; the Friedman test needs at least 3")
        return out
    import pandas as pd
    import scikit_posthocs as sp
    from scipy import stats

    table = np.array([[values[m][d] for m in methods] for d in datasets], dtype=float)
    ranks = stats.rankdata(-table, axis=1, method="average").mean(axis=0)
    out.ranks = {m: float(r) for m, r in zip(methods, ranks, strict=True)}
    res = stats.friedmanchisquare(*table.T)
    out.friedman_statistic = _finite(res.statistic)
    out.friedman_p = _finite(res.pvalue)
    p = sp.posthoc_nemenyi_friedman(pd.DataFrame(table, index=datasets, columns=methods))
    out.nemenyi = {a: {b: float(p.loc[a, b]) for b in methods} for a in methods}
    return out
