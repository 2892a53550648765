"""Performance harness: clbench against a floor and a naive baseline, with targets.

Usage::

    python benchmarks/perf.py [--quick] [--out results/performance.md]
                              [--max-load 2.5] [--max-wait 1200] [--sections ...]

Measures, in one run on one machine, and prints a table of ratios with each
target and PASS/MISS:

1. **Workload.** An ogbn-arxiv-sized graph (169,343 nodes, 1,166,243 generated
   homophilous directed edges made undirected, 128 class-conditional features, the
   real arxiv labels and years; BeGin's Task-IL setup 8 tasks x 5 classes), and the
   real Cora (3 tasks x 2 classes); GCN-256, 3 layers, BatchNorm (default config).
2. **Floor.** The same forward and backward math written directly in torch on
   precomputed tensors (``perfkit/floor.py``); one full-batch training step.
3. **Naive.** The same model with PyG's default ``GCNConv`` on ``edge_index``.
4. **clbench.** One training step (``processTrainIteration``, on task 1 of the real
   scenario, after task 0 ran through the real loop) for finetune, ewc, lwf, mas,
   twp, packnet, piggyback, gem and ergnn (the last two: ratio only, no target).
5. **Evaluation and memory.** One full arxiv-sized run per method, in a fresh
   process through ``clbench.experiment.run_experiment`` (a few epochs per task,
   printed): forward passes and seconds of the evaluation after each task, and
   the peak RSS of the process.
6. **Parallel throughput.** Seeds per minute on Cora with ``--jobs 1`` and
   ``--jobs 2`` through ``clbench run --seeds``.
6b. **Load.** A run's training time alone and beside two busy processes, with 1 and 2
   torch threads and each OpenMP wait policy (``perfkit/load.py``).
7. **End to end.** Wall time of the Cora Task-IL suite (5 methods x 10 seeds,
   default configs; ``--quick``: 2 seeds).

Timings of one workload are interleaved (one call of each contestant per
round, several rounds) and the median is reported, so that drifts in the load
of a shared machine hit every contestant alike. ``--out`` writes the table, the
machine and the command as Markdown; a section of the existing file after the
line ``<!-- notes: kept by perf.py -->`` is kept.

The real data shipped in ``tests/data`` is only read; Cora is copied into a temporary
data root.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import resource
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from perfkit import load as loadkit
from perfkit.floor import FloorGCN
from perfkit.naive import NaiveStep, naive_gcn
from perfkit.workload import (
    ARXIV_CLASSES_PER_TASK,
    ARXIV_TASKS,
    SHARED_DATA,
    arxiv_scenario,
    arxiv_sized_graph,
    copy_cora,
    cora_graph,
    cora_scenario,
)

warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
warnings.filterwarnings("ignore", message="Sparse invariant checks")

REPO = Path(__file__).resolve().parents[1]
METHODS_TIMED = ("finetune", "ewc", "lwf", "mas", "twp", "packnet", "piggyback", "gem",
                 "ergnn", "cgnn", "hat", "pignn", "cat")
#: Per-epoch target of a method against finetune (default 1.2x).
EPOCH_TARGETS = {"lwf": 1.5, "mas": 1.5, "twp": 1.5}
#: Timed, with their ratio to finetune reported but no target: a memory method's step
#: does more work by design (GEM: a backward pass per past task and a QP; CaT: its
#: step is on the synthetic memory, so it does less, and each task is condensed first).
NO_EPOCH_TARGET = ("gem", "ergnn", "cgnn", "cat")
#: Parameters a method is warmed up with before its step is timed, where the defaults
#: would make reaching task 1 cost more than the measurement (CaT condenses each task
#: with 1000 full-graph forward passes first; its condensation step is timed on its own).
WARM_PARAMS = {"cat": {"condense_steps": 2}}
SUITE_METHODS = ("finetune", "joint", "ewc", "packnet", "piggyback")
MASK_METHODS = ("packnet", "piggyback", "hat")  # evaluation after task t: t+1 forwards allowed
NOTES_MARKER = "<!-- notes: kept by perf.py -->"
GB = 1024**3


# =============================================================================== results
@dataclass
class Row:
    """One line of the result table."""

    section: str
    name: str
    value: str
    reference: str = ""
    ratio: str = ""
    target: str = ""
    status: str = ""  # PASS, MISS, or "" for information


@dataclass
class Report:
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    loads: list[tuple[str, tuple[float, float, float], float | None]] = field(
        default_factory=list)

    def add(self, *args: Any, **kw: Any) -> Row:
        row = Row(*args, **kw)
        self.rows.append(row)
        parts = [p for p in (row.reference, row.ratio) if p]
        extra = f"  ({'; '.join(parts)})" if parts else ""
        verdict = f"  target {row.target}: {row.status}" if row.target else ""
        print(f"  {row.name}: {row.value}{extra}{verdict}", flush=True)
        return row

    def note(self, text: str) -> None:
        self.notes.append(text)
        print(f"  note: {text}", flush=True)


def status(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def fmt_s(seconds: float) -> str:
    if seconds >= 100:
        return f"{seconds:.0f} s"
    if seconds >= 1:
        return f"{seconds:.2f} s"
    return f"{seconds * 1000:.1f} ms"


# =============================================================================== machine load
class CpuMeter:
    """CPU time used on the whole machine by other processes during a section.

    ``/proc/stat`` busy time minus this process's and its waited-for children's
    CPU time, divided by the wall time: the average number of cores others kept
    busy (approximate: children still running are counted as others).
    """

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.busy0 = _machine_busy_seconds()
        self.own0 = _own_cpu_seconds()

    def others_cores(self) -> float | None:
        busy = _machine_busy_seconds()
        if busy is None or self.busy0 is None:
            return None
        wall = time.perf_counter() - self.start
        return max(0.0, (busy - self.busy0 - (_own_cpu_seconds() - self.own0)) / max(wall, 1e-9))


def _machine_busy_seconds() -> float | None:
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    except OSError:
        return None
    ticks = [int(v) for v in fields[:8]]
    idle = ticks[3] + ticks[4]
    return (sum(ticks) - idle) / os.sysconf("SC_CLK_TCK")


def own_peak_rss_mb() -> float:
    """Peak resident memory of this process's own address space, in MiB.

    ``VmHWM`` from ``/proc/self/status``: unlike ``getrusage``'s ``ru_maxrss``, which
    Linux carries over ``fork`` and ``exec`` (a child started by a 7 GB parent
    reports at least 7 GB), it starts afresh with the new program.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _own_cpu_seconds() -> float:
    total = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        r = resource.getrusage(who)
        total += r.ru_utime + r.ru_stime
    return total


