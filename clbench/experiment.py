"""One experiment = one (method, dataset, seed): build everything, run, summarise.

This is the single entry point the CLI and the orchestrator use.
"""

from __future__ import annotations

import importlib.metadata
import platform
import random
import resource
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

import clbench
from clbench import metrics
from clbench.config import check_seed, method_param_keys, resolve_params
from clbench.datasets import DATASETS, load_graph
from clbench.errors import ClbenchError, DataError, clip, quote
from clbench.methods import METHODS
from clbench.models import build_model
from clbench.scenario import NCScenarioLoader
from clbench.trainer import NCTrainer, TrainerCallback, plateau_scheduler


def default_method() -> str:
    """The method ``clbench run`` uses without ``--method``."""
    return "piggyback" if "piggyback" in METHODS else "finetune"


@dataclass
class ExperimentSpec:
    """Everything that defines one run."""

    method: str = field(default_factory=default_method)
    dataset: str = "synthetic"
    seed: int = 0
    num_tasks: int | None = None
    classes_per_task: int | None = None
    class_order: list[int] | None = None
    params: dict[str, Any] = field(default_factory=dict)
    data_dir: str | None = None
    split_seed: int = 0
    graph: str = "full"
    metric: str = "accuracy"
    device: str = "cpu"
    threads: int | None = None


def check_device(device: object, available: bool = True) -> torch.device:
    """``device`` parsed as a torch device clbench can run on (cpu, cuda, mps); with
    ``available``, one this machine has (a Dask cluster's workers may have devices the
    machine that submits the jobs lacks)."""
    try:
        dev = torch.device(device)  # type: ignore[arg-type]
    except (RuntimeError, TypeError, ValueError):
        raise ClbenchError(f"--device {quote(device)} is not a torch device "
                           "(e.g. cpu, cuda, cuda:1)") from None
    if dev.type not in ("cpu", "cuda", "mps"):
        raise ClbenchError(f"--device {quote(device)}: clbench runs on cpu, cuda or mps")
    if not available or dev.type == "cpu":
        return dev
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise ClbenchError(f"--device {quote(device)}: MPS is not available on this machine")
    if dev.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if not count:
            raise ClbenchError(f"--device {quote(device)}: CUDA is not available on this "
                               f"machine (torch {torch.__version__}); use --device cpu")
        if dev.index is not None and dev.index >= count:
            raise ClbenchError(f"--device {quote(device)}: this machine has {count} CUDA "
                               f"device(s), cuda:0 to cuda:{count - 1}")
    return dev


def check_task_split(dataset: str, num_tasks: int | None, classes_per_task: int | None,
                     class_order: Sequence[int] | None = None) -> None:
    """The scenario's checks of the task split and class order, made from a registered
    dataset's card (its published class count) before any data is loaded. Of a graph
    file, only that it exists: its classes (and those of a card without a class count)
    are checked when the scenario is built."""
    from clbench.datasets.loading import is_graph_file
    from clbench.scenario import _task_shape

    if is_graph_file(dataset):
        try:
            found = Path(dataset).is_file()
        except OSError as exc:  # e.g. a name too long for the file system
            raise DataError(f"graph file {clip(dataset)}: {exc.strerror or exc}") from None
        if not found:
            raise DataError(f"graph file {clip(dataset)} does not exist")
        return
    card = DATASETS.get(dataset)
    C = card.stats.get("classes")
    if isinstance(C, bool) or not isinstance(C, int) or C < 1:
        return
    if num_tasks is None and classes_per_task is None:
        num_tasks, classes_per_task = card.num_tasks, card.classes_per_task
    T, K = _task_shape(C, num_tasks, classes_per_task, card.name)
    if class_order is not None:
        order = list(class_order)
        if any(not 0 <= c < C for c in order) or len(set(order)) != len(order):
            raise ClbenchError(f"class order must list distinct classes in 0..{C - 1}; "
                               f"got {quote(order)}")
        if len(order) < T * K:
            raise ClbenchError(f"class order lists {len(order)} classes but {T} tasks x {K} "
                               f"classes need {T * K}")


def check_data_dir(data_dir: str | None) -> None:
    """A data root the file system accepts: a directory, or a path where one can be
    made."""
    if data_dir is None:
        return
    from clbench.datasets import data_root

    root = data_root(data_dir)
    try:
        clash = next((d for d in (root, *root.parents) if d.exists() and not d.is_dir()), None)
    except OSError as exc:  # e.g. a name too long for the file system
        raise DataError(f"--data-dir {clip(data_dir)}: {exc.strerror or exc}") from None
    if clash is not None:
        raise DataError(f"--data-dir {clip(data_dir)}: {clip(clash)} is not a directory")


def validate_spec(spec: ExperimentSpec) -> dict[str, Any]:
    """Every check that needs no data (seeds, device, names, hyperparameters, task split);
    returns the resolved hyperparameters."""
    check_seed(spec.seed, "--seed")
    check_seed(spec.split_seed, "--split-seed")
    check_device(spec.device)
    check_data_dir(spec.data_dir)
    method = METHODS.canonical(spec.method)
    dataset_key = None if spec.dataset.endswith((".pt", ".npz")) else spec.dataset
    params = resolve_params(method, dataset_key, spec.params)
    check_task_split(spec.dataset, spec.num_tasks, spec.classes_per_task, spec.class_order)
    return params


