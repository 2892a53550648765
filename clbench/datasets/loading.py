"""Turn a dataset name (or a user's graph file) into a preprocessed :class:`Graph`.

Datasets read from files (PyG's and OGB's datasets) are described by a
:class:`FileSource`, which is the card's ``load`` callable. Around the library's
own loader it adds what a benchmark run needs:

* **offline first** - when the card's files are under the data root, the library
  reads them and nothing touches the network;
* **bounded downloads** - when they are not, the library downloads them with a
  short socket timeout (``$CLBENCH_DOWNLOAD_TIMEOUT`` seconds, default 30), and
  a failure becomes one :class:`~clbench.errors.DataError` naming the folder and
  the files to put there; partial downloads and empty folders are removed;
* **damaged files** - a read error is traced to the corrupt or truncated file,
  which the error names, suggesting to delete it;
* **no code from data files** - nothing under the data root is unpickled
  without restriction: Planetoid's pickled raw files are checked against their
  published sha256 and otherwise read through a restricted unpickler
  (:mod:`clbench.datasets.planetoid`); every ``torch.load`` the libraries make
  runs with ``weights_only=True`` (PyG's own ``weights_only=False`` calls, its
  marker files and its fallback for unexpected processed files, are overridden),
  and only after :func:`~clbench.datasets.safe_pickle.check_torch_file` has found
  no global in the file beyond torch's own allow-list and PyG's ``Data`` classes;
* **a preprocessing cache** - the protocol's preprocessing (self-loops removed,
  undirected where the card says so, duplicates merged) runs once; the result is
  saved as plain tensors in ``<dataset folder>/processed/clbench_<name>.pt`` and
  rebuilt when the card's files change (size or modification time).
"""

from __future__ import annotations

import gzip
import os
import pickle
import pickletools
import socket
import threading
import warnings
import zipfile
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from clbench.datasets.base import DATASETS, DatasetCard, data_root, stratified_split
from clbench.errors import DataError, short_error
from clbench.parsing import is_graph_file
from clbench.registry import normalize_name

if TYPE_CHECKING:  # pragma: no cover
    from torch_geometric.data import Data

    from clbench.graph import Graph

# torch, PyG and the modules that need them are imported when a dataset is read, not
# when the cards (whose ``load`` is a FileSource) are registered.

CACHE_PREFIX = "clbench_"
TIMEOUT_ENV = "CLBENCH_DOWNLOAD_TIMEOUT"
DEFAULT_TIMEOUT = 30.0

_MASKS = ("train_mask", "val_mask", "test_mask")
#: Exceptions that mean "the files could not be read", as opposed to a bug.
_READ_ERRORS = (
    OSError, EOFError, ValueError, RuntimeError, KeyError, IndexError,
    pickle.UnpicklingError, zipfile.BadZipFile, zlib.error, UserWarning,
)


def download_timeout() -> float:
    """Socket timeout (seconds) for download attempts: ``$CLBENCH_DOWNLOAD_TIMEOUT`` or 30."""
    raw = os.environ.get(TIMEOUT_ENV, "")
    try:
        value = float(raw) if raw else DEFAULT_TIMEOUT
    except ValueError:
        raise DataError(f"{TIMEOUT_ENV} must be a number of seconds, got {raw!r}") from None
    return value if value > 0 else DEFAULT_TIMEOUT


