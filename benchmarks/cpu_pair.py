"""Control for the `--jobs 2` measurement: does this machine give two processes two
cores' worth of compute? Times an in-cache, single-threaded workload (small float32
matmuls and a Python loop) alone, then two copies at once, a few times over.

    python benchmarks/cpu_pair.py [--rounds 3]

A slowdown near 1.0x (throughput near 2x) means the cores are really there, and a
workload that slows down more when paired is limited by what the processes share
beyond the cores (cache, memory bandwidth). See results/performance.md.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

CHILD = """
import time
import numpy as np
a = np.random.rand(128, 128).astype(np.float32)
b = np.random.rand(128, 128).astype(np.float32)
t = time.perf_counter()
for _ in range(40_000):
    a @ b
x = 0
for i in range(3_000_000):
    x += i * i
print(time.perf_counter() - t)
"""
ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}


def run(copies: int) -> tuple[float, list[float]]:
    """Wall time of ``copies`` concurrent children and each child's own time."""
    env = {**os.environ, **ONE_THREAD}
    start = time.perf_counter()
    procs = [subprocess.Popen([sys.executable, "-c", CHILD], stdout=subprocess.PIPE,
                              text=True, env=env) for _ in range(copies)]
    each = [float(p.communicate()[0]) for p in procs]
    return time.perf_counter() - start, each


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    for _ in range(args.rounds):
        wall1, (alone,) = run(1)
        wall2, pair = run(2)
        print(f"alone {alone:.2f}s | two at once {pair[0]:.2f}s {pair[1]:.2f}s -> "
              f"slowdown {sum(pair) / 2 / alone:.2f}x, throughput {2 * wall1 / wall2:.2f}x")


if __name__ == "__main__":
    main()
