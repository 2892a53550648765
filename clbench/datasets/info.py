"""What ``clbench list datasets`` shows: one row per registered dataset, from its card.

Nothing is loaded: sizes are the published statistics on each card, and
"local" means the card's files are under the data root.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from clbench.datasets.base import DATASETS, DatasetCard
from clbench.datasets.loading import FileSource


def split_summary(card: DatasetCard) -> str:
    """Split sizes as ``train/val/test`` node counts, or the rule that draws them."""
    stats = card.stats
    if all(k in stats for k in ("train", "val", "test")):
        return f"{stats['train']:,}/{stats['val']:,}/{stats['test']:,}"
    if isinstance(card.load, FileSource) and not card.load.official_split:
        return "60/20/20 %"
    if "60/20/20" in card.split:
        return "60/20/20 %"
    return card.split or "-"


def dataset_rows(root: Path) -> list[dict[str, Any]]:
    """Per registered dataset: name, sizes, split, default tasks and local availability.

    Keys: ``name``, ``nodes``, ``edges``, ``features``, ``classes`` (ints, or
    ``None`` when the card does not publish them), ``split`` (str), ``tasks``
    (``"T x C"``), ``local`` (bool), ``folder`` (where its files go, or ``None``
    for generated datasets) and ``description``.
    """
    root = Path(root)
    rows = []
    for name in DATASETS.names():
        card = DATASETS.get(name)
        folder = (root / card.load.folder) if isinstance(card.load, FileSource) else None
        rows.append({
            "name": card.name,
            "nodes": card.stats.get("nodes"),
            "edges": card.stats.get("edges"),
            "features": card.stats.get("features"),
            "classes": card.stats.get("classes"),
            "split": split_summary(card),
            "tasks": f"{card.num_tasks} x {card.classes_per_task}",
            "local": card.is_local(root),
            "folder": str(folder) if folder is not None else None,
            "description": card.description,
        })
    return rows


def _num(value: int | None) -> str:
    return f"{value:,}" if isinstance(value, int) else "-"


def print_dataset_table(root: Path, console: Any = None) -> None:
    """Print :func:`dataset_rows` as a rich table on ``console`` (a new one by default)."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = console or Console()
    table = Table(title=escape(f"Datasets (data root: {Path(root).resolve()})"))
    table.add_column("name", style="bold", no_wrap=True)
    for col in ("nodes", "edges", "features", "classes"):
        table.add_column(col, justify="right")
    table.add_column("split", no_wrap=True)
    table.add_column("tasks", justify="center", no_wrap=True)
    table.add_column("local", justify="center", no_wrap=True)
    for row in dataset_rows(root):
        if row["folder"] is None:
            local = "[cyan]built-in[/]"
        else:
            local = "[green]yes[/]" if row["local"] else "[yellow]no[/]"
        table.add_row(row["name"], _num(row["nodes"]), _num(row["edges"]),
                      _num(row["features"]), _num(row["classes"]), row["split"], row["tasks"],
                      local)
    console.print(table)
    console.print("split: train/val/test nodes (official split) or stratified percentages "
                  "drawn from the split seed. Missing datasets are downloaded on first use; "
                  "offline, put their files where datasets/README.md says.")
