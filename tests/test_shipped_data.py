"""The real data shipped in tests/data: every file is the published one, and no more."""

from __future__ import annotations

import hashlib
import re

from datahelpers import SHARED_DATA


def listed_checksums() -> dict[str, str]:
    """``relative path -> sha256`` from the checksum block of tests/data/README.md."""
    text = (SHARED_DATA / "README.md").read_text()
    block = text.split("## Checksums (sha256)", 1)[1]
    return {path: digest for digest, path in re.findall(r"^([0-9a-f]{64})  (\S+)$", block,
                                                          flags=re.MULTILINE)}


def test_every_shipped_file_matches_its_published_checksum():
    listed = listed_checksums()
    present = {str(p.relative_to(SHARED_DATA)) for p in SHARED_DATA.rglob("*")
               if p.is_file() and p.name != "README.md"}
    assert len(listed) == 23  # Cora 8, CiteSeer 8, Amazon 1, Coauthor 1, arxiv labels 5
    assert present == set(listed), "tests/data holds other files than its README lists"
    for rel, digest in listed.items():
        assert hashlib.sha256((SHARED_DATA / rel).read_bytes()).hexdigest() == digest, rel
