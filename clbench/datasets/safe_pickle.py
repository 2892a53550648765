"""What clbench lets a dataset file unpickle.

Two kinds of pickles live in a data root, and a user or a download can replace
either one:

* **Plain pickles** (Planetoid's ``ind.<name>.*`` raw files). A file whose sha256
  is not the published one is read with :class:`RestrictedUnpickler`, which
  resolves only the globals in :data:`PLANETOID_GLOBALS`; any other reference
  (``os.system``, ``builtins.eval``, ...) raises :class:`ForbiddenGlobal` before
  anything is called.
* **torch files** (PyG's and OGB's ``processed/*.pt``, clbench's cache, a user's
  ``graph.pt``), always read with ``torch.load(weights_only=True)``. That
  unpickler honours not only torch's own allow-list but also every class any
  imported library registered process-wide with
  ``torch.serialization.add_safe_globals``; PyG registers some whose constructors
  do far more than build data (``ClusterData`` reads and writes files at paths
  the pickle chooses). :func:`check_torch_file` lists the globals a torch file
  references, without running it, and refuses the file unless every one is
  either in torch's built-in allow-list or one of :data:`TORCH_FILE_CLASSES`.
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import pickletools
import zipfile
import zlib
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import IO, Any

import torch
from torch_geometric.data import Data
from torch_geometric.data.data import DataEdgeAttr, DataTensorAttr
from torch_geometric.data.storage import GlobalStorage

from clbench.errors import DataError


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of the file at ``path``."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


# -- plain pickles -------------------------------------------------------------------
def _reconstruct() -> Callable[..., Any]:
    try:
        from numpy._core.multiarray import _reconstruct as fn  # NumPy >= 2
    except ImportError:  # pragma: no cover - NumPy 1.x
        from numpy.core.multiarray import _reconstruct as fn
    return fn


def _numpy(name: str) -> Callable[[], Any]:
    def resolve() -> Any:
        import numpy

        return getattr(numpy, name)

    return resolve


def _csr_matrix() -> Any:
    from scipy.sparse import csr_matrix

    return csr_matrix


#: The globals Planetoid's pickles reference, as ``(module, name)`` exactly as written
#: in the file, each with the object it resolves to (resolved here, never imported by
#: the name the file gives). The real ``ind.{cora,citeseer,pubmed}.*`` files (Python 2
#: pickles, protocol 2) reference the first name of each pair and nothing else:
#: NumPy arrays (y, ty, ally), SciPy CSR matrices (x, tx, allx) and a
#: ``defaultdict`` of lists (graph). The second name of each pair is the same object
#: as a current Python, NumPy and SciPy name it when such a file is saved again.
PLANETOID_GLOBALS: Mapping[tuple[str, str], Callable[[], Any]] = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy", "ndarray"): _numpy("ndarray"),
    ("numpy", "dtype"): _numpy("dtype"),
    ("scipy.sparse.csr", "csr_matrix"): _csr_matrix,
    ("scipy.sparse._csr", "csr_matrix"): _csr_matrix,
    ("collections", "defaultdict"): lambda: defaultdict,
    ("__builtin__", "list"): lambda: list,
    ("builtins", "list"): lambda: list,
}


class ForbiddenGlobal(pickle.UnpicklingError):
    """A pickle referenced a global outside the allow-list; nothing was called."""

    def __init__(self, module: str, name: str) -> None:
        super().__init__(f"{module}.{name}")
        self.module, self.name = module, name


class RestrictedUnpickler(pickle.Unpickler):
    """``pickle.Unpickler`` that resolves only the globals in ``allowed``.

    Every way a pickle can name a global (``GLOBAL``, ``STACK_GLOBAL``, ``INST``,
    ``OBJ``, the extension registry) goes through :meth:`find_class`, so a pickle
    can call nothing but the allowed objects. Persistent ids are refused
    (``pickle.Unpickler``'s default).
    """

    def __init__(self, file: IO[bytes], allowed: Mapping[tuple[str, str], Callable[[], Any]]
                 = PLANETOID_GLOBALS, *, source: str = "", encoding: str = "latin1") -> None:
        super().__init__(file, encoding=encoding)
        self.allowed = allowed
        self.source = source

    def find_class(self, module: str, name: str) -> Any:
        resolve = self.allowed.get((module, name))
        if resolve is None:
            raise ForbiddenGlobal(module, name)
        return resolve()


def restricted_load(path: Path, allowed: Mapping[tuple[str, str], Callable[[], Any]]
                    = PLANETOID_GLOBALS) -> Any:
    """Unpickle the file at ``path`` with :class:`RestrictedUnpickler` (Python 2 strings
    decoded as latin-1, like PyG does)."""
    with Path(path).open("rb") as fh:
        return RestrictedUnpickler(fh, allowed, source=str(path)).load()


def restricted_loads(data: bytes, source: str = "",
                     allowed: Mapping[tuple[str, str], Callable[[], Any]]
                     = PLANETOID_GLOBALS) -> Any:
    """:func:`restricted_load` for bytes already read."""
    return RestrictedUnpickler(io.BytesIO(data), allowed, source=source).load()


# -- torch files -----------------------------------------------------------------------
#: The PyG classes in OGB's processed file (``torch.serialization
#: .get_unsafe_globals_in_checkpoint`` lists exactly these); PyG's own processed
#: files use ``Data`` alone, clbench's cache none.
DATA_CLASSES: tuple[type, ...] = (Data, GlobalStorage, DataEdgeAttr, DataTensorAttr)
#: The only classes registered process-wide with ``add_safe_globals`` that a torch file
#: in the data root (or a user's graph file) may use: :data:`DATA_CLASSES` and the
#: plain containers PyG registers (building them runs no other code).
TORCH_FILE_CLASSES: tuple[type, ...] = (*DATA_CLASSES, dict, list, defaultdict)

# OGB reads its processed file (a pickled ``Data``) with a bare ``torch.load``, which means
# ``weights_only=True``; so may a user's graph file hold a ``Data``. Registered when this
# module is first imported, which every read of a torch file in the data root does first
# (:mod:`clbench.datasets.ogb`'s ``SAFE_GLOBALS``).
torch.serialization.add_safe_globals(list(DATA_CLASSES))

_GLOBAL_OPS = {"GLOBAL", "STACK_GLOBAL", "INST", "OBJ", "EXT1", "EXT2", "EXT4"}


def _qualified(entry: Any) -> str:
    if isinstance(entry, tuple):  # add_safe_globals([(obj, "module.name")])
        return str(entry[1])
    return f"{entry.__module__}.{entry.__qualname__}"


def _scan(data: bytes | IO[bytes]) -> tuple[set[str], bool]:
    found: set[str] = set()
    try:
        for op, arg, _pos in pickletools.genops(data):
            if op.name == "GLOBAL":
                found.add(str(arg).replace(" ", ".", 1))
            elif op.name in _GLOBAL_OPS:
                found.add(f"<{op.name}>")
    except (ValueError, EOFError, UnicodeDecodeError):
        return found, False
    return found, True


def pickle_globals(data: bytes | IO[bytes]) -> set[str]:
    """``module.name`` of every global a pickle stream names, read with
    :mod:`pickletools` (nothing is run). A global only computable at load time
    (``STACK_GLOBAL``, ``INST``, ``OBJ``, extension codes, all of which torch's
    ``weights_only`` unpickler refuses anyway) appears as ``"<OPCODE>"``. A stream
    that does not parse yields what was found before the damage."""
    return _scan(data)[0]


def _zip_globals(path: Path) -> set[str] | None:
    """Globals in every ``.pkl`` member of a zip archive (duplicated names included), or
    ``None`` if Python's ``zipfile`` cannot read it."""
    try:
        with zipfile.ZipFile(path) as zf:
            found: set[str] = set()
            for info in zf.infolist():
                if info.filename.endswith(".pkl"):
                    found |= pickle_globals(zf.read(info))
            return found
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, zlib.error):
        return None


