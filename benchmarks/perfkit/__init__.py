"""Helpers of ``benchmarks/perf.py``: the workloads, the floor and the naive baseline."""