def wait_for_load(max_load: float, max_wait: float) -> tuple[float, float]:
    """Sleep until the 1-minute load average is below ``max_load`` (at most ``max_wait``
    seconds); returns the load average then and the seconds waited."""
    waited = 0.0
    load = os.getloadavg()[0]
    while load >= max_load and waited < max_wait:
        print(f"load average {load:.2f} >= {max_load}: waiting 30 s "
              f"({waited:.0f}/{max_wait:.0f} s)", flush=True)
        time.sleep(30)
        waited += 30
        load = os.getloadavg()[0]
    return load, waited


class Section:
    """Context manager recording the load average and others' CPU use of a section."""

    def __init__(self, report: Report, name: str) -> None:
        self.report, self.name = report, name

    def __enter__(self) -> Section:
        print(f"\n== {self.name} (load average {os.getloadavg()[0]:.2f})", flush=True)
        self.meter = CpuMeter()
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        others = self.meter.others_cores()
        self.report.loads.append((self.name, os.getloadavg(), others))
        extra = "" if others is None else f", other processes used {others:.2f} cores"
        print(f"   ({time.perf_counter() - self.t0:.0f} s{extra})", flush=True)


# =============================================================================== timing
def interleaved(contestants: dict[str, Callable[[], object]], rounds: int, inner: int = 1,
                warmup: int = 1) -> dict[str, list[float]]:
    """Seconds per call of each contestant: ``warmup`` untimed calls each, then
    ``rounds`` rounds of ``inner`` calls of each contestant in turn. Each round starts
    one contestant further (rotation), so that none always follows the same one
    (what the previous call left in the allocator and the caches matters here)."""
    for _ in range(warmup):
        for fn in contestants.values():
            fn()
    times: dict[str, list[float]] = {k: [] for k in contestants}
    names = list(contestants)
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            fn = contestants[name]
            t0 = time.perf_counter()
            for _ in range(inner):
                fn()
            times[name].append((time.perf_counter() - t0) / inner)
    return times


def spread(ts: Sequence[float]) -> str:
    return f"median of {len(ts)}; min {fmt_s(min(ts))}, max {fmt_s(max(ts))}"


# =============================================================================== clbench
class _StopAtTask(Exception):
    pass


