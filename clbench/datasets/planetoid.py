"""Planetoid's raw files, read without running code from them.

Planetoid's ``ind.<name>.{x,tx,allx,y,ty,ally,graph}`` files are Python pickles,
which PyG reads with an unrestricted ``pickle.load``: a crafted file in their
place would run any code it names. clbench reads them through the class
:func:`verified_planetoid_class` builds, PyG's ``Planetoid`` with a ``process``
step that

1. before PyG reads any raw file, checks each against its published sha256
   (:data:`DIGESTS`, also on the dataset cards). A file that differs, or has no
   known digest, is unpickled in full by
   :class:`~clbench.datasets.safe_pickle.RestrictedUnpickler`, which resolves
   only the NumPy, SciPy, ``defaultdict`` and ``list`` globals Planetoid files
   use, and must then hold the type the format prescribes (CSR matrix, array,
   dict of lists; ``test.index`` must be text of integers). Anything else raises
   a :class:`~clbench.errors.DataError` naming the file. (The reader in
   :mod:`clbench.datasets.pyg` runs this check on the files already present
   before it even builds the dataset, so PyG announces nothing first.)
2. then runs PyG's own reader with the ``pickle`` module it uses replaced, for
   that call only, by :class:`_PickleShim`: it hashes the bytes it is given and
   unpickles them with the plain unpickler only if they are the published file,
   otherwise with the restricted one. So even a file swapped after step 1 is
   never unpickled without restriction.
"""

from __future__ import annotations

import functools
import hashlib
import pickle
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from clbench.errors import DataError

# numpy and clbench.datasets.safe_pickle (torch, PyG) are imported when a file is checked:
# the Planetoid cards use this module's digests and file names without them.

PARTS = ("x", "tx", "allx", "y", "ty", "ally", "graph", "test.index")
RE_DOWNLOAD = ("delete it and run again to re-download it (or copy an intact copy there)")

#: sha256 of the raw files PyG downloads (kimiyoung/planetoid ``data/`` @ af6abf4),
#: by file name. Cora and CiteSeer: the files in the shared test data, whose
#: checksums match. PubMed: seven files read from that commit of the repository,
#: each checked against the commit's git blob id; ``ind.pubmed.allx`` could not be
#: obtained to verify, so it has no digest and is always read through the
#: restricted unpickler.
DIGESTS: dict[str, dict[str, str]] = {
    "cora": {
        "ind.cora.x": "23cfa55d91c6f624233f5eb7b6e3f141f1bd2b2ae39608a63cf5d084bb27baab",
        "ind.cora.tx": "b9afbaa4a400df991f6f02ef677e1e44da55ffc04801fd02f9e673987829226a",
        "ind.cora.allx": "9419ba2f26f5c35243db64aba110e0f35a04851609e0dc5433450676ca6b8543",
        "ind.cora.y": "94465c14eb53e04ca262198dcbb2521ee8af60fb3f3d546cd6ca24a511b0e7d1",
        "ind.cora.ty": "41f5ac76596a1699cc33f53084a2419e92961c42bb75f36fc38e616d348532ad",
        "ind.cora.ally": "2b998f5cc7fedc86e7f97ca2498f47a1ffc1462c29e2d578b23bf3f62b6e7d71",
        "ind.cora.graph": "58f13302f39dde8852dad6fe6d15b89b077b6d7f837626bce671ef80344b383d",
        "ind.cora.test.index":
            "297ce89af2b51a6a194181c7dbe1796c6a1cf9cd9349a88383b1b1e227867875",
    },
    "citeseer": {
        "ind.citeseer.x": "d20de19150741e555de0ed037195630fc194114ebc7fd72ced62810148aa22f6",
        "ind.citeseer.tx": "539a8906a2da97628d212f2fdd668c109a8b3f0d36574b59e5d3fd5b5303da21",
        "ind.citeseer.allx":
            "2ac30345d95c9ec933a817ee0bdd6a5f077f8c184a20e696910192d534414668",
        "ind.citeseer.y": "8ba87e515d8e3ee3cf52f6d2c5b86aa73f11ecad825a808455209ec26cd54924",
        "ind.citeseer.ty": "55e5bd1ba1e733a04598753ad1a8d57957f4b8f89e74519f41f4f4938767e4ce",
        "ind.citeseer.ally":
            "f704b2d986dde6c2669934de1f3ae5696a6cf9455c0f6b2646a2d135ea0a1c95",
        "ind.citeseer.graph":
            "d79a4ef9d3e7169aee8946145f6b7306e35bc79bffad26346cfb94e10e9912a7",
        "ind.citeseer.test.index":
            "2af990671580b6b2df5d158d1038f8292e30c9cd821b5453f399659b25b723d4",
    },
    "pubmed": {
        "ind.pubmed.x": "fbe9cb5c47200d1b7769a26e579be3b7130b556831f9d850e77c4c74f2599b33",
        "ind.pubmed.tx": "4eb5f5d0f30f26497eb0ac6ac9719d09c67e284f1ed0385c93f3ef27a671da3d",
        "ind.pubmed.y": "e6c807633307a07ed659249006536a147c7999c797f11a2560752990181b41b3",
        "ind.pubmed.ty": "ee2e0d4819d9fbcc403689c3bf2e49face401b605932f093bc58ab6461130fdd",
        "ind.pubmed.ally": "0c37bbe3b5014ec365e9d393cf4791925e5ed94fb194305d74f064a8d7b50f0e",
        "ind.pubmed.graph":
            "5b89f0036ca22909471f1e6558eb42fa06e0c730a577bde5b058b40638f81dc9",
        "ind.pubmed.test.index":
            "b101d421688bbaecbd82e8a18f1e282378d6830f3a37666f28ebc47f844341b5",
    },
}


