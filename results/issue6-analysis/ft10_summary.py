import glob, json, statistics as st
from collections import defaultdict
import math
def val_ap(r):
    V = r["R_val"]; T = len(V); return sum(V[T-1]) / T
groups = defaultdict(list)
for f in glob.glob("/work/analysis/results/runs/finetune-10seed-grid/*.json"):
    r = json.load(open(f)); c = r["config"]
    groups[(r["dataset"], c["lr"], c["dropout"])].append((r["seed"], r["metrics"]["AP"], r["metrics"]["AF"], val_ap(r)))
# the published table's selected config (lr 0.01, dropout 0), from the main sweep's runs
sel = {"cora": "643eb99cf69d", "citeseer": "8f2dd41b1802"}
for f in glob.glob("/work/repro-results/runs/begin-cora-citeseer/finetune__*.json"):
    r = json.load(open(f))
    if r["clbench"]["config_hash"] == sel[r["dataset"]] and r["seed"] % 1000 == 0:
        groups[(r["dataset"], 0.01, 0.0, "table")].append((r["seed"], r["metrics"]["AP"], r["metrics"]["AF"], val_ap(r)))
for k in sorted(groups, key=str):
    v = groups[k]
    ap = [x[1] for x in v]; af = [x[2] for x in v]; va = [x[3] for x in v]
    print(k, "n", len(v), "test AP %.3f ± %.3f" % (st.mean(ap), st.pstdev(ap)), "AF %.3f" % st.mean(af), "val AP %.3f" % st.mean(va))
