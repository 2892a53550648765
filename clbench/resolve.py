"""From what a user asked for to :class:`~clbench.spec.RunSpec` s: every check that needs
no data, made once, before anything runs.

:func:`resolve_run` validates one run (names, seeds, device, data root, hyperparameters,
task split) and :func:`resolve_grid` a grid of methods x datasets x seeds; the command
line, the sweep and :func:`clbench.experiment.run_experiment` all go through them. Bad
input raises :class:`~clbench.errors.ClbenchError` with one line saying what is wrong.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from clbench.config import load_card, resolve_params
from clbench.errors import ClbenchError, DataError, clip, quote
from clbench.parsing import check_seed, is_graph_file
from clbench.spec import (
    SETTINGS,
    SPLITS,
    TASK_KEYS,
    TRAINING_KEYS,
    Protocol,
    RunSpec,
    task_shape,
)
from clbench.threads import DEFAULT_THREADS

GRAPH_MODES = ("full", "task")
METRICS = ("accuracy", "balanced_accuracy")


def default_method() -> str:
    """The method ``clbench run`` uses without ``--method``."""
    from clbench.methods import METHODS

    return "piggyback" if "piggyback" in METHODS else "finetune"


def resolve_run(
    method: str | None = None,
    dataset: str = "synthetic",
    seed: int = 0,
    *,
    params: Mapping[str, Any] | None = None,
    data_dir: str | None = None,
    device: str = "cpu",
    threads: int | None = None,
    plugins: Sequence[str] = (),
    device_here: bool = True,
    preset: str | None = None,
    before_device: Callable[[], None] | None = None,
    **tasks: Any,
) -> RunSpec:
    """One validated run. ``params``: ``--param`` overrides of protocol and method
    settings (strings are parsed to the key's type). ``tasks``: the protocol's task
    settings (:data:`clbench.spec.TASK_KEYS`: ``num_tasks``, ``classes_per_task``,
    ``class_order``, ``split_seed``, ``graph``, ``metric``, ``setting``, ``split``).
    ``preset``: a protocol preset (:mod:`clbench.presets`) whose values replace the
    defaults; ``params`` and ``tasks`` override it. ``device_here``: the device must
    exist on this machine (not so for jobs sent to a Dask cluster). ``before_device``:
    called once every other check has passed and before the device is checked, which
    imports torch for any device but ``cpu`` (a single run chooses OpenMP's wait policy
    there, :func:`clbench.threads.configure_openmp`)."""
    from clbench.methods import METHODS
    from clbench.presets import ID_ORDER, get_preset, id_order

    unknown = set(tasks) - set(TASK_KEYS)
    if unknown:
        raise TypeError(f"resolve_run() got unexpected keyword argument(s) {sorted(unknown)}")
    if tasks.get("class_order") is not None:
        tasks["class_order"] = tuple(tasks["class_order"]) or None
    chosen = get_preset(preset) if preset is not None else None
    values = dict(chosen.values) if chosen else {}
    defaults = Protocol()
    task = {k: tasks[k] if k in tasks else values.get(k, getattr(defaults, k))
            for k in TASK_KEYS}
    method = METHODS.canonical(method or default_method())
    check_seed(seed, "--seed")
    check_seed(task["split_seed"], "--split-seed")
    dataset = canonical_dataset(dataset)
    if task["class_order"] == ID_ORDER:
        task["class_order"] = id_order(dataset)
    if task["graph"] not in GRAPH_MODES:
        raise ClbenchError(f"--graph must be full or task, got {quote(task['graph'])}")
    if task["metric"] not in METRICS:
        raise ClbenchError("--metric must be accuracy or balanced_accuracy, got "
                           f"{quote(task['metric'])}")
    if task["setting"] not in SETTINGS:
        raise ClbenchError(f"--setting must be task or class, got {quote(task['setting'])}")
    if task["split"] not in SPLITS:
        raise ClbenchError(f"--split must be dataset or random, got {quote(task['split'])}")
    check_data_dir(data_dir)
    if threads is not None and threads < 1:
        raise ClbenchError(f"--threads must be at least 1, got {threads}")
    check_task_split(dataset, task["num_tasks"], task["classes_per_task"], task["class_order"])
    card_data = None if is_graph_file(dataset) else dataset
    given = dict(params or {})
    resolved = resolve_params(method, card_data,
                              {**{k: v for k, v in values.items() if k in TRAINING_KEYS},
                               **given}, setting=task["setting"])
    card = load_card(method)
    check_setting(method, task["setting"], card.settings, card.settings_note)
    check_backbone(method, resolved["model"], card.backbones, card.backbones_note)
    if before_device is not None:
        before_device()
    check_device(device, available=device_here)  # last: parsing a GPU device imports torch
    protocol = Protocol(**{k: resolved[k] for k in TRAINING_KEYS}, **task)
    from_card = card.defaults(task["setting"], card_data)
    sources = {k: "flag" if k in given or k in tasks else
               f"preset:{chosen.name}" if chosen and k in values else
               "card" if k in from_card else "default"
               for k in (*TRAINING_KEYS, *TASK_KEYS)}
    return RunSpec(method, dataset, int(seed), protocol, {k: resolved[k] for k in card.params},
                   absent=card.absent, data_dir=data_dir, device=device,
                   threads=threads or DEFAULT_THREADS, plugins=tuple(plugins),
                   preset=chosen.name if chosen else None, protocol_sources=sources)


def resolve_record(spec: Mapping[str, Any], **changes: Any) -> RunSpec:
    """The run a result records (``result["spec"]``, :meth:`RunSpec.record`), re-resolved:
    ``resolve_record(result["spec"], data_dir=...)`` runs it again. A method parameter
    the record lacks takes its card's ``[absent]`` value (the record was made before the
    parameter existed, or at that value), not today's default."""
    from clbench.methods import METHODS

    fields = {**spec, **changes}
    absent = load_card(METHODS.canonical(fields["method"])).absent
    params = dict(fields.get("params") or {})
    fields["params"] = {**{k: v for k, v in absent.items() if k not in params}, **params}
    return resolve_run(fields.pop("method"), fields.pop("dataset"), fields.pop("seed"),
                       **fields)