def raw_file_names(prefix: str) -> list[str]:
    return [f"ind.{prefix}.{part}" for part in PARTS]


def _part(path: Path) -> str:
    return path.name.split(".", 2)[-1]  # ind.cora.test.index -> test.index


# -- checks ------------------------------------------------------------------------------
def _bad(label: str, path: Path, problem: str) -> DataError:
    return DataError(f"{label}: file {path.resolve()} {problem}; {RE_DOWNLOAD}")


def _unpickle(data: bytes, path: Path, label: str) -> Any:
    """Unpickle ``data`` (the bytes of ``path``) with the restricted unpickler."""
    from clbench.datasets.safe_pickle import ForbiddenGlobal, restricted_loads

    try:
        return restricted_loads(data, source=str(path))
    except ForbiddenGlobal as exc:
        raise _bad(label, path, (
            f"is not the published file and holds a pickled reference to "
            f"{exc.module}.{exc.name}, which no Planetoid file contains; clbench refuses to "
            "unpickle it, because loading it could run code")) from None
    except Exception as exc:  # truncated, random bytes, wrong arguments for a class, ...
        why = " ".join(f"{type(exc).__name__}: {exc}".split())[:200]
        raise _bad(label, path, f"is corrupt or truncated ({why})") from None


def _check_type(obj: Any, path: Path, label: str) -> None:
    """The object must be what the Planetoid format puts in that file."""
    import numpy as np
    import scipy.sparse as sp

    part = _part(path)
    if part in ("x", "tx", "allx"):
        ok, expected = isinstance(obj, (sp.csr_matrix, np.ndarray)), "a SciPy CSR matrix"
    elif part in ("y", "ty", "ally"):
        ok, expected = isinstance(obj, np.ndarray) and obj.ndim == 2, "a 2-D NumPy array"
    else:
        ok = isinstance(obj, dict) and all(
            isinstance(k, int) and isinstance(v, list) and all(isinstance(i, int) for i in v)
            for k, v in obj.items())
        expected = "a dict from node id to a list of node ids"
    if not ok:
        raise _bad(label, path, f"holds a {type(obj).__name__} where a Planetoid "
                                f"ind.*.{part} file holds {expected}")


