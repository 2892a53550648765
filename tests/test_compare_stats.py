"""The statistics of ``clbench compare``: intervals, paired tests against the best, Holm,
ranks across datasets, the critical-difference diagram, and the table they end up in."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import scikit_posthocs as sp
from mlflow_server import cli, shared_server, unique
from scipy import stats
from statsmodels.stats.multitest import multipletests

from clbench.compare import Row, analyse, markdown_section, markdown_table
from clbench.compare.stats import (
    PERMUTATION,
    WILCOXON,
    favours_first,
    holm,
    paired_test,
    rank_methods,
    smallest_p,
    t_interval,
    versus_best,
)
from clbench.plots import cd_diagram, cd_diagram_figure, method_style

AP10 = np.array([0.91, 0.87, 0.95, 0.89, 0.93, 0.90, 0.86, 0.94, 0.92, 0.88])
OTHER10 = np.array([0.90, 0.88, 0.93, 0.86, 0.93, 0.91, 0.84, 0.90, 0.89, 0.87])
SEEDS10 = [s * 1000 for s in range(10)]


def test_t_interval_is_scipys_student_t_interval():
    x = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    low, high = t_interval(x)
    assert (low, high) == pytest.approx((1.0367568385224393, 4.963243161477561))  # by hand
    expected = stats.t.interval(0.95, 4, loc=3.0, scale=np.std(x, ddof=1) / np.sqrt(5))
    assert (low, high) == pytest.approx(expected, rel=1e-12)
    assert t_interval(AP10) == pytest.approx(
        stats.t.interval(0.95, 9, loc=AP10.mean(), scale=stats.sem(AP10)), rel=1e-12)
    assert t_interval([0.0, 0.0, 0.0]) == (0.0, 0.0)  # PackNet's AF: no spread, no interval
    assert t_interval([0.9]) is None


def test_paired_tests_are_scipys():
    x, y = np.array([7.0, 3, 9, 12, 4, 8, 10]), np.array([5.0, 4, 6, 13, 1, 8, 2])
    assert paired_test(x, y) == (WILCOXON, pytest.approx(stats.wilcoxon(x, y).pvalue,
                                                         rel=1e-12))
    # AP10 - OTHER10 has a zero and ties (|0.01| four times, ...) that floating point
    # subtraction blurs (0.91 - 0.90 != 0.87 - 0.86): the differences are rounded first
    name, p = paired_test(AP10, OTHER10)
    d = np.round(AP10 - OTHER10, 12)
    assert name == WILCOXON and np.abs(d).tolist().count(0.01) == 4
    assert p == pytest.approx(stats.wilcoxon(d).pvalue, rel=1e-12)
    assert p != pytest.approx(stats.wilcoxon(AP10, OTHER10).pvalue)
    name, p = paired_test(AP10[:5], OTHER10[:5])
    assert name == PERMUTATION
    d = AP10[:5] - OTHER10[:5]
    ref = stats.permutation_test((d,), lambda d, axis: np.mean(d, axis=axis),
                                 permutation_type="samples", n_resamples=np.inf)
    assert p == pytest.approx(ref.pvalue, rel=1e-12)
    # a constant shift: every difference has one sign, the most extreme of 2**n outcomes
    assert paired_test(AP10, AP10 - 0.02) == (WILCOXON, pytest.approx(2 / 2**10))
    assert paired_test(AP10[:5], AP10[:5] - 0.02) == (PERMUTATION, pytest.approx(0.0625))
    assert smallest_p(5) == 0.0625 and smallest_p(10) == pytest.approx(0.001953125)
    assert paired_test(AP10, AP10)[1] == 1.0
    with pytest.raises(ValueError):
        paired_test(AP10, AP10[:9])


def test_holm_is_statsmodels_holm():
    p = [0.01, 0.04, 0.03, 0.5]
    assert holm(p) == pytest.approx([0.04, 0.09, 0.09, 0.5])  # by hand: 4p, max(3p, ..), ..
    assert holm(p) == pytest.approx(list(multipletests(p, method="holm")[1]))
    assert holm([]) == []


def _column(**values: np.ndarray) -> dict[str, dict[int, float]]:
    return {m: dict(zip(SEEDS10[:len(v)], map(float, v), strict=True))
            for m, v in values.items()}


def test_a_shifted_copy_of_the_best_is_worse_and_an_identical_one_ties():
    col = versus_best(_column(best=AP10, copy=AP10.copy(), shifted=AP10 - 0.01,
                              noisy=AP10 + np.array([1, -1] * 5) * 0.004))
    assert col.best == "best" and col.tested == 3 and col.seeds == 10
    rows = col.rows
    assert rows["best"].best and rows["best"].tie is True
    assert rows["copy"].p == 1.0 and rows["copy"].tie is True
    assert rows["shifted"].p == pytest.approx(2 / 2**10) and rows["shifted"].tie is False
    assert rows["noisy"].tie is True  # differences of both signs, mean 0
    raw = [rows[m].p for m in ("copy", "shifted", "noisy")]
    assert [rows[m].p_holm for m in ("copy", "shifted", "noisy")] == pytest.approx(
        list(multipletests(raw, method="holm")[1]))
    assert all(rows[m].test == WILCOXON for m in ("copy", "shifted", "noisy"))
    assert "Wilcoxon signed-rank test" in col.describe() and "Holm over 3" in col.describe()


def test_a_significant_difference_against_the_best_is_worse_only_in_its_direction():
    """One large win of the best (by mean) against eleven small losses: Wilcoxon's signed
    ranks favour the other method, significantly; it is not worse than the best."""
    best = [*AP10.tolist(), 0.9, 0.9]
    other = [v + 0.01 + 0.001 * i for i, v in enumerate(best)]
    other[0] = best[0] - 0.5
    col = versus_best({"best": dict(enumerate(best)), "other": dict(enumerate(other))})
    assert col.best == "best" and np.mean(best) > np.mean(other)
    row = col.rows["other"]
    assert row.test == WILCOXON and row.p_holm < 0.05
    assert row.tie is True and "signed ranks favour this method" in row.note
    assert favours_first(other, best) and not favours_first(best, other)
    shifted = versus_best({"best": dict(enumerate(best)),
                           "other": {s: v - 0.01 for s, v in enumerate(best)}})
    assert shifted.rows["other"].tie is False and shifted.rows["other"].note == ""


def test_with_five_seeds_nothing_can_be_significant_and_the_table_says_so():
    col = versus_best(_column(best=AP10[:5], shifted=AP10[:5] - 0.05))
    assert col.rows["shifted"].test == PERMUTATION
    assert col.rows["shifted"].p == pytest.approx(0.0625)
    assert col.rows["shifted"].tie is True
    assert "no difference can be significant with this many seeds" in col.describe()


def test_unpaired_seeds_are_not_tested():
    per_seed = _column(best=AP10, other=AP10 - 0.05)
    del per_seed["other"][SEEDS10[3]]
    col = versus_best(per_seed)
    other = col.rows["other"]
    assert other.p is None and other.p_holm is None and other.tie is None and other.n == 0
    assert other.note == ("seeds not shared with the best (0 1000 2000 4000 5000 6000 7000 "
                          "8000 9000 vs 0 1000 2000 3000 4000 5000 6000 7000 8000 9000)")
    assert col.tested == 0 and col.rows["best"].tie is None  # no mark without a test
    assert col.describe().startswith("best best; no paired test: seeds not shared")
    # a third method on the best's seeds is still tested; the unpaired one is not
    per_seed["third"] = dict(per_seed["best"])
    col = versus_best(per_seed)
    assert col.tested == 1 and col.rows["third"].tie is True
    assert col.rows["other"].tie is None and col.rows["best"].tie is True


def test_ranks_friedman_and_nemenyi_are_the_libraries():
    values = {"finetune": {"cora": 0.92, "citeseer": 0.80, "a": 0.89, "b": 0.77},
              "ewc": {"cora": 0.92, "citeseer": 0.81, "a": 0.91, "b": 0.88},
              "packnet": {"cora": 0.95, "citeseer": 0.86, "a": 0.988, "b": 0.989},
              "joint": {"cora": 0.96, "citeseer": 0.88, "a": 0.99, "b": 0.992},
              "partial": {"cora": 0.5}}
    rk = rank_methods(values)
    assert rk.left_out == ["partial"] and rk.methods == ["finetune", "ewc", "packnet", "joint"]
    # cora: finetune and ewc tie for ranks 3 and 4
    assert rk.ranks == {"finetune": pytest.approx((3.5 + 4 + 4 + 4) / 4),
                        "ewc": pytest.approx((3.5 + 3 + 3 + 3) / 4), "packnet": 2.0,
                        "joint": 1.0}
    table = np.array([[values[m][d] for m in rk.methods] for d in rk.datasets])
    ref = stats.friedmanchisquare(*table.T)
    assert rk.friedman_statistic == pytest.approx(ref.statistic)
    assert rk.friedman_p == pytest.approx(ref.pvalue)
    nemenyi = sp.posthoc_nemenyi_friedman(pd.DataFrame(table, columns=rk.methods))
    for a in rk.methods:
        for b in rk.methods:
            assert rk.nemenyi[a][b] == pytest.approx(nemenyi.loc[a, b])
    assert ("finetune", "ewc") in rk.ties() and ("finetune", "joint") not in rk.ties()

    assert rank_methods({"a": {"cora": 1.0}, "b": {"cora": 0.5}, "c": {"cora": 0.1}}).note \
        == "1 dataset; ranks need at least 2"
    assert rank_methods({"a": {"x": 1.0, "y": 1.0}, "b": {"x": 0.5, "y": 0.4}}).note \
        == "2 methods on every dataset; the Friedman test needs at least 3"


def test_critical_difference_diagram_names_the_methods(tmp_path):
    rk = rank_methods({"finetune": {"x": 0.7, "y": 0.6, "z": 0.5},
                       "packnet": {"x": 0.9, "y": 0.95, "z": 0.93},
                       "joint": {"x": 0.95, "y": 0.96, "z": 0.97}})
    fig = cd_diagram_figure(rk.ranks, rk.nemenyi, "exp")
    texts = [t.get_text() for ax in fig.axes for t in ax.texts]
    assert "joint (1.00)" in texts and "packnet (2.00)" in texts
    assert "(3.00) finetune" in texts
    assert fig.axes[0].get_xlabel() == "average rank (1 = best)"
    assert "not significantly different (Nemenyi, alpha = 0.05)" in fig.get_suptitle()
    png = cd_diagram(rk.ranks, rk.nemenyi, tmp_path / "cd.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000


def test_a_long_diagram_title_is_wrapped_inside_the_figure():
    """compare's title with --seeds (an experiment name, seeds and the Friedman p) is
    longer than the figure is wide: it wraps instead of running off both edges."""
    rk = rank_methods({"finetune": {"x": 0.7, "y": 0.6}, "packnet": {"x": 0.9, "y": 0.95},
                       "joint": {"x": 0.95, "y": 0.96}})
    title = ("amazon-coauthor-all (seeds 0, 1000, 2000): average rank of the mean AP over 2 "
             "datasets (Friedman p = 0.107)")
    fig = cd_diagram_figure(rk.ranks, rk.nemenyi, title)
    fig.canvas.draw()
    suptitle = fig.get_suptitle()
    assert suptitle.replace("\n", " ").startswith(title)  # all of it, wrapped
    box = fig._suptitle.get_window_extent()
    assert box.x0 >= 0 and box.x1 <= fig.bbox.x1


def _row(method: str, dataset: str, ap: np.ndarray, seeds: list[int] = SEEDS10) -> Row:
    af = 1.0 - ap
    return Row(method, dataset, "h", method, list(seeds),
               stats={"AP": {"mean": ap.mean(), "std": ap.std(), "n": len(ap)},
                      "AF": {"mean": af.mean(), "std": af.std(), "n": len(af)}},
               per_seed_ap=dict(zip(seeds, map(float, ap), strict=True)),
               per_seed_af=dict(zip(seeds, map(float, af), strict=True)))


def test_the_table_marks_ties_in_bold_and_says_what_was_not_tested():
    rows = [_row("joint", "cora", AP10), _row("packnet", "cora", AP10 - 0.002 * (AP10 > 0.9)),
            _row("finetune", "cora", AP10 - 0.05), _row("ewc", "cora", AP10[:9] - 0.01,
                                                       SEEDS10[:9])]
    columns, ranking = analyse(rows)
    assert rows[0].ci["AP"] == pytest.approx(t_interval(AP10))
    assert rows[2].ci["AF"] == pytest.approx(t_interval(1.0 - (AP10 - 0.05)))
    md = markdown_table(rows, "exp", statistics=markdown_section(rows, columns, ranking))
    assert "| joint | **AP 90.5 ± 2.9** · AF" in md
    assert "| packnet | **AP 90.4 ± 2.8** · AF" in md  # worse on half the seeds: a tie
    assert "| finetune | AP 85.5 ± 2.9 · AF" in md  # worse on every seed
    assert "| ewc | AP 89.8 ± 2.9 † · AF" in md
    assert "† = not tested against the dataset's best: ewc on cora: seeds not shared" in md
    assert ("Seeds differ between rows, so their means are over different seeds (a seed "
            "fixes the class order and the split): seeds 0 1000 2000 3000 4000 5000 6000 "
            "7000 8000 9000: joint/cora, packnet/cora, finetune/cora; seeds 0 1000 2000 3000 "
            "4000 5000 6000 7000 8000: ewc/cora. `clbench compare --seeds "
            "0,1000,2000,3000,4000,5000,6000,7000,8000` writes the table on the seeds every "
            "row shares.") in md
    assert "## Statistics" in md and "| finetune | cora | 85.5 [83.3, 87.7] |" in md
    assert "| worse | Wilcoxon signed-rank | 0.00195 | 0.00391 |" in md
    assert "Not computed: 1 dataset; ranks need at least 2." in md
    # a table built without statistics has neither marks nor section
    plain = markdown_table([_row("joint", "cora", AP10)], "exp")
    assert "**" not in plain and "Statistics" not in plain and "Seeds" not in plain


def test_rows_untested_for_the_same_reason_are_named_together():
    rows = [_row("joint", "cora", AP10), _row("ewc", "cora", AP10[:3] - 0.01, SEEDS10[:3]),
            _row("mas", "cora", AP10[:3] - 0.02, SEEDS10[:3]),
            _row("gem", "cora", AP10[:1] - 0.02, SEEDS10[:1]),
            _row("joint", "citeseer", AP10),
            _row("ewc", "citeseer", AP10[:3] - 0.05, SEEDS10[:3])]
    columns, ranking = analyse(rows)
    md = markdown_table(rows, "exp", statistics=markdown_section(rows, columns, ranking))
    note = next(line for line in md.splitlines() if line.startswith("† = "))
    shared = "seeds not shared with the best (0 1000 2000 vs 0 1000 2000 3000 4000"
    assert note.startswith("† = not tested against the dataset's best: ewc, mas on cora: "
                           + shared)
    assert "; gem on cora: seeds not shared with the best (0 vs 0 1000" in note
    assert "; ewc on citeseer: " + shared in note
    assert note.count("seeds not shared") == 3 and note.endswith(".")
    seeds = next(line for line in md.splitlines() if line.startswith("Seeds differ"))
    assert ("(a seed fixes the class order and the split) (a method named without a "
            "dataset: on every dataset): seeds 0 1000 2000 3000 4000 5000 6000 7000 8000 "
            "9000: joint; seeds 0 1000 2000: ewc, mas/cora; seeds 0: gem/cora.") in seeds


@pytest.mark.slow  # 12 runs: about 35 s of CPU, minutes on a busy machine
def test_compare_end_to_end_on_a_real_store(workdir, capsys):
    """Three methods on two datasets, two seeds: the intervals are the seeds' t-intervals,
    the tests say that two seeds cannot separate anything, the ranking has its diagram,
    and the JSON carries the same numbers as the CSV."""
    gen = np.random.default_rng(0)  # a second small dataset: a user's graph file
    y = np.arange(160) % 4
    x = np.eye(4)[y] + gen.normal(scale=0.8, size=(160, 4))
    np.savez(workdir / "g.npz", x=x.astype(np.float32), y=y,
             edge_index=gen.integers(0, 160, size=(2, 400)))
    server = shared_server()
    exp = unique("compare-stats")
    assert cli("run", "--method", "finetune,joint,ewc", "--dataset", "synthetic,g.npz",
               "--seeds", "0-1", "--epochs", "2", "--jobs", "2",
               "--tracking-uri", server.uri, "--experiment", exp, "-q") == 0
    capsys.readouterr()
    assert cli("compare", "--experiment", exp, "--tracking-uri", server.uri,
               "--json", "out/table.json") == 0
    out = capsys.readouterr().out
    assert "Friedman p = " in out and f"compare-{exp}-cd.png" in out
    assert "exact permutation test, two-sided, over the 2 shared seeds" in out

    doc = json.loads((workdir / "out" / "table.json").read_text())
    with open(workdir / "results" / f"compare-{exp}.csv", newline="") as fh:
        csv_rows = {(r["method"], r["dataset"]): r for r in csv.DictReader(fh)}
    assert len(doc["rows"]) == len(csv_rows) == 6
    for row in doc["rows"]:
        c = csv_rows[(row["method"], row["dataset"])]
        ap = row["metrics"]["AP"]
        assert ap["mean"] == pytest.approx(float(c["AP_mean"]))
        per_seed = [ap["per_seed"][s] for s in ("0", "1")]
        assert ap["ci"] == pytest.approx(list(t_interval(per_seed)))
        assert [float(c["AP_ci_low"]), float(c["AP_ci_high"])] == pytest.approx(ap["ci"])
        verdict = row["against_best"]
        assert c["best_in_dataset"] == str(verdict["best"]).lower()
        if not verdict["best"]:  # two seeds: the smallest p possible is 0.5
            assert verdict["test"] == PERMUTATION and verdict["p"] >= 0.5
            assert verdict["tie"] is True and c["tie_with_best"] == "true"
            assert float(c["vs_best_p_holm"]) == pytest.approx(verdict["p_holm"])
    for dataset in {r["dataset"] for r in doc["rows"]}:
        means = {r["method"]: r["metrics"]["AP"]["mean"] for r in doc["rows"]
                 if r["dataset"] == dataset}
        assert doc["columns"][dataset]["best"] == max(means, key=means.get)
    across = doc["across_datasets"]
    assert sorted(across["methods"]) == ["ewc", "finetune", "joint"]
    assert sum(across["average_ranks"].values()) == pytest.approx(6.0)  # 1 + 2 + 3
    png = (workdir / "results" / f"compare-{exp}-cd.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert across["figure"].endswith(f"compare-{exp}-cd.png")
    md = (workdir / "results" / f"compare-{exp}.md").read_text()
    assert "## Statistics" in md and "### Across datasets" in md
    assert f"![critical-difference diagram](compare-{exp}-cd.png)" in md


def test_compare_json_must_be_a_writable_file(workdir, capsys):
    (workdir / "adir").mkdir()
    assert cli("compare", "--json", "adir") == 2
    assert "--json adir is a directory" in capsys.readouterr().err


def test_critical_difference_diagram_tells_apart_methods_that_share_a_colour():
    """Past ten methods the colours repeat: the bar chart hatches the repeats, the CD
    diagram dashes their line and draws a hollow square, in the bar chart's order."""
    from matplotlib.colors import to_hex

    order = [f"m{k:02d}" for k in range(12)]
    rk = rank_methods({m: {d: k + 0.1 * j for j, d in enumerate("wxyz")}
                       for k, m in enumerate(order)})  # distinct ranks 12, 11, ..., 1
    fig = cd_diagram_figure(rk.ranks, rk.nemenyi, "exp", order=order[::-1])
    ax = fig.axes[0]
    by_label = {}
    for line in ax.lines:
        if len(line.get_xdata()) == 3:  # an elbow: label -> rank -> axis
            by_label[round(float(line.get_xdata()[1]), 6)] = line
    for k, m in enumerate(order[::-1]):
        colour, hatch = method_style(k)
        elbow = by_label[round(rk.ranks[m], 6)]
        assert to_hex(elbow.get_color()) == colour
        assert (elbow.get_linestyle() == "-") == (hatch == ""), m
    hollow = [c for c in ax.collections if to_hex(c.get_facecolor()[0]) == "#ffffff"]
    assert len(hollow) == 2  # m01 and m00: 11th and 12th in the given order


