"""A sweep file (``clbench sweep FILE.toml``), read and validated: :func:`load_sweep`
returns a :class:`SweepSpec`; :mod:`clbench.orchestrate.sweep` runs it.

A sweep file::

    experiment = "begin-grid"          # MLflow experiment (default: sweep-<file stem>)
    methods = ["finetune", "ewc"]
    datasets = ["cora"]
    grid_seeds = "0-2"                 # "0-2", "0,1,2" or [0, 1, 2]
    final_seeds = "0-9"
    plugins = []                       # optional --plugin files/modules
    preset = "cglb"                    # optional protocol preset (clbench list presets)

    [protocol]                         # optional: tasks = "3x2", graph, metric, setting,
    split_seed = 0                     #   split, split_seed, class_order, data_dir, device

    [params]                           # fixed for every method and grid point
    epochs = 1000

    [grid]                             # crossed for every method
    lr = [1e-3, 5e-3, 1e-2]
    dropout = [0.0, 0.25, 0.5]
    weight_decay = [0.0, 5e-4]

    [method.ewc.grid]                  # a method's own grid (and [method.ewc.params])
    lam = [100.0, 1000.0]

    [method.cat]                       # a method's own grid and final seeds (a
    grid_seeds = [0]                   #   reduction for a costly method, which the
    final_seeds = "0-2"                #   file should state)
"""

from __future__ import annotations

import itertools
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from clbench.errors import ClbenchError, clip, quote
from clbench.parsing import (
    MAX_SEEDS,
    check_seed,
    parse_int_list,
    parse_seeds,
    parse_tasks,
)

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

_TOP_KEYS = {"experiment", "methods", "datasets", "grid_seeds", "final_seeds", "plugins",
             "preset", "protocol", "params", "grid", "method"}
_PROTOCOL_KEYS = {"tasks", "graph", "metric", "setting", "split", "split_seed", "class_order",
                  "data_dir", "device"}


@dataclass
class SweepSpec:
    """A parsed sweep file."""

    path: Path
    experiment: str
    methods: list[str]
    datasets: list[str]
    grid_seeds: list[int]
    final_seeds: list[int]
    plugins: list[str] = field(default_factory=list)
    preset: str | None = None
    protocol: dict[str, Any] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)
    grid: dict[str, list[Any]] = field(default_factory=dict)
    method_params: dict[str, dict[str, Any]] = field(default_factory=dict)
    method_grid: dict[str, dict[str, list[Any]]] = field(default_factory=dict)
    #: Final seeds of the methods that name their own (``[method.<name>] final_seeds``).
    method_final_seeds: dict[str, list[int]] = field(default_factory=dict)
    #: Grid seeds of the methods that name their own (``[method.<name>] grid_seeds``).
    method_grid_seeds: dict[str, list[int]] = field(default_factory=dict)
    #: Whether :func:`restrict` left some of the file's methods or datasets out.
    restricted: bool = False

    def _tables_of(self, method: str) -> list[str]:
        """The ``[method.<name>]`` tables that name ``method`` (by any of its names)."""
        from clbench.methods import METHODS
        from clbench.registry import normalize_name

        canon = normalize_name(METHODS.canonical(method))
        names = (set(self.method_params) | set(self.method_grid)
                 | set(self.method_final_seeds) | set(self.method_grid_seeds))
        return [n for n in sorted(names)
                if n in METHODS and normalize_name(METHODS.canonical(n)) == canon]

    def method_tables(self, method: str) -> tuple[dict[str, Any], dict[str, list[Any]]]:
        """A method's own (params, grid) tables, found under its name or its canonical name."""
        params: dict[str, Any] = {}
        grid: dict[str, list[Any]] = {}
        for name in self._tables_of(method):
            params.update(self.method_params.get(name, {}))
            grid.update(self.method_grid.get(name, {}))
        return params, grid

    def final_seeds_of(self, method: str) -> list[int]:
        """The seeds ``method``'s selected configuration runs on: its own
        ``final_seeds`` if its ``[method.<name>]`` table gives them, else the file's."""
        for name in self._tables_of(method):
            if name in self.method_final_seeds:
                return self.method_final_seeds[name]
        return self.final_seeds

    def grid_seeds_of(self, method: str) -> list[int]:
        """The seeds ``method``'s grid runs on: its own ``grid_seeds`` if its
        ``[method.<name>]`` table gives them, else the file's."""
        for name in self._tables_of(method):
            if name in self.method_grid_seeds:
                return self.method_grid_seeds[name]
        return self.grid_seeds

    def grid_points(self, method: str) -> tuple[list[dict[str, Any]], list[str]]:
        """Every combination of the shared and the method's grid (with the fixed params),
        and the keys that vary."""
        mparams, mgrid = self.method_tables(method)
        grid = {**self.grid, **mgrid}
        keys = list(grid)
        fixed = {**self.params, **mparams}
        points = [{**fixed, **dict(zip(keys, combo, strict=True))}
                  for combo in itertools.product(*(grid[k] for k in keys))]
        return points, [k for k in keys if len(grid[k]) > 1]


