"""Bad input is answered before torch is imported: the CLI's checks need only the cards.

``import torch_geometric`` alone takes seconds; ``clbench run --method nosuch``, every
usage error, ``clbench list methods`` and ``--help`` must not pay for it. Timings are
in benchmarks/cli_latency.py (a shared machine is too noisy for timing assertions);
this checks the mechanism: which modules a fresh interpreter has imported after each
command.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

from datahelpers import REPO

#: Modules that a usage error or a listing must not import.
HEAVY = ("torch", "torch_geometric", "numpy", "scipy", "sklearn", "pandas", "mlflow", "ogb",
         "clbench.trainer", "clbench.models")

#: (arguments, exit status): each is checked in the same fresh interpreter, in turn.
COMMANDS = [
    (["--help"], 0),
    (["run", "--help"], 0),
    (["run", "--method", "nosuch"], 2),
    (["run", "--method", "ewc,nosuch", "--seeds", "0-2"], 2),
    (["run", "--dataset", "nosuch"], 2),
    (["run", "--model", "nosuch"], 2),
    (["run", "--method", "ewc", "--param", "nosuch=1"], 2),
    (["run", "--method", "ewc", "--param", "lamb=-1"], 2),
    (["run", "--param", "hidden=x"], 2),
    (["run", "--seeds", "x"], 2),
    (["run", "--seed", "-1"], 2),
    (["run", "--tasks", "x"], 2),
    (["run", "--tasks", "99"], 2),
    (["run", "--dataset", "cora", "--class-order", "0,0"], 2),
    (["run", "--graph", "nosuch"], 2),
    (["run", "--epochs", "0"], 2),
    (["run", "--nosuch"], 2),
    (["sweep", "nosuch.toml"], 2),
    (["list", "nosuch"], 2),
    (["list", "methods"], 0),
    (["list", "models"], 0),
    (["list", "datasets"], 0),
]

SCRIPT = """
import json, sys
from clbench.cli import main

commands, heavy, out = json.loads(sys.argv[1]), json.loads(sys.argv[2]), sys.argv[3]
results = []
for args, _ in commands:
    sys.argv = ["clbench", *args]
    try:
        main()
        code = 0
    except SystemExit as exc:
        code = exc.code
    results.append([args, code, sorted(m for m in heavy if m in sys.modules)])
with open(out, "w") as fh:
    json.dump(results, fh)
"""


def test_usage_errors_and_listings_import_neither_torch_nor_pyg(tmp_path):
    out = tmp_path / "modules.json"
    env = {**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "200"}
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, json.dumps(COMMANDS), json.dumps(HEAVY), str(out)],
        cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = json.loads(out.read_text())
    assert [[args, code] for args, code, _ in results] == [list(c) for c in COMMANDS], \
        proc.stderr[-3000:]
    for args, _, loaded in results:
        assert loaded == [], f"clbench {' '.join(args)} imported {', '.join(loaded)}"


#: The modules the command line needs before it runs anything.
LIGHT_MODULES = ("clbench", "clbench.cli", "clbench.resolve", "clbench.config", "clbench.cards",
                 "clbench.registry", "clbench.parsing", "clbench.spec", "clbench.methods",
                 "clbench.backbones", "clbench.datasets", "clbench.datasets.info",
                 "clbench.plugins")


def test_the_command_lines_modules_import_nothing_heavy():
    script = ("import importlib, json, sys\n"
              f"for m in {LIGHT_MODULES!r}: importlib.import_module(m)\n"
              f"print(json.dumps(sorted(m for m in {HEAVY!r} if m in sys.modules)))\n")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout) == []