def test_validation_ap_outside_the_grid_seeds():
    """A row selected on a few grid seeds reports the selected configuration's mean val AP
    on its other seeds; none when every reported seed was a grid seed or no sweep chose."""
    row = _row("m", "d", np.array([0.9, 0.8, 0.7, 0.6]), seeds=[0, 1000, 2000, 3000])
    row.per_seed_val_ap = {0: 0.9, 1000: 0.8, 2000: 0.5, 3000: 0.4}
    row.selection = "best mean val AP 0.8500 over grid seeds 0,1000 among 6 configuration(s)"
    row.grid_seeds = [0, 1000]
    assert row.val_ap_outside_grid() == ([2000, 3000], pytest.approx(0.45))
    assert row.selection_text() == (row.selection + "; its mean val AP over the 2 other "
                                    "reported seeds: 0.4500")
    row.selection = ("best mean val AP 0.6500 over grid seeds 0,1000,2000,3000 among 6 "
                     "configuration(s)")
    row.grid_seeds = [0, 1000, 2000, 3000]
    assert row.val_ap_outside_grid() is None and row.selection_text() == row.selection
    row.selection, row.grid_seeds = "", None
    assert row.val_ap_outside_grid() is None and row.selection_text() == ""


def test_the_grid_seeds_come_from_their_tag_or_an_older_stores_selection_text():
    from clbench.compare.collect import _grid_seeds

    text = "best mean val AP 0.8500 over grid seeds 0,1000 among 6 configuration(s)"
    assert _grid_seeds({"clbench.selection": text, "clbench.grid_seeds": "0,1000"}) == [0, 1000]
    assert _grid_seeds({"clbench.selection": text, "clbench.grid_seeds": "2000,0"}) == [0, 2000]
    assert _grid_seeds({"clbench.selection": text}) == [0, 1000]  # written before the tag
    assert _grid_seeds({"clbench.selection": "chosen by hand"}) is None
    assert _grid_seeds({}) is None