def _torch_file_globals(path: Path) -> tuple[set[str], set[str]]:
    """(all globals, globals outside torch's own and the registered allow-lists).

    The format is told apart as ``torch.load`` does (zip archives start with a local
    file header); a legacy file is a few pickles in a row, then raw bytes.
    """
    with path.open("rb") as fh:
        is_zip = fh.read(4) == b"PK\x03\x04"
    if is_zip:
        found = _zip_globals(path)
        try:
            unsafe = set(torch.serialization.get_unsafe_globals_in_checkpoint(str(path)))
        except Exception:  # torch cannot read the archive either: torch.load reports it
            return found or set(), set()
        if found is None:  # torch reads what zipfile cannot: nothing is known about it
            found = {"<a zip archive Python's zipfile cannot read>"}
        return found, unsafe
    found = set()
    with path.open("rb") as fh:
        for _ in range(5):
            part, ok = _scan(fh)
            found |= part
            if not ok:
                break
    return found, set()


def forbidden_torch_globals(path: Path,
                            allowed: Iterable[type] = TORCH_FILE_CLASSES) -> list[str]:
    """Globals in the torch file at ``path`` that clbench will not let it use (see the
    module docstring), sorted; empty when the file may be loaded."""
    found, unsafe = _torch_file_globals(Path(path))
    allowed_names = {_qualified(c) for c in allowed}
    registered = {_qualified(g) for g in torch.serialization.get_safe_globals()}
    refused = (found & registered) - allowed_names
    refused |= {g for g in found if g.startswith("<")}
    return sorted(refused | (unsafe - allowed_names))


def check_torch_file(path: Path, what: str, fix: str = "") -> None:
    """Raise :class:`DataError` if the torch file at ``path`` uses a forbidden global.

    ``what`` starts the message (e.g. ``"cora: file /data/Cora/processed/data.pt"``),
    ``fix`` ends it.
    """
    refused = forbidden_torch_globals(path)
    if refused:
        raise DataError(
            f"{what} holds pickled references to {', '.join(refused)}, which clbench "
            "refuses to load from a data file: it accepts only torch.load(weights_only=True)'s "
            "own allow-list and PyG's Data classes, because loading anything else could run "
            "code or touch other files" + (f"; {fix}" if fix else "")
        )


def file_path_of(obj: Any) -> Path | None:
    """The file system path behind a ``torch.load`` argument, if there is one."""
    if isinstance(obj, (str, os.PathLike)):
        return Path(obj)
    for attr in ("path", "name"):  # fsspec's local files, built-in file objects
        value = getattr(obj, attr, None)
        if isinstance(value, (str, os.PathLike)) and Path(value).is_file():
            return Path(value)
    return None