def canonical_dataset(dataset: str) -> str:
    """A registered dataset's name as registered, or a user's graph file path as given."""
    from clbench.datasets import DATASETS

    return str(dataset) if is_graph_file(dataset) else DATASETS.canonical(dataset)


def split_overrides(overrides: Mapping[str, Any], methods: Sequence[str]
                    ) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """``{"lr": 1, "ewc.lamb": 5}`` -> shared ``{"lr": 1}``, per method ``{"ewc": {"lamb": 5}}``.

    A ``method.key`` override applies to that method only, so
    ``--method ewc,finetune --param ewc.lamb=100`` works.
    """
    from clbench.methods import METHODS

    shared: dict[str, Any] = {}
    per: dict[str, dict[str, Any]] = {m: {} for m in methods}
    for key, value in overrides.items():
        prefix, dot, rest = key.partition(".")
        if dot and prefix in METHODS:
            name = METHODS.canonical(prefix)
            if name not in per:
                raise ClbenchError(
                    f"--param {key} names method {name!r}, which is not among the methods run "
                    f"({', '.join(methods)})"
                )
            per[name][rest] = value
        else:
            shared[key] = value
    return shared, per


def resolve_grid(
    methods: Sequence[str],
    datasets: Sequence[str],
    seeds: Sequence[int],
    *,
    params: Mapping[str, Any] | None = None,
    method_params: Mapping[str, Mapping[str, Any]] | None = None,
    **settings: Any,
) -> list[RunSpec]:
    """One spec per (method, dataset, seed), every name and hyperparameter validated now.

    ``params`` apply to every method (``method.key`` entries only to that method);
    ``method_params[m]`` adds overrides for method ``m``; ``settings`` are
    :func:`resolve_run`'s keyword arguments (the device need not exist here).
    """
    from clbench.methods import METHODS

    if not methods or not datasets or not seeds:
        raise ClbenchError("nothing to run: give at least one method, dataset and seed")
    for seed in seeds:
        check_seed(seed, "--seeds")
    canon_methods = list(dict.fromkeys(METHODS.canonical(m) for m in methods))
    canon_datasets = list(dict.fromkeys(canonical_dataset(d) for d in datasets))
    shared, per = split_overrides(params or {}, canon_methods)
    for m, extra in (method_params or {}).items():
        per.setdefault(METHODS.canonical(m), {}).update(extra)
    specs: list[RunSpec] = []
    for method in canon_methods:
        for dataset in canon_datasets:
            first = resolve_run(method, dataset, int(seeds[0]), device_here=False,
                                params={**shared, **per.get(method, {})}, **settings)
            specs.extend(replace(first, seed=int(s)) for s in seeds)
    return specs


# ----------------------------------------------------------------------------- checks
def check_device(device: object, available: bool = True) -> Any:
    """``device`` checked as a torch device clbench can run on (cpu, cuda, mps); with
    ``available``, one this machine has (a Dask cluster's workers may have devices the
    machine that submits the jobs lacks). Returns it parsed, except ``"cpu"``, the
    default, which is returned as given without importing torch (which takes seconds,
    and after which OpenMP's wait policy can no longer be chosen:
    :func:`clbench.threads.configure_openmp`)."""
    if device == "cpu":
        return device
    import torch

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


def check_setting(method: str, setting: str, supported: Sequence[str], note: str = "") -> None:
    """``method`` declares ``setting`` among the incremental settings it runs in."""
    if setting in supported:
        return
    names = {"task": "Task-IL", "class": "Class-IL"}
    why = f": {note}" if note else " (its card declares no other)"
    raise ClbenchError(
        f"method {method!r} runs only in {', '.join(names.get(s, s) for s in supported)} "
        f"(--setting {'/'.join(supported)}), not {names.get(setting, setting)}{why}")


def check_backbone(method: str, model: str, supported: Sequence[str], note: str = "") -> None:
    """``method`` runs on backbone ``model`` (its card lists none: any backbone)."""
    if not supported or model in supported:
        return
    why = f": {note}" if note else ""
    raise ClbenchError(f"method {method!r} runs only on --model {'/'.join(supported)}, "
                       f"not {model}{why}")


def check_task_split(dataset: str, num_tasks: int | None, classes_per_task: int | None,
                     class_order: Sequence[int] | None = None) -> None:
    """The scenario's checks of the task split and class order, made from a registered
    dataset's card (its published class count) before any data is loaded. Of a graph
    file, only that it exists: its classes (and those of a card without a class count)
    are checked when the scenario is built."""
    from clbench.datasets import DATASETS

    if is_graph_file(dataset):
        try:
            found = Path(dataset).is_file()
        except OSError as exc:  # e.g. a name too long for the file system
            raise DataError(f"dataset file {clip(dataset)}: {exc.strerror or exc}") from None
        if not found:
            raise DataError(f"dataset file not found: {clip(dataset)}")
        return
    card = DATASETS.get(dataset)
    C = card.stats.get("classes")
    if isinstance(C, bool) or not isinstance(C, int) or C < 1:
        return
    if num_tasks is None and classes_per_task is None:
        num_tasks, classes_per_task = card.num_tasks, card.classes_per_task
    T, K = task_shape(C, num_tasks, classes_per_task, card.name)
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