_CD_SCRIPT = """
import sys
from clbench.compare.stats import rank_methods
from clbench.plots import cd_diagram
names = ["finetune", "ewc", "lwf", "mas", "twp", "gem", "ergnn", "hat", "cgnn", "pignn",
         "cat", "packnet", "piggyback", "joint"]
values = {m: {"x": 0.80 + 0.01 * k, "y": 0.80 + 0.01 * ((k * 5) % 14)}
          for k, m in enumerate(names)}
rk = rank_methods(values)
cd_diagram(rk.ranks, rk.nemenyi, sys.argv[1], "exp")
"""


def test_a_critical_difference_diagram_is_the_same_picture_in_every_process(tmp_path):
    """A crossbar joins its methods in rank order, not in the order of a set, which
    changes with the process's string-hash seed: the same table gives the same PNG."""
    pngs = []
    for seed in ("0", "1", "2"):
        out = tmp_path / f"cd-{seed}.png"
        subprocess.run([sys.executable, "-c", _CD_SCRIPT, str(out)], check=True,
                       env={**os.environ, "PYTHONHASHSEED": seed})
        pngs.append(out.read_bytes())
    assert pngs[0][:8] == b"\x89PNG\r\n\x1a\n"
    assert pngs[0] == pngs[1] == pngs[2]
