"""A weight file already hashed in this process tree is not hashed again while it is
unchanged, and is hashed again (and checked) as soon as it changes."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import pytest

from embedhost import modelfiles
from embedhost.errors import ChecksumMismatch
from embedhost.modelfiles import HASH_STATS, hashed_files, remember, verify_checksum
from tests.support.wait import wait_until


@dataclass
class Pinned:
    path: str
    checksum: str | None
    ref: str = "m@1"

    def resolved_path(self) -> Path:
        return Path(self.path)


def counts() -> tuple[int, int]:
    return HASH_STATS.hashed_files, HASH_STATS.skipped_files


@pytest.fixture(autouse=True)
def _fresh(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(modelfiles, "_HASHED", {})


def test_unchanged_file_is_not_hashed_again(tmp_path: Path) -> None:
    f = tmp_path / "model.gguf"
    f.write_bytes(b"weights" * 1000)
    model = Pinned(str(f), "sha256:" + hashlib.sha256(f.read_bytes()).hexdigest())
    h0, s0 = counts()
    assert verify_checksum(model) == model.checksum
    assert counts() == (h0 + 1, s0)
    assert verify_checksum(model) == model.checksum
    assert counts() == (h0 + 1, s0 + 1)  # skipped


def test_changed_file_is_hashed_again(tmp_path: Path) -> None:
    f = tmp_path / "model.gguf"
    f.write_bytes(b"weights" * 1000)
    model = Pinned(str(f), "sha256:" + hashlib.sha256(f.read_bytes()).hexdigest())
    verify_checksum(model)
    # Same size, same mtime (set back): the ctime still moves, so it is hashed again.
    st = f.stat()
    f.write_bytes(b"WEIGHTS" * 1000)

    def mtime_set_back_ctime_moved() -> bool:
        # The ctime clock ticks coarsely on some filesystems (a jiffy): set the mtime back
        # until the ctime has left the recorded one, as any later change would.
        os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
        return f.stat().st_ctime_ns != st.st_ctime_ns

    wait_until(mtime_set_back_ctime_moved, "the file's ctime to move", timeout=10, every=0.001)
    h0, s0 = counts()
    with pytest.raises(ChecksumMismatch):
        verify_checksum(model)
    assert counts() == (h0 + 1, s0)
    # Replaced by another file (new inode) with the pinned content: hashed, and it passes.
    g = tmp_path / "new.gguf"
    g.write_bytes(b"weights" * 1000)
    g.replace(f)
    assert verify_checksum(model) == model.checksum
    assert counts() == (h0 + 2, s0)


def test_entries_travel_between_processes_of_the_tree(tmp_path: Path) -> None:
    f = tmp_path / "model.gguf"
    f.write_bytes(b"abc" * 100)
    model = Pinned(str(f), "sha256:" + hashlib.sha256(f.read_bytes()).hexdigest())
    verify_checksum(model)
    entries = hashed_files()  # what a worker sends back to its supervisor
    modelfiles._HASHED.clear()  # a fresh worker process
    remember(entries)  # what the supervisor hands to it
    h0, s0 = counts()
    verify_checksum(model)
    assert counts() == (h0, s0 + 1)
