"""Datasets read by PyG's own loaders: Planetoid, CoraFull, Amazon, Coauthor, CitationFull,
Reddit.

Folders below the data root follow PyG's defaults, so an existing PyG data
folder can be used as ``--data-dir`` directly: ``Cora/raw/ind.cora.*``,
``Computers/raw/amazon_electronics_computers.npz``, ``CS/raw/ms_academic_cs.npz``
and so on. The CitationFull graphs (including CoraFull) live one level down, in
``CitationFull/<name>/``, because PyG's default ``cora/`` and ``citeseer/``
folders would collide with Planetoid's ``Cora/`` and ``CiteSeer/`` on
case-insensitive file systems. Reddit's two ``.npz`` files are in ``Reddit/raw/``
(PyG downloads them as one zip).

Planetoid's raw files are pickles: they are checked against their published
sha256 (on the cards) and, if they differ, unpickled only through a restricted
unpickler (see :mod:`clbench.datasets.planetoid`). The other datasets here are
``.npz`` archives, which PyG reads with ``numpy.load`` (Reddit's graph with
``scipy.sparse.load_npz``), whose ``allow_pickle`` is off. Processed files are
read under the guards of :mod:`clbench.datasets.loading`.

Planetoid datasets keep their public split and Reddit GraphSAGE's; every other
dataset here has no official split and gets the stratified 60/20/20 split drawn from the split seed.
Default Task-IL splits use two classes per task (BeGin's for Cora and CiteSeer;
CoraFull's 35 x 2 as in BeGin and CGLB), dropping the last class when the
number of classes is odd. See ``datasets/README.md``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from clbench.datasets.base import DatasetCard, register_dataset
from clbench.datasets.catalog import family
from clbench.datasets.loading import FileSource
from clbench.datasets.planetoid import (
    DIGESTS,
    raw_file_names,
    verified_planetoid_class,
    verify_raw_files,
)

PLANETOID_URL = "https://github.com/kimiyoung/planetoid/raw/master/data"
SHCHUR_URL = "https://github.com/shchur/gnn-benchmark/raw/master/data/npz/"
G2G_URL = "https://github.com/abojchevski/graph2gauss/raw/master/data/"
CITATION_FULL_DIR = "CitationFull"

if TYPE_CHECKING:  # pragma: no cover
    from torch_geometric.data import Data

STRATIFIED = ("stratified random 60/20/20 (scikit-learn, stratified by class) drawn from "
              "the split seed; the dataset has no official split")


def _plain(data: Data, masks: bool) -> Data:
    """Keep only the fields the protocol uses (PyG returns a fresh copy already)."""
    from torch_geometric.data import Data

    out = Data(x=data.x, edge_index=data.edge_index, y=data.y.view(-1))
    if masks:
        out.train_mask, out.val_mask, out.test_mask = data.train_mask, data.val_mask, data.test_mask
    return out


def _register(
    *, name: str, read, folder: str, files: tuple[str, ...], url: str, official: bool,
    tasks: tuple[int, int], stats: dict[str, int], description: str, source: str,
    license: str, split: str, sha256: Mapping[str, str] | None = None,
) -> DatasetCard:
    """Register a PyG dataset; ``sha256`` maps file names (as in ``files``) to digests."""
    loader = FileSource(name=name, read=read, folder=folder, files=files, url=url,
                        official_split=official)
    digests = {f"{folder}/{f}": d for f, d in (sha256 or {}).items()}
    return register_dataset(
        DatasetCard(
            name=name, load=loader, num_tasks=tasks[0], classes_per_task=tasks[1],
            description=description, source=source, license=license, split=split,
            stats=stats, files=loader.card_files(), undirected=True, sha256=digests,
        )
    )


# -- Planetoid (public split) ---------------------------------------------------------
def _planetoid_reader(pyg_name: str, name: str, digests: Mapping[str, str]):
    """PyG's Planetoid, with the raw files vetted (``digests``: file name -> sha256)."""

    def read(root: Path) -> Data:
        # files already here are vetted before PyG opens (or announces) anything;
        # VerifiedPlanetoid vets them again, with any it downloaded, before reading
        verify_raw_files(root / pyg_name / "raw", pyg_name.lower(), digests, name)
        dataset = verified_planetoid_class()(str(root), pyg_name, split="public",
                                             digests=digests, label=name)
        return _plain(dataset[0], masks=True)

    return read