def trainer_at_task(method: str, scenario, dataset_key: str | None, task: int = 1,
                    warm_epochs: int = 1, seed: int = 0):
    """A clbench trainer with tasks ``< task`` learned through the real loop
    (``NCTrainer.run``, ``warm_epochs`` epochs each) and task ``task`` prepared
    (``processBeforeTraining``); returns ``(trainer, step, loop_epoch)``: one
    ``processTrainIteration`` on the task's training batch, and one whole epoch of
    the loop (that step, the validation pass and ``processAfterEachIteration``)."""
    from clbench.config import method_param_keys, resolve_params
    from clbench.experiment import make_optimizer_fn, seed_everything
    from clbench.methods import METHODS
    from clbench.models import build_model
    from clbench.trainer import TrainerCallback, plateau_scheduler

    class Stop(TrainerCallback):
        def on_task_start(self, trainer, task_id: int) -> None:
            if task_id == task:
                raise _StopAtTask

    params = resolve_params(method, dataset_key, dict(WARM_PARAMS.get(method, {})))
    seed_everything(seed)
    graph = scenario.graph
    model = build_model(params["model"], graph.num_features, scenario.num_classes,
                        hidden=params["hidden"], layers=params["layers"],
                        dropout=params["dropout"], batch_norm=params["batch_norm"])
    trainer = METHODS.get(method)(
        model, scenario, make_optimizer_fn(params), None, "cpu",
        scheduler_fn=plateau_scheduler(params["patience"], params["min_lr_ratio"]),
        callbacks=[Stop()], **{k: params[k] for k in method_param_keys(method)})
    model = trainer.model  # a method may train a network of its own (PI-GNN grows one)
    with contextlib.suppress(_StopAtTask):  # stopped at the start of task ``task``
        trainer.run(epoch_per_task=warm_epochs)
    trainer.callbacks.clear()
    optimizer, states = trainer.optimizer, trainer.training_states
    dataset = trainer.getTrainingDataset(task)
    trainer.processBeforeTraining(task, dataset, model, optimizer, states)

    def step() -> None:
        model.train()
        trainer.processTrainIteration(model, optimizer, dataset.train, states)

    def loop_epoch() -> None:
        step()
        model.eval()
        val_metric, val_stats = trainer._score_loader([dataset.val])
        trainer.processAfterEachIteration(model, optimizer, states, {
            "val_metric": val_metric, "train_stats": {}, "val_stats": val_stats})

    return trainer, step, loop_epoch


# =============================================================================== sections
def epoch_section(report: Report, label: str, scenario, dataset_key: str | None,
                  rounds: int, inner: int, with_propagate_first: bool) -> None:
    """Floor, naive and clbench training steps on task 1 of ``scenario``, interleaved."""
    from clbench.experiment import seed_everything

    graph = scenario.graph
    contestants: dict[str, Callable[[], object]] = {}
    trainers = {}
    for m in METHODS_TIMED:
        trainer, step, loop_epoch = trainer_at_task(m, scenario, dataset_key)
        trainers[m] = trainer
        contestants[m] = step
        if m == "finetune":
            contestants["finetune loop epoch"] = loop_epoch
    if "cat" in trainers:
        contestants["cat condensation step"] = condensation_step(trainers["cat"])
    ref = trainers["finetune"]
    model = ref.model
    batch = ref.getTrainingDataset(1).train
    dims = [graph.num_features] + [model.n_hidden] * len(model.convs)
    floor = FloorGCN(model.inputs(graph), graph.adj_gcn, batch.nodes, batch.candidates,
                     batch.local_labels, dims, scenario.num_classes, seed=0)
    contestants["floor"] = floor.step
    if with_propagate_first:
        floor_ax = FloorGCN(graph.x, graph.adj_gcn, batch.nodes, batch.candidates,
                            batch.local_labels, dims, scenario.num_classes,
                            propagate_first=True, seed=0)
        contestants["floor, A@X precomputed"] = floor_ax.step
    seed_everything(0)
    naive = NaiveStep(naive_gcn(graph.num_features, model.n_hidden, scenario.num_classes,
                                len(model.convs)), batch)
    contestants["naive"] = naive.step
    print(f"   timing {', '.join(contestants)}: {rounds} rounds x {inner} call(s)", flush=True)
    times = interleaved(contestants, rounds, inner)
    med = {k: statistics.median(v) for k, v in times.items()}
    sec = f"{label}: training epoch"
    report.add(sec, "floor (plain torch, precomputed tensors)", fmt_s(med["floor"]),
               ratio=spread(times["floor"]))
    if "floor, A@X precomputed" in med:
        v = med["floor, A@X precomputed"]
        report.add(sec, "floor with A@X precomputed (layer 1 without sparse products)",
                   fmt_s(v), "floor", f"{v / med['floor']:.2f}x")
    report.add(sec, "naive (PyG GCNConv on edge_index)", fmt_s(med["naive"]), "floor",
               f"{med['naive'] / med['floor']:.2f}x")
    ft = med["finetune"]
    report.add(sec, "clbench finetune", fmt_s(ft), f"floor {fmt_s(med['floor'])}",
               f"{ft / med['floor']:.2f}x", "<= 1.25x floor", status(ft <= 1.25 * med["floor"]))
    report.add(sec, "clbench finetune vs naive", f"{med['naive'] / ft:.2f}x faster",
               f"naive {fmt_s(med['naive'])}", f"{med['naive'] / ft:.2f}x",
               ">= 4x faster", status(med["naive"] >= 4 * ft))
    for m in METHODS_TIMED:
        if m == "finetune":
            continue
        v, target = med[m], EPOCH_TARGETS.get(m, 1.2)
        if m in NO_EPOCH_TARGET:
            report.add(sec, f"clbench {m}", fmt_s(v), f"finetune {fmt_s(ft)}",
                       f"{v / ft:.2f}x")
            continue
        report.add(sec, f"clbench {m}", fmt_s(v), f"finetune {fmt_s(ft)}",
                   f"{v / ft:.2f}x", f"<= {target}x finetune", status(v <= target * ft))
    if "cat condensation step" in med:
        v = med["cat condensation step"]
        report.add(sec, "clbench cat: one condensation step (x condense_steps = 1000 per "
                   "task by default, before the task trains)", fmt_s(v),
                   f"finetune {fmt_s(ft)}", f"{v / ft:.2f}x")
    lp = med["finetune loop epoch"]
    report.add(sec, "clbench finetune, whole loop epoch (step + validation + scheduler "
               "and best-weights bookkeeping)", fmt_s(lp), "finetune step",
               f"{lp / ft:.2f}x")


