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
    """Print :func:`dataset_rows` as a rich table on ``console`` (a new one by default).

    The numbers never shrink (their columns do not wrap); on a console narrower than
    the whole table (80 columns, a pipe) the split column is left out, and said so."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = console or Console()
    rows = dataset_rows(root)
    cells = [[row["name"], _num(row["nodes"]), _num(row["edges"]), _num(row["features"]),
              _num(row["classes"]), row["split"], row["tasks"]] for row in rows]
    headers = ["name", "nodes", "edges", "features", "classes", "split", "tasks", "local"]
    widths = [max([len(h), *(len(c[i]) for c in cells)]) for i, h in enumerate(headers[:-1])]
    full = sum(widths) + len("built-in") + 3 * len(headers) + 1
    with_split = console.width >= full
    table = Table(title=escape(f"Datasets (data root: {Path(root).resolve()})"),
                  show_edge=with_split)
    short = {} if with_split else {"features": "feats", "classes": "cls"}
    for i, head in enumerate(headers[:-1]):
        if head == "split" and not with_split:
            continue
        width = widths[i] if with_split else max(len(c[i]) for c in cells)
        table.add_column(short.get(head, head), no_wrap=True, min_width=width,
                         justify="left" if head in ("name", "split") else "right")
    table.add_column("local", justify="center", no_wrap=True, min_width=len("built-in"))
    for row, cell in zip(rows, cells, strict=True):
        if row["folder"] is None:
            local = "[cyan]built-in[/]"
        else:
            local = "[green]yes[/]" if row["local"] else "[yellow]no[/]"
        shown = [escape(c) for i, c in enumerate(cell) if with_split or i != 5]
        table.add_row(*shown, local)
    console.print(table)
    console.print("split: train/val/test nodes (official split) or stratified percentages "
                  "drawn from the split seed" + ("" if with_split else
                  f" (column left out below {full} columns)") + ". Missing datasets are "
                  "downloaded on first use; offline, put their files where "
                  "datasets/README.md says.", markup=False)