@dataclass(frozen=True)
class FileSource:
    """``card.load`` for a dataset that a library (PyG, OGB) reads from files.

    Attributes:
        name: the card's registry name (for messages).
        read: ``read(root) -> Data`` calls the library's own loader (downloading
            if needed) and returns ``x``, ``edge_index``, ``y`` and, for datasets
            with an official split, the three boolean masks.
        folder: the dataset's folder below the data root, e.g. ``"Cora"``.
        files: the files (relative to ``folder``) whose presence means "local".
        url: where the library downloads from, for error messages.
        official_split: masks come from the dataset; otherwise a stratified
            60/20/20 split is drawn from the split seed.
        prepare: optional hook run inside the guard before ``read`` (e.g. OGB's
            folder checks); it may raise :class:`DataError`.
        manual_hint: extra advice for putting the files in place by hand.
    """

    name: str
    read: Callable[[Path], Data]
    folder: str
    files: tuple[str, ...]
    url: str = ""
    official_split: bool = False
    prepare: Callable[[Path], None] | None = field(default=None, compare=False)
    manual_hint: str = ""

    # -- paths -----------------------------------------------------------------
    def card_files(self) -> tuple[str, ...]:
        """The files relative to the data root (what goes in ``DatasetCard.files``)."""
        return tuple(f"{self.folder}/{f}" for f in self.files)

    def is_local(self, root: Path) -> bool:
        return all((root / f).is_file() for f in self.card_files())

    def cache_path(self, root: Path) -> Path:
        return root / self.folder / "processed" / f"{CACHE_PREFIX}{normalize_name(self.name)}.pt"

    # -- loading ---------------------------------------------------------------
    def __call__(self, root: Path, split_seed: int) -> Data:
        """Read the dataset (without the clbench cache) and attach its split masks."""
        return self.attach_split(self.fetch(Path(root)), split_seed)

    def attach_split(self, data: Data, split_seed: int) -> Data:
        """Keep the official masks, or draw the stratified 60/20/20 split from ``split_seed``."""
        if self.official_split:
            missing = [m for m in _MASKS if getattr(data, m, None) is None]
            if missing:
                raise DataError(f"{self.name}: the loader returned no {', '.join(missing)}")
            return data
        y = data.y.view(-1) if data.y.dim() == 2 and data.y.size(1) == 1 else data.y
        data.train_mask, data.val_mask, data.test_mask = stratified_split(y, split_seed)
        return data

    def fetch(self, root: Path, reload: bool = False) -> Data:
        """Run the library's loader under the guards described in the module docstring.

        ``reload`` deletes the library's own processed files first (used when the
        source files changed since the clbench cache was written).
        """
        root = Path(root)
        folder = root / self.folder
        local = self.is_local(root)
        if local and reload:
            _remove_derived(folder)
        top = root / Path(self.folder).parts[0]
        before = set() if local else _snapshot(top)
        root_existed = root.exists()
        try:
            with (_download_limits() if not local else nullcontext(),
                  _weights_only_loads(self.name)):
                if self.prepare is not None:
                    self.prepare(root)
                return self.read(root)
        except DataError:
            if not local:
                _remove_new(top, before, root if not root_existed else None)
            raise
        except (Exception, SystemExit) as exc:
            if not self.is_local(root):
                _remove_new(top, before, root if not root_existed else None)
                raise DataError(self._missing_message(root, exc)) from exc
            err = self._read_error(root, exc)
            if err is None:
                raise
            raise err from exc

    # -- messages ----------------------------------------------------------------
    def _missing_message(self, root: Path, exc: BaseException) -> str:
        folder = (root / self.folder).resolve()
        missing = [f for f in self.files if not (folder / f).is_file()]
        where = f" from {self.url}" if self.url else ""
        return (
            f"{self.name}: the dataset files are not in {folder} and downloading them{where} "
            f"failed ({_short(exc)}). Without network access, put these files there "
            f"(paths relative to that folder): {', '.join(self.files)}"
            + (f" (missing: {', '.join(missing)})" if len(missing) < len(self.files) else "")
            + (f"; {self.manual_hint}" if self.manual_hint else "")
            + "; then run again."
        )

    def _read_error(self, root: Path, exc: BaseException) -> DataError | None:
        from clbench.datasets.safe_pickle import forbidden_torch_globals

        folder = (root / self.folder).resolve()
        if "Weights only load failed" in str(exc):
            refused = sorted(p for p in (folder / "processed").glob("*.pt")
                             if not p.name.startswith(CACHE_PREFIX) and forbidden_torch_globals(p))
            where = (", ".join(map(str, refused)) if refused
                     else f"a processed file in {folder / 'processed'}")
            return DataError(
                f"{self.name}: {where} holds Python objects that "
                "torch.load(weights_only=True) refuses, and clbench never unpickles data "
                f"with weights_only=False. Delete {folder / 'processed'} and run again to "
                "rebuild it from the raw files."
            )
        raw = [folder / f for f in self.files]
        derived = sorted(p for p in (folder / "processed").glob("*") if p.is_file()
                         and not p.name.startswith(CACHE_PREFIX))
        bad = [(p, why) for p in raw + derived if p.is_file() and (why := check_file(p))]
        if bad:
            parts = []
            for path, why in bad:
                fix = ("delete it and run again to rebuild it from the raw files" if path in derived
                       else "delete it and run again to re-download it (or copy an intact "
                            "copy there)")
                parts.append(f"file {path} is corrupt or truncated ({why}); {fix}")
            return DataError(f"{self.name}: " + "; ".join(parts))
        if isinstance(exc, _READ_ERRORS):
            return DataError(
                f"{self.name}: could not read the dataset in {folder} ({_short(exc)}). "
                f"If its files are damaged, delete {folder} and run again to re-download them."
            )
        return None