_PLANETOID_LICENSE = ("planetoid repository: MIT; the underlying LINQS citation data carries no "
                      "explicit license and is distributed for research use")

for _name, _e in family("planetoid"):
    _pyg, _stats = _e["pyg_name"], _e["stats"]
    _register(
        name=_name, read=_planetoid_reader(_pyg, _name, DIGESTS[_name]), folder=_pyg,
        files=tuple(f"raw/{f}" for f in raw_file_names(_pyg.lower())),
        sha256={f"raw/{f}": d for f, d in DIGESTS[_name].items()},
        url=PLANETOID_URL, official=True, tasks=tuple(_e["tasks"]), stats=_stats,
        description=_e["description"],
        source=f"torch_geometric.datasets.Planetoid(root, {_pyg!r}, split='public'), "
               f"files from {PLANETOID_URL}",
        license=_PLANETOID_LICENSE,
        split=f"Planetoid public split: 20 training nodes per class, {_stats['val']} "
              f"validation and {_stats['test']} test nodes (Yang et al. 2016)",
    )


# -- Amazon and Coauthor (shchur/gnn-benchmark npz files) ----------------------------
def _npz_reader(pyg_class: str, pyg_name: str):
    """``torch_geometric.datasets.<pyg_class>`` (Amazon or Coauthor) of ``pyg_name``."""
    def read(root: Path) -> Data:
        from torch_geometric import datasets

        cls = getattr(datasets, pyg_class)
        return _plain(cls(str(root), pyg_name)[0], masks=False)

    return read


for _name, _e in family("npz"):
    _cls, _pyg, _file = _e["pyg_class"], _e["pyg_name"], _e["file"]
    _register(
        name=_name, read=_npz_reader(_cls, _pyg), folder=_pyg, files=(f"raw/{_file}",),
        url=SHCHUR_URL + _file, official=False, tasks=tuple(_e["tasks"]), stats=_e["stats"],
        description=_e["description"],
        source=f"torch_geometric.datasets.{_cls}(root, {_pyg!r}), file from {SHCHUR_URL}",
        license=_e["license"], split=STRATIFIED,
    )


# -- CitationFull and CoraFull (graph2gauss npz files) -------------------------------
def _citation_full_reader(pyg_name: str):
    def read(root: Path) -> Data:
        from torch_geometric.datasets import CitationFull, CoraFull

        base = str(root / CITATION_FULL_DIR)
        dataset = CoraFull(base) if pyg_name == "cora" else CitationFull(base, pyg_name)
        return _plain(dataset[0], masks=False)

    return read


_G2G_LICENSE = ("graph2gauss repository: MIT; the underlying citation data (Cora, CiteSeer, "
                "DBLP collections) is distributed for research use")

for _name, _e in family("citation-full"):
    _pyg = _e["pyg_name"]
    _register(
        name=_name, read=_citation_full_reader(_pyg), folder=f"{CITATION_FULL_DIR}/{_pyg}",
        files=(f"raw/{_pyg}.npz",), url=f"{G2G_URL}{_pyg}.npz", official=False,
        tasks=tuple(_e["tasks"]), stats=_e["stats"], description=_e["description"],
        source=f"torch_geometric.datasets.{_e['pyg_call']} with root <data root>/"
               f"{CITATION_FULL_DIR}, file from {G2G_URL}",
        license=_G2G_LICENSE, split=STRATIFIED,
    )


# -- Reddit (GraphSAGE's posts graph; DGL's copy, as PyG downloads it) ------------------
def _reddit_read(root: Path) -> Data:
    from torch_geometric.datasets import Reddit

    return _plain(Reddit(str(root / "Reddit"))[0], masks=True)


for _name, _e in family("reddit"):
    _register(
        name=_name, read=_reddit_read, folder="Reddit",
        files=("raw/reddit_data.npz", "raw/reddit_graph.npz"), url=_e["url"], official=True,
        tasks=tuple(_e["tasks"]), stats=_e["stats"], description=_e["description"],
        source=f"torch_geometric.datasets.Reddit(<data root>/Reddit), files from {_e['url']}",
        license=_e["license"], split=_e["split"],
    )
