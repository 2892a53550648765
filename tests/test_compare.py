"""``clbench compare``: the AP/AF table (Markdown, CSV) and the grouped bar chart."""

from __future__ import annotations

import csv
import json
from collections import Counter

import pytest
from mlflow.tracking import MlflowClient
from mlflow_server import child_runs, cli, parent_runs, shared_server, unique

from clbench.compare import Row, _counted, busy_intervals, markdown_table
from clbench.compare.stats import t_interval
from clbench.provenance import git_commit, source_digest


def test_compare_writes_table_csv_and_figure(workdir, capsys):
    server = shared_server()
    exp = unique("compare")
    assert cli("run", "--method", "finetune,joint", "--seeds", "0-1", "--epochs", "3",
               "--jobs", "2", "--tracking-uri", server.uri, "--experiment", exp, "-q") == 0
    capsys.readouterr()
    assert cli("compare", "--experiment", exp, "--tracking-uri", server.uri) == 0
    out = capsys.readouterr().out
    assert "finetune" in out and "joint" in out and "(n=2)" in out

    md = (workdir / "results" / f"compare-{exp}.md").read_text()
    assert "| method | synthetic |" in md
    assert md.count("(n=2)") == 2 and "AP " in md and "AF " in md and "±" in md
    with open(workdir / "results" / f"compare-{exp}.csv", newline="") as fh:
        rows = {r["method"]: r for r in csv.DictReader(fh)}
    assert set(rows) == {"finetune", "joint"}
    png = (workdir / "results" / f"compare-{exp}.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    # the statistics: each cell's t-interval over its seeds, the test against the best
    # (two seeds can separate nothing), no ranking on one dataset (the details and the
    # diagram are in tests/test_compare_stats.py)
    for r in rows.values():
        per_seed = [float(v.split(":")[1]) for v in r["AP_per_seed"].split()]
        ci = t_interval(per_seed)
        assert [float(r["AP_ci_low"]), float(r["AP_ci_high"])] == pytest.approx(ci)
        assert r["tie_with_best"] == "true"
    assert {r["best_in_dataset"] for r in rows.values()} == {"true", "false"}
    assert "## Statistics" in md and "smallest p possible with 2 seeds 0.5" in md
    assert "Not computed: 1 dataset; ranks need at least 2." in md
    assert "across datasets: not computed: 1 dataset" in out
    assert not (workdir / "results" / f"compare-{exp}-cd.png").exists()

    client = MlflowClient(server.uri)
    eid = client.get_experiment_by_name(exp).experiment_id
    for parent in parent_runs(client, eid):  # the table is the parents' aggregate
        row = rows[parent.data.tags["clbench.method"]]
        assert row["n_seeds"] == "2" and row["seeds"] == "0 1"
        for key in ("AP", "AF"):
            assert float(row[f"{key}_mean"]) == pytest.approx(parent.data.metrics[f"{key}_mean"])
            assert float(row[f"{key}_std"]) == pytest.approx(parent.data.metrics[f"{key}_std"])

    # --seeds: the same rows on some of their seeds, in files of their own
    table = {p: p.read_bytes() for p in (workdir / "results").glob("compare-*")}
    assert cli("compare", "--experiment", exp, "--tracking-uri", server.uri,
               "--seeds", "1,5", "--json", "one.json") == 0
    out = capsys.readouterr().out
    assert "only seeds" in out and "(n=1)" in out and "(n=2)" not in out
    assert {p: p.read_bytes() for p in table} == table  # the every-seed table is untouched
    stem = workdir / "results" / f"compare-{exp}-seeds-1-5"
    md = stem.with_suffix(".md").read_text()
    assert ("Seeds: only 1, 5 of each row (`--seeds`): every mean, interval, test and rank "
            "is over them. Rows that ran fewer of them: finetune/synthetic (1); "
            "joint/synthetic (1).") in md
    with open(stem.with_suffix(".csv"), newline="") as fh:
        one = {r["method"]: r for r in csv.DictReader(fh)}
    for method, r in one.items():
        assert r["n_seeds"] == "1" and r["seeds"] == "1"
        assert r["AP_per_seed"] == rows[method]["AP_per_seed"].split()[1]
    doc = json.loads((workdir / "one.json").read_text())
    assert doc["seeds_only"] == [1, 5] and {r["seeds"][0] for r in doc["rows"]} == {1}
    assert (workdir / "results" / f"compare-{exp}-seeds-1-5.png").exists()

    # bad or empty seed lists exit 2 and write nothing
    for bad, says in (("x", "--seeds expects"), ("7", "no finished runs among seeds 7")):
        before = sorted((workdir / "results").rglob("*"))
        assert cli("compare", "--experiment", exp, "--tracking-uri", server.uri,
                   "--seeds", bad) == 2
        err = capsys.readouterr().err
        assert says in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
        assert sorted((workdir / "results").rglob("*")) == before


def test_compare_unknown_experiment(workdir, capsys):
    assert cli("compare", "--experiment", unique("missing"), "--tracking-uri",
               shared_server().uri) == 2
    assert "no MLflow experiment named" in capsys.readouterr().err
    assert not (workdir / "results").exists()


SWEEP = """
experiment = "{exp}"
methods = ["finetune", "ewc"]
datasets = ["synthetic"]
grid_seeds = [0]
final_seeds = "0-1"

[params]
epochs = 3

[grid]
lr = [0.001, 0.01]

[method.ewc.grid]
lamb = [100.0, 10000.0]
"""


def test_compare_reference_selection_and_provenance(workdir, capsys):
    """--reference puts the published AP beside clbench's with the difference; the table
    records the selected hyperparameters, the commit, the wall time and the commands."""
    server = shared_server()
    exp = unique("compare-ref")
    (workdir / "s.toml").write_text(SWEEP.format(exp=exp))
    assert cli("sweep", "s.toml", "--jobs", "2", "--tracking-uri", server.uri, "-q") == 0
    (workdir / "ref.csv").write_text("method,dataset,AP,AF,source\n"
                                     "bare,synthetic,0.5,0.1,paper\n"  # alias of finetune
                                     "ewc,synthetic,0.99,,paper\n"
                                     "piggyback,synthetic,0.7,,not run here\n")
    (workdir / "notes.md").write_text("Finetune is the lower bound.\n")
    capsys.readouterr()
    assert cli("compare", "--experiment", exp, "--tracking-uri", server.uri,
               "--reference", "ref.csv", "--notes", "notes.md", "--run-command",
               "clbench sweep s.toml --jobs 2") == 0
    out = capsys.readouterr().out
    assert "ref 50.0" in out and "ref 99.0" in out

    with open(workdir / "results" / f"compare-{exp}.csv", newline="") as fh:
        rows = {r["method"]: r for r in csv.DictReader(fh)}
    assert set(rows) == {"finetune", "ewc"}  # only the selected configurations
    fin, ewc = rows["finetune"], rows["ewc"]
    assert float(fin["ref_AP"]) == 0.5 and float(fin["ref_AF"]) == 0.1
    assert float(fin["delta_AP"]) == pytest.approx(float(fin["AP_mean"]) - 0.5)
    assert float(fin["delta_AF"]) == pytest.approx(float(fin["AF_mean"]) - 0.1)
    assert ewc["ref_AF"] == "" and ewc["delta_AF"] == ""
    assert float(ewc["delta_AP"]) == pytest.approx(float(ewc["AP_mean"]) - 0.99)
    for r in rows.values():
        within = abs(float(r["delta_AP"])) <= 0.02
        assert r["within_tolerance"] == str(within).lower()
        assert r["n_seeds"] == "2"
        seeds = dict(item.split(":") for item in r["AP_per_seed"].split())
        assert set(seeds) == {"0", "1"}
        assert sum(float(v) for v in seeds.values()) / 2 == pytest.approx(float(r["AP_mean"]))
    assert fin["cell_runs"] == "3" and ewc["cell_runs"] == "5"  # grid configs + final seed 1
    assert fin["selected_config"].startswith("lr=")
    assert ewc["selected_config"].startswith("lr=") and "lamb=" in ewc["selected_config"]
    assert "epochs=3" in ewc["config"] and "hidden=256" in ewc["config"]
    assert "lamb=" in ewc["hyperparameters"] and "fisher=batch" in ewc["hyperparameters"]

    client = MlflowClient(server.uri)
    eid = client.get_experiment_by_name(exp).experiment_id
    for parent in parent_runs(client, eid):  # the selection is MLflow's, not recomputed
        tags, params = parent.data.tags, parent.data.params
        if tags.get("clbench.selected") != "true":
            continue
        row = rows[tags["clbench.method"]]
        assert f"lr={params['lr']}" in row["selected_config"]
        assert f"lr={params['lr']}" in row["hyperparameters"]

    md = (workdir / "results" / f"compare-{exp}.md").read_text()
    assert "## Against the reference `ref.csv`" in md
    assert "| finetune | synthetic |" in md and "| 0.500 |" in md and "| 0.990 |" in md
    assert "piggyback" not in md  # reference rows without runs are not shown
    assert "## Configurations" in md and "| lr=" in md and "lamb=" in md
    assert "best mean val AP" in md  # how the sweep selected
    # selected on grid seed 0, reported on 0 and 1: seed 1's validation AP, from MLflow
    selected = {p.info.run_id: p.data.tags["clbench.method"]
                for p in parent_runs(client, eid) if p.data.tags.get("clbench.selected") == "true"}
    seed1 = {selected[c.data.tags["mlflow.parentRunId"]]: c.data.metrics["val_AP"]
             for c in child_runs(client, eid)
             if c.data.tags.get("mlflow.parentRunId") in selected
             and c.data.tags.get("clbench.seed") == "1"}
    assert set(seed1) == {"finetune", "ewc"}
    assert {p.data.tags.get("clbench.grid_seeds") for p in parent_runs(client, eid)
            if p.data.tags.get("clbench.selected") == "true"} == {"0"}
    for method, val in seed1.items():
        assert (f"{method}/synthetic: best mean val AP" in md
                and f"its mean val AP over the 1 other reported seed: {val:.4f}" in md)
    # every run recorded its code: the commit of this checkout and clbench's source digest
    rev, dirty = git_commit()
    if rev:
        logged = rev + (" with uncommitted changes" if dirty else "")
        assert f"- Commit: `{logged}` (logged by the runs)." in md
    else:  # not a git checkout (e.g. an unpacked sdist)
        assert "the runs do not log a git revision" in md
    children = client.search_runs([eid], "tags.`clbench.role` = 'child'")
    assert {c.data.tags["clbench.source_digest"] for c in children} == {source_digest()}
    assert (f"- Code the runs recorded: clbench source digest {source_digest()} "
            f"(all {len(children)} runs).") in md
    assert "- Wall time: " in md and "finished runs" in md and "torch threads per job: " in md
    assert "`clbench sweep s.toml --jobs 2` (given to `clbench compare`)" in md
    assert f"`clbench compare --experiment {exp} --tracking-uri {server.uri}" in md
    assert "## Notes\n\nFinetune is the lower bound." in md
    assert "- Versions: " in md and "torch " in md
    png = (workdir / "results" / f"compare-{exp}.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000

    # without --run-command the command is rebuilt from the sweep file tag; --commit is kept
    assert cli("compare", "--experiment", exp, "--tracking-uri", server.uri, "--commit",
               "abc123", "--out", "other") == 0
    md = (workdir / "other" / f"compare-{exp}.md").read_text()
    assert "- Commit: `abc123` (given to `clbench compare --commit`)" in md
    assert f"`clbench sweep s.toml --tracking-uri {server.uri}` (reconstructed" in md
    assert "## Against" not in md


def test_compare_bad_reference(workdir, capsys):
    server = shared_server()
    exp = unique("compare-badref")
    assert cli("run", "--method", "finetune", "--epochs", "2", "--tracking-uri", server.uri,
               "--experiment", exp, "-q") == 0
    capsys.readouterr()
    assert cli("compare", "--experiment", exp, "--tracking-uri", server.uri,
               "--reference", "missing.csv") == 2
    assert "reference file not found" in capsys.readouterr().err
    (workdir / "r.csv").write_text("method,AP\nfinetune,0.9\n")
    assert cli("compare", "--experiment", exp, "--tracking-uri", server.uri,
               "--reference", "r.csv") == 2
    assert "needs the column(s) dataset" in capsys.readouterr().err
    (workdir / "r.csv").write_text("method,dataset,AP\nfinetune,synthetic,91.0\n")
    assert cli("compare", "--experiment", exp, "--tracking-uri", server.uri,
               "--reference", "r.csv") == 2
    assert "not on a 0-1 scale" in capsys.readouterr().err
    assert not (workdir / "results" / f"compare-{exp}.md").exists()


def test_code_versions_are_listed_with_their_run_counts():
    """A table whose runs ran different code says so, most frequent version first."""
    one = Counter({"abc": 4})
    assert _counted(one, "digest", "none") == "digest abc (all 4 runs)"
    mixed = Counter({"abc": 1, "": 2, "def": 3})
    assert (_counted(mixed, "clbench source digest", "no digest (older clbench)")
            == "clbench source digests: def (3 runs), no digest (older clbench) (2 runs), "
               "abc (1 run)")
    assert _counted(Counter({"r1": 2, "r2": 1}), "", "not logged") == "r1 (2 runs), r2 (1 run)"


def test_busy_intervals_merge_overlapping_and_touching_spans_only():
    # two jobs side by side, a third starting as the first ends, then a pause
    spans = [(10.0, 50.0), (0.0, 30.0), (50.0, 60.0), (100.0, 130.0), (110.0, 120.0)]
    assert busy_intervals(spans) == [(0.0, 60.0), (100.0, 130.0)]
    assert busy_intervals([]) == []
    assert busy_intervals([(5.0, 3.0)]) == [(5.0, 5.0)]  # a clock step back: no time
    # a short gap between jobs of one command is work; a long one is a pause
    assert busy_intervals(spans, join_gap=40.0) == [(0.0, 130.0)]
    assert busy_intervals(spans, join_gap=39.0) == [(0.0, 60.0), (100.0, 130.0)]


def test_a_mean_that_rounds_to_zero_is_printed_without_a_sign():
    """Joint training's AF is often a hair below zero; the table says 0.0, not -0.0,
    while a real negative AF (backward transfer) keeps its sign."""
    row = Row("joint", "cora", "h", "joint", [0, 1000],
              stats={"AP": {"mean": 0.95, "std": 0.01}, "AF": {"mean": -0.0004, "std": 0.0002}},
              reference={"AP": 0.93, "AF": -0.00001})
    assert row.cell("AF") == "0.0 ± 0.0"
    assert row.cell("AF", percent=False) == "0.0 ± 0.0"
    table = markdown_table([row], "exp")
    assert "AF 0.0 ± 0.0 (n=2)" in table and "-0.0" not in table
    assert "| 0.000 ± 0.000 |" in table  # the reference section's clbench AF
    row.stats["AF"] = {"mean": -0.012, "std": 0.003}
    assert row.cell("AF") == "-1.2 ± 0.3"


def test_notes_that_start_with_their_own_heading_are_headed_once():
    """A notes file may begin with "## Notes" (so that it reads on its own); the table
    adds that heading itself and must not print it twice. Other headings stay."""
    row = Row("joint", "cora", "h", "joint", [0],
              stats={"AP": {"mean": 0.95, "std": 0.0}, "AF": {"mean": 0.0, "std": 0.0}})
    for notes in ("## Notes\n\nBody.", "  ## notes  \nBody.", "Body."):
        table = markdown_table([row], "exp", notes=notes)
        assert table.count("## Notes") == 1 and table.endswith("## Notes\n\nBody.\n")
    table = markdown_table([row], "exp", notes="### Protocol\n\nBody.")
    assert table.endswith("## Notes\n\n### Protocol\n\nBody.\n")
    assert markdown_table([row], "exp", notes="## Notes\n").count("## Notes") == 0


def test_bar_chart_is_readable():
    """Axes labelled in %, one colour per method in both panels, a mean of 0 marked (a
    zero-height bar is invisible), the legend outside the panels."""
    from matplotlib.collections import PathCollection
    from matplotlib.colors import to_hex

    from clbench.plots import grouped_bars_figure

    values = {"AP": {("piggyback", "cora"): (0.93, 0.02, 5), ("finetune", "cora"): (0.9, 0.01, 5)},
              "AF": {("piggyback", "cora"): (0.0, 0.0, 5), ("finetune", "cora"): (0.05, 0.01, 5)}}
    fig = grouped_bars_figure(["cora"], ["finetune", "piggyback"], values)
    ap, af = fig.axes
    assert ap.get_ylabel() == "AP (%)" and af.get_ylabel() == "AF (%)"
    assert ap.get_xlabel() == "dataset"
    heights = sorted(round(p.get_height(), 6) for p in ap.patches)
    assert heights == [90.0, 93.0]  # in %, not 0-1
    colour = {ax: {c.get_label(): to_hex(c.patches[0].get_facecolor())
                   for c in ax.containers if hasattr(c, "patches")} for ax in (ap, af)}
    assert colour[ap] == colour[af]  # same colour per method across panels
    zero_marks = [c for c in af.collections
                  if isinstance(c, PathCollection) and len(c.get_offsets())]
    assert [tuple(c.get_offsets()[0])[1] for c in zero_marks] == [0.0]
    assert ap.get_legend() is None and af.get_legend() is None and len(fig.legends) == 1
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert labels == ["finetune", "piggyback", "mean 0 (no bar)"]


def test_every_method_of_a_fourteen_method_table_looks_different():
    """Ten colours do not tell fourteen methods apart (PackNet was drawn like CaT): from
    the eleventh method on, the bars are hatched, and no two methods share a style."""
    from matplotlib.colors import to_hex

    from clbench.plots import grouped_bars_figure

    methods = [f"m{k:02d}" for k in range(14)]
    values = {"AP": {(m, "cora"): (0.5 + 0.01 * k, 0.01, 3) for k, m in enumerate(methods)}}
    (ax,) = grouped_bars_figure(["cora"], methods, values).axes
    styles = {c.get_label(): (to_hex(c.patches[0].get_facecolor()), c.patches[0].get_hatch())
              for c in ax.containers if hasattr(c, "patches")}
    assert set(styles) == set(methods)
    assert len(set(styles.values())) == 14
