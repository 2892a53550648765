"""One run = one :class:`~clbench.spec.RunSpec`: build everything, train, summarise.

:func:`run_experiment` is the single entry point the command line, the workers of the
orchestrator and the tests use.
"""

from __future__ import annotations

import random
import resource
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from clbench import metrics
from clbench.datasets import DATASETS, load_graph
from clbench.degenerate import degenerate_from_confusion, majority_baseline
from clbench.errors import ClbenchError
from clbench.methods import METHODS
from clbench.models import build_model
from clbench.parsing import is_graph_file
from clbench.provenance import versions
from clbench.resolve import resolve_run
from clbench.scenario import NCScenarioLoader
from clbench.spec import Protocol, RunSpec
from clbench.threads import DEFAULT_THREADS
from clbench.trainer import NCTrainer, TrainerCallback


def ExperimentSpec(**kwargs: Any) -> RunSpec:
    """The run spec of ``kwargs`` (:func:`clbench.resolve.resolve_run`'s arguments):
    kept for code written when a run was described by an ``ExperimentSpec`` class."""
    return resolve_run(**kwargs)


def make_optimizer_fn(protocol: Protocol | dict[str, Any]):
    """``parameters -> optimizer`` of the protocol's optimizer, lr and weight decay."""
    p = protocol.training() if isinstance(protocol, Protocol) else protocol
    lr, wd = p["lr"], p["weight_decay"]
    if p["optimizer"] == "adam":
        return lambda ps: torch.optim.Adam(ps, lr=lr, weight_decay=wd)
    return lambda ps: torch.optim.SGD(ps, lr=lr, weight_decay=wd)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def build_scenario(spec: RunSpec) -> NCScenarioLoader:
    """Load the dataset and cut it into tasks (dataset card defaults unless overridden)."""
    p = spec.protocol
    graph = load_graph(spec.dataset, spec.data_dir, p.split_seed, p.split)
    num_tasks, per_task = p.num_tasks, p.classes_per_task
    if num_tasks is None and per_task is None:
        if is_graph_file(spec.dataset):
            per_task = 2
        else:
            card = DATASETS.get(spec.dataset)
            num_tasks, per_task = card.num_tasks, card.classes_per_task
    return NCScenarioLoader(graph, num_tasks, per_task,
                            class_order=list(p.class_order) if p.class_order else None,
                            seed=spec.seed, graph_mode=p.graph, metric=p.metric,
                            setting=p.setting)


def build_backbone(protocol: Protocol, scenario: NCScenarioLoader) -> torch.nn.Module:
    """The protocol's model for the scenario's graph and classes."""
    p = protocol
    try:
        return build_model(p.model, scenario.graph.num_features, scenario.num_classes,
                           hidden=p.hidden, layers=p.layers, dropout=p.dropout,
                           batch_norm=p.batch_norm)
    except (MemoryError, RuntimeError) as exc:
        if not isinstance(exc, MemoryError | torch.OutOfMemoryError) and (
                "allocate" not in str(exc)):
            raise
        raise ClbenchError(
            f"the {p.model} model (hidden={p.hidden}, layers={p.layers}, "
            f"{scenario.graph.num_features} input features) does not fit in memory; "
            "lower --param hidden or layers") from None


def build_trainer(spec: RunSpec, scenario: NCScenarioLoader,
                  callbacks: Sequence[TrainerCallback] = ()) -> NCTrainer:
    """The spec's method on a fresh backbone: what :func:`run_experiment` trains (seed
    the generators first for the run's initial weights)."""
    trainer_cls: type[NCTrainer] = METHODS.get(spec.method)
    return trainer_cls(build_backbone(spec.protocol, scenario), scenario,
                       make_optimizer_fn(spec.protocol), None, spec.device,
                       protocol=spec.protocol, callbacks=list(callbacks), **spec.params)


def run_experiment(
    spec: RunSpec | None = None,
    callbacks: Sequence[TrainerCallback] = (),
    *,
    resume_file: str | Path | None = None,
    resume_tag: str = "",
    **kwargs: Any,
) -> dict[str, Any]:
    """Run one experiment and return a JSON-ready result.

    Accepts a :class:`~clbench.spec.RunSpec` or :func:`~clbench.resolve.resolve_run`'s
    arguments, e.g. ``run_experiment(method="finetune", dataset="synthetic", seed=0,
    params={"epochs": 50})``. ``resume_file``/``resume_tag``: save a resume point after
    every task and continue from it (see :meth:`NCTrainer.run`); the result's
    ``resumed`` says after which task.
    """
    spec = spec if spec is not None else resolve_run(**kwargs)
    torch.set_num_threads(spec.threads or DEFAULT_THREADS)  # the numbers depend on it
    started = time.perf_counter()
    seed_everything(spec.seed)
    scenario = build_scenario(spec)
    seed_everything(spec.seed)
    trainer = build_trainer(spec, scenario, callbacks)
    out = trainer.run(epoch_per_task=spec.protocol.epochs, resume_file=resume_file,
                      resume_tag=resume_tag)
    total = time.perf_counter() - started + out.earlier_seconds
    majority, _ = majority_baseline(scenario)
    result = {
        "method": spec.method,
        "dataset": scenario.graph.name,
        "seed": spec.seed,
        "split_seed": spec.protocol.split_seed,
        "config": spec.config,
        "spec": spec.record(),
        "preset": spec.preset,
        "protocol": spec.protocol.resolved(),
        "protocol_sources": dict(spec.protocol_sources),
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
        "task_penalty_ratio": out.task_penalty_ratio,
        "majority_test": majority,
        "learned_confusion_test": out.learned_confusion_test,
        "degenerate_tasks": degenerate_from_confusion(out.learned_confusion_test),
        "peak_rss_mb": peak_rss_mb(),
        "extra_storage_bytes": out.extra_storage_bytes,
        "versions": versions(),
    }
    if out.own_class_test:
        result["own_class_test"] = out.own_class_test
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