# -- guards ------------------------------------------------------------------------
@contextmanager
def _download_limits() -> Iterator[None]:
    """Short timeouts for urllib (OGB, PyG's ``download_url``) and aiohttp (PyG's ``fs.cp``)."""
    timeout = download_timeout()
    old_timeout = socket.getdefaulttimeout()
    socket.setdefaulttimeout(timeout)
    saved: dict[str, dict | None] = {}
    conf: dict | None = None
    try:
        import aiohttp
        import fsspec.config

        conf = fsspec.config.conf
        limit = aiohttp.ClientTimeout(
            total=None, connect=timeout, sock_connect=timeout, sock_read=timeout
        )
        for proto in ("http", "https"):
            saved[proto] = dict(conf[proto]) if proto in conf else None
            entry = dict(conf.get(proto, {}))
            client = dict(entry.get("client_kwargs", {}))
            client.setdefault("timeout", limit)
            entry["client_kwargs"] = client
            conf[proto] = entry
    except ImportError:  # no aiohttp: PyG's fsspec downloads fail fast on their own
        pass
    try:
        yield
    finally:
        socket.setdefaulttimeout(old_timeout)
        if conf is not None:
            for proto, value in saved.items():
                if value is None:
                    conf.pop(proto, None)
                else:
                    conf[proto] = value


_LOAD_LOCK = threading.RLock()


@contextmanager
def _weights_only_loads(label: str = "") -> Iterator[None]:
    """Run the library's loader with every ``torch.load`` vetted and ``weights_only=True``.

    PyG reads its ``processed/pre_transform.pt`` markers with ``weights_only=False``
    and, when a processed file holds unexpected objects, warns and retries with
    ``weights_only=False``. Inside this context neither can happen: the retry's
    warning becomes an exception, and ``torch.load`` is wrapped so an explicit
    ``weights_only=False`` is overridden (the markers hold a plain string, which
    loads fine). OGB's bare ``torch.load`` calls default to ``weights_only=True``
    on torch >= 2.6 and get it explicitly here on older versions. Before any of
    them reads a file, :func:`~clbench.datasets.safe_pickle.check_torch_file`
    refuses it if it names a global beyond torch's allow-list and PyG's ``Data``
    classes (``label``, the dataset name, starts that message).
    """
    import torch

    from clbench.datasets.safe_pickle import check_torch_file, file_path_of

    with _LOAD_LOCK, warnings.catch_warnings():
        warnings.filterwarnings("error", message="Weights only load failed", category=UserWarning)
        original = torch.load

        def load(f, *args, **kwargs):
            path = file_path_of(f)
            if path is not None and path.is_file():
                check_torch_file(path, f"{label + ': ' if label else ''}file {path.resolve()}",
                                 "delete it and run again to rebuild it from the raw files "
                                 "(or to re-download it)")
            kwargs["weights_only"] = True
            return original(f, *args, **kwargs)

        torch.load = load
        try:
            yield
        finally:
            torch.load = original


def _remove_derived(folder: Path) -> None:
    """Delete the library's processed files (not the clbench cache) so it rebuilds them."""
    for path in (folder / "processed").glob("*.pt"):
        if not path.name.startswith(CACHE_PREFIX):
            path.unlink(missing_ok=True)


def _snapshot(top: Path) -> set[Path]:
    return set(top.rglob("*")) | {top} if top.exists() else set()


def _remove_new(top: Path, before: set[Path], root: Path | None) -> None:
    """After a failed download: delete files it created and folders left empty.

    Leaves nothing behind that a later run could mistake for data (e.g. OGB's
    "dataset has been updated" question is asked when its folder exists).
    """
    if top.exists():
        paths = sorted(set(top.rglob("*")) | {top}, key=lambda p: len(p.parts), reverse=True)
        for path in paths:
            if path in before:
                continue
            with suppress(OSError):
                if path.is_dir() and not path.is_symlink():
                    if not any(path.iterdir()):
                        path.rmdir()
                else:
                    path.unlink()
    if root is not None:
        with suppress(OSError):
            root.rmdir()  # only succeeds if the failed attempt created it and left it empty


def _short(exc: BaseException, limit: int = 240) -> str:
    timeout = isinstance(exc, TimeoutError) or "timeout" in type(exc).__name__.lower()
    note = f"no answer within the {download_timeout():g} s timeout" if timeout else ""
    return short_error(exc, limit, note)


