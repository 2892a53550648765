"""Every bad input exits 2 with one line on stderr, never a traceback, and writes nothing.

One table of bad inputs (command-line flags, parameter values, sweep files, graph files,
data files, plugins), each run in a fresh working directory through Typer's
``CliRunner`` (in process, so the table stays quick); a few run as real processes to
show that the console entry point behaves the same. Property tests feed arbitrary text
to the parsers: they return a valid value or raise :class:`ClbenchError`, nothing else.
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from datahelpers import copy_shared
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from clbench.cli import app
from clbench.config import resolve_params
from clbench.errors import ClbenchError
from clbench.parsing import (
    SEED_LIMIT,
    parse_assignments,
    parse_int_list,
    parse_names,
    parse_seeds,
    parse_tasks,
)

LONG = "x" * 5000
MARKER = "pwned-marker"
STORE = "store.db"
RESULTS = "results"


# ----------------------------------------------------------------------------- inputs
class Touch:
    """Unpickling this runs ``os.system("touch <MARKER>")``: a file that does it must be
    refused without being unpickled."""

    def __reduce__(self):
        return os.system, (f"touch {MARKER}",)


def _pt(make: Callable[[], object]) -> Callable[[Path], None]:
    """``torch.save`` of ``make()`` as ``g.pt``."""
    return lambda tmp: torch.save(make(), tmp / "g.pt")


def _graph(**change: object) -> dict:
    """A valid small graph's fields, with ``change`` applied."""
    fields = {"x": torch.rand(6, 3), "edge_index": torch.tensor([[0, 1, 2, 3], [1, 2, 3, 4]]),
              "y": torch.tensor([0, 1, 0, 1, 0, 1])}
    return {**fields, **change}


def _npz(make: Callable[[], dict]) -> Callable[[Path], None]:
    """``numpy.savez`` of the arrays ``make()`` returns as ``g.npz``."""
    return lambda tmp: np.savez(tmp / "g.npz", **make())


def _cora(tmp: Path) -> Path:
    """Cora's real raw files in the data root ``tmp/data``; returns their folder."""
    return copy_shared("cora", tmp / "data")


def _plugin(body: str) -> Callable[[Path], None]:
    return lambda tmp: (tmp / "plug.py").write_text(body)


def _sweep(body: str) -> Callable[[Path], None]:
    head = ('methods = ["finetune"]\ndatasets = ["synthetic"]\ngrid_seeds = [0]\n'
            'final_seeds = [0]\n')
    return lambda tmp: (tmp / "s.toml").write_text(head + body)


def _raw_sweep(data: bytes) -> Callable[[Path], None]:
    return lambda tmp: (tmp / "s.toml").write_bytes(data)