def condensation_step(trainer) -> Callable[[], object]:
    """One CaT distribution-matching step on task 1's training nodes (a random encoder,
    the real class means, one update of the synthetic features)."""
    train = trainer.getTrainingDataset(1).train
    syn_x, syn_y = trainer.initial_synthetic(train)
    trainer.condense_steps = 1
    return lambda: trainer.condense(train, syn_x, syn_y)


def child_full_run(args: argparse.Namespace) -> None:
    """In a fresh process: one full run through ``run_experiment``, printing JSON with
    the peak RSS and, per evaluation, the forward passes and seconds."""
    from clbench.experiment import ExperimentSpec, run_experiment
    from clbench.trainer import TrainerCallback

    records: list[dict] = []

    class CountEvaluation(TrainerCallback):
        def on_run_start(self, trainer) -> None:
            calls = [0]
            trainer.model.register_forward_pre_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
            evaluate = trainer._evaluate

            def counted(splits, eval_fn=None, **kw):
                n0, t0 = calls[0], time.perf_counter()
                out = evaluate(splits, eval_fn, **kw)
                records.append({"task": trainer.curr_task, "split": "+".join(splits),
                                "forwards": calls[0] - n0,
                                "seconds": time.perf_counter() - t0})
                return out

            trainer._evaluate = counted

    spec = ExperimentSpec(method=args.child_run, dataset=args.graph_file, seed=0,
                          num_tasks=ARXIV_TASKS, classes_per_task=ARXIV_CLASSES_PER_TASK,
                          params={"epochs": args.epochs})
    t0 = time.perf_counter()
    result = run_experiment(spec, callbacks=[CountEvaluation()])
    print(json.dumps({"peak_rss_mb": own_peak_rss_mb(),
                      "clbench_peak_rss_mb": result["peak_rss_mb"], "timing": result["timing"],
                      "evaluations": records, "wall": time.perf_counter() - t0}))


