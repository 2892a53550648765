"""Effect of DGL's row-normalised features (what BeGin's Planetoid loader gives) vs PyG's raw
binary bag-of-words (what clbench's `cora`/`citeseer` give), everything else fixed:
3x2 tasks, class order from the seed, default protocol, 1 torch thread."""
import json
import sys
import time

from clbench.experiment import ExperimentSpec, run_experiment

methods = sys.argv[2].split(",")
datasets = sys.argv[3].split(",")
seeds = [int(s) for s in sys.argv[4].split(",")]
params = dict(kv.split("=", 1) for kv in sys.argv[5:])
with open(sys.argv[1], "a") as out:
    for seed in seeds:
        for ds in datasets:
            for method in methods:
                for tag in ("rownorm", "raw"):
                    t = time.time()
                    r = run_experiment(ExperimentSpec(
                        method=method, dataset=f"/work/analysis/{ds}-{tag}.pt", seed=seed,
                        num_tasks=3, classes_per_task=2, params=dict(params), threads=1))
                    rec = {"method": method, "dataset": ds, "features": tag, "seed": seed,
                           "params": params, "AP": r["metrics"]["AP"], "AF": r["metrics"]["AF"],
                           "task_classes": r["scenario"]["task_classes"], "R_test": r["R_test"],
                           "epochs": r["timing"]["task_epochs"], "seconds": time.time() - t}
                    out.write(json.dumps(rec) + "\n")
                    out.flush()
                    print(method, ds, tag, seed, round(rec["AP"], 4), rec["task_classes"],
                          flush=True)