def _check_index(data: bytes, path: Path, label: str) -> None:
    try:
        ids = [int(tok) for tok in data.decode("ascii").split()]
    except (UnicodeDecodeError, ValueError) as exc:
        why = " ".join(str(exc).split())[:120]
        raise _bad(label, path, f"is not a list of node ids, one per line ({why})") from None
    if not ids:
        raise _bad(label, path, "is empty")


def check_raw_file(path: Path, digests: Mapping[str, str], label: str) -> None:
    """Pass if ``path`` is the published file; otherwise prove it safe and well-formed
    (see the module docstring) or raise :class:`DataError` naming it."""
    from clbench.datasets.safe_pickle import sha256_file

    if digests.get(path.name) == sha256_file(path):
        return
    data = path.read_bytes()
    if _part(path) == "test.index":
        _check_index(data, path, label)
    else:
        _check_type(_unpickle(data, path, label), path, label)


def verify_raw_files(raw_dir: Path, prefix: str, digests: Mapping[str, str],
                     label: str) -> None:
    """:func:`check_raw_file` for each raw file present (PyG reports missing ones)."""
    for name in raw_file_names(prefix):
        path = Path(raw_dir) / name
        if path.is_file():
            check_raw_file(path, digests, label)


# -- PyG's read, restricted ----------------------------------------------------------------
class _PickleShim:
    """Stands in for the ``pickle`` module inside ``torch_geometric.io.planetoid`` (whose
    ``read_file`` calls only ``pickle.load``): a published file is unpickled as usual,
    anything else through the restricted unpickler."""

    def __init__(self, digests: Mapping[str, str], label: str) -> None:
        self.digests, self.label = digests, label

    def load(self, file: IO[bytes], *, encoding: str = "latin1", **_: Any) -> Any:
        from clbench.datasets.safe_pickle import file_path_of

        data = file.read()
        path = file_path_of(file)
        if path is None:  # not a local file: no name to look a digest up by
            return _unpickle(data, Path("<a Planetoid file>"), self.label)
        if self.digests.get(path.name) == hashlib.sha256(data).hexdigest():
            return pickle.loads(data, encoding=encoding)  # exactly the published bytes
        obj = _unpickle(data, path, self.label)
        _check_type(obj, path, self.label)
        return obj


_READ_LOCK = threading.RLock()


@contextmanager
def restricted_planetoid_reads(digests: Mapping[str, str], label: str) -> Iterator[None]:
    """Within this context, PyG's Planetoid reader unpickles through :class:`_PickleShim`."""
    import torch_geometric.io.planetoid as reader

    with _READ_LOCK:
        saved = reader.__dict__.get("pickle")
        if saved is None:  # a PyG that reads otherwise: the files were vetted beforehand
            yield
            return
        reader.pickle = _PickleShim(digests, label)
        try:
            yield
        finally:
            reader.pickle = saved


@functools.cache
def verified_planetoid_class() -> type:
    """PyG's ``Planetoid`` whose ``process`` vets the raw files first (built on first
    use: importing PyG's datasets takes a while)."""
    from torch_geometric.datasets import Planetoid

    class VerifiedPlanetoid(Planetoid):
        """``Planetoid(root, name, split=...)`` plus ``digests`` (file name -> sha256)
        and ``label`` (the dataset name for messages)."""

        def __init__(self, root: str, name: str, *, digests: Mapping[str, str], label: str,
                     **kwargs: Any) -> None:
            self.digests = dict(digests)
            self.label = label
            super().__init__(root, name, **kwargs)

        def process(self) -> None:
            verify_raw_files(Path(self.raw_dir), self.name.lower(), self.digests, self.label)
            with restricted_planetoid_reads(self.digests, self.label):
                super().process()

    return VerifiedPlanetoid