INPUTS: dict[str, Callable[[Path], None]] = {
    "pt-not-a-graph": _pt(lambda: torch.arange(5)),
    "pt-pickle-attack": lambda tmp: (tmp / "g.pt").write_bytes(pickle.dumps(Touch())),
    "pt-torch-attack": _pt(lambda: {"x": Touch()}),
    "pt-garbage": lambda tmp: (tmp / "g.pt").write_bytes(b"\x00\xffnot a torch file" * 10),
    "pt-label-out-of-range": _pt(lambda: _graph(y=torch.tensor([0, 1, 0, 1, 0, 459]))),
    "pt-edge-out-of-range": _pt(lambda: _graph(edge_index=torch.tensor([[0, 1], [1, 99]]))),
    "npz-no-y": _npz(lambda: {"x": np.ones((4, 2)), "edge_index": np.array([[0, 1], [1, 2]])}),
    "npz-object-array": _npz(lambda: {"x": np.array([Touch()], dtype=object),
                                      "edge_index": np.array([[0], [1]]), "y": np.zeros(1)}),
    "cora-garbage-x": lambda tmp: (_cora(tmp) / "ind.cora.x").write_bytes(
        b"\x80\x04garbage, not a pickle" * 20),
    "cora-attack-graph": lambda tmp: (_cora(tmp) / "ind.cora.graph").write_bytes(
        pickle.dumps(Touch())),
    "a-file": lambda tmp: (tmp / "afile").write_text("not a directory"),
    "plugin-exit": _plugin("import sys\nsys.exit(3)\n"),
    "plugin-exit-0": _plugin("raise SystemExit\n"),
    "plugin-raises": _plugin("raise RuntimeError('plugin is broken')\n"),
    "plugin-syntax": _plugin("def broken(:\n"),
    "sweep-protocol-str": _sweep('protocol = "full"\n'),
    "sweep-setting-unknown": _sweep('[protocol]\nsetting = "domain"\n'),
    "sweep-class-packnet": lambda tmp: (tmp / "s.toml").write_text(
        'methods = ["finetune", "packnet"]\ndatasets = ["synthetic"]\ngrid_seeds = [0]\n'
        'final_seeds = [0]\n[protocol]\nsetting = "class"\n'),
    "sweep-method-int": lambda tmp: (tmp / "s.toml").write_text(
        'method = 3\ndatasets = ["synthetic"]\ngrid_seeds = [0]\nfinal_seeds = [0]\n'
        'methods = ["finetune"]\n'),
    "sweep-split-seed-str": _sweep('[protocol]\nsplit_seed = "abc"\n'),
    "sweep-split-seed-neg": _sweep("[protocol]\nsplit_seed = -1\n"),
    "sweep-not-utf8": _raw_sweep(b'methods = ["fin\xe9tune"]\n'),
    "sweep-tasks-9x9": lambda tmp: (tmp / "s.toml").write_text(
        'methods = ["finetune"]\ndatasets = ["cora"]\ngrid_seeds = [0]\nfinal_seeds = [0]\n'
        '[protocol]\ntasks = "9x9"\n'),
    "sweep-seed-neg": lambda tmp: (tmp / "s.toml").write_text(
        'methods = ["finetune"]\ndatasets = ["synthetic"]\ngrid_seeds = -1\n'
        'final_seeds = [0]\n'),
    "sweep-seed-float": lambda tmp: (tmp / "s.toml").write_text(
        'methods = ["finetune"]\ndatasets = ["synthetic"]\ngrid_seeds = [1.5]\n'
        'final_seeds = [0]\n'),
    "sweep-seed-huge-range": lambda tmp: (tmp / "s.toml").write_text(
        'methods = ["finetune"]\ndatasets = ["synthetic"]\ngrid_seeds = [0]\n'
        'final_seeds = "0-99999999999"\n'),
    "sweep-methods-empty": lambda tmp: (tmp / "s.toml").write_text(
        'methods = []\ndatasets = ["synthetic"]\ngrid_seeds = [0]\nfinal_seeds = [0]\n'),
    "sweep-methods-blank": lambda tmp: (tmp / "s.toml").write_text(
        'methods = [""]\ndatasets = ["synthetic"]\ngrid_seeds = [0]\nfinal_seeds = [0]\n'),
    "sweep-datasets-int": lambda tmp: (tmp / "s.toml").write_text(
        'methods = ["finetune"]\ndatasets = 3\ngrid_seeds = [0]\nfinal_seeds = [0]\n'),
    "sweep-plugins-int": _sweep("plugins = [3]\n"),
    "sweep-experiment-int": _sweep("experiment = 3\n"),
    "sweep-params-int": _sweep("params = 3\n"),
    "sweep-params-list": _sweep("[params]\nlr = [0.1, 0.2]\n"),
    "sweep-grid-empty": _sweep("[grid]\nlr = []\n"),
    "sweep-grid-nan": _sweep("[grid]\nlr = [0.01, nan]\n"),
    "sweep-grid-table": _sweep("[grid]\nlr = [{a = 1}]\n"),
    "sweep-grid-hidden": _sweep("[grid]\nhidden = [64, 99999999999]\n"),
    "sweep-device-int": _sweep("[protocol]\ndevice = 3\n"),
    "sweep-device-banana": _sweep('[protocol]\ndevice = "banana"\n'),
    "sweep-class-order-mixed": _sweep('[protocol]\nclass_order = [1, "a"]\n'),
    "sweep-tasks-bool": _sweep("[protocol]\ntasks = true\n"),
    "sweep-unknown-key": _sweep("sedes = [0]\n"),
    "sweep-bad-toml": _raw_sweep(b"methods = [finetune\n"),
    "sweep-int-too-long": _sweep("[params]\nepochs = " + "9" * 5000 + "\n"),
    "sweep-method-params-int": _sweep("[method.finetune]\nparams = 3\n"),
    "sweep-method-unknown": _sweep("[method.nope.grid]\nlr = [0.1]\n"),
}


