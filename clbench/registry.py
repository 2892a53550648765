"""Name registries for methods, datasets and models.

Names are looked up normalised (case, ``-``, ``_`` and spaces ignored), so
``ogbn-arxiv``, ``OGBN_Arxiv`` and ``ogbnarxiv`` are the same dataset. An unknown
name raises :class:`~clbench.errors.UnknownNameError` listing the valid choices
(and the closest one, when there is a plausible typo).

Third-party packages can add entries through an entry-point group, e.g.::

    [project.entry-points."clbench.methods"]
    my-method = "my_package.trainers:MyTrainer"

An entry may be *lazy* (:meth:`Registry.register_lazy`): its name and aliases are known
at once, its object is imported from ``"module:attribute"`` on the first :meth:`~Registry.get`.
The built-in methods and models are registered so, so that checking a name (``clbench
run --method nosuch``, ``clbench list methods``) does not import torch and PyG.
"""

from __future__ import annotations

import difflib
import importlib
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from importlib.metadata import entry_points
from typing import Generic, TypeVar

from clbench.errors import ClbenchError, UnknownNameError, quote

T = TypeVar("T")

_STRIP = re.compile(r"[\s_\-]+")


class _Lazy:
    """A registry entry not imported yet: ``path`` is ``"module:attribute"``."""

    __slots__ = ("path",)

    def __init__(self, path: str) -> None:
        module, sep, attr = path.partition(":")
        if not (module and sep and attr):
            raise ValueError(f"a lazy registry entry is 'module:attribute', got {path!r}")
        self.path = path

    def load(self) -> object:
        module, _, attr = self.path.partition(":")
        obj: object = importlib.import_module(module)
        for part in attr.split("."):
            obj = getattr(obj, part)
        return obj

    def names(self, obj: object) -> bool:
        """Whether ``obj`` is what this entry imports (its module and qualified name)."""
        module, _, attr = self.path.partition(":")
        return (getattr(obj, "__module__", None), getattr(obj, "__qualname__", None)) == (
            module, attr)


def normalize_name(name: str) -> str:
    """Canonical form of a registry name: lower case, without ``-``, ``_`` or spaces."""
    return _STRIP.sub("", str(name)).lower()


class Registry(Generic[T]):
    """A mapping from normalised names (and aliases) to objects.

    Args:
        kind: what the entries are, used in error messages ("method", "dataset").
        entry_point_group: optional entry-point group scanned lazily on first lookup.
    """

    def __init__(self, kind: str, entry_point_group: str | None = None) -> None:
        self.kind = kind
        self.entry_point_group = entry_point_group
        self._entries: dict[str, T] = {}
        self._display: dict[str, str] = {}  # normalised primary name -> name as registered
        self._aliases: dict[str, str] = {}  # normalised alias -> normalised primary name
        self._entry_points_loaded = entry_point_group is None

    def register(
        self,
        name: str,
        obj: T | None = None,
        *,
        aliases: tuple[str, ...] | list[str] = (),
        overwrite: bool = False,
    ) -> Callable[[T], T] | T:
        """Register ``obj`` under ``name``; usable as a decorator when ``obj`` is omitted."""

        def _add(target: T) -> T:
            key = normalize_name(name)
            if not key:
                raise ClbenchError(f"a {self.kind} name must not be empty")
            current = self._entries.get(key)
            # the module a lazy entry names registers its object when imported: not a clash
            fills_lazy = isinstance(current, _Lazy) and current.names(target)
            if not (overwrite or fills_lazy) and (key in self._entries or key in self._aliases):
                raise ClbenchError(f"{self.kind} {name!r} is already registered")
            self._entries[key] = target
            self._display[key] = name
            for alias in aliases:
                self._aliases[normalize_name(alias)] = key
            return target

        return _add if obj is None else _add(obj)

    def register_lazy(self, name: str, path: str, *, aliases: tuple[str, ...] = ()) -> None:
        """Register ``name`` (and ``aliases``) now, its object on first :meth:`get`:
        ``path`` is ``"module:attribute"``. Importing the module may register the object
        itself (e.g. with a decorator): that registration fills this entry."""
        self.register(name, _Lazy(path), aliases=aliases)  # type: ignore[arg-type]

    @contextmanager
    def scoped(self) -> Iterator[Registry[T]]:
        """Undo, on leaving the block, every registration made inside it.

        For tests and notebooks that try out a method or dataset without leaving it
        registered: ``with METHODS.scoped(): METHODS.register("mine", MyTrainer)``.
        """
        saved = (dict(self._entries), dict(self._display), dict(self._aliases),
                 self._entry_points_loaded)
        try:
            yield self
        finally:
            for current, before in zip((self._entries, self._display, self._aliases),
                                       saved[:3], strict=True):
                current.clear()
                current.update(before)
            self._entry_points_loaded = saved[3]

    def _load_entry_points(self) -> None:
        if self._entry_points_loaded:
            return
        self._entry_points_loaded = True
        for ep in entry_points(group=self.entry_point_group):
            if normalize_name(ep.name) in self._entries:
                continue
            try:
                self.register(ep.name, ep.load())
            except Exception as exc:  # a broken plugin must not break the built-ins
                raise ClbenchError(
                    f"could not load {self.kind} plugin {ep.name!r} ({ep.value}): {exc}"
                ) from exc

    def canonical(self, name: str) -> str:
        """The registered spelling of ``name`` (resolving aliases)."""
        self._load_entry_points()
        key = normalize_name(name)
        key = self._aliases.get(key, key)
        if key not in self._entries:
            raise UnknownNameError(self._unknown_message(name))
        return self._display[key]

    def get(self, name: str) -> T:
        """Look ``name`` up, or raise an error that lists the valid names. A lazy entry
        is imported now."""
        key = normalize_name(self.canonical(name))
        entry = self._entries[key]
        if isinstance(entry, _Lazy):
            obj = entry.load()
            if self._entries.get(key) is entry:  # importing it did not register it
                self._entries[key] = obj  # type: ignore[assignment]
            return self._entries[key]
        return entry

    def _unknown_message(self, name: str) -> str:
        names = self.names()
        keys = {normalize_name(n): n for n in names}
        close = difflib.get_close_matches(normalize_name(name), list(keys), n=1, cutoff=0.75)
        hint = f" Did you mean {keys[close[0]]!r}?" if close else ""
        return f"unknown {self.kind} {quote(name)}.{hint} Valid {self.kind}s: {', '.join(names)}"

    def names(self) -> list[str]:
        """Registered primary names, sorted."""
        self._load_entry_points()
        return sorted(self._display.values())

    def aliases_of(self, name: str) -> list[str]:
        key = normalize_name(self.canonical(name))
        return sorted(a for a, k in self._aliases.items() if k == key)

    def __contains__(self, name: object) -> bool:
        if not isinstance(name, str):
            return False
        self._load_entry_points()
        key = normalize_name(name)
        return key in self._entries or key in self._aliases

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self.names())
