"""BeGin's GCNNode applies dropout to the input features before the first layer
(h = dropout(feat)); clbench's NodeClassifier does not. Register a 'gcn_indrop' backbone
(clbench's GCN + input dropout, same rate as the layers') and compare, everything else fixed."""
import json
import sys
import time

import torch
import torch.nn.functional as F

from clbench.experiment import ExperimentSpec, run_experiment
from clbench.models import MODELS, gcn


@MODELS.register("gcn_indrop")
def gcn_indrop(in_dim, hidden, num_classes, **kw):
    m = gcn(in_dim, hidden, num_classes, **kw)
    m.sparse_input = False  # dropout needs dense features
    enc = m.encode

    def encode(x, graph):
        x = x.to_dense() if x.is_sparse or x.layout != torch.strided else x
        return enc(F.dropout(x, m.dropout, m.training), graph)

    m.encode = encode
    return m


if __name__ == "__main__":
    methods, datasets = sys.argv[2].split(","), sys.argv[3].split(",")
    seeds = [int(s) for s in sys.argv[4].split(",")]
    params = dict(kv.split("=", 1) for kv in sys.argv[5:])
    with open(sys.argv[1], "a") as out:
        for seed in seeds:
            for ds in datasets:
                for method in methods:
                    for model in ("gcn_indrop", "gcn"):
                        t = time.time()
                        r = run_experiment(ExperimentSpec(
                            method=method, dataset=ds, seed=seed, num_tasks=3,
                            classes_per_task=2, data_dir="/work/data-root",
                            params={**params, "model": model}, threads=1))
                        rec = {"method": method, "dataset": ds, "model": model, "seed": seed,
                               "params": params, "AP": r["metrics"]["AP"],
                               "AF": r["metrics"]["AF"],
                               "task_classes": r["scenario"]["task_classes"],
                               "R_test": r["R_test"], "epochs": r["timing"]["task_epochs"],
                               "seconds": time.time() - t}
                        out.write(json.dumps(rec) + "\n")
                        out.flush()
                        print(method, ds, model, seed, round(rec["AP"], 4), flush=True)
