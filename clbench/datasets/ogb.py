"""ogbn-arxiv and ogbn-products, read by OGB's ``PygNodePropPredDataset``.

OGB's loader is used as is, with three adjustments so that a benchmark run can
never block or unpickle unsafely:

* **Interactive questions.** OGB calls ``input()`` when a dataset folder exists
  without its ``RELEASE_v<version>.txt`` ("Will you update the dataset now?") and
  before downloads larger than 1 GB. Runs may have no stdin. Before OGB starts,
  clbench inspects the folder: an empty leftover of an interrupted download is
  removed; a folder with files but no RELEASE file raises a
  :class:`~clbench.errors.DataError` explaining what to do. While OGB runs, its
  ``input`` is answered deterministically without reading stdin: the update
  question raises that same error, the size question is answered "y" (the
  dataset was asked for explicitly, and the download shows OGB's progress bar).
* **torch >= 2.6.** OGB 1.3.6 reads its processed file with a bare
  ``torch.load``, which now means ``weights_only=True``; the file holds a PyG
  ``Data`` object. Exactly the classes in that pickle are allow-listed with
  ``torch.serialization.add_safe_globals`` (:data:`SAFE_GLOBALS`, registered by
  :mod:`clbench.datasets.safe_pickle`, which every read imports);
  ``weights_only`` is never turned off. Like every torch file read under
  :class:`~clbench.datasets.loading.FileSource`, the processed file (and a
  ``split_dict.pt``, which OGB prefers to the split CSVs when present) is first
  checked to name no other registered class
  (:func:`~clbench.datasets.safe_pickle.check_torch_file`). OGB's other reads are
  gzip CSVs (pandas) and, for some datasets, ``numpy.load`` with ``allow_pickle``
  off.
* **Undirected.** ogbn-arxiv's citation edges are directed; like BeGin, clbench
  makes the graph undirected (``DatasetCard.undirected``), removing self-loops
  and duplicate edges. ogbn-products is stored undirected already.
"""

from __future__ import annotations

import shutil
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from clbench.datasets.base import DatasetCard, register_dataset
from clbench.datasets.catalog import family
from clbench.datasets.loading import FileSource
from clbench.errors import DataError

if TYPE_CHECKING:  # pragma: no cover
    from torch_geometric.data import Data


def __getattr__(name: str) -> Any:
    """``SAFE_GLOBALS``: the globals in the pickle of OGB's
    ``processed/geometric_data_processed.pt`` (``torch.serialization.
    get_unsafe_globals_in_checkpoint`` lists exactly these), which
    :mod:`clbench.datasets.safe_pickle` registers with ``add_safe_globals``. Looked up on
    use, so that registering the OGB cards does not import torch and PyG."""
    if name == "SAFE_GLOBALS":
        from clbench.datasets.safe_pickle import DATA_CLASSES

        return list(DATA_CLASSES)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


OGB_VERSION = 1  # RELEASE_v1.txt: the version in ogb 1.3.6's master.csv for both datasets
_PROMPT_LOCK = threading.Lock()


def _folder_name(ogb_name: str) -> str:
    return ogb_name.replace("-", "_")


def _release_error(folder: Path, version: int) -> DataError:
    return DataError(
        f"{folder} exists but has no RELEASE_v{version}.txt, OGB's marker of a complete, "
        "current download, so OGB would stop to ask whether to replace it (clbench never "
        f"waits for an answer on stdin). It is an outdated or incomplete copy: delete {folder} "
        "and run again to download it, or, if its files are the current release, create an "
        f"empty {folder / f'RELEASE_v{version}.txt'}."
    )


@contextmanager
def ogb_prompts_answered(folder: Path, version: int = OGB_VERSION) -> Iterator[None]:
    """Answer OGB's ``input()`` questions without reading stdin (see the module docstring)."""
    import ogb.nodeproppred.dataset_pyg as dataset_module
    import ogb.utils.url as url_module

    def update_question(prompt: str = "") -> str:
        raise _release_error(folder, version)

    def size_question(prompt: str = "") -> str:
        print(f"{prompt.strip()} -> y (clbench: the dataset was requested explicitly)",
              file=sys.stderr)
        return "y"

    with _PROMPT_LOCK:
        patched = [(dataset_module, update_question), (url_module, size_question)]
        saved = [(mod, mod.__dict__.get("input")) for mod, _ in patched]
        for mod, answer in patched:
            mod.input = answer
        try:
            yield
        finally:
            for mod, old in saved:
                if old is None:
                    mod.__dict__.pop("input", None)
                else:
                    mod.input = old