def full_run_section(report: Report, graph_file: Path, epochs: int) -> None:
    """Evaluation forwards/time and peak RSS of one full arxiv-sized run per method."""
    report.note(f"full arxiv-sized runs: {ARXIV_TASKS} tasks x {epochs} epoch(s) per task "
                f"(the plateau scheduler cannot stop a task that early; memory per epoch is "
                f"the same at any epoch), each in a fresh process through run_experiment")
    for m in METHODS_TIMED:
        cmd = [sys.executable, __file__, "--child-run", m, "--graph-file", str(graph_file),
               "--epochs", str(epochs)]
        print(f"   full run: {m}", flush=True)
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
        if proc.returncode != 0:
            report.add("arxiv: full run", f"{m}", "FAILED", status="MISS",
                       target="runs", reference=proc.stderr.strip().splitlines()[-1][:120])
            continue
        out = json.loads(proc.stdout.strip().splitlines()[-1])
        evals = [e for e in out["evaluations"] if e["task"] >= 0]
        by_task: dict[int, dict] = {}
        for e in evals:
            d = by_task.setdefault(e["task"], {"forwards": 0, "seconds": 0.0, "split": {}})
            d["forwards"] += e["forwards"]
            d["seconds"] += e["seconds"]
            d["split"][e["split"]] = e["forwards"]
        tasks = sorted(by_task)
        allowed = {t: (t + 1 if m in MASK_METHODS else 1) for t in tasks}
        fw = [by_task[t]["forwards"] for t in tasks]
        per_split = [max(by_task[t]["split"].values()) for t in tasks]
        ok = all(by_task[t]["forwards"] <= allowed[t] for t in tasks)
        ok_split = all(per_split[i] <= allowed[t] for i, t in enumerate(tasks))
        secs = [by_task[t]["seconds"] for t in tasks]
        fw_time = sum(secs) / max(sum(fw), 1)
        limit = "t+1" if m in MASK_METHODS else "1"
        report.add("arxiv: evaluation after task t (val + test)",
                   f"{m}: forward passes, t = 0..{tasks[-1]}", ",".join(map(str, fw)),
                   f"per split: {','.join(map(str, per_split))} "
                   f"(per split {status(ok_split)})", "",
                   f"<= {limit}", status(ok))
        report.add("arxiv: evaluation after task t (val + test)",
                   f"{m}: seconds, t = 0 / {tasks[-1]}",
                   f"{fmt_s(secs[0])} / {fmt_s(secs[-1])}",
                   f"{fmt_s(fw_time)} per forward", "")
        rss = out["peak_rss_mb"] / 1024
        report.add("arxiv: memory of one full run", f"{m}: peak RSS", f"{rss:.2f} GiB",
                   f"{out['wall']:.0f} s run; run_experiment's peak_rss_mb (ru_maxrss) says "
                   f"{out['clbench_peak_rss_mb'] / 1024:.2f} GiB", "", "<= 3 GB",
                   status(rss * GB <= 3e9))


def naive_rss_section(report: Report, graph_file: Path) -> None:
    cmd = [sys.executable, __file__, "--child-naive", "--graph-file", str(graph_file)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    if proc.returncode == 0:
        out = json.loads(proc.stdout.strip().splitlines()[-1])
        report.add("arxiv: memory of one full run", "naive PyG: peak RSS of 2 training steps",
                   f"{out['peak_rss_mb'] / 1024:.2f} GiB")
    else:
        report.note(f"naive RSS child failed: {proc.stderr.strip()[-200:]}")


def run_cli_grid(methods: Sequence[str], seeds: int, jobs: int, work: Path, tag: str
                 ) -> tuple[float, list[dict]]:
    """``clbench run -m ... -d cora --seeds 0-(n-1) --jobs J``; wall seconds and results."""
    res = work / f"results-{tag}"
    cmd = [sys.executable, "-m", "clbench.cli", "run", "-m", ",".join(methods), "-d", "cora",
           "--seeds", f"0-{seeds - 1}", "--jobs", str(jobs), "-q",
           "--data-dir", str(work / "data"), "--tracking-uri", f"sqlite:///{work / (tag + '.db')}",
           "--results-dir", str(res), "--experiment", f"perf-{tag}"]
    print("   $ " + shlex.join(["clbench", *cmd[3:]]), flush=True)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=work)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"clbench run failed ({proc.returncode}): {proc.stderr[-500:]}")
    results = [json.loads(p.read_text()) for p in sorted(res.glob("runs/*/*.json"))]
    return wall, results