# ----------------------------------------------------------------------------- the table
@dataclass(frozen=True)
class Case:
    """``args`` may hold ``{tmp}`` (the case's working directory); ``inputs`` names the
    files the case writes first (see :data:`INPUTS`); ``message`` must appear on stderr."""

    args: tuple[str, ...]
    message: str
    inputs: str | None = None


def case(id_: str, *args: str, message: str, inputs: str | None = None):
    return pytest.param(Case(args, message, inputs), id=id_)


RUN = ("run", "-q", "--epochs", "2")
ORCH = ("--tracking-uri", f"sqlite:///{{tmp}}/{STORE}")

CASES = [
    # names
    case("method-empty", *RUN, "--method", "", message="--method names nothing"),
    case("method-commas", *RUN, "--method", ",,,", message="--method names nothing"),
    case("dataset-empty", *RUN, "--dataset", "", message="--dataset names nothing"),
    case("dataset-commas", *RUN, "--dataset", " , ", message="--dataset names nothing"),
    case("method-markup-close", *RUN, "--method", "[/foo]",
         message="unknown method '[/foo]'"),
    case("method-markup-style", *RUN, "--method", "[bold red]evil",
         message="unknown method '[bold red]evil'"),
    case("method-long", *RUN, "--method", LONG, message="(5,000 characters)"),
    case("dataset-long", *RUN, "--dataset", LONG, message="(5,000 characters)"),
    case("dataset-file-long", *RUN, "--dataset", LONG + ".pt", message="(5,003 characters)"),
    case("dataset-file-missing-orch", *RUN, "--dataset", "nothere.pt", "--seeds", "0-1", *ORCH,
         message="dataset file not found: nothere.pt"),
    case("model-unknown", *RUN, "--model", "[mlp]", message="unknown model '[mlp]'"),
    case("list-unknown", "list", "[/x]", message="unknown list '[/x]'"),
    # seeds
    case("seed-negative", *RUN, "--seed", "-1", message="--seed must be in [0, 2**32)"),
    case("seed-too-large", *RUN, "--seed", str(SEED_LIMIT), message="--seed must be in"),
    case("split-seed-negative", *RUN, "--split-seed", "-5",
         message="--split-seed must be in [0, 2**32)"),
    case("split-seed-negative-orch", *RUN, "--split-seed", "-5", "--seeds", "0-1", *ORCH,
         message="--split-seed must be in [0, 2**32)"),
    case("seeds-negative", *RUN, "--seeds", "-1", *ORCH, message="--seeds must be in"),
    case("seeds-too-large", *RUN, "--seeds", "0-99999999999", *ORCH,
         message="--seeds must be in"),
    case("seeds-too-many", *RUN, "--seeds", "0-20000", "--dry-run", *ORCH,
         message="names more than 10,000 seeds"),
    case("seeds-empty", *RUN, "--seeds", "", *ORCH, message="--seeds names no seed"),
    case("seeds-digits", *RUN, "--seeds", "1" * 5000, *ORCH, message="(5,000 characters)"),
    # device
    case("device-banana", *RUN, "--device", "banana", message="is not a torch device"),
    case("device-cuda", *RUN, "--device", "cuda", message="CUDA is not available"),
    case("device-meta", *RUN, "--device", "meta", message="clbench runs on cpu, cuda or mps"),
    case("device-cuda-dry-run", *RUN, "--device", "cuda", "--seeds", "0-1", "--dry-run", *ORCH,
         message="CUDA is not available"),
    # task split and class order
    case("tasks-zero", *RUN, "--tasks", "0", message="at least 1"),
    case("tasks-zero-classes", *RUN, "--tasks", "3x0", message="at least 1"),
    case("tasks-digits", *RUN, "--tasks", "1" * 5000, message="--tasks expects"),
    case("tasks-9x9-cora", *RUN, "--dataset", "cora", "--tasks", "9x9",
         message="cora has only 7"),
    case("tasks-9x9-cora-dry-run", *RUN, "--dataset", "cora", "--tasks", "9x9", "--dry-run",
         *ORCH, message="cora has only 7"),
    case("class-order-empty", *RUN, "--class-order", "", message="--class-order names no class"),
    case("class-order-twice", *RUN, "--class-order", "1,1", message="lists class 1 twice"),
    case("class-order-negative", *RUN, "--class-order", "-1,0", message="negative class"),
    case("class-order-cora-dry-run", *RUN, "--dataset", "cora", "--class-order",
         "0,1,2,3,4,5,9", "--dry-run", *ORCH, message="distinct classes in 0..6"),
    # other options
    case("tracking-uri-empty", *RUN, "--tracking-uri", "", message="--tracking-uri is empty"),
    case("experiment-empty", *RUN, "--experiment", "", message="--experiment is empty"),
    case("json-is-a-directory", *RUN, "--json", "{tmp}", message="is a directory"),
    case("json-under-a-file", *RUN, "--json", "{tmp}/afile/r.json", inputs="a-file",
         message="afile is not a directory"),
    case("jobs-zero", *RUN, "--seeds", "0-1", "--jobs", "0", *ORCH,
         message="--jobs must be at least 1"),
    case("graph-mode", *RUN, "--graph", "[partial]",
         message="--graph must be full or task, got '[partial]'"),
    case("setting-unknown", *RUN, "--setting", "[domain]",
         message="--setting must be task or class, got '[domain]'"),
    case("setting-class-piggyback", *RUN, "--setting", "class", "--method", "piggyback",
         message="method 'piggyback' runs only in Task-IL (--setting task), not Class-IL: it "
                 "chooses each node's mask by the node's task"),
    case("setting-class-packnet-orch", *RUN, "--setting", "class", "--method",
         "finetune,packnet", "--seeds", "0-1", *ORCH,
         message="method 'packnet' runs only in Task-IL"),
    case("backbone-twp-sage", *RUN, "--method", "twp", "--model", "sage",
         message="method 'twp' runs only on --model gcn/gat, not sage: its topology term"),
    case("backbone-twp-orch", *RUN, "--method", "finetune,twp", "--model", "graphsage",
         "--seeds", "0-1", *ORCH, message="method 'twp' runs only on --model gcn/gat"),
    case("backend-long", *RUN, "--seeds", "0-1", "--backend", LONG, *ORCH,
         message="unknown --backend"),
    case("tracking-uri-long", *RUN, "--seeds", "0-1", "--tracking-uri",
         f"sqlite:///{{tmp}}/{LONG}.db", message="File name too long"),
    case("tracking-uri-long-dry-run", *RUN, "--seeds", "0-1", "--dry-run", "--tracking-uri",
         f"sqlite:///{{tmp}}/{LONG}.db", message="File name too long"),
    case("data-dir-long", *RUN, "--dataset", "cora", "--data-dir", f"{{tmp}}/{LONG}",
         message="File name too long"),
    case("data-dir-file", *RUN, "--dataset", "cora", "--data-dir", "{tmp}/afile",
         inputs="a-file", message="afile is not a directory"),
    case("method-newline", *RUN, "--method", "a\nb", message="unknown method 'a\\nb'"),
    # parameter values
    case("lr-nan", *RUN, "-p", "lr=nan", message="'lr' must be a finite number"),
    case("lr-inf", *RUN, "-p", "lr=inf", message="'lr' must be a finite number"),
    case("lr-overflow", *RUN, "-p", "lr=1e999", message="'lr' must be a finite number"),
    case("lr-zero", *RUN, "-p", "lr=0", message="'lr' must be > 0"),
    case("dropout-nan", *RUN, "-p", "dropout=nan", message="'dropout' must be a finite"),
    case("dropout-one", *RUN, "-p", "dropout=1", message="'dropout' must be in [0, 1)"),
    case("min-lr-ratio-nan", *RUN, "-p", "min_lr_ratio=nan", message="must be a finite"),
    case("weight-decay-negative", *RUN, "-p", "weight_decay=-1", message="must be >= 0"),
    case("hidden-huge", *RUN, "-p", "hidden=99999999999", message="'hidden' must be in"),
    case("layers-huge", *RUN, "-p", "layers=100000", message="'layers' must be in"),
    case("patience-float", *RUN, "-p", "patience=1e3", message="'patience' expects int"),
    case("param-key-long", *RUN, "-p", LONG + "=1", message="(5,000 characters)"),
    case("threshold-nan", *RUN, "--method", "piggyback", "-p", "threshold=nan",
         message="'threshold' must be a finite number"),
    case("threshold-inf", *RUN, "--method", "piggyback", "-p", "threshold=-inf",
         message="'threshold' must be a finite number"),
    case("dgi-epochs-negative", *RUN, "--method", "piggyback", "-p", "dgi_epochs=-1",
         message="'dgi_epochs' must be >= 0"),
    case("lamb-negative-orch", *RUN, "--method", "ewc", "-p", "lamb=-1", "--seeds", "0",
         *ORCH, message="'lamb' must be >= 0"),
    case("lamb-nan", *RUN, "--method", "ewc", "-p", "lamb=nan", message="must be a finite"),
    case("gamma-nan", *RUN, "--method", "ewc", "-p", "gamma=nan", message="must be a finite"),
    case("train-ratio-one", *RUN, "--method", "packnet", "-p", "train_ratio=1",
         message="'train_ratio' must be in (0, 1)"),
    case("keep-ratio-nan", *RUN, "--method", "packnet", "-p", "keep_ratio=nan",
         message="must be a finite"),
    # compare
    case("tolerance-nan", "compare", "--tolerance", "nan", *ORCH, message="--tolerance"),
    case("tolerance-inf", "compare", "--tolerance", "inf", *ORCH, message="--tolerance"),
    case("tolerance-negative", "compare", "--tolerance", "-0.5", *ORCH, message="--tolerance"),
    case("compare-out-file", "compare", "--out", "{tmp}/afile", *ORCH, inputs="a-file",
         message="afile is not a directory"),
    case("compare-experiment-empty", "compare", "--experiment", "", *ORCH,
         message="--experiment is empty"),
    case("compare-no-store", "compare", *ORCH, message="no MLflow store at"),
    # plugins
    case("plugin-sys-exit", *RUN, "--plugin", "plug.py", inputs="plugin-exit",
         message="exited (sys.exit(3)) while it was being imported"),
    case("plugin-system-exit", *RUN, "--plugin", "plug.py", inputs="plugin-exit-0",
         message="exited (sys.exit(None)) while it was being imported"),
    case("plugin-raises", *RUN, "--plugin", "plug.py", inputs="plugin-raises",
         message="plugin is broken"),
    case("plugin-syntax-error", *RUN, "--plugin", "plug.py", inputs="plugin-syntax",
         message="failed to import: SyntaxError"),
    case("plugin-module-missing", *RUN, "--plugin", "no_such_plugin_module_xyz",
         message="cannot import plugin module"),
    case("plugin-empty", *RUN, "--plugin", "", message="plugin file not found"),
    case("plugin-long", *RUN, "--plugin", LONG + ".py", message="(5,003 characters)"),
    case("plugin-markup", "list", "--plugin", "[/x].py",
         message="plugin file not found: [/x].py"),
    case("plugin-relative-module", *RUN, "--plugin", ".x", message="failed to import"),
    # sweep files
    case("sweep-missing", "sweep", "missing.toml", message="sweep file not found"),
    case("sweep-directory", "sweep", "{tmp}", message="is a directory"),
    case("sweep-path-long", "sweep", f"{{tmp}}/{LONG}.toml", message="File name too long"),
    case("sweep-protocol-str", "sweep", "s.toml", inputs="sweep-protocol-str",
         message="s.toml: [protocol] must be a table"),
    case("sweep-setting-unknown", "sweep", "s.toml", inputs="sweep-setting-unknown",
         message="--setting must be task or class, got 'domain'"),
    case("sweep-class-packnet", "sweep", "s.toml", inputs="sweep-class-packnet",
         message="method 'packnet' runs only in Task-IL"),
    case("sweep-method-int", "sweep", "s.toml", inputs="sweep-method-int",
         message="s.toml: [method] must be a table"),
    case("sweep-split-seed-str", "sweep", "s.toml", inputs="sweep-split-seed-str",
         message="[protocol] split_seed must be an integer"),
    case("sweep-split-seed-negative", "sweep", "s.toml", inputs="sweep-split-seed-neg",
         message="[protocol] split_seed must be in [0, 2**32)"),
    case("sweep-not-utf8", "sweep", "s.toml", inputs="sweep-not-utf8",
         message="s.toml is not UTF-8 text"),
    case("sweep-tasks-9x9-dry-run", "sweep", "s.toml", "--dry-run", inputs="sweep-tasks-9x9",
         message="cora has only 7"),
    case("sweep-seed-negative", "sweep", "s.toml", inputs="sweep-seed-neg",
         message="grid_seeds must be in [0, 2**32)"),
    case("sweep-seed-float", "sweep", "s.toml", inputs="sweep-seed-float",
         message="grid_seeds must be like"),
    case("sweep-seed-huge-range", "sweep", "s.toml", inputs="sweep-seed-huge-range",
         message="final_seeds must be in [0, 2**32)"),
    case("sweep-methods-empty", "sweep", "s.toml", inputs="sweep-methods-empty",
         message="methods must be a non-empty list of names"),
    case("sweep-methods-blank", "sweep", "s.toml", inputs="sweep-methods-blank",
         message="methods must be a non-empty list of names"),
    case("sweep-datasets-int", "sweep", "s.toml", inputs="sweep-datasets-int",
         message="datasets must be a non-empty list of names"),
    case("sweep-plugins-int", "sweep", "s.toml", inputs="sweep-plugins-int",
         message="plugins must be a list of non-empty strings"),
    case("sweep-experiment-int", "sweep", "s.toml", inputs="sweep-experiment-int",
         message="experiment must be a non-empty string"),
    case("sweep-params-int", "sweep", "s.toml", inputs="sweep-params-int",
         message="[params] must be a table"),
    case("sweep-params-list", "sweep", "s.toml", inputs="sweep-params-list",
         message="[params] lr must be a number, string or boolean"),
    case("sweep-grid-empty", "sweep", "s.toml", inputs="sweep-grid-empty",
         message="[grid] lr has no values"),
    case("sweep-grid-nan", "sweep", "s.toml", inputs="sweep-grid-nan",
         message="'lr' must be a finite number"),
    case("sweep-grid-table", "sweep", "s.toml", inputs="sweep-grid-table",
         message="[grid] lr must be a list of numbers"),
    case("sweep-grid-hidden", "sweep", "s.toml", inputs="sweep-grid-hidden",
         message="'hidden' must be in"),
    case("sweep-device-int", "sweep", "s.toml", inputs="sweep-device-int",
         message="[protocol] device must be a string"),
    case("sweep-device-banana", "sweep", "s.toml", inputs="sweep-device-banana",
         message="is not a torch device"),
    case("sweep-class-order-mixed", "sweep", "s.toml", inputs="sweep-class-order-mixed",
         message="[protocol] class_order must be a list of integers"),
    case("sweep-tasks-bool", "sweep", "s.toml", inputs="sweep-tasks-bool",
         message="[protocol] tasks must be like"),
    case("sweep-unknown-key", "sweep", "s.toml", inputs="sweep-unknown-key",
         message="unknown key(s) 'sedes'"),
    case("sweep-bad-toml", "sweep", "s.toml", inputs="sweep-bad-toml",
         message="is not valid TOML"),
    case("sweep-int-too-long", "sweep", "s.toml", inputs="sweep-int-too-long",
         message="is not valid TOML"),
    case("sweep-method-params-int", "sweep", "s.toml", inputs="sweep-method-params-int",
         message="[method.finetune.params] must be a table"),
    case("sweep-method-unknown", "sweep", "s.toml", inputs="sweep-method-unknown",
         message="[method.nope] names an unknown method"),
    # graph files
    case("graph-pt-not-a-graph", *RUN, "--dataset", "g.pt", inputs="pt-not-a-graph",
         message="not a dict of tensors"),
    case("graph-pt-garbage", *RUN, "--dataset", "g.pt", inputs="pt-garbage",
         message="g.pt: not a plain tensor file"),
    case("graph-pt-pickle-attack", *RUN, "--dataset", "g.pt", inputs="pt-pickle-attack",
         message="g.pt"),
    case("graph-pt-torch-attack", *RUN, "--dataset", "g.pt", inputs="pt-torch-attack",
         message="refuses to load"),
    case("graph-pt-label-out-of-range", *RUN, "--dataset", "g.pt",
         inputs="pt-label-out-of-range", message="label 459 of node 5"),
    case("graph-pt-edge-out-of-range", *RUN, "--dataset", "g.pt",
         inputs="pt-edge-out-of-range", message="g.pt"),
    case("graph-npz-no-y", *RUN, "--dataset", "g.npz", inputs="npz-no-y",
         message="missing field(s) y"),
    case("graph-npz-object-array", *RUN, "--dataset", "g.npz", inputs="npz-object-array",
         message="refuses to load"),
    # data files (a data root holding Cora's real raw files, one of them replaced)
    case("cora-garbage-x", *RUN, "--dataset", "cora", "--data-dir", "{tmp}/data",
         inputs="cora-garbage-x", message="ind.cora.x"),
    case("cora-pickle-attack", *RUN, "--dataset", "cora", "--data-dir", "{tmp}/data",
         inputs="cora-attack-graph", message="ind.cora.graph"),
]