_SCALARS = (str, int, float, bool)


def _where(path: Path) -> str:
    return f"sweep file {clip(path)}"


def _type_error(path: Path, key: str, what: str, value: Any) -> ClbenchError:
    return ClbenchError(f"{_where(path)}: {key} must be {what}, got {quote(value)}")


def _table(raw: Any, path: Path, key: str) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise _type_error(path, key, "a table", raw)
    return dict(raw)


def _seeds(raw: Any, path: Path, key: str) -> list[int]:
    """``"0-4"``, ``"0,2"``, ``3`` or ``[0, 1, 2]``, each seed in ``[0, 2**32)``."""
    if isinstance(raw, str):
        return parse_seeds(raw, f"{_where(path)}: {key}")
    values = [raw] if isinstance(raw, int) and not isinstance(raw, bool) else raw
    if (not isinstance(values, list) or not values
            or not all(isinstance(s, int) and not isinstance(s, bool) for s in values)):
        raise _type_error(path, key, 'like "0-4" or a non-empty list of integers', raw)
    if len(values) > MAX_SEEDS:
        raise ClbenchError(f"{_where(path)}: {key} names more than {MAX_SEEDS:,} seeds")
    return list(dict.fromkeys(check_seed(s, f"{_where(path)}: {key}") for s in values))


def _strings(raw: Any, path: Path, key: str, *, empty_ok: bool = False) -> list[str]:
    """A string or a list of non-empty strings (non-empty unless ``empty_ok``)."""
    values = [raw] if isinstance(raw, str) else raw
    if (not isinstance(values, list) or not (values or empty_ok)
            or not all(isinstance(x, str) and x.strip() for x in values)):
        what = "a list of non-empty strings" if empty_ok else "a non-empty list of names"
        raise _type_error(path, key, what, raw)
    return [x.strip() for x in values]


def _params(raw: Any, path: Path, key: str) -> dict[str, Any]:
    """A table of key = number, string or boolean."""
    table = _table(raw, path, f"[{key}]")
    for k, v in table.items():
        if not isinstance(v, _SCALARS):
            raise _type_error(path, f"[{key}] {k}", "a number, string or boolean", v)
    return table


def _grid(raw: Any, path: Path, key: str) -> dict[str, list[Any]]:
    """A table of key = [values] (or one value)."""
    out = {}
    for k, v in _table(raw, path, f"[{key}]").items():
        values = v if isinstance(v, list) else [v]
        if not values:
            raise ClbenchError(f"{_where(path)}: [{key}] {k} has no values")
        if not all(isinstance(x, _SCALARS) for x in values):
            raise _type_error(path, f"[{key}] {k}", "a list of numbers, strings or booleans",
                              v)
        out[k] = values
    return out


def _protocol(raw: Any, path: Path) -> dict[str, Any]:
    """The ``[protocol]`` table, every value type-checked (``tasks`` and
    ``class_order`` parsed)."""
    protocol = _table(raw, path, "[protocol]")
    bad = set(protocol) - _PROTOCOL_KEYS
    if bad:
        raise ClbenchError(f"{_where(path)}: unknown [protocol] key(s) "
                           f"{', '.join(quote(k) for k in sorted(bad))}; "
                           f"valid: {', '.join(sorted(_PROTOCOL_KEYS))}")
    for key, value in protocol.items():
        name = f"{_where(path)}: [protocol] {key}"
        if key == "tasks":
            if isinstance(value, bool) or not isinstance(value, int | str):
                raise _type_error(path, "[protocol] tasks", 'like 3 or "3x2"', value)
            parse_tasks(str(value), name)
        elif key == "split_seed":
            check_seed(value, name)
        elif key == "class_order":
            if isinstance(value, str):
                protocol[key] = parse_int_list(value, name)
            elif not isinstance(value, list) or not all(
                    isinstance(c, int) and not isinstance(c, bool) for c in value):
                raise _type_error(path, "[protocol] class_order",
                                  'a list of integers (or "3,0,1")', value)
            else:
                parse_int_list(",".join(map(str, value)), name)
        elif not isinstance(value, str):
            raise _type_error(path, f"[protocol] {key}", "a string", value)
    return protocol


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise ClbenchError(f"sweep file not found: {clip(path)}") from None
    except IsADirectoryError:
        raise ClbenchError(f"{_where(path)} is a directory, not a TOML file") from None
    except UnicodeDecodeError as exc:
        raise ClbenchError(f"{_where(path)} is not UTF-8 text (byte {exc.start} is "
                           f"{exc.object[exc.start:exc.start + 1]!r})") from None
    except (OSError, ValueError) as exc:
        raise ClbenchError(f"cannot read {_where(path)}: "
                           f"{getattr(exc, 'strerror', None) or exc}") from None
    try:
        return tomllib.loads(text)
    except ValueError as exc:  # TOMLDecodeError, or an integer too long to convert
        raise ClbenchError(f"{_where(path)} is not valid TOML: {clip(exc, 200)}") from None


