"""Continual-learning methods, registered by name.

The built-in methods are registered lazily: their names and aliases are known at once,
their trainer modules (and with them torch and PyG) are imported on the first
``METHODS.get(name)``. Their cards (``methods/<name>.toml``) are read without them.
"""

from clbench.methods.base import METHODS, register_method

#: The built-in methods: name -> (trainer class as ``"module:class"``, aliases). Each
#: module registers its class with ``@register_method`` under the same name and aliases
#: when imported (tests/test_registry.py checks that they agree).
BUILTIN_METHODS: dict[str, tuple[str, tuple[str, ...]]] = {
    "cgnn": ("clbench.methods.cgnn:NCTaskILCGNNTrainer", ("continualgnn",)),
    "cat": ("clbench.methods.cat:NCTaskILCaTTrainer", ()),
    "ergnn": ("clbench.methods.ergnn:NCTaskILERGNNTrainer", ()),
    "ewc": ("clbench.methods.ewc:NCTaskILEWCTrainer", ()),
    "finetune": ("clbench.methods.finetune:NCTaskILBareTrainer", ("bare",)),
    "gem": ("clbench.methods.gem:NCTaskILGEMTrainer", ()),
    "hat": ("clbench.methods.hat:NCTaskILHATTrainer", ()),
    "joint": ("clbench.methods.joint:NCTaskILJointTrainer", ()),
    "lwf": ("clbench.methods.lwf:NCTaskILLwFTrainer", ()),
    "mas": ("clbench.methods.mas:NCTaskILMASTrainer", ()),
    "packnet": ("clbench.methods.packnet:NCTaskILPackNetTrainer", ()),
    "piggyback": ("clbench.methods.piggyback:NCTaskILPiggybackTrainer", ()),
    "pignn": ("clbench.methods.pignn:NCTaskILPIGNNTrainer", ()),
    "twp": ("clbench.methods.twp:NCTaskILTWPTrainer", ()),
}

for _name, (_path, _aliases) in BUILTIN_METHODS.items():
    METHODS.register_lazy(_name, _path, aliases=_aliases)
del _name, _path, _aliases

__all__ = ["BUILTIN_METHODS", "METHODS", "register_method"]
