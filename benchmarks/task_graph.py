"""What ``--graph task`` (CGLB's tasks without inter-task edges) costs per epoch: a task
on its own compact subgraph (``Graph.subgraph``, what the scenario uses) against the same
task on the global graph with every other node isolated (``Graph.induced``, the form
clbench used before, whose forward pass still computed every node of the graph).

Usage::

    python benchmarks/task_graph.py --data-dir ROOT [--dataset coauthor-cs --tasks 7]

One whole loop epoch of finetune on task 1 (training step, validation pass, scheduler and
best-weights bookkeeping), one torch thread, the two forms interleaved in one run (the
ratio is what to read on a shared machine, not the seconds).
"""

from __future__ import annotations

import argparse
import statistics
import warnings

import torch
from perf import interleaved, trainer_at_task

from clbench.datasets.loading import load_graph
from clbench.graph import Graph
from clbench.scenario import NCScenarioLoader

warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", required=True)
    ap.add_argument("--dataset", default="coauthor-cs")
    ap.add_argument("--tasks", type=int, default=7)
    ap.add_argument("--rounds", type=int, default=7)
    args = ap.parse_args()
    torch.set_num_threads(1)
    graph = load_graph(args.dataset, args.data_dir)
    compact = Graph.subgraph
    epochs, sizes = {}, {}
    try:
        for form, build in (("subgraph", compact), ("induced", Graph.induced)):
            Graph.subgraph = build  # what the scenario builds its task graphs with
            scenario = NCScenarioLoader(graph, args.tasks, 2, seed=0, graph_mode="task")
            _, _, epochs[form] = trainer_at_task("finetune", scenario, args.dataset)
            sizes[form] = scenario.get_task(1).graph.num_nodes
    finally:
        Graph.subgraph = compact
    times = interleaved(epochs, rounds=args.rounds, inner=3)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"{args.dataset}, {args.tasks} tasks x 2 classes, task 1, finetune loop epoch, "
          f"1 thread, median of {args.rounds} interleaved rounds x 3:")
    for form in epochs:
        print(f"  {form:9s} {sizes[form]:>7,} rows  {med[form] * 1e3:8.1f} ms")
    print(f"  induced / subgraph: {med['induced'] / med['subgraph']:.2f}x")


if __name__ == "__main__":
    main()
