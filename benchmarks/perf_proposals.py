"""Local experiments behind the optimisation proposals in ``results/performance.md``.

Usage::

    python benchmarks/perf_proposals.py [--rounds 5] [--workloads arxiv,cora]

Each proposal is applied to one trainer *in this process only* (instance
attributes; no clbench source file is touched), and its finetune training step
is timed against unpatched clbench and the floor, interleaved as in ``perf.py``:

* ``spmm``: GCN aggregation as one CSR product written into a fresh output
  (``torch.addmm(out, A, z, beta=0, out=out)``), whose backward multiplies by the
  precomputed CSR transpose; PyG's ``torch.sparse.mm`` path re-transposes (sorts)
  the adjacency in every backward and zero-fills and copies its outputs.
* ``rows``: the classifier on the training nodes' rows only (the loss needs no
  other logits), instead of on all nodes followed by ``NodeBatch.restrict``.
* ``ax``: with dense features, the first GCN layer as ``(A @ X) @ W.T + b`` with
  ``A @ X`` computed once (X and A never change): no sparse product in layer 1.
* ``eval``: the evaluation after a task from one forward pass for both the val and
  test splits (finetune), against ``_evaluate("val")`` + ``_evaluate("test")``.
* ``alloc`` (workload): the whole finetune loop epoch on the arxiv-sized graph in
  fresh processes under different allocator settings. Every activation there is
  a fresh 173 MB buffer that glibc maps and the kernel faults in 4 KiB page by
  page; ``THP_MEM_ALLOC_ENABLE=1`` makes torch's CPU allocator ask for huge pages,
  ``MALLOC_MMAP_MAX_=0`` makes glibc reuse freed heap memory instead.

Every patched step is checked to give the same loss as unpatched clbench.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import types
from collections.abc import Callable
from pathlib import Path

import torch
from perf import fmt_s, interleaved, own_peak_rss_mb, trainer_at_task
from perfkit.floor import FloorGCN, _CSRMatmul, csr_mm, csr_transpose
from perfkit.workload import (
    arxiv_scenario,
    arxiv_sized_graph,
    cora_graph,
    cora_scenario,
)
from torch import Tensor


def patch_spmm(model: torch.nn.Module) -> None:
    """GCN layers aggregate with :func:`csr_mm` and a precomputed-transpose backward."""

    def message_and_aggregate(self, adj_t: Tensor, x: Tensor) -> Tensor:
        adj = getattr(adj_t, "perf_transpose", None)
        if adj is None:
            adj = adj_t.perf_transpose = csr_transpose(adj_t)
        if not x.requires_grad:
            return csr_mm(adj_t, x)
        return _CSRMatmul.apply(x, adj_t, adj)

    for conv in model.convs:
        conv.message_and_aggregate = types.MethodType(message_and_aggregate, conv)


def patch_rows(trainer) -> None:
    """``inference`` with the classifier on the batch's rows only (finetune: no
    substituted weights)."""

    def inference(model, batch, training_states):
        graph = batch.graph
        h = model.encode(model.inputs(graph), graph)
        logits = model.classifier(h[batch.nodes]).gather(1, batch.candidates)
        return {"preds": logits, "loss": trainer.loss_fn(logits, batch.local_labels)}

    trainer.inference = inference


def patch_ax(model: torch.nn.Module, graph) -> None:
    """First GCN layer from a precomputed ``A @ X`` (dense features only)."""
    conv = model.convs[0]
    ax = csr_mm(graph.adj_gcn, graph.x)

    def forward(x: Tensor, adj: Tensor, edge_weight: Tensor | None = None) -> Tensor:
        out = conv.lin(ax)
        return out if conv.bias is None else out + conv.bias

    conv.forward = forward


def evaluate_once(trainer) -> None:
    """R_val and R_test rows from a single forward pass (full-graph scenarios)."""
    model, scenario = trainer.model, trainer.scenario
    with torch.no_grad():
        model.eval()
        batches = {s: scenario.eval_batches(s)[0] for s in ("val", "test")}
        logits = trainer.forward(model, batches["val"])
        for batch in batches.values():
            preds = batch.to_global(batch.restrict(logits).argmax(-1))
            scenario.per_task_scores(preds, batch.labels, batch.task_ids)


def run_workload(name: str, scenario, dataset_key: str | None, rounds: int, inner: int,
                 dense: bool) -> None:
    graph = scenario.graph
    variants: dict[str, Callable[[], object]] = {}
    losses: dict[str, float] = {}
    combos = [(), ("spmm",), ("rows",), ("spmm", "rows")]
    if dense:
        combos.append(("spmm", "rows", "ax"))
    base = None
    for combo in combos:
        trainer, step, _ = trainer_at_task("finetune", scenario, dataset_key)
        model = trainer.model
        if "spmm" in combo:
            patch_spmm(model)
        if "rows" in combo:
            patch_rows(trainer)
        if "ax" in combo:
            patch_ax(model, graph)
        label = "clbench" + "".join(f" +{c}" for c in combo)
        batch = trainer.getTrainingDataset(1).train
        model.train()
        losses[label] = trainer.inference(model, batch, trainer.training_states)["loss"].item()
        variants[label] = step
        base = base or trainer
    dims = [graph.num_features] + [base.model.n_hidden] * len(base.model.convs)
    batch = base.getTrainingDataset(1).train
    floor = FloorGCN(base.model.inputs(graph), graph.adj_gcn, batch.nodes, batch.candidates,
                     batch.local_labels, dims, scenario.num_classes)
    variants["floor"] = floor.step
    if dense:
        floor_ax = FloorGCN(graph.x, graph.adj_gcn, batch.nodes, batch.candidates,
                            batch.local_labels, dims, scenario.num_classes, propagate_first=True)
        variants["floor, A@X precomputed"] = floor_ax.step
    ref_loss = losses["clbench"]
    for label, loss in losses.items():
        assert abs(loss - ref_loss) <= 1e-4 * max(1.0, abs(ref_loss)), (label, loss, ref_loss)
    evaluator, _, _ = trainer_at_task("finetune", scenario, dataset_key)
    variants["eval: _evaluate val + test"] = lambda: (evaluator._evaluate("val"),
                                                     evaluator._evaluate("test"))
    variants["eval: one forward for both"] = lambda: evaluate_once(evaluator)
    print(f"\n{name}: {rounds} rounds x {inner} call(s), interleaved (losses agree: "
          f"{ref_loss:.6f})")
    times = interleaved(variants, rounds, inner)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"| {name} | median | vs clbench | vs floor |\n|---|---|---|---|")
    for k, v in med.items():
        if k.startswith("eval"):
            continue
        print(f"| {k} | {fmt_s(v)} | {v / med['clbench']:.2f}x | {v / med['floor']:.2f}x |")
    a, b = med["eval: _evaluate val + test"], med["eval: one forward for both"]
    print(f"| evaluation after a task, finetune: val + test | {fmt_s(a)} | | |")
    print(f"| evaluation after a task, one forward | {fmt_s(b)} | {b / a:.2f}x | |")


ALLOCATOR_SETTINGS = {
    "default": {},
    "THP_MEM_ALLOC_ENABLE=1": {"THP_MEM_ALLOC_ENABLE": "1"},
    "MALLOC_MMAP_MAX_=0": {"MALLOC_MMAP_MAX_": "0"},
}


def allocator_child(rounds: int) -> None:
    """One finetune loop epoch per round on the arxiv-sized graph; JSON on stdout."""
    _, _, loop_epoch = trainer_at_task("finetune", arxiv_scenario(arxiv_sized_graph()),
                                       None)
    times = interleaved({"loop": loop_epoch}, rounds)["loop"]
    usage = resource.getrusage(resource.RUSAGE_SELF)
    print(json.dumps({"median": statistics.median(times), "rss_mb": own_peak_rss_mb(),
                      "sys": usage.ru_stime, "user": usage.ru_utime}))


def run_allocators(rounds: int) -> None:
    print(f"\narxiv-sized, finetune loop epoch, one fresh process per setting, {rounds} rounds")
    print("| allocator setting | loop epoch (median) | vs default | peak RSS | sys / user CPU s |")
    print("|---|---|---|---|---|")
    base = None
    for label, env in ALLOCATOR_SETTINGS.items():
        proc = subprocess.run([sys.executable, __file__, "--allocator-child",
                               "--rounds", str(rounds)], capture_output=True, text=True,
                              env={**os.environ, **env}, check=True)
        out = json.loads(proc.stdout.strip().splitlines()[-1])
        base = base or out["median"]
        print(f"| {label} | {fmt_s(out['median'])} | {out['median'] / base:.2f}x | "
              f"{out['rss_mb'] / 1024:.2f} GiB | {out['sys']:.0f} / {out['user']:.0f} |",
              flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--workloads", default="arxiv,cora,alloc")
    ap.add_argument("--allocator-child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.allocator_child:
        allocator_child(args.rounds)
        return
    workloads = args.workloads.split(",")
    if "arxiv" in workloads:
        run_workload("arxiv-sized", arxiv_scenario(arxiv_sized_graph()), None, args.rounds, 1,
                     dense=True)
    if "cora" in workloads:
        with tempfile.TemporaryDirectory() as tmp:
            scenario = cora_scenario(cora_graph(Path(tmp)))
            run_workload("cora", scenario, "cora", args.rounds * 2, 20, dense=False)
    if "alloc" in workloads:
        run_allocators(args.rounds)


if __name__ == "__main__":
    main()
