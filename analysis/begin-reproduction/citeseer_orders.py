"""Is finetune's CiteSeer gap to BeGin class-order sampling? Summarise finetune runs on many
seeds (each seed draws its own class order): mean AP with its standard error, and the mean
final accuracy of each class pair.

Usage: python citeseer_orders.py RESULT.json [RESULT.json ...]   (lists written by
``clbench run ... --seeds ... --json``)
"""
import json
import statistics as st
import sys
from collections import defaultdict
from pathlib import Path

runs = [r for f in sys.argv[1:] for r in json.loads(Path(f).read_text())]
runs = [r for r in runs if r.get("R_test")]  # failed jobs carry no matrix
aps = [r["metrics"]["AP"] for r in runs]
print(f"{len(runs)} runs ({runs[0]['method']} on {runs[0]['dataset']}, config "
      f"{ {k: runs[0]['config'][k] for k in ('lr', 'dropout', 'weight_decay')} }): "
      f"AP {st.mean(aps):.4f} +- {st.stdev(aps):.4f} (SE {st.stdev(aps) / len(aps) ** 0.5:.4f})")
final = defaultdict(list)
for r in runs:
    for j, pair in enumerate(r["scenario"]["task_classes"]):
        final[tuple(sorted(pair))].append(r["R_test"][-1][j])
print("final accuracy per class pair (mean, n):")
for pair, v in sorted(final.items()):
    print(f"  {pair}: {st.mean(v):.3f} (n={len(v)})")
# Under uniformly random orders every one of the 15 pairs is equally likely in a task;
# the mean over pairs of their final accuracy is AP's expectation if a pair's final
# accuracy did not depend on its position (it does: the last task is never forgotten).
print(f"mean over pairs of the pair means: {st.mean(st.mean(v) for v in final.values()):.4f}")
