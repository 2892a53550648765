"""What a comparison is made of: one :class:`Row` per (method, dataset, configuration),
the table's :class:`Provenance`, the :class:`Report` of a ``clbench compare``, and the
settings the table and figure share."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from clbench.compare.stats import ColumnTests, Ranking, VsBest

TABLE_METRICS = ("AP", "AF")
CSV_METRICS = ("AP", "AF", "BWT", "FWT", "INT", "val_AP", "time_total_seconds", "peak_rss_mb",
               "extra_storage_bytes", "learned_bacc_min")
#: How the incremental settings (the ``setting`` param; runs logged before it existed
#: lack it and were Task-IL) are named in tables.
SETTING_NAMES = {"task": "Task-IL", "class": "Class-IL"}
#: Protocol keys shown beside a method's own hyperparameters.
SHOWN_PROTOCOL_KEYS = ("lr", "dropout", "weight_decay", "epochs")
#: The default tolerance on |clbench AP - reference AP| (0-1 scale): how far clbench's AP
#: may lie from a published reference AP (a paper's number for the same method and
#: dataset) and still count as reproducing it.
DEFAULT_TOLERANCE = 0.02
MAX_PARTS_SHOWN = 12  # a table lists the busy stretches of a sweep up to this many
PAUSE_SECONDS = 600.0  # a longer time with no run in progress splits the wall time in parts


@dataclass
class Row:
    """One (method, dataset, configuration) of the experiment."""

    method: str
    dataset: str
    config_hash: str
    label: str
    seeds: list[int]
    stats: dict[str, dict[str, float]] = field(default_factory=dict)
    parent_id: str = ""
    selected: bool = False
    #: the configuration's hyperparameters (method params and the main protocol keys)
    hparams: dict[str, str] = field(default_factory=dict)
    #: the sweep's label of this configuration (its varying keys), if any
    selection_label: str = ""
    #: how it was selected (the sweep's :data:`~clbench.tracking.TAG_SELECTION` tag),
    #: if any
    selection: str = ""
    #: the grid seeds it was selected on, if a sweep selected it
    grid_seeds: list[int] | None = None
    #: finished runs of this (method, dataset) in the experiment (grid and final) and
    #: their summed run time in seconds
    cell_runs: int = 0
    cell_seconds: float = 0.0
    #: the reference values of this (method, dataset), e.g. {"AP": 0.91}
    reference: dict[str, float] = field(default_factory=dict)
    #: every resolved hyperparameter of the configuration (protocol and method keys)
    config: dict[str, str] = field(default_factory=dict)
    #: each seed's AP
    per_seed_ap: dict[int, float] = field(default_factory=dict)
    #: seeds with tasks that learned nothing (their ``clbench.degenerate_tasks`` tag)
    degenerate: dict[int, str] = field(default_factory=dict)
    #: per seed, how it was checked: ``balanced``, ``majority`` (the first form of the
    #: check) or ``none`` (a run recorded before there was a check)
    degenerate_check: dict[int, str] = field(default_factory=dict)
    #: the incremental setting, ``task`` or ``class`` (one per row: a parent run is one
    #: configuration, and the setting is part of it)
    setting: str = "task"
    #: each seed's AF
    per_seed_af: dict[int, float] = field(default_factory=dict)
    #: the 95% confidence interval of the mean over seeds, per metric (0-1 scale)
    ci: dict[str, tuple[float, float]] = field(default_factory=dict)
    #: this row against its dataset column's best (a paired test over seeds), if computed
    vs_best: VsBest | None = None
    #: per seed, the run's weakest task right after it was learned: (its balanced accuracy
    #: among its own classes, the task), for runs whose records have the confusion matrices
    weakest: dict[int, tuple[float, int]] = field(default_factory=dict)
    #: each seed's validation AP
    per_seed_val_ap: dict[int, float] = field(default_factory=dict)

    @property
    def setting_name(self) -> str:
        return SETTING_NAMES.get(self.setting, self.setting)

    def per_seed(self, metric: str) -> dict[int, float]:
        """Each seed's value of ``metric`` (AP or AF)."""
        return {"AP": self.per_seed_ap, "AF": self.per_seed_af}.get(metric, {})

    def ci_text(self, metric: str, percent: bool = True) -> str:
        """``"[90.3, 93.7]"`` (in % by default), or ``"-"``."""
        ci = self.ci.get(metric)
        if ci is None:
            return "-"
        k = 100.0 if percent else 1.0
        digits = 1 if percent else 3
        return f"[{signless_zero(ci[0] * k, digits)}, {signless_zero(ci[1] * k, digits)}]"

    def seeds_checked(self, kind: str) -> list[int]:
        """The seeds whose runs were checked for degenerate tasks as ``kind``."""
        return [s for s, k in self.degenerate_check.items() if k == kind]

    def degenerate_text(self) -> str:
        """``"seed 4000: task 5; ..."``, or ``""``."""
        return "; ".join(f"seed {s}: task {t.replace(',', ', ')}"
                         for s, t in self.degenerate.items())

    def val_ap_outside_grid(self) -> tuple[list[int], float] | None:
        """The reported seeds that were not grid seeds of the selection, and the selected
        configuration's mean validation AP over them; None when every reported seed was
        a grid seed (or the row was not selected by a sweep). Set beside the selection's
        grid mean it shows how lucky the selection was on its few seeds."""
        if self.grid_seeds is None:
            return None
        other = sorted(s for s in self.per_seed_val_ap if s not in self.grid_seeds)
        if not other:
            return None
        return other, sum(self.per_seed_val_ap[s] for s in other) / len(other)

    def selection_text(self) -> str:
        """How the row was selected, with :meth:`val_ap_outside_grid` when there is one."""
        outside = self.val_ap_outside_grid()
        if outside is None:
            return self.selection
        seeds, mean = outside
        return (f"{self.selection}; its mean val AP over the {len(seeds)} other reported "
                f"seed{'s' if len(seeds) != 1 else ''}: {mean:.4f}")

    def weakest_text(self) -> str:
        """``"0.534 (seed 2000, task 2)"``: the lowest over seeds of :attr:`weakest`, or
        ``""``."""
        if not self.weakest:
            return ""
        seed, (value, task) = min(self.weakest.items(), key=lambda kv: (kv[1][0], kv[0]))
        return f"{value:.3f} (seed {seed}, task {task})"

    def cell(self, metric: str, percent: bool = True) -> str:
        s = self.stats.get(metric)
        if s is None:
            return "-"
        k = 100.0 if percent else 1.0
        return f"{signless_zero(s['mean'] * k, 1)} ± {s['std'] * k:.1f}"

    def delta(self, metric: str = "AP") -> float | None:
        """clbench's mean minus the reference (0-1 scale), or None."""
        s, ref = self.stats.get(metric), self.reference.get(metric)
        if s is None or ref is None:
            return None
        return s["mean"] - ref


