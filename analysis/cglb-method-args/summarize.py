"""Mean AP and AF (%) of the runs in this folder beside the committed cglb-preset records
of the same methods at their cards' defaults (and finetune, joint), seeds 0, 1000, 2000.

    python analysis/cglb-method-args/summarize.py
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

HERE = Path(__file__).parent
RECORDS = HERE.parent.parent / "results" / "sweeps" / "runs" / "cglb-preset-b477835e"


def row(label: str, runs: list[dict]) -> str:
    runs = sorted(runs, key=lambda r: r["seed"])
    ap = statistics.mean(r["metrics"]["AP"] for r in runs)
    af = statistics.mean(r["metrics"]["AF"] for r in runs)
    cfg = runs[0]["config"]
    memory = cfg.get("num_memories", "-")
    strength = cfg.get("memory_strength", "-")
    seeds = ", ".join(str(r["seed"]) for r in runs)
    return (f"| {runs[0]['method']} | {runs[0]['dataset']} | {label} | {memory} | {strength} "
            f"| {seeds} | {100 * ap:.1f} | {100 * af:.1f} |")


def main() -> None:
    print("| method | dataset | configuration | num_memories | memory_strength | seeds "
          "| AP % | AF % |")
    print("|---|---|---|---|---|---|---|---|")
    for dataset in ("cora", "citeseer"):
        for method in ("finetune", "joint", "ergnn", "gem"):
            committed = [json.loads(p.read_text())
                         for p in RECORDS.glob(f"{method}__{dataset}__*.json")]
            print(row("card's default (committed table)", committed))
        for path in sorted(HERE.glob(f"*-{dataset}-*.json")):
            print(row("this folder: " + path.stem.split("-", 2)[2], json.loads(path.read_text())))


if __name__ == "__main__":
    main()
