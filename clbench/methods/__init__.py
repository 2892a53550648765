"""Continual-learning methods, registered by name."""

from clbench.methods import finetune, joint, piggyback  # noqa: F401  (registration)
from clbench.methods.base import METHODS, register_method

__all__ = ["METHODS", "register_method"]
