"""Continual-learning methods, registered by name."""

from clbench.methods import ewc, finetune, joint, packnet, piggyback  # noqa: F401  (registration)
from clbench.methods.base import METHODS, register_method

__all__ = ["METHODS", "register_method"]