def parallel_section(report: Report, work: Path, seeds: int, method: str) -> None:
    report.note(f"parallel throughput: {method} on Cora, seeds 0-{seeds - 1}, via "
                "`clbench run --seeds --jobs` (the orchestrator: loky workers, MLflow "
                "tracking to a temporary sqlite store); wall time of the whole command, "
                "start-up included")
    walls: dict[int, float] = {}
    per_epoch: dict[int, float] = {}
    epochs: dict[int, int] = {}
    for jobs in (1, 2):
        wall, results = run_cli_grid([method], seeds, jobs, work, f"jobs{jobs}")
        walls[jobs] = wall
        compute = sum(r["timing"]["total_seconds"] for r in results)
        epochs[jobs] = sum(sum(r["timing"]["task_epochs"]) for r in results)
        train = sum(sum(r["timing"]["task_train_seconds"]) for r in results)
        per_epoch[jobs] = train / epochs[jobs]
        rate = seeds / wall * 60
        if jobs == 1:
            report.add("cora: parallel throughput", "--jobs 1: seeds per minute",
                       f"{rate:.2f}", f"wall {fmt_s(wall)}; runs' own time {fmt_s(compute)}")
        else:
            base = seeds / walls[1] * 60
            report.add("cora: parallel throughput", "--jobs 2: seeds per minute",
                       f"{rate:.2f}", f"--jobs 1: {base:.2f}; wall {fmt_s(wall)}; runs' own "
                       f"time {fmt_s(compute)}", f"{rate / base:.2f}x", ">= 1.6x",
                       status(rate >= 1.6 * base))
        report.add("cora: parallel throughput",
                   f"--jobs {jobs}: start-up and logging beyond the runs (wall - own time / "
                   f"{jobs})", fmt_s(wall - compute / jobs))
    # What bounds the ratio: how much slower a 1-thread run trains beside another than
    # alone (every run has one torch thread at any --jobs).
    sec = "cora: parallel throughput, per loop epoch (step and validation)"
    report.add(sec, "--jobs 1: one run alone, 1 thread", fmt_s(per_epoch[1]),
               f"{epochs[1]} epochs in all")
    report.add(sec, "--jobs 2: two runs side by side, 1 thread each", fmt_s(per_epoch[2]),
               f"{epochs[2]} epochs in all; --jobs 1", f"{per_epoch[2] / per_epoch[1]:.2f}x")
    report.add(sec, "--jobs 2 / --jobs 1 in epochs per minute (work done, start-up included)",
               f"{epochs[2] / walls[2] / (epochs[1] / walls[1]):.2f}x")
    report.add(sec, "ceiling from training alone: 2 x (--jobs 1 epoch / --jobs 2 epoch)",
               f"{2 * per_epoch[1] / per_epoch[2]:.2f}x")
    if epochs[1] != epochs[2]:
        report.note(f"parallel throughput: the same seeds trained {epochs[1]} epochs at "
                    f"--jobs 1 and {epochs[2]} at --jobs 2, though every run has one torch "
                    "thread: a bug (a seed's numbers must not depend on --jobs)")


def load_section(report: Report, data_root: Path, rounds: int) -> None:
    """A run's training time alone and beside two busy processes, per thread policy."""
    report.note(f"load: finetune on Cora, 3 tasks x {loadkit.EPOCHS_PER_TASK} epochs (plateau "
                "stop off), a fresh process per measurement; 'busy': two processes spinning "
                f"on the CPU beside it; median of {rounds} interleaved rounds; fair share: "
                "2x the 2-thread run alone")
    results = loadkit.run_conditions(data_root, rounds)
    alone = loadkit.median_seconds(results[loadkit.CONDITIONS[0]])
    sec = "cora: a run beside busy processes"
    for cond in loadkit.CONDITIONS:
        t = loadkit.median_seconds(results[cond])
        policies = sorted({r["policy"] for r in results[cond]})
        value = f"{fmt_s(t)} ({spread([r['train_seconds'] for r in results[cond]])})"
        ref = f"OMP_WAIT_POLICY: {', '.join(policies)}"
        if cond is loadkit.CONDITIONS[0]:
            report.add(sec, cond.label, value, ref)
        elif not cond.busy:
            report.add(sec, cond.label, value, ref, f"{t / alone:.2f}x alone", "<= 1.10x",
                       status(t <= 1.10 * alone))
        else:
            fair = 2 * alone
            report.add(sec, cond.label, value, f"{ref}; fair share {fmt_s(fair)}",
                       f"{t / fair:.2f}x fair share", "<= 1.25x", status(t <= 1.25 * fair))


def suite_section(report: Report, work: Path, seeds: int, jobs: int, quick: bool) -> None:
    reduction = (f" (--quick: {seeds} seeds instead of 10)" if quick else "")
    wall, results = run_cli_grid(SUITE_METHODS, seeds, jobs, work, "suite")
    epochs = sum(sum(r["timing"]["task_epochs"]) for r in results)
    report.add("cora: end to end", f"Task-IL suite, {len(SUITE_METHODS)} methods x {seeds} seeds, "
               f"default configs, --jobs {jobs}{reduction}", fmt_s(wall),
               f"{len(results)} runs, {epochs} epochs in all; "
               f"{fmt_s(wall / max(len(results), 1))} per run")


