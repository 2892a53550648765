"""What selecting on 3 grid seeds cost GEM and ER-GNN in the Task-IL cora-citeseer table.

Reads the committed sweep records and the 16 extra runs in ``runs/`` and prints, for GEM
and ER-GNN on Cora: validation and test AP of the selected configuration (lr 1e-2) and of
lr 1e-3, dropout 0.5 on the 3 grid seeds and on all 10, and the paired comparison with
finetune at lr 1e-3, dropout 0.5. Run from the repository root:

    python analysis/cora-citeseer-task-il/summary.py
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from scipy import stats

SWEEP = Path("results/sweeps/runs/cora-citeseer-b38b1a7c")
EXTRA = Path(__file__).parent / "runs"
TABLE = Path("results/compare-cora-citeseer.json")
GRID_SEEDS = (0, 1000, 2000)


def records(folder: Path, pattern: str) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(folder.glob(pattern))]


def at(recs: list[dict], lr: float, dropout: float, **params: float) -> dict[int, dict]:
    return {r["seed"]: r for r in recs
            if r["config"]["lr"] == lr and r["config"]["dropout"] == dropout
            and all(r["config"].get(k) == v for k, v in params.items())}


def mean(by_seed: dict[int, dict], key: str, metric: str, seeds) -> float:
    return float(np.mean([by_seed[s][key][metric] for s in seeds]))


def main() -> None:
    table = json.loads(TABLE.read_text())
    finetune = at(records(SWEEP, "finetune__cora__*.json"), 0.001, 0.5)
    for method in ("ergnn", "gem"):
        row = next(r for r in table["rows"] if r["method"] == method and r["dataset"] == "cora")
        pattern = f"{method}__cora__{row['config_hash']}__*.json"
        selected = {r["seed"]: r for r in records(SWEEP, pattern)}
        budget = selected[0]["config"].get("num_memories")
        other = at(records(SWEEP, f"{method}__cora__*.json"), 0.001, 0.5)
        other |= at(records(EXTRA, f"{method}__cora__*.json"), 0.001, 0.5)
        seeds = sorted(other)
        assert seeds == sorted(selected) and len(seeds) == 10, (method, seeds)
        cfg = selected[0]["config"]
        print(f"{method}: selected lr {cfg['lr']} dropout {cfg['dropout']}")
        for name, runs in (("selected", selected), ("lr 1e-3, dropout 0.5", other)):
            grid_val = mean(runs, "val_metrics", "AP", GRID_SEEDS)
            print(f"  {name:22s} val AP: grid seeds {grid_val:.3f},"
                  f" 10 seeds {mean(runs, 'val_metrics', 'AP', seeds):.3f};"
                  f" test AP {100 * mean(runs, 'metrics', 'AP', seeds):.1f},"
                  f" AF {100 * mean(runs, 'metrics', 'AF', seeds):.1f}")
        for metric in ("AP", "AF"):
            a = [other[s]["metrics"][metric] for s in seeds]
            b = [finetune[s]["metrics"][metric] for s in seeds]
            p = stats.wilcoxon(a, b).pvalue
            print(f"  against finetune (lr 1e-3, dropout 0.5): {metric} {100 * np.mean(a):.1f}"
                  f" vs {100 * np.mean(b):.1f}, Wilcoxon p {p:.3f}")
        bigger = at(records(EXTRA, f"{method}__cora__*.json"), cfg["lr"], cfg["dropout"],
                    num_memories=60)
        for s, r in sorted(bigger.items()):
            print(f"  num_memories 60 (card: {budget}) at the selected lr/dropout, seed {s}:"
                  f" AP {r['metrics']['AP']:.3f} (selected run {selected[s]['metrics']['AP']:.3f})")


if __name__ == "__main__":
    main()