def listing(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def check_outcome(code: int, err: str, tmp: Path, before: set[str], message: str) -> None:
    """Exit 2, one short line naming the problem, no traceback, nothing written."""
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, err
    assert "Traceback" not in err, err
    assert 1 <= len(lines) <= 3, err
    assert len(err) < 2000, err  # long user input is clipped, not echoed
    assert message in " ".join(err.split()), err
    assert not (tmp / RESULTS).exists()
    assert not (tmp / STORE).exists()
    assert not (tmp / MARKER).exists()  # no pickle ran
    assert listing(tmp) == before, listing(tmp) ^ before


def prepare(tmp: Path, monkeypatch: pytest.MonkeyPatch, case: Case) -> tuple[list[str], set]:
    """Write the case's inputs into ``tmp`` (the working directory); return its command
    line and the listing of ``tmp`` before it runs."""
    monkeypatch.chdir(tmp)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp / STORE}")
    monkeypatch.setenv("CLBENCH_DATA", str(tmp / "data"))
    monkeypatch.delenv("DASK_SCHEDULER_ADDRESS", raising=False)
    if case.inputs:
        INPUTS[case.inputs](tmp)
    args = [a.replace("{tmp}", str(tmp)) for a in case.args]
    if args[0] in ("run", "sweep"):
        args += ["--results-dir", str(tmp / RESULTS)]
    return args, listing(tmp)


