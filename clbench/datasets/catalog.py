"""The built-in datasets' descriptions (``catalog.toml``), read without importing torch."""

from __future__ import annotations

import sys
from functools import cache
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

CATALOG = Path(__file__).with_name("catalog.toml")


@cache
def _entries() -> dict[str, dict[str, Any]]:
    with open(CATALOG, "rb") as fh:
        return tomllib.load(fh)


def family(name: str) -> list[tuple[str, dict[str, Any]]]:
    """``(dataset name, its catalogue entry)`` for every dataset of a loader family, in
    the catalogue's order."""
    return [(n, dict(e)) for n, e in _entries().items() if e["family"] == name]
