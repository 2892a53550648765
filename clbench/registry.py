"""Name registries for methods, datasets and models.

Names are looked up normalised (case, ``-``, ``_`` and spaces ignored), so
``ogbn-arxiv``, ``OGBN_Arxiv`` and ``ogbnarxiv`` are the same dataset. An unknown
name raises :class:`~clbench.errors.UnknownNameError` listing the valid choices
(and the closest one, when there is a plausible typo).

Third-party packages can add entries through an entry-point group, e.g.::

    [project.entry-points."clbench.methods"]
    my-method = "my_package.trainers:MyTrainer"
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from importlib.metadata import entry_points
from typing import Generic, TypeVar

from clbench.errors import ClbenchError, UnknownNameError, quote

T = TypeVar("T")

_STRIP = re.compile(r"[\s_\-]+")


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
            if not overwrite and (key in self._entries or key in self._aliases):
                raise ClbenchError(f"{self.kind} {name!r} is already registered")
            self._entries[key] = target
            self._display[key] = name
            for alias in aliases:
                self._aliases[normalize_name(alias)] = key
            return target

        return _add if obj is None else _add(obj)

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
        """Look ``name`` up, or raise an error that lists the valid names."""
        return self._entries[normalize_name(self.canonical(name))]

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