@dataclass
class Provenance:
    """Where a table comes from: commit, wall time, commands, machine."""

    commit: str = ""
    commit_source: str = ""
    code: str = ""
    wall_seconds: float | None = None  # first run's start to last run's end
    busy_seconds: float | None = None  # at least one run in progress
    parts: list[tuple[str, str]] = field(default_factory=list)  # busy stretches (UTC)
    first_start: str = ""
    last_end: str = ""
    runs: int = 0
    run_seconds: float = 0.0
    threads: list[str] = field(default_factory=list)
    versions: dict[str, str] = field(default_factory=dict)
    run_command: str = ""
    run_command_source: str = ""
    compare_command: str = ""
    tracking_uri: str = ""
    sweep_file: str = ""


@dataclass
class Report:
    experiment: str
    rows: list[Row]
    markdown: Path | None = None
    csv: Path | None = None
    figure: Path | None = None
    provenance: Provenance | None = None
    #: per dataset: each row against the column's best
    columns: dict[str, ColumnTests] = field(default_factory=dict)
    ranking: Ranking | None = None
    cd_figure: Path | None = None  # the critical-difference diagram, if drawn
    #: the seeds the table was restricted to (``clbench compare --seeds``), if it was
    seeds: list[int] | None = None


def signless_zero(value: float, digits: int) -> str:
    """``value`` to ``digits`` decimals, without the sign of a negative value that rounds
    to zero (joint training's AF is often -0.0001: a table should say 0.0, not -0.0)."""
    text = f"{value:.{digits}f}"
    return text[1:] if text.startswith("-") and float(text) == 0 else text
