"""One run, one type: :class:`RunSpec` (a method on a dataset with a seed) and its
:class:`Protocol` (the backbone, the optimisation and the task sequence).

A spec is frozen and fully resolved: it is built once, by
:func:`clbench.config.resolve_run`, which validates every setting, and then read as is
by the command line, the sweep, the workers, the tracking and ``clbench compare``. A
trainer receives the spec's method parameters as keyword arguments and the protocol
as ``protocol``.

Hashes. ``config_hash`` identifies a configuration (method, every hyperparameter, the
task protocol) without the seed, and ``protocol_hash`` the task sequence (dataset and
task protocol): runs are found again, skipped and resumed by them, so their payloads
(:attr:`RunSpec.config` and :attr:`RunSpec.task_protocol`) keep the layout the
committed run records were hashed with. A task setting added later (``setting``) is in
them only away from the value those records had (:data:`TASK_KEYS_ABSENT`): a Class-IL
run has its own hashes, a Task-IL run the hashes it had before the key existed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from functools import cached_property
from pathlib import Path
from types import MappingProxyType
from typing import Any

from clbench.errors import ClbenchError
from clbench.parsing import is_graph_file, slug, stable_hash

#: The protocol fields that configure training (``--param`` keys), in their order.
TRAINING_KEYS = ("model", "hidden", "layers", "dropout", "batch_norm", "optimizer", "lr",
                 "weight_decay", "epochs", "patience", "min_lr_ratio", "schedule",
                 "loss_weights", "optimizer_state")
#: The protocol fields that define the task sequence and its scoring.
TASK_KEYS = ("num_tasks", "classes_per_task", "class_order", "split_seed", "graph", "metric",
             "setting", "split")
#: The incremental settings: ``task`` (Task-IL: a node is classified among its own task's
#: classes) and ``class`` (Class-IL: among every class seen so far, no task identity).
SETTINGS = ("task", "class")
#: The task settings added after runs were recorded without them, with the value those
#: runs had: a protocol at that value leaves the key out of its hashed payload and its
#: record, so the runs made before the key existed keep their identity.
TASK_KEYS_ABSENT: dict[str, Any] = {"setting": "task", "split": "dataset"}
#: The same for the training settings (``schedule``, ``loss_weights``,
#: ``optimizer_state``): at that value a key is left out of :attr:`RunSpec.config` (so of
#: the config hash, the record and the MLflow params).
TRAINING_KEYS_ABSENT: dict[str, Any] = {"schedule": "plateau", "loss_weights": "none",
                                        "optimizer_state": "reset"}
#: How a task trains: ``plateau`` (BeGin: ReduceLROnPlateau on the validation loss, the
#: task stops at the lr floor, the best-validation weights are restored) or ``fixed``
#: (CGLB: a constant lr for exactly ``epochs`` epochs, the last weights are kept).
SCHEDULES = ("plateau", "fixed")
#: How the nodes of a training batch weigh in the task loss: ``none`` (BeGin: the mean
#: cross-entropy) or ``class_balanced`` (CGLB's ``cls_balance``: each node weighs 1 / the
#: number of the batch's nodes of its class, so every class counts the same).
LOSS_WEIGHTS = ("none", "class_balanced")
#: What the optimizer carries from one task to the next: ``reset`` (BeGin: its state, e.g.
#: Adam's moment estimates, is cleared before every task) or ``keep`` (CGLB: one optimizer
#: for the whole stream, created once). Either way each task starts at the initial
#: learning rate with a new scheduler. It matters beyond speed: under ``reset``, the
#: coordinates a task's loss does not reach (Task-IL: the earlier tasks' classifier rows)
#: see only the weight decay, and Adam scales that gradient to a full learning-rate step;
#: under ``keep`` their second-moment estimate still holds their own task's gradients.
OPTIMIZER_STATES = ("reset", "keep")
#: Where the train/val/test split comes from: ``dataset`` (the official split of a
#: dataset that has one, else a stratified 60/20/20 split drawn from ``split_seed``) or
#: ``random`` (the stratified 60/20/20 split on every dataset, as CGLB does).
SPLITS = ("dataset", "random")

@dataclass(frozen=True)
class Protocol:
    """What every method of a comparison shares (BeGin's defaults)."""

    model: str = "gcn"           # backbone: gcn | sage | gat
    hidden: int = 256            # hidden width of each GNN layer
    layers: int = 3              # number of GNN layers
    dropout: float = 0.0         # dropout after each GNN layer
    batch_norm: bool = True      # BatchNorm after each GNN layer
    optimizer: str = "adam"      # adam | sgd
    lr: float = 1e-3             # learning rate
    weight_decay: float = 0.0    # L2 weight decay of the optimizer
    epochs: int = 1000           # maximum epochs per task
    patience: int = 20           # ReduceLROnPlateau patience (epochs, on val loss)
    min_lr_ratio: float = 0.002  # a task stops when lr reaches lr * min_lr_ratio
    schedule: str = "plateau"    # plateau (BeGin) | fixed (CGLB: exactly `epochs`, last weights)
    loss_weights: str = "none"   # none (BeGin) | class_balanced (CGLB: 1 / class count)
    optimizer_state: str = "reset"  # reset (BeGin: cleared per task) | keep (CGLB: one optimizer)
    num_tasks: int | None = None         # None: from the dataset card
    classes_per_task: int | None = None  # None: from the dataset card
    class_order: tuple[int, ...] | None = None  # None: drawn from the run seed
    split_seed: int = 0          # seed of the stratified split (datasets without one)
    graph: str = "full"          # full: the whole graph is visible; task: task subgraphs
    metric: str = "accuracy"     # accuracy | balanced_accuracy
    setting: str = "task"        # task (Task-IL) | class (Class-IL)
    split: str = "dataset"       # dataset (official split if any) | random (60/20/20 always)

    def training(self, every: bool = False) -> dict[str, Any]:
        """The training settings, as ``--param`` keys, but a key of
        :data:`TRAINING_KEYS_ABSENT` at its value there (unless ``every``)."""
        return {k: getattr(self, k) for k in TRAINING_KEYS
                if every or not (k in TRAINING_KEYS_ABSENT
                                 and getattr(self, k) == TRAINING_KEYS_ABSENT[k])}

    def tasks(self) -> dict[str, Any]:
        """The task settings (the class order as a list), but a key of
        :data:`TASK_KEYS_ABSENT` at its value there (Task-IL leaves ``setting`` out)."""
        out = {k: getattr(self, k) for k in TASK_KEYS
               if not (k in TASK_KEYS_ABSENT and getattr(self, k) == TASK_KEYS_ABSENT[k])}
        out["class_order"] = list(self.class_order) if self.class_order else None
        return out

    def resolved(self) -> dict[str, Any]:
        """Every setting, in field order (the class order as a list): the protocol in
        full, as logged with a run (not hashed)."""
        out = asdict(self)
        out["class_order"] = list(self.class_order) if self.class_order else None
        return out


#: Defaults of the training settings every method shares.
PROTOCOL_DEFAULTS: dict[str, Any] = Protocol().training(every=True)


@dataclass(frozen=True)
class RunSpec:
    """One run: ``method`` on ``dataset`` with ``seed``, fully resolved.

    ``params`` are the method's own hyperparameters (its card's keys), read-only.
    ``absent``: the card's ``[absent]`` values (parameters added after runs were recorded
    without them); a parameter at that value is left out of :attr:`config`.
    ``data_dir``, ``device``, ``threads``, ``plugins``, ``note`` and ``resume_file`` say
    where and how it runs; ``preset`` (the protocol preset it was resolved from, if any)
    and ``protocol_sources`` (each protocol value's origin: ``default``, ``card``,
    ``preset:<name>`` or ``flag``) say where its values came from. None of these is part
    of any hash: a run's identity is its resolved values.
    """

    method: str
    dataset: str
    seed: int
    protocol: Protocol = field(default_factory=Protocol)
    params: Mapping[str, Any] = field(default_factory=dict)
    absent: Mapping[str, Any] = field(default_factory=dict)
    data_dir: str | None = None
    device: str = "cpu"
    threads: int | None = None  # torch threads; None (a record from before): 1
    plugins: tuple[str, ...] = ()
    note: str = ""  # shown next to the run (e.g. a sweep's grid point)
    resume_file: str | None = None  # where a worker keeps the run's resume point
    preset: str | None = None
    protocol_sources: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("params", "absent", "protocol_sources"):
            object.__setattr__(self, name, MappingProxyType(dict(getattr(self, name))))

    # ------------------------------------------------------------------ identity
    @property
    def config(self) -> dict[str, Any]:
        """Every hyperparameter: the protocol's training settings and the method's, but a
        parameter at its ``absent`` value, so that a run configured as the runs recorded
        before the parameter existed has their identity (hash, record)."""
        own = {k: v for k, v in self.params.items()
               if not (k in self.absent and _same(v, self.absent[k]))}
        return {**self.protocol.training(), **own}

    @property
    def task_protocol(self) -> dict[str, Any]:
        """The task sequence: the dataset and the protocol's task settings."""
        return {"dataset": self.dataset, **self.protocol.tasks()}

    @cached_property
    def protocol_hash(self) -> str:
        """Identifies the task sequence (what a joint run must share for INT)."""
        return stable_hash(self.task_protocol)

    @cached_property
    def config_hash(self) -> str:
        """Identifies method, hyperparameters and task sequence, without the seed."""
        return stable_hash({"method": self.method, "config": self.config,
                            "protocol": self.task_protocol})

    @property
    def uid(self) -> str:
        """A file-name-safe unique id: method, dataset, config hash, seed."""
        data = Path(self.dataset).stem if is_graph_file(self.dataset) else self.dataset
        return f"{slug(self.method)}__{slug(data)}__{self.config_hash}__seed{self.seed}"

    @property
    def key(self) -> tuple[str, str, int, str]:
        return self.method, self.dataset, self.seed, self.config_hash

    @property
    def group(self) -> tuple[str, str, str]:
        """The parent run it belongs to (every seed of one configuration)."""
        return self.method, self.dataset, self.config_hash

    @property
    def label(self) -> str:
        note = f" [{self.note}]" if self.note else ""
        return f"{self.method} · {self.dataset} · seed {self.seed}{note}"

    # ------------------------------------------------------------------ records
    def record(self) -> dict[str, Any]:
        """The run as saved in its result (``result["spec"]``): flat, every hyperparameter
        under ``params``; :func:`clbench.config.resolve_run` reads it back."""
        p = self.protocol
        out = {"method": self.method, "dataset": self.dataset, "seed": self.seed,
               "num_tasks": p.num_tasks, "classes_per_task": p.classes_per_task,
               "class_order": list(p.class_order) if p.class_order else None,
               "params": self.config, "data_dir": self.data_dir, "split_seed": p.split_seed,
               "graph": p.graph, "metric": p.metric, "device": self.device,
               "threads": self.threads}
        tasks = p.tasks()
        for key in TASK_KEYS_ABSENT:  # away from the old value; old records keep their layout
            if key in tasks:
                out[key] = tasks[key]
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready; :meth:`from_dict` inverts it (a job sent to another process)."""
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["protocol"] = asdict(self.protocol)
        d["params"] = dict(self.params)
        d["absent"] = dict(self.absent)
        d["protocol_sources"] = dict(self.protocol_sources)
        d["plugins"] = list(self.plugins)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> RunSpec:
        proto = dict(d["protocol"])
        if proto.get("class_order") is not None:
            proto["class_order"] = tuple(proto["class_order"])
        return cls(**{**d, "protocol": Protocol(**proto),
                      "plugins": tuple(d.get("plugins") or ())})


def _same(a: Any, b: Any) -> bool:
    return type(a) is type(b) and a == b


def task_shape(
    num_classes: int, num_tasks: int | None, classes_per_task: int | None, name: str
) -> tuple[int, int]:
    """``(tasks, classes per task)`` of a split of ``num_classes`` classes (either may be
    left out), or a :class:`ClbenchError` saying why it is impossible (``name``: the
    dataset, for messages)."""
    if num_tasks is not None and num_tasks < 1:
        raise ClbenchError(f"the number of tasks must be at least 1, got {num_tasks}")
    if classes_per_task is not None and classes_per_task < 1:
        raise ClbenchError(f"classes per task must be at least 1, got {classes_per_task}")
    if num_tasks is None and classes_per_task is None:
        raise ClbenchError("give the number of tasks or the classes per task")
    if classes_per_task is None:
        classes_per_task = num_classes // num_tasks
        if classes_per_task < 1:
            raise ClbenchError(
                f"impossible task split: {num_tasks} tasks need at least one class each, but "
                f"{name} has only {num_classes} classes"
            )
    if num_tasks is None:
        num_tasks = num_classes // classes_per_task
        if num_tasks < 1:
            raise ClbenchError(
                f"impossible task split: {classes_per_task} classes per task, but {name} has "
                f"only {num_classes} classes"
            )
    if num_tasks * classes_per_task > num_classes:
        raise ClbenchError(
            f"impossible task split: {num_tasks} tasks x {classes_per_task} classes need "
            f"{num_tasks * classes_per_task} classes, but {name} has only {num_classes}"
        )
    return num_tasks, classes_per_task