@pytest.mark.parametrize("case", CASES)
def test_bad_input_exits_2_with_one_line_and_writes_nothing(case, tmp_path, monkeypatch):
    args, before = prepare(tmp_path, monkeypatch, case)
    result = CliRunner().invoke(app, args)
    if isinstance(result.exception, Exception) and not isinstance(result.exception,
                                                                  SystemExit):
        raise result.exception
    check_outcome(result.exit_code, result.stderr, tmp_path, before, case.message)


def test_the_table_is_large_and_covers_every_kind_of_input():
    ids = [p.id for p in CASES]
    assert len(ids) == len(set(ids)) >= 60
    for prefix in ("seed", "device", "lr", "plugin", "sweep", "graph", "cora", "tolerance"):
        assert any(i.startswith(prefix) for i in ids), prefix


@pytest.mark.parametrize("case", [
    c for c in CASES if c.id in ("lr-nan", "method-markup-close", "plugin-sys-exit",
                                 "sweep-not-utf8")])
def test_the_console_entry_point_behaves_the_same(case, tmp_path, monkeypatch):
    """The real process: ``python -m clbench`` (what the ``clbench`` script runs)."""
    args, before = prepare(tmp_path, monkeypatch, case)
    proc = subprocess.run([sys.executable, "-m", "clbench", *args], capture_output=True,
                          text=True, timeout=300)
    check_outcome(proc.returncode, proc.stderr, tmp_path, before, case.message)


