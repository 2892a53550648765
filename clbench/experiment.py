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
from clbench.config import method_param_keys, resolve_params
from clbench.datasets import DATASETS, load_graph
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
    trainer_cls: type[NCTrainer] = METHODS.get(spec.method)
    method = METHODS.canonical(spec.method)
    dataset_key = None if spec.dataset.endswith((".pt", ".npz")) else spec.dataset
    params = resolve_params(method, dataset_key, spec.params)
    if spec.threads:
        torch.set_num_threads(spec.threads)
    started = time.perf_counter()
    seed_everything(spec.seed)
    scenario = build_scenario(spec)
    seed_everything(spec.seed)
    model = build_model(params["model"], scenario.graph.num_features, scenario.num_classes,
                        hidden=params["hidden"], layers=params["layers"],
                        dropout=params["dropout"], batch_norm=params["batch_norm"])
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