# =============================================================================== output
def machine_info() -> dict[str, str]:
    import torch_geometric

    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "nproc": str(os.cpu_count()),
        "cpu": cpu,
        "torch threads": str(torch.get_num_threads()),
        "memory": f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / GB:.1f} GiB",
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_geometric": torch_geometric.__version__,
        "platform": platform.platform(),
        "transparent huge pages": _read_first("/sys/kernel/mm/transparent_hugepage/enabled"),
        "allocator environment": ", ".join(
            f"{k}={os.environ[k]}" for k in ("THP_MEM_ALLOC_ENABLE", "MALLOC_MMAP_MAX_",
                                             "MALLOC_TRIM_THRESHOLD_", "LD_PRELOAD",
                                             "OMP_NUM_THREADS") if k in os.environ) or "none",
    }


def _read_first(path: str) -> str:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return "n/a"


def render_table(rows: list[Row]) -> str:
    lines = ["| section | measurement | value | reference | ratio | target | status |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        cells = [r.section, r.name, r.value, r.reference, r.ratio, r.target,
                 f"**{r.status}**" if r.status else ""]
        lines.append("| " + " | ".join(c.replace("|", "/") for c in cells) + " |")
    return "\n".join(lines)


def render_markdown(report: Report, info: dict[str, str], command: str, started: str,
                    elapsed: float, load_before: tuple[float, float, float], waited: float,
                    old_notes: str) -> str:
    out = ["# Performance: clbench against a hand-written floor and naive PyG", "",
           "Generated by `benchmarks/perf.py`; ratios are between measurements taken in the "
           "same run, on the same machine.", "",
           "## Command", "", "```", command, "```", "",
           f"Started {started}; took {elapsed / 60:.1f} min.", "",
           "## Machine", ""]
    out += [f"- {k}: {v}" for k, v in info.items()]
    out += ["", "## Load", "",
            f"- load average before starting (1/5/15 min): "
            f"{' / '.join(f'{x:.2f}' for x in load_before)}"
            + (f" (after waiting {waited:.0f} s for it to drop)" if waited else ""),
            "- per section: load average at its end (it includes this harness's own "
            "threads), and the cores other processes kept busy meanwhile "
            "(/proc/stat minus this process tree):", ""]
    for name, load, others in report.loads:
        o = "n/a" if others is None else f"{others:.2f}"
        out.append(f"  - {name}: load {load[0]:.2f}, others {o} cores")
    out += ["", "## Results", "", render_table(report.rows), ""]
    if report.notes:
        out += ["## Notes", ""] + [f"- {n}" for n in report.notes] + [""]
    out += [NOTES_MARKER, old_notes.strip("\n"), ""]
    return "\n".join(out)