def make_optimizer_fn(params: dict[str, Any]):
    lr, wd = params["lr"], params["weight_decay"]
    if params["optimizer"] == "adam":
        return lambda ps: torch.optim.Adam(ps, lr=lr, weight_decay=wd)
    return lambda ps: torch.optim.SGD(ps, lr=lr, weight_decay=wd)


def versions() -> dict[str, str]:
    import torch_geometric

    return {
        "clbench": clbench.__version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_geometric": torch_geometric.__version__,
        "numpy": np.__version__,
        # from the installed metadata: importing scikit-learn costs ~2 s per process
        "scikit-learn": importlib.metadata.version("scikit-learn"),
    }


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def build_scenario(spec: ExperimentSpec) -> NCScenarioLoader:
    """Load the dataset and cut it into tasks (dataset card defaults unless overridden)."""
    is_file = spec.dataset.endswith((".pt", ".npz"))
    graph = load_graph(spec.dataset, spec.data_dir, spec.split_seed)
    num_tasks, per_task = spec.num_tasks, spec.classes_per_task
    if num_tasks is None and per_task is None:
        if is_file:
            per_task = 2
        else:
            card = DATASETS.get(spec.dataset)
            num_tasks, per_task = card.num_tasks, card.classes_per_task
    return NCScenarioLoader(graph, num_tasks, per_task, class_order=spec.class_order,
                            seed=spec.seed, graph_mode=spec.graph, metric=spec.metric)


def run_experiment(
    spec: ExperimentSpec | None = None,
    callbacks: Sequence[TrainerCallback] = (),
    *,
    resume_file: str | Path | None = None,
    resume_tag: str = "",
    **kwargs: Any,
) -> dict[str, Any]:
    """Run one experiment and return a JSON-ready result.

    Accepts an :class:`ExperimentSpec` or its fields as keyword arguments, e.g.
    ``run_experiment(method="finetune", dataset="synthetic", seed=0, params={"epochs": 50})``.
    ``resume_file``/``resume_tag``: save a resume point after every task and continue
    from it (see :meth:`NCTrainer.run`); the result's ``resumed`` says after which task.
    """
    spec = spec or ExperimentSpec(**kwargs)
    params = validate_spec(spec)
    trainer_cls: type[NCTrainer] = METHODS.get(spec.method)
    method = METHODS.canonical(spec.method)
    if spec.threads:
        torch.set_num_threads(spec.threads)
    started = time.perf_counter()
    seed_everything(spec.seed)
    scenario = build_scenario(spec)
    seed_everything(spec.seed)
    try:
        model = build_model(params["model"], scenario.graph.num_features,
                            scenario.num_classes, hidden=params["hidden"],
                            layers=params["layers"], dropout=params["dropout"],
                            batch_norm=params["batch_norm"])
    except (MemoryError, RuntimeError) as exc:
        if not isinstance(exc, MemoryError | torch.OutOfMemoryError) and (
                "allocate" not in str(exc)):
            raise
        raise ClbenchError(
            f"the {params['model']} model (hidden={params['hidden']}, layers="
            f"{params['layers']}, {scenario.graph.num_features} input features) does not "
            "fit in memory; lower --param hidden or layers") from None
    method_params = {k: params[k] for k in method_param_keys(method)}
    trainer = trainer_cls(
        model, scenario, make_optimizer_fn(params), None, spec.device,
        scheduler_fn=plateau_scheduler(params["patience"], params["min_lr_ratio"]),
        callbacks=list(callbacks), **method_params,
    )
    out = trainer.run(epoch_per_task=params["epochs"], resume_file=resume_file,
                      resume_tag=resume_tag)
    total = time.perf_counter() - started + out.earlier_seconds
    result = {
        "method": method,
        "dataset": scenario.graph.name,
        "seed": spec.seed,
        "split_seed": spec.split_seed,
        "config": params,
        "spec": asdict(spec),
        "scenario": scenario.describe(),
        "R_test": out.R_test.tolist(),
        "R_val": out.R_val.tolist(),
        "init_test": out.init_test.tolist(),
        "init_val": out.init_val.tolist(),
        "metrics": metrics.summarize(out.R_test, out.init_test),
        "val_metrics": metrics.summarize(out.R_val, out.init_val),
        "ap_curve": metrics.average_accuracy_curve(out.R_test),
        "timing": {
            "total_seconds": total,
            "task_train_seconds": out.task_train_seconds,
            "task_eval_seconds": out.task_eval_seconds,
            "task_epochs": out.task_epochs,
        },
        "peak_rss_mb": peak_rss_mb(),
        "extra_storage_bytes": out.extra_storage_bytes,
        "versions": versions(),
    }
    if out.resumed_after_task is not None:
        result["resumed"] = {"after_task": out.resumed_after_task,
                             "earlier_seconds": out.earlier_seconds}
    return result


def peak_rss_mb() -> float:
    """Peak resident memory of this process, in MiB.

    On Linux this is ``VmHWM`` from ``/proc/self/status``: ``ru_maxrss`` survives
    ``fork`` and ``exec``, so a run started by a large parent would report the
    parent's peak. Elsewhere, ``ru_maxrss``.
    """
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 1024 / (1024 if sys.platform == "darwin" else 1)
