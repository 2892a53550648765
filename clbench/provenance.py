"""What code and packages produced a result: recorded with every run, compared by
``clbench compare``, and part of a resume point's tag (a resume point written by other
code is not continued)."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.metadata
import inspect
import platform
import subprocess
from pathlib import Path
from typing import Any

import clbench
from clbench.parsing import is_graph_file

#: Code identity of a result (``code_version`` and the plugin digest), logged as MLflow
#: tags ``clbench.<key>`` when present.
CODE_TAGS = ("git_commit", "git_dirty", "source_digest", "external_code_digest")

_PACKAGE = Path(clbench.__file__).resolve().parent


@functools.cache
def source_digest() -> str:
    """A hash of clbench's own source files."""
    h = hashlib.sha256()
    for path in sorted(_PACKAGE.rglob("*.py")):
        h.update(str(path.relative_to(_PACKAGE)).encode() + b"\0" + path.read_bytes())
    return h.hexdigest()[:16]


def git_commit(where: str | Path | None = None) -> tuple[str, bool]:
    """``(HEAD's revision, working tree has uncommitted changes to tracked files)`` of the
    repository holding ``where`` (default: this package); ``("", False)`` outside git
    (an installed wheel, a ``git archive`` snapshot)."""
    cwd = Path(where) if where else _PACKAGE
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True,
                             text=True, timeout=10)
        if rev.returncode != 0:
            return "", False
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=cwd, capture_output=True, text=True, timeout=10)
        return rev.stdout.strip(), bool(dirty.stdout.strip())
    except (OSError, subprocess.SubprocessError):
        return "", False


@functools.cache
def code_version() -> dict[str, Any]:
    """The code a worker runs, recorded with every result: the digest of clbench's source
    (always known) and, in a git checkout, the commit and whether the tree was dirty."""
    rev, dirty = git_commit()
    return {"source_digest": source_digest(), "git_commit": rev, "git_dirty": dirty}


def external_code_digest(method: str, dataset: str) -> str:
    """A hash of the files outside clbench that define ``method`` (its class and base
    classes) and ``dataset``'s loader: a plugin, a package's entry point, a user's
    script. Empty when both are clbench's own (``source_digest`` covers those).

    Read on every call: a plugin edited between two attempts must not continue from a
    resume point its old code saved.
    """
    from clbench.datasets import DATASETS
    from clbench.methods import METHODS

    objects: list[object] = list(METHODS.get(method).__mro__)
    if not is_graph_file(dataset):
        objects.append(DATASETS.get(dataset).load)
    files: set[Path] = set()
    for obj in objects:
        with contextlib.suppress(TypeError, OSError):  # builtins have no source file
            source = inspect.getsourcefile(obj)  # type: ignore[arg-type]
            if source and not Path(source).resolve().is_relative_to(_PACKAGE):
                files.add(Path(source).resolve())
    if not files:
        return ""
    h = hashlib.sha256()
    for path in sorted(files):
        h.update(str(path).encode() + b"\0" + path.read_bytes())
    return h.hexdigest()[:16]


def versions() -> dict[str, str]:
    """The versions of Python and the packages a result depends on (from the installed
    metadata: importing scikit-learn to ask it costs ~2 s per process)."""
    def version(package: str) -> str:
        try:
            return importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            return ""

    import numpy as np
    import torch

    return {
        "clbench": clbench.__version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_geometric": version("torch_geometric"),
        "numpy": np.__version__,
        "scikit-learn": version("scikit-learn"),
    }