def _master_version(ogb_name: str) -> int:
    import pandas as pd
    from ogb.nodeproppred import dataset_pyg

    master = pd.read_csv(Path(dataset_pyg.__file__).with_name("master.csv"), index_col=0,
                         keep_default_na=False)
    return int(master[ogb_name]["version"])


def _ogb_folder(root: Path, ogb_name: str) -> Path:
    """The folder OGB will use (it prefers a legacy ``<name>_pyg`` folder when present)."""
    legacy = root / f"{_folder_name(ogb_name)}_pyg"
    return legacy if legacy.exists() else root / _folder_name(ogb_name)


def _check_folder(ogb_name: str):
    def prepare(root: Path) -> None:
        folder = _ogb_folder(root, ogb_name)
        version = _master_version(ogb_name)
        if folder.is_dir() and not (folder / f"RELEASE_v{version}.txt").exists():
            if any(p.is_file() for p in folder.rglob("*")):
                raise _release_error(folder, version)
            shutil.rmtree(folder)  # only empty folders: what an interrupted download leaves

    return prepare


def _reader(ogb_name: str):
    def read(root: Path) -> Data:
        import torch
        from ogb.nodeproppred import PygNodePropPredDataset
        from torch_geometric.data import Data

        import clbench.datasets.safe_pickle  # noqa: F401  (registers SAFE_GLOBALS)

        folder = _ogb_folder(root, ogb_name)
        with ogb_prompts_answered(folder, _master_version(ogb_name)):
            dataset = PygNodePropPredDataset(ogb_name, root=str(root))
            split = dataset.get_idx_split()
        graph = dataset[0]
        n = int(graph.num_nodes)
        out = Data(x=graph.x, edge_index=graph.edge_index, y=graph.y.view(-1))
        for key, mask_name in (("train", "train_mask"), ("valid", "val_mask"),
                               ("test", "test_mask")):
            idx = torch.as_tensor(split[key]).long().view(-1)
            if idx.numel() and (idx.min() < 0 or idx.max() >= n):
                raise DataError(f"{ogb_name}: split file {key} refers to nodes outside 0..{n - 1}")
            mask = torch.zeros(n, dtype=torch.bool)
            mask[idx] = True
            out[mask_name] = mask
        return out

    return read


def _register(*, name: str, split_dir: str, has_year: bool, stats: dict[str, int],
              tasks: tuple[int, int], description: str, license: str, split: str,
              url: str) -> DatasetCard:
    raw = ["edge", "node-feat", "node-label", "num-node-list", "num-edge-list"]
    if has_year:
        raw.append("node_year")
    files = (
        f"RELEASE_v{OGB_VERSION}.txt",
        *(f"raw/{f}.csv.gz" for f in raw),
        *(f"split/{split_dir}/{part}.csv.gz" for part in ("train", "valid", "test")),
    )
    zip_dir = url.rsplit("/", 1)[1].removesuffix(".zip")
    loader = FileSource(
        name=name, read=_reader(name), folder=_folder_name(name), files=files, url=url,
        official_split=True, prepare=_check_folder(name),
        manual_hint=f"OGB's {zip_dir}.zip unpacks to a folder {zip_dir}/ holding these files: "
                    f"rename it to {_folder_name(name)}",
    )
    return register_dataset(
        DatasetCard(
            name=name, load=loader, num_tasks=tasks[0], classes_per_task=tasks[1],
            description=description,
            source=f"ogb.nodeproppred.PygNodePropPredDataset({name!r}, root), files from {url}",
            license=license, split=split, stats=stats, files=loader.card_files(),
            undirected=True,
        )
    )


for _name, _e in family("ogb"):
    _register(name=_name, split_dir=_e["split_dir"], has_year=_e["has_year"],
              stats=_e["stats"], tasks=tuple(_e["tasks"]), description=_e["description"],
              license=_e["license"], split=_e["split"], url=_e["url"])
