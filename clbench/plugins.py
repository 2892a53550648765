"""Loading user code that registers methods or datasets (``--plugin``)."""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

from clbench.errors import ClbenchError


def load_plugin(spec: str) -> ModuleType:
    """Import ``spec``: a ``.py`` file path or a dotted module name.

    Importing it runs its ``@register_method`` / ``register_dataset`` calls.
    """
    path = Path(spec)
    if spec.endswith(".py") or path.exists():
        if not path.is_file():
            raise ClbenchError(f"plugin file not found: {spec}")
        # one module per file: two plugins with the same file name in different
        # folders are both imported
        where = hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:10]
        name = f"clbench_plugin_{path.stem}_{where}"
        if name in sys.modules:
            return sys.modules[name]
        mod_spec = importlib.util.spec_from_file_location(name, path)
        if mod_spec is None or mod_spec.loader is None:
            raise ClbenchError(f"cannot import plugin file {spec}")
        module = importlib.util.module_from_spec(mod_spec)
        sys.modules[name] = module
        try:
            mod_spec.loader.exec_module(module)
        except ClbenchError:
            raise
        except Exception as exc:
            del sys.modules[name]
            raise ClbenchError(f"plugin {spec} failed to import: {exc!r}") from exc
        return module
    try:
        return importlib.import_module(spec)
    except ImportError as exc:
        raise ClbenchError(f"cannot import plugin module {spec!r}: {exc}") from exc
