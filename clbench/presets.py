"""Protocol presets (``clbench run --preset NAME``, ``preset = "NAME"`` in a sweep file):
named, documented bundles of protocol choices, each value with the line of the
reference code it comes from.

A preset sets protocol values the way the defaults do: a ``--param key=value`` or an
explicit flag (``--graph``, ``--tasks``, ``--class-order``, ``--metric``, ``--split``)
overrides it, and the run records where each value came from (its
``protocol_sources``). A preset is not part of a run's identity: a run's hashes are
those of its resolved values, so ``--preset begin`` (today's defaults) has the config
hash of a run without a preset.

``begin``: BeGin's node-classification benchmark (``run_benchmark.py`` of
ShinhwanKang/BeGin; the paths below are in that repository):

* model: 3 GCN layers of width 256 (``model_settings["NC"] = (3, 256)``, line 17), each
  followed by BatchNorm (``begin/utils/models.py`` line 110, ``GCNNode``);
* Adam (line 252) with lr 1e-3, dropout 0, weight decay 0: the first point of BeGin's
  grid (``lrs``/``drs``/``wds``, lines 148-150);
* at most 1000 epochs, ReduceLROnPlateau with patience 20 (``exp_settings``, lines 18-25,
  e.g. ``("cora", "task"): (3, "accuracy", 1000, 20, 0.001)``), floor ``lr * 0.001 * 2``
  (line 255), the task stops at the floor and the best-validation weights are restored
  (``begin/trainers/nodes.py`` lines 111-130);
* the whole graph visible in every task; class order a permutation drawn from the seed
  (``task_shuffle=1``, line 181); accuracy (``exp_settings``); each dataset's official
  split where it has one; the task counts of the dataset cards
  (``clbench/datasets/catalog.toml``, BeGin's ``num_task`` of ``exp_settings``).

``cglb``: CGLB's node-classification benchmark (QueuQ/CGLB; paths under ``NCGL/``):

* model: GCN (``train.py`` line 20) with ``GCN_args = {"h_dims": [256], "dropout": 0.0,
  "batch_norm": False}`` (line 45): two GCN layers, d -> 256 -> classes
  (``Backbones/gnns.py`` lines 77-81), no BatchNorm, no dropout;
* Adam (``Baselines/bare_model.py`` line 35) with lr 0.005 (``train.py`` line 18) and
  weight decay 5e-4 (line 19);
* one optimizer for the whole stream: each method's ``NET`` creates its Adam once
  (``Baselines/bare_model.py`` line 35, the same in every baseline) and the pipeline
  creates the ``NET`` once, before the task loop (``pipeline.py`` line 118), so Adam's
  moment estimates carry over from task to task: ``optimizer_state = "keep"`` (BeGin
  clears them before every task, ``begin/trainers/nodes.py`` line 65);
* exactly 200 epochs (line 17): ``for epoch in range(epochs)`` with no scheduler, no
  early stop and no per-epoch validation, and the last weights are evaluated
  (``pipeline.py`` lines 138-166): ``schedule = "fixed"`` (which also skips clbench's
  per-epoch validation pass: nothing uses it);
* tasks of 2 classes in id order, (0, 1), (2, 3), ... (``n_cls_per_task = 2``,
  ``train.py`` line 41; ``pipeline.py`` line 112, which drops a last task of one class):
  CoraFull-CL 35 tasks, Arxiv-CL 20, Products-CL 23 (47 classes), Reddit-CL 20 (41);
* tasks without inter-task edges (``--inter-task-edges False``, the
  ``*_no_inter_edge`` pipelines, ``pipeline.py`` line 106): ``--graph task``. CGLB's
  *default* is ``inter_task_edges=True`` (``train.py`` line 27: a growing subgraph of
  the tasks so far), which clbench does not offer; the preset takes CGLB's other
  setting, as the CGLB paper reports both;
* balanced accuracy: ``cls_balance=True`` (``train.py`` line 56) makes ``evaluate`` the
  mean of the per-class accuracies (``Backbones/utils.py`` lines 24-30, 95-96), and the
  training loss class-balanced, each node weighted by 1 / its class's count among the
  task's training nodes (``Baselines/bare_model.py`` lines 99-106):
  ``loss_weights = "class_balanced"``;
* a random 60/20/20 split of each class on every dataset, the official splits unused
  (``ratio_valid_test = [0.2, 0.2]`` and ``default_split=False``, ``train.py`` lines
  36 and 38; ``Backbones/utils.py`` lines 166-169 and 216-224): ``split = "random"``
  (clbench's stratified split, drawn from ``--split-seed``).

What the ``cglb`` preset does not reproduce (:data:`PRESETS` ``["cglb"].gaps``): see
``docs/protocol.md``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from clbench.errors import ClbenchError, quote

#: A preset's ``class_order`` value: the classes in id order, 0, 1, 2, ... (resolved per
#: dataset from its card's class count).
ID_ORDER = "ids"


@dataclass(frozen=True)
class Preset:
    """A named bundle of protocol values (:class:`~clbench.spec.Protocol` fields).

    ``values``: the fields it sets (``num_tasks``/``classes_per_task`` None: the dataset
    card's split, or as many tasks as fit; ``class_order`` None: drawn from the seed,
    :data:`ID_ORDER`: the classes in id order). ``where``: per field, the reference code
    it comes from, a path in ``reference`` (a repository and folder). ``gaps``: what of
    the reference clbench cannot do."""

    name: str
    summary: str
    reference: str
    values: Mapping[str, Any]
    where: Mapping[str, str]
    gaps: tuple[str, ...] = field(default=())


_BEGIN = "run_benchmark.py"
_CGLB = ""

PRESETS: dict[str, Preset] = {
    "begin": Preset(
        "begin", "BeGin's protocol (clbench's defaults)", "ShinhwanKang/BeGin",
        {"model": "gcn", "hidden": 256, "layers": 3, "dropout": 0.0, "batch_norm": True,
         "optimizer": "adam", "lr": 1e-3, "weight_decay": 0.0, "epochs": 1000,
         "patience": 20, "min_lr_ratio": 0.002, "schedule": "plateau",
         "loss_weights": "none", "optimizer_state": "reset", "num_tasks": None,
         "classes_per_task": None,
         "class_order": None,
         "graph": "full", "metric": "accuracy", "split": "dataset"},
        {"model": f"{_BEGIN}:127-129 (GCNNode)", "hidden": f"{_BEGIN}:17",
         "layers": f"{_BEGIN}:17", "dropout": f"{_BEGIN}:149 (first of the grid)",
         "batch_norm": "begin/utils/models.py:110", "optimizer": f"{_BEGIN}:252",
         "lr": f"{_BEGIN}:148 (first of the grid)",
         "weight_decay": f"{_BEGIN}:150 (first of the grid)",
         "epochs": f"{_BEGIN}:18-25 (exp_settings)",
         "patience": f"{_BEGIN}:18-25 (exp_settings)",
         "min_lr_ratio": f"{_BEGIN}:255 (min_lr = lr * 0.001 * 2)",
         "schedule": f"{_BEGIN}:255; begin/trainers/nodes.py:111-130",
         "loss_weights": f"{_BEGIN}:229 (CrossEntropyLoss, unweighted)",
         "optimizer_state": "begin/trainers/nodes.py:65 (processBeforeTraining: "
                            "_reset_optimizer)",
         "num_tasks": "dataset card (BeGin's exp_settings num_task)",
         "classes_per_task": "dataset card", "class_order": f"{_BEGIN}:181 (task_shuffle)",
         "graph": "begin/scenarios/nodes.py (whole graph, labels masked)",
         "metric": f"{_BEGIN}:18-25 (exp_settings)",
         "split": "dataset card (official split, else stratified)"},
        gaps=(
            "BeGin benchmarks ogbn-products in Class-IL only, with 9 tasks of 5 classes "
            "(the last 2 classes left out) and at most 100 epochs per task "
            f"({_BEGIN}:26), in neighbour-sampled mini-batches ({_BEGIN}:135, "
            "MinibatchTrainer); clbench's ogbn-products card splits 23 tasks of 2 (CGLB's "
            "Products-CL) and trains full-batch: --tasks 9x5 --epochs 100 give "
            "BeGin's split and epoch cap",
            "BeGin's GCN layers have no bias (begin/utils/models.py:109) and, at "
            "dropout > 0, also drop the input features (:126); clbench's keep PyG's "
            "bias, which BatchNorm cancels, and drop only the hidden layers' outputs. "
            "The same at the default dropout 0; at dropout 0.5, finetune on CiteSeer "
            "with input dropout moved AP by +0.007, +0.003, -0.009 on three seeds "
            "(results/begin-cora-citeseer-notes.md)",
        )),
    "cglb": Preset(
        "cglb", "CGLB's protocol, without inter-task edges", "QueuQ/CGLB, NCGL/",
        {"model": "gcn", "hidden": 256, "layers": 2, "dropout": 0.0, "batch_norm": False,
         "optimizer": "adam", "lr": 0.005, "weight_decay": 5e-4, "epochs": 200,
         "patience": 20, "min_lr_ratio": 0.002, "schedule": "fixed",
         "loss_weights": "class_balanced", "optimizer_state": "keep", "num_tasks": None,
         "classes_per_task": 2,
         "class_order": ID_ORDER,
         "graph": "task", "metric": "balanced_accuracy", "split": "random"},
        {"model": f"{_CGLB}train.py:20", "hidden": f"{_CGLB}train.py:45 (h_dims [256])",
         "layers": f"{_CGLB}Backbones/gnns.py:77-81 (d -> 256 -> classes)",
         "dropout": f"{_CGLB}train.py:45", "batch_norm": f"{_CGLB}train.py:45",
         "optimizer": f"{_CGLB}Baselines/bare_model.py:35", "lr": f"{_CGLB}train.py:18",
         "weight_decay": f"{_CGLB}train.py:19", "epochs": f"{_CGLB}train.py:17",
         "patience": "unused by schedule=fixed", "min_lr_ratio": "unused by schedule=fixed",
         "schedule": f"{_CGLB}pipeline.py:138-166 (no scheduler, no early stop, last "
                     "weights)",
         "loss_weights": f"{_CGLB}train.py:56 (cls_balance); Baselines/bare_model.py:99-106",
         "optimizer_state": f"{_CGLB}Baselines/bare_model.py:35 (one Adam, created with "
                            "the model); pipeline.py:118 (one model for all tasks)",
         "num_tasks": f"{_CGLB}pipeline.py:112 (as many tasks as fit)",
         "classes_per_task": f"{_CGLB}train.py:41", "class_order": f"{_CGLB}pipeline.py:112",
         "graph": f"{_CGLB}train.py:27 set to False (CGLB's default True is not offered)",
         "metric": f"{_CGLB}train.py:56; Backbones/utils.py:24-30",
         "split": f"{_CGLB}train.py:36,38; Backbones/utils.py:166-169,216-224"},
        gaps=(
            "CGLB's GCN layer is a bias-free linear map then an unnormalised sum over "
            "in-neighbours and a self-loop (NCGL/Backbones/gnnconv.py:158-175), and its "
            "second GCN layer is the output layer; clbench's gcn is the normalised "
            "GCNConv with bias, each of the 2 layers followed by ReLU, then a linear head",
            "CGLB trains neighbour-sampled mini-batches by default (train.py:59-63: "
            "batch_size 2000, fan-outs 10, 25); clbench trains full-batch, one step per "
            "epoch",
            "CGLB's default keeps inter-task edges (train.py:27); the preset has none",
            "CGLB drops classes with fewer than 2 nodes (Backbones/utils.py:202-205) and "
            "reports AF with the opposite sign, in % rounded to 2 decimals "
            "(pipeline.py:166,189)",
        )),
}


def get_preset(name: str) -> Preset:
    """The preset called ``name``, or a :class:`ClbenchError` listing the known ones."""
    try:
        return PRESETS[name.strip().lower()]
    except KeyError:
        raise ClbenchError(f"unknown preset {quote(name)}; known presets: "
                           f"{', '.join(PRESETS)}") from None


def describe(preset: Preset, key: str) -> str:
    """A preset's value of ``key`` as ``clbench list presets`` shows it."""
    value = preset.values[key]
    if key == "class_order":
        return ("0, 1, 2, ... (ids)" if value == ID_ORDER
                else "drawn from the seed" if value is None else str(value))
    if key in ("num_tasks", "classes_per_task") and value is None:
        other = preset.values["classes_per_task" if key == "num_tasks" else "num_tasks"]
        return "dataset card" if other is None else "as many as fit"
    return f"{value:g}" if isinstance(value, float) else str(value)


def id_order(dataset: str) -> tuple[int, ...]:
    """Every class of a registered ``dataset`` in id order (its card's class count), for
    a preset's :data:`ID_ORDER`."""
    from clbench.datasets import DATASETS
    from clbench.parsing import is_graph_file

    classes = None if is_graph_file(dataset) else DATASETS.get(dataset).stats.get("classes")
    if isinstance(classes, bool) or not isinstance(classes, int) or classes < 1:
        raise ClbenchError(f"the preset's class order 0, 1, 2, ... needs the class count, "
                           f"which {quote(dataset)} does not publish; give --class-order")
    return tuple(range(classes))
