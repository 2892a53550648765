"""``finetune`` (alias ``bare``): plain sequential training, the lower bound."""

from __future__ import annotations

from clbench.methods.base import register_method
from clbench.trainer import NCTrainer


@register_method("finetune", aliases=("bare",))
class NCTaskILBareTrainer(NCTrainer):
    """Trains each task in turn with nothing to prevent forgetting (BeGin's *Bare*)."""
