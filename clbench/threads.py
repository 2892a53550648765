"""How many CPU threads a run uses, and how its idle OpenMP threads wait.

A run's floating-point sums depend on its torch thread count, and with them the epoch at
which a task stops and every number after it. So every orchestrated job uses **one torch
thread** unless ``--threads`` asks for more: a seed gives the same numbers at any
``--jobs``, on Dask, or on a machine with more cores, and parallelism comes from running
seeds side by side (``--jobs`` defaults to the usable cores). A single ``clbench run``
alone takes the usable cores instead (:func:`usable_cores`, chosen by the CLI); its
record says how many, and ``--threads 1`` gives it the orchestrated numbers.

With more than one thread, idle OpenMP threads spin-wait for work by default. Beside other
busy processes they spin on cores the others need, and a run can take 5x as long
(``results/performance.md``). :func:`configure_openmp` therefore sets
``OMP_WAIT_POLICY=PASSIVE`` (idle threads sleep) when the cores are already busy at
start-up; on an idle machine spinning is faster and stays. The wait policy changes no
number, only time. Nothing here imports torch: the policy must be set before it loads.
"""

from __future__ import annotations

import os
import time

DEFAULT_THREADS = 1
WAIT_ENV = "OMP_WAIT_POLICY"


def usable_cores() -> int:
    """The cores this process may run on (CPU affinity and cgroup quota, as joblib
    counts them)."""
    import joblib

    return max(1, joblib.cpu_count())


def _cpu_times() -> tuple[float, float] | None:
    """(busy, total) jiffies of the whole machine from /proc/stat, or None."""
    try:
        with open("/proc/stat") as fh:
            fields = [float(v) for v in fh.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0.0)  # idle + iowait
    return sum(fields) - idle, sum(fields)


def busy_cores(interval: float = 0.25) -> float | None:
    """Cores kept busy by *other* processes, sampled over ``interval`` seconds (Linux),
    else the 1-minute load average; None where neither exists."""
    start = _cpu_times()
    if start is None:
        try:
            return os.getloadavg()[0]
        except (AttributeError, OSError):
            return None
    own = time.process_time()
    time.sleep(interval)
    end = _cpu_times()
    own = time.process_time() - own
    if end is None or end[1] <= start[1]:
        return None
    cores = os.cpu_count() or 1
    share = (end[0] - start[0]) / (end[1] - start[1])  # of all the machine's cores
    return max(0.0, share * cores - own / interval)


def wait_policy(threads: int, busy: float | None, cores: int) -> str | None:
    """``PASSIVE`` when a run's ``threads`` would not each find a free core beside
    ``busy`` cores of other work; None (OpenMP's default: spin, then sleep) otherwise."""
    if threads <= 1 or busy is None:
        return None
    return "PASSIVE" if busy + threads > cores + 0.5 else None


def configure_openmp(threads: int) -> str | None:
    """Set ``OMP_WAIT_POLICY`` for runs with ``threads`` torch threads, from the load
    now. It reaches this process only if torch has not loaded yet, and every worker
    process started afterwards. A policy the user set is kept. Returns the policy in
    force (None: OpenMP's default)."""
    if WAIT_ENV in os.environ:
        return os.environ[WAIT_ENV]
    if threads <= 1:
        return None
    policy = wait_policy(threads, busy_cores(), usable_cores())
    if policy is not None:
        os.environ[WAIT_ENV] = policy
    return policy
