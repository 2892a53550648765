"""Finetune's reduced grid on all 10 seeds (``finetune-10seed-grid.toml``) beside the published
table's selected configuration: per (dataset, lr, dropout), the number of runs, test AP (mean and
population standard deviation), AF and validation AP."""
import glob
import json
import statistics as st
from collections import defaultdict


def val_ap(r):
    V = r["R_val"]
    T = len(V)
    return sum(V[T - 1]) / T


def load(f):
    with open(f) as fh:
        return json.load(fh)


groups = defaultdict(list)
for f in glob.glob("/work/analysis/results/runs/finetune-10seed-grid/*.json"):
    r = load(f)
    c = r["config"]
    groups[(r["dataset"], c["lr"], c["dropout"])].append(
        (r["seed"], r["metrics"]["AP"], r["metrics"]["AF"], val_ap(r)))
# the published table's selected config (lr 0.01, dropout 0), from the main sweep's runs
sel = {"cora": "643eb99cf69d", "citeseer": "8f2dd41b1802"}
for f in glob.glob("/work/repro-results/runs/begin-cora-citeseer/finetune__*.json"):
    r = load(f)
    if r["clbench"]["config_hash"] == sel[r["dataset"]] and r["seed"] % 1000 == 0:
        groups[(r["dataset"], 0.01, 0.0, "table")].append(
            (r["seed"], r["metrics"]["AP"], r["metrics"]["AF"], val_ap(r)))
for k in sorted(groups, key=str):
    v = groups[k]
    ap = [x[1] for x in v]
    af = [x[2] for x in v]
    va = [x[3] for x in v]
    print(k, "n", len(v), f"test AP {st.mean(ap):.3f} ± {st.pstdev(ap):.3f}",
          f"AF {st.mean(af):.3f}", f"val AP {st.mean(va):.3f}")
