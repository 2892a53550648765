"""Choose Piggyback's default ``backbone_init`` by validation AP on real Cora and CiteSeer.

Usage: python benchmarks/piggyback_backbone_init.py [--seeds 0,1,2] [--data tests/data]

Copies the Planetoid raw files into a temporary root (never writes beside them),
runs Piggyback with each backbone initialisation (BeGin's protocol: 3 tasks x 2
classes, GCN-256, BatchNorm, default card hyperparameters) and prints mean
validation AP (the selection criterion) and test AP per setting.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch_geometric.datasets import Planetoid

from clbench import metrics
from clbench.config import resolve_params
from clbench.experiment import make_optimizer_fn, seed_everything
from clbench.graph import prepare_graph
from clbench.methods.piggyback import NCTaskILPiggybackTrainer
from clbench.models import build_model
from clbench.scenario import NCScenarioLoader
from clbench.trainer import plateau_scheduler

DATASETS = {"cora": ("Cora", "cora"), "citeseer": ("CiteSeer", "citeseer")}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--data", default=str(Path(__file__).resolve().parents[1] / "tests" / "data"))
    ap.add_argument("--inits", default="random,first_task,dgi")
    args = ap.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    torch.set_num_threads(1)
    print("| dataset | backbone_init | val AP | test AP | seeds |")
    print("|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for key, (pyg_name, folder) in DATASETS.items():
            shutil.copytree(Path(args.data) / folder / "raw", Path(tmp) / pyg_name / "raw")
            graph = prepare_graph(Planetoid(tmp, pyg_name)[0], key)
            for init in args.inits.split(","):
                params = resolve_params("piggyback", key, {"backbone_init": init})
                val, test = [], []
                for seed in seeds:
                    seed_everything(seed)
                    sc = NCScenarioLoader(graph, 3, 2, seed=seed)
                    seed_everything(seed)
                    model = build_model("gcn", graph.num_features, sc.num_classes,
                                        hidden=params["hidden"], layers=params["layers"])
                    tr = NCTaskILPiggybackTrainer(
                        model, sc, make_optimizer_fn(params), None, "cpu",
                        scheduler_fn=plateau_scheduler(params["patience"],
                                                       params["min_lr_ratio"]),
                        threshold=params["threshold"], mask_type=params["mask_type"],
                        backbone_init=init, dgi_epochs=params["dgi_epochs"])
                    out = tr.run(epoch_per_task=params["epochs"])
                    val.append(metrics.average_accuracy(out.R_val))
                    test.append(metrics.average_accuracy(out.R_test))
                print(f"| {key} | {init} | {np.mean(val):.3f} ± {np.std(val):.3f} | "
                      f"{np.mean(test):.3f} ± {np.std(test):.3f} | {len(seeds)} |", flush=True)


if __name__ == "__main__":
    main()
