"""The backbone registry: model names (``--model``), known without importing torch.

Each built-in backbone is registered lazily as ``"clbench.models:<function>"``;
:mod:`clbench.models` (torch and PyG) is imported on the first ``MODELS.get(name)``,
and registers its functions under the same names when it is.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from clbench.registry import Registry

if TYPE_CHECKING:  # pragma: no cover
    from clbench.models import NodeClassifier

MODELS: Registry[Callable[..., NodeClassifier]] = Registry("model")

#: The built-in backbones: name -> (builder as ``"module:function"``, aliases).
BUILTIN_MODELS: dict[str, tuple[str, tuple[str, ...]]] = {
    "gcn": ("clbench.models:gcn", ()),
    "sage": ("clbench.models:sage", ("graphsage",)),
    "gat": ("clbench.models:gat", ()),
}

for _name, (_path, _aliases) in BUILTIN_MODELS.items():
    MODELS.register_lazy(_name, _path, aliases=_aliases)
del _name, _path, _aliases
