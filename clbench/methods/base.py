"""The method registry."""

from __future__ import annotations

from typing import TYPE_CHECKING

from clbench.registry import Registry

if TYPE_CHECKING:  # pragma: no cover
    from clbench.trainer import NCTrainer

METHODS: Registry[type[NCTrainer]] = Registry("method", entry_point_group="clbench.methods")


def register_method(name: str, *, aliases: tuple[str, ...] = ()):
    """Class decorator registering a trainer under ``name``.

    Example::

        @register_method("my-method")
        class MyTrainer(NCTrainer):
            card = {"params": {"alpha": 0.5}}
            ...
    """

    def deco(cls: type[NCTrainer]) -> type[NCTrainer]:
        from clbench.trainer import NCTrainer  # imported already by any subclass of it

        if not (isinstance(cls, type) and issubclass(cls, NCTrainer)):
            raise TypeError(f"{cls!r} is not an NCTrainer subclass")
        METHODS.register(name, cls, aliases=aliases)
        cls.method_name = name
        return cls

    return deco
