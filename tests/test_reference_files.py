"""The committed reference files (``results/*-reference.csv``): each loads, and every
method and dataset it names is one clbench knows, so that ``clbench compare --reference``
sets each number beside a row instead of silently matching nothing."""
from __future__ import annotations

from pathlib import Path

import pytest

from clbench.compare import load_reference
from clbench.datasets import DATASETS
from clbench.methods import METHODS

RESULTS = Path(__file__).resolve().parents[1] / "results"
FILES = sorted(RESULTS.glob("*-reference.csv"))


def test_the_reference_files_are_there():
    assert {f.name for f in FILES} >= {"begin-reference.csv", "cglb-reference.csv",
                                       "twp-reference.csv"}


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_every_name_in_a_reference_file_is_known(path: Path):
    reference = load_reference(path)
    methods = set(METHODS.names())
    datasets = set(DATASETS.names())
    for method, dataset, *_ in reference:
        assert method in methods, f"{path.name}: unknown method {method!r}"
        assert dataset in datasets, f"{path.name}: unknown dataset {dataset!r}"
    for values in reference.values():
        assert 0.0 <= values["AP"] <= 1.0