def print_table(rows: list[Row]) -> None:
    headers = ["measurement", "value", "reference", "ratio", "target", "status"]
    limits = [60, 24, 40, 12, 16, 6]
    data = [[f"{r.section}: {r.name}", r.value, r.reference, r.ratio, r.target, r.status]
            for r in rows]
    widths = [min(lim, max(len(h), *(len(d[i]) for d in data)))
              for i, (h, lim) in enumerate(zip(headers, limits, strict=True))]
    print()
    print("  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)))
    for d in data:
        print("  ".join(c[:w].ljust(w) for c, w in zip(d, widths, strict=True)).rstrip())


# =============================================================================== main
SECTIONS = ("arxiv", "cora", "fullruns", "parallel", "load", "suite")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true",
                    help="fewer rounds, 1 epoch per task in the full runs, 4 seeds for the "
                         "throughput and 2 for the suite")
    ap.add_argument("--out", type=Path, help="write the results as Markdown here")
    ap.add_argument("--data", type=Path, default=SHARED_DATA,
                    help="real data folder (read only; default: tests/data)")
    ap.add_argument("--sections", default=",".join(SECTIONS),
                    help=f"comma-separated subset of {','.join(SECTIONS)}")
    ap.add_argument("--max-load", type=float, default=math.inf,
                    help="wait until the 1-minute load average is below this before starting")
    ap.add_argument("--max-wait", type=float, default=1200.0,
                    help="seconds to wait at most for --max-load")
    ap.add_argument("--child-run", help=argparse.SUPPRESS)
    ap.add_argument("--child-naive", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--graph-file", help=argparse.SUPPRESS)
    ap.add_argument("--epochs", type=int, default=1, help=argparse.SUPPRESS)
    return ap.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    if args.child_run:
        child_full_run(args)
        return
    if args.child_naive:
        child_naive(args)
        return
    sections = [s for s in args.sections.split(",") if s]
    unknown = set(sections) - set(SECTIONS)
    if unknown:
        raise SystemExit(f"unknown sections: {', '.join(sorted(unknown))}")
    command = shlex.join(["python", "benchmarks/perf.py", *(argv if argv is not None
                                                           else sys.argv[1:])])
    old_notes = ""
    if args.out and args.out.exists():
        text = args.out.read_text()
        if NOTES_MARKER in text:
            old_notes = text.split(NOTES_MARKER, 1)[1]
    _, waited = wait_for_load(args.max_load, args.max_wait)
    load_before = os.getloadavg()
    started = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    t_start = time.perf_counter()
    info = machine_info()
    print("machine: " + "; ".join(f"{k} {v}" for k, v in info.items()), flush=True)
    print(f"load average: {' / '.join(f'{x:.2f}' for x in load_before)}", flush=True)
    quick = args.quick
    report = Report()
    with tempfile.TemporaryDirectory(prefix="clbench-perf-") as tmp:
        work = Path(tmp)
        copy_cora(work / "data", args.data)
        graph_file = work / "arxiv-sized.pt"
        if {"arxiv", "fullruns"} & set(sections):
            with Section(report, "arxiv-sized workload"):
                t0 = time.perf_counter()
                graph = arxiv_sized_graph(args.data)
                report.add("workload", "arxiv-sized graph (real labels/years, generated "
                           "edges and features)",
                           f"{graph.num_nodes:,} nodes, {graph.num_edges:,} directed edges "
                           f"(undirected), {graph.num_features} features, "
                           f"{graph.num_classes} classes",
                           f"train/val/test {int(graph.train_mask.sum()):,}/"
                           f"{int(graph.val_mask.sum()):,}/{int(graph.test_mask.sum()):,}; "
                           f"built in {fmt_s(time.perf_counter() - t0)}")
                torch.save({k: getattr(graph, k) for k in
                            ("x", "y", "edge_index", "train_mask", "val_mask", "test_mask")},
                           graph_file)
            if "arxiv" in sections:
                with Section(report, "arxiv-sized: training epochs"):
                    epoch_section(report, "arxiv", arxiv_scenario(graph), None,
                                  rounds=3 if quick else 5, inner=1, with_propagate_first=True)
            del graph
        if "cora" in sections:
            with Section(report, "cora: training epochs"):
                cora = cora_scenario(cora_graph(work / "data", args.data))
                epoch_section(report, "cora", cora, "cora", rounds=5 if quick else 9,
                              inner=10 if quick else 20, with_propagate_first=False)
        if "fullruns" in sections:
            with Section(report, "arxiv-sized: full runs (evaluation, memory)"):
                full_run_section(report, graph_file, epochs=1 if quick else 3)
                naive_rss_section(report, graph_file)
        if "parallel" in sections:
            with Section(report, "cora: parallel throughput"):
                parallel_section(report, work, seeds=4 if quick else 6, method="finetune")
        if "load" in sections:
            with Section(report, "cora: a run beside busy processes"):
                load_section(report, work / "data", rounds=2 if quick else 5)
        if "suite" in sections:
            with Section(report, "cora: end to end"):
                suite_section(report, work, seeds=2 if quick else 10, jobs=2, quick=quick)
    elapsed = time.perf_counter() - t_start
    print_table(report.rows)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(render_markdown(report, info, command, started, elapsed,
                                            load_before, waited, old_notes))
        print(f"\nwrote {args.out}")


def child_naive(args: argparse.Namespace) -> None:
    """In a fresh process: two naive training steps on the saved arxiv-sized graph."""
    from clbench.graph import Graph

    d = torch.load(args.graph_file, weights_only=True)
    graph = Graph(**d, name="arxiv-sized")
    scenario = arxiv_scenario(graph)
    naive = NaiveStep(naive_gcn(graph.num_features, 256, scenario.num_classes, 3),
                      scenario.get_task(1).train)
    for _ in range(2):
        naive.step()
    print(json.dumps({"peak_rss_mb": own_peak_rss_mb()}))


if __name__ == "__main__":
    main()
