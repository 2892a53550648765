"""Per class-pair final accuracy of the selected configurations over the 10 final seeds, and how
often each pair occurs in the seeds' class orders."""
import glob
import json
import statistics as st
from collections import defaultdict

from mlflow.tracking import MlflowClient

c = MlflowClient("sqlite:////work/repro-mlflow.db")
e = c.get_experiment_by_name("begin-cora-citeseer")
sel = {v.split()[0] for k, v in e.tags.items() if k.startswith("clbench.selected.")}
seeds = {1000 * i for i in range(10)}
acc = defaultdict(list)
occ = defaultdict(lambda: defaultdict(int))
aps = defaultdict(list)
for f in glob.glob("/work/repro-results/runs/begin-cora-citeseer/*.json"):
    with open(f) as fh:
        r = json.load(fh)
    if r["clbench"]["config_hash"] not in sel or r["seed"] not in seeds:
        continue
    tc = r["scenario"]["task_classes"]
    last = r["R_test"][-1]
    aps[(r["method"], r["dataset"])].append(r["metrics"]["AP"])
    for j, pair in enumerate(tc):
        acc[(r["dataset"], r["method"], tuple(pair))].append(last[j])
        if r["method"] == "joint":
            occ[r["dataset"]][tuple(pair)] += 1
for ds in ("cora", "citeseer"):
    print(f"== {ds}: pairs drawn by the 10 final seeds (count): {dict(sorted(occ[ds].items()))}")
    for m in ("finetune", "ewc", "packnet", "piggyback", "joint"):
        rows = sorted((p, st.mean(v), len(v))
                      for (d, mm, p), v in acc.items() if d == ds and mm == m)
        print(f"  {m:9s} AP {st.mean(aps[(m, ds)]):.3f} (n={len(aps[(m, ds)])}) per pair:",
              " ".join(f"{p[0]}{p[1]}:{a:.2f}" for p, a, n in rows))
