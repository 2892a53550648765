"""How long the command line takes to answer: usage errors, ``--help`` and listings.

Usage::

    python benchmarks/cli_latency.py [--repeat 7] [--code LABEL=PATH ...] [--out FILE.md]

Each command runs as ``python -m clbench ...`` in a fresh process (what a user waits
for: interpreter start-up, imports, the check, the message), ``--repeat`` times. With
several ``--code`` checkouts (``LABEL=PATH``: a directory holding the ``clbench``
package, put first on ``PYTHONPATH``; default: this repository as ``now``), the rounds
are interleaved, one call of each checkout per round, so that a drift in the load of a
shared machine hits every checkout alike. The table gives the median wall time (and the
range) per command and checkout; the load average before and after is printed with it.
Timings on a shared machine are noisy: compare medians taken in the same run, and
never assert on them in tests (tests/test_lazy_imports.py checks the mechanism instead:
which modules these commands import).

To time an older commit beside the working tree::

    git archive <commit> | tar -x -C /tmp/clbench-old
    python benchmarks/cli_latency.py --code before=/tmp/clbench-old --code after=.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

#: (what it is, arguments): usage errors exit 2, the rest 0.
COMMANDS: list[tuple[str, list[str]]] = [
    ("--help", ["--help"]),
    ("unknown method", ["run", "--method", "nosuch"]),
    ("unknown dataset", ["run", "--dataset", "nosuch"]),
    ("unknown model", ["run", "--model", "nosuch"]),
    ("unknown parameter", ["run", "--param", "nosuch=1"]),
    ("bad --seeds", ["run", "--seeds", "x"]),
    ("bad --tasks", ["run", "--tasks", "99"]),
    ("unknown method, grid", ["run", "--method", "ewc,nosuch", "--seeds", "0-2"]),
    ("list methods", ["list", "methods"]),
    ("list datasets", ["list", "datasets"]),
]


def time_command(path: Path, args: list[str], cwd: Path) -> tuple[float, int]:
    """Wall seconds and exit status of ``python -m clbench *args`` with ``path`` first on
    ``PYTHONPATH``."""
    env = {**os.environ, "PYTHONPATH": str(path)}
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "clbench", *args], cwd=cwd, env=env,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start, proc.returncode


def load() -> str:
    return " / ".join(f"{x:.2f}" for x in os.getloadavg())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeat", type=int, default=7, help="runs of each command (default 7)")
    ap.add_argument("--code", action="append", default=[], metavar="LABEL=PATH",
                    help="a checkout to time (repeatable; default: now=<this repository>)")
    ap.add_argument("--out", type=Path, help="also write the table (Markdown) here")
    opts = ap.parse_args(argv)
    codes = [(c.partition("=")[0], Path(c.partition("=")[2]).resolve()) for c in opts.code]
    codes = codes or [("now", REPO)]
    for label, path in codes:
        if not (path / "clbench" / "__init__.py").is_file():
            ap.error(f"--code {label}={path}: no clbench package there")

    before, started = load(), datetime.now(timezone.utc)
    times: dict[tuple[str, str], list[float]] = {}
    status: dict[tuple[str, str], set[int]] = {}
    with tempfile.TemporaryDirectory() as cwd:  # nothing a command writes stays behind
        for _, path in codes:  # warm-up calls: the file cache, .pyc files
            for _, args in COMMANDS:
                time_command(path, args, Path(cwd))
        for _ in range(opts.repeat):
            for name, args in COMMANDS:
                for label, path in codes:
                    seconds, code = time_command(path, args, Path(cwd))
                    times.setdefault((name, label), []).append(seconds)
                    status.setdefault((name, label), set()).add(code)
    after = load()

    labels = [label for label, _ in codes]
    lines = [f"| command | {' | '.join(f'{lb}: median (min-max)' for lb in labels)} | exit |",
             "|---|" + "---|" * len(labels) + "---|"]
    for name, args in COMMANDS:
        cells = []
        for label in labels:
            t = times[(name, label)]
            cells.append(f"{statistics.median(t):.2f} s ({min(t):.2f}-{max(t):.2f})")
        codes_seen = sorted(set().union(*(status[(name, lb)] for lb in labels)))
        lines.append(f"| `clbench {' '.join(args)}` ({name}) | {' | '.join(cells)} | "
                     f"{', '.join(map(str, codes_seen))} |")
    head = [
        f"CLI latency, {started:%Y-%m-%d %H:%M} UTC: `python benchmarks/cli_latency.py "
        f"{' '.join(sys.argv[1:] if argv is None else argv)}`",
        f"{opts.repeat} runs per command and checkout (interleaved), median wall time of a "
        f"fresh `python -m clbench` process; {os.cpu_count()} cores, "
        f"{platform.python_implementation()} {platform.python_version()}; load average "
        f"(1/5/15 min) {before} before, {after} after (a shared machine: medians only).",
        "",
    ]
    text = "\n".join(head + lines) + "\n"
    print(text)
    if opts.out is not None:
        opts.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