# ----------------------------------------------------------------------------- parsers
FUZZ = settings(max_examples=200, deadline=None, database=None,  # writes nothing to the repo
                suppress_health_check=[HealthCheck.function_scoped_fixture])
TEXT = st.one_of(
    st.text(max_size=40),
    st.text(alphabet="0123456789-,x ", max_size=40),
    st.from_regex(r"-?[0-9]{1,30}(-[0-9]{1,30})?(,[0-9]{1,15})*", fullmatch=True),
)


def _valid_or_clbench_error(parse: Callable[[], object]) -> object:
    try:
        return parse()
    except ClbenchError:
        return None


@FUZZ
@given(TEXT)
@example("0-99999999999")
@example("-1")
@example("1" * 5000)
def test_parse_seeds_returns_seeds_or_a_clbench_error(text):
    seeds = _valid_or_clbench_error(lambda: parse_seeds(text))
    if seeds is not None:
        assert seeds and len(seeds) == len(set(seeds)) <= 10_000
        assert all(isinstance(s, int) and 0 <= s < SEED_LIMIT for s in seeds)


@FUZZ
@given(TEXT)
@example("0")
@example("3x-1")
def test_parse_tasks_returns_a_split_or_a_clbench_error(text):
    out = _valid_or_clbench_error(lambda: parse_tasks(text))
    if out is not None:
        tasks, per_task = out
        assert isinstance(tasks, int) and tasks >= 1
        assert per_task is None or (isinstance(per_task, int) and per_task >= 1)