def load_sweep(path: str | Path) -> SweepSpec:
    """Read and validate a sweep file: every key's type and every seed now; names and
    parameters when the jobs are expanded
    (:func:`~clbench.orchestrate.sweep.grid_jobs`), still before anything runs."""
    path = Path(path)
    raw = _read_toml(path)
    unknown = set(raw) - _TOP_KEYS
    if unknown:
        raise ClbenchError(f"{_where(path)}: unknown key(s) "
                           f"{', '.join(quote(k) for k in sorted(unknown))}; "
                           f"valid: {', '.join(sorted(_TOP_KEYS))}")
    for key in ("methods", "datasets", "grid_seeds", "final_seeds"):
        if key not in raw:
            raise ClbenchError(f"{_where(path)} needs {key!r}")
    experiment = raw.get("experiment", f"sweep-{path.stem}")
    if not isinstance(experiment, str) or not experiment.strip():
        raise _type_error(path, "experiment", "a non-empty string", experiment)
    method_params: dict[str, dict[str, Any]] = {}
    method_grid: dict[str, dict[str, list[Any]]] = {}
    method_final_seeds: dict[str, list[int]] = {}
    method_grid_seeds: dict[str, list[int]] = {}
    table_keys = {"params", "grid", "grid_seeds", "final_seeds"}
    for name, table in _table(raw.get("method", {}), path, "[method]").items():
        if not isinstance(table, dict) or set(table) - table_keys:
            raise ClbenchError(f"{_where(path)}: [method.{clip(name)}] may only hold params, "
                               "grid, grid_seeds and final_seeds")
        method_params[name] = _params(table.get("params", {}), path, f"method.{name}.params")
        method_grid[name] = _grid(table.get("grid", {}), path, f"method.{name}.grid")
        for key, into in (("final_seeds", method_final_seeds),
                          ("grid_seeds", method_grid_seeds)):
            if key in table:
                into[name] = _seeds(table[key], path, f"[method.{clip(name)}] {key}")
    plugins = _strings(raw.get("plugins", []), path, "plugins", empty_ok=True)
    preset = raw.get("preset")
    if preset is not None:
        from clbench.presets import get_preset

        if not isinstance(preset, str):
            raise _type_error(path, "preset", "a preset name", preset)
        try:
            preset = get_preset(preset).name
        except ClbenchError as exc:
            raise ClbenchError(f"{_where(path)}: {exc}") from None
    return SweepSpec(
        path=path,
        experiment=experiment,
        methods=_strings(raw["methods"], path, "methods"),
        datasets=_strings(raw["datasets"], path, "datasets"),
        grid_seeds=_seeds(raw["grid_seeds"], path, "grid_seeds"),
        final_seeds=_seeds(raw["final_seeds"], path, "final_seeds"),
        plugins=[str((path.parent / p).resolve()) if p.endswith(".py") else p for p in plugins],
        preset=preset,
        protocol=_protocol(raw.get("protocol", {}), path),
        params=_params(raw.get("params", {}), path, "params"),
        grid=_grid(raw.get("grid", {}), path, "grid"),
        method_params=method_params,
        method_grid=method_grid,
        method_final_seeds=method_final_seeds,
        method_grid_seeds=method_grid_seeds,
    )



def restrict(spec: SweepSpec, methods: list[str] | None = None,
             datasets: list[str] | None = None) -> SweepSpec:
    """``spec`` with only the named ``methods`` and ``datasets`` (``clbench sweep --methods
    ... --datasets ...``), each of which the file must list (by any of its names). A
    configuration is selected per method and dataset, so a part of a sweep selects what
    the whole file would: the rest can run later, in any order."""
    from clbench.datasets import DATASETS
    from clbench.methods import METHODS

    def pick(names: list[str] | None, listed: list[str], registry: Any, what: str) -> list[str]:
        if not names:
            return listed

        def key(name: str) -> str:
            return registry.canonical(name) if name in registry else name.strip().lower()

        by_key = {key(n): n for n in listed}
        unknown = [n for n in names if key(n) not in by_key]
        if unknown:
            raise ClbenchError(f"{_where(spec.path)} does not list the {what} "
                               f"{quote(unknown[0])}; it lists {', '.join(listed)}")
        wanted = {key(n) for n in names}
        return [n for n in listed if key(n) in wanted]

    kept_methods = pick(methods, spec.methods, METHODS, "method")
    kept_datasets = pick(datasets, spec.datasets, DATASETS, "dataset")
    restricted = spec.restricted or (kept_methods, kept_datasets) != (spec.methods,
                                                                       spec.datasets)
    return replace(spec, methods=kept_methods, datasets=kept_datasets, restricted=restricted)