# -- integrity checks --------------------------------------------------------------
def check_file(path: Path) -> str | None:
    """Why ``path`` looks corrupt or truncated, or ``None`` if it looks intact.

    Checks what can be checked without trusting the content: gzip streams are
    decompressed to the end (CRC and length), zip archives (``.npz``, ``.zip``,
    modern ``.pt``) are tested member by member, and pickles are parsed opcode
    by opcode with :mod:`pickletools` (nothing is executed).
    """
    try:
        size = path.stat().st_size
        name = path.name.lower()
        if size == 0:
            return None if name.endswith(".txt") else "the file is empty"
        with path.open("rb") as fh:
            head = fh.read(4)
        if name.endswith(".gz"):
            with gzip.open(path, "rb") as fh:
                while fh.read(1 << 24):
                    pass
            return None
        if name.endswith((".npz", ".zip")) or head.startswith(b"PK"):
            if not zipfile.is_zipfile(path):
                return "not a complete zip archive"
            with zipfile.ZipFile(path) as zf:
                bad = zf.testzip()
            return f"member {bad!r} fails its CRC check" if bad else None
        if name.endswith((".pt", ".pth")):
            return None  # legacy (non-zip) torch format: nothing cheap to check
        if head[:1] == b"\x80":  # a pickle (protocol >= 2), e.g. Planetoid's ind.* files
            with path.open("rb") as fh:
                for _ in pickletools.genops(fh):
                    pass
            return None
    except (OSError, EOFError, ValueError, zlib.error, zipfile.BadZipFile) as exc:
        return _short(exc)
    return None


def load_source(card: DatasetCard, source: FileSource, root: Path, split_seed: int,
                *, use_cache: bool = True) -> Graph:
    """Load a file-backed dataset through the preprocessing cache."""
    from clbench.datasets.cache import graph_from_cache, read_cache, write_cache
    from clbench.graph import prepare_graph

    cache = source.cache_path(root)
    reload = False
    if use_cache and source.is_local(root):
        payload = read_cache(cache, source, card, root)
        if payload is not None:
            graph = graph_from_cache(payload, source, card, split_seed)
            if graph is not None:
                graph.meta.update(cache="hit", cache_path=str(cache))
                return graph
        # a cache written for other files means the sources changed: rebuild everything
        reload = cache.is_file()
    data = source.attach_split(source.fetch(root, reload=reload), split_seed)
    graph = prepare_graph(data, card.name, undirected=card.undirected)
    written = use_cache and write_cache(cache, graph, source, card, root)
    graph.meta.update(cache="rebuilt" if reload else ("written" if written else "off"),
                      cache_path=str(cache))
    return graph


# -- entry point -------------------------------------------------------------------
def resolve_card(name: str) -> DatasetCard:
    return DATASETS.get(name)


def load_graph(name: str, data_dir: str | Path | None = None, split_seed: int = 0,
               split: str = "dataset") -> Graph:
    """Load dataset ``name`` from the data root and preprocess it.

    ``name`` is a registry name (``"cora"``, ``"ogbn-arxiv"``) or the path of a
    user's ``.pt``/``.npz`` graph file (see :mod:`clbench.datasets.custom`).
    ``split_seed`` draws the stratified split of datasets without an official one;
    ``split="random"`` draws it on every dataset, replacing an official split (or a
    file's masks), as CGLB does.
    """
    graph = _load_graph(name, data_dir, split_seed)
    if split == "random":
        graph.train_mask, graph.val_mask, graph.test_mask = stratified_split(graph.y,
                                                                             split_seed)
        graph.meta.update(split="stratified 60/20/20 (split=random)")
    elif split != "dataset":
        raise ValueError(f"unknown split {split!r}; choose dataset or random")
    return graph


def _load_graph(name: str, data_dir: str | Path | None, split_seed: int) -> Graph:
    if is_graph_file(name) and name not in DATASETS:
        from clbench.datasets.custom import load_custom_graph

        return load_custom_graph(Path(name), split_seed=split_seed)
    from clbench.graph import prepare_graph

    card = resolve_card(name)
    root = data_root(data_dir)
    if isinstance(card.load, FileSource):
        graph = load_source(card, card.load, root, split_seed)
        graph.meta.update(split="official" if card.load.official_split else "stratified",
                          data_dir=str((root / card.load.folder).resolve()))
    else:
        data = card.load(root, split_seed)
        graph = prepare_graph(data, card.name, undirected=card.undirected)
    graph.meta.update(card=card.name, split_seed=split_seed)
    return graph