@FUZZ
@given(TEXT)
@example("")
@example("1,1")
def test_parse_int_list_returns_distinct_classes_or_a_clbench_error(text):
    out = _valid_or_clbench_error(lambda: parse_int_list(text, "--class-order"))
    if out is not None:
        assert out and len(out) == len(set(out)) and min(out) >= 0


@FUZZ
@given(st.one_of(st.text(max_size=40), st.lists(st.text(max_size=10), max_size=4)))
@example("")
@example(",,")
def test_parse_names_returns_names_or_a_clbench_error(text):
    out = _valid_or_clbench_error(lambda: parse_names(text, "--method"))
    if out is not None:
        assert out and all(n and n == n.strip() and "," not in n for n in out)


PARAM_KEYS = st.sampled_from(["lr", "dropout", "hidden", "layers", "epochs", "batch_norm",
                              "model", "optimizer", "threshold", "mask_type", "dgi_epochs",
                              "patience", "min_lr_ratio", "weight_decay"])
VALUES = st.one_of(st.text(max_size=20), st.floats().map(repr), st.integers().map(str),
                   st.sampled_from(["nan", "inf", "-inf", "1e999", "true", "gat", "0", "-1"]))


@FUZZ
@given(st.lists(st.one_of(st.text(max_size=30),
                          st.tuples(PARAM_KEYS, VALUES).map("=".join)), max_size=4))
@example(["lr=nan"])
@example(["dropout=inf"])
@example(["threshold=-inf"])
@example(["hidden=99999999999"])
def test_assignments_resolve_to_valid_params_or_a_clbench_error(items):
    import math

    def resolve() -> dict:
        return resolve_params("piggyback", "cora", parse_assignments(items))

    params = _valid_or_clbench_error(resolve)
    if params is not None:
        assert all(math.isfinite(v) for v in params.values() if isinstance(v, float))
        assert 0 <= params["dropout"] < 1 and params["lr"] > 0
        assert 1 <= params["hidden"] <= 8192 and 1 <= params["layers"] <= 32
