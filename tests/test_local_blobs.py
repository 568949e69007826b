"""The embedded mode's blob store: a folder on disk, written atomically, with keys that cannot leave it."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from workers.storage import LocalBlobStore


def test_put_writes_overwrites_and_survives_its_folder_being_removed(tmp_path: Path) -> None:
    blobs = LocalBlobStore(tmp_path / "blobs")
    key = "heatmaps/m1/ab/abcdef/face-0.jpg"
    assert blobs.put(key, b"first") == key
    assert blobs.get(key) == b"first" and blobs.exists(key)
    blobs.put(key, b"second")  # the same content address again: replaced whole
    assert blobs.get(key) == b"second"
    # the store remembers the folders it made; one removed behind its back (a deleted home, an erasure sweep)
    # is made again rather than failing the write
    shutil.rmtree(tmp_path / "blobs" / "heatmaps")
    blobs.put(key, b"third")
    assert blobs.get(key) == b"third"
    assert not [p for p in (tmp_path / "blobs").rglob("*") if p.name.endswith(".tmp")]  # no temp file left


@pytest.mark.parametrize("key", ["", "/etc/passwd", "a/../../x", "a//b", "./a"])
def test_put_refuses_keys_outside_the_folder(tmp_path: Path, key: str) -> None:
    with pytest.raises(ValueError, match="unsafe blob key"):
        LocalBlobStore(tmp_path).put(key, b"x")
