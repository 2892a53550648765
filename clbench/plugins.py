"""Loading user code that registers methods or datasets (``--plugin``)."""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

from clbench.errors import ClbenchError, clip, quote


def _is_file(path: Path) -> bool:
    try:
        return path.is_file()
    except (OSError, ValueError):  # a name too long for the file system, a NUL byte
        return False


def _exists(path: Path) -> bool:
    try:
        return path.exists()
    except (OSError, ValueError):
        return False


def _failure(what: str, exc: BaseException) -> str:
    """Why importing a plugin failed, on one line."""
    if isinstance(exc, SystemExit):
        return f"{what} exited (sys.exit({exc.code!r})) while it was being imported"
    return f"{what} failed to import: {clip(repr(exc), 300)}"


def is_plugin_file(spec: str) -> bool:
    """Whether ``spec`` names a plugin file (a ``.py`` path, or any path that exists)
    rather than a module."""
    return spec.endswith(".py") or _exists(Path(spec))


def load_plugin(spec: str) -> ModuleType:
    """Import ``spec``: a ``.py`` file path or a dotted module name.

    Importing it runs its ``@register_method`` / ``register_dataset`` calls. Any error
    while importing (an exception or a ``sys.exit``) becomes a :class:`ClbenchError`.
    """
    path = Path(spec)
    if is_plugin_file(spec):
        if not _is_file(path):
            raise ClbenchError(f"plugin file not found: {clip(spec)}")
        # one module per file: two plugins with the same file name in different
        # folders are both imported
        where = hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:10]
        name = f"clbench_plugin_{path.stem}_{where}"
        if name in sys.modules:
            return sys.modules[name]
        mod_spec = importlib.util.spec_from_file_location(name, path)
        if mod_spec is None or mod_spec.loader is None:
            raise ClbenchError(f"cannot import plugin file {clip(spec)}")
        module = importlib.util.module_from_spec(mod_spec)
        sys.modules[name] = module
        try:
            mod_spec.loader.exec_module(module)
        except ClbenchError:
            del sys.modules[name]
            raise
        except (Exception, SystemExit) as exc:
            del sys.modules[name]
            raise ClbenchError(_failure(f"plugin {clip(spec)}", exc)) from exc
        return module
    try:
        return importlib.import_module(spec)
    except ImportError as exc:
        raise ClbenchError(f"cannot import plugin module {quote(spec)}: "
                           f"{clip(exc, 300)}") from exc
    except ClbenchError:
        raise
    except (Exception, SystemExit) as exc:
        raise ClbenchError(_failure(f"plugin module {quote(spec)}", exc)) from exc
