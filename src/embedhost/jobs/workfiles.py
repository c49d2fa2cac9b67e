"""A job's files on disk: reading its input a chunk of lines at a time, checking it before
it runs, and writing its output and error files at their recorded sizes.

The writes are positional (at the size the store recorded after the last chunk, cutting
off anything past it), so what a crashed or superseded runner left after that size is
overwritten rather than kept: on a shared directory a replica that lost its lease cannot
make the next holder's lines land after its own.
"""

from __future__ import annotations

import os
from pathlib import Path

from embedhost.jobs.store import BatchRecord


def write_at(path: Path, offset: int, data: bytes) -> int:
    """Write ``data`` at byte ``offset`` of ``path``, drop what followed, fsync; the new size."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        os.lseek(fd, offset, os.SEEK_SET)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        end = offset + len(data)
        os.ftruncate(fd, end)
        os.fsync(fd)
        return end
    finally:
        os.close(fd)


def nonempty(path: Path) -> bool:
    return path.exists() and path.stat().st_size > 0


def truncate(path: Path, size: int) -> None:
    """Cut a work file back to its recorded size: what a crash left after that is redone."""
    if not path.exists():
        if size:
            raise RuntimeError(f"{path} is missing but {size} bytes were recorded")
        return
    with path.open("r+b") as f:
        f.truncate(size)


def read_chunk(src: Path, offset: int, n: int) -> tuple[list[bytes], int]:
    """Up to ``n`` non-blank lines from byte ``offset``, and the offset after them."""
    out: list[bytes] = []
    with src.open("rb") as f:
        f.seek(offset)
        while len(out) < n:
            raw = f.readline()
            if not raw:
                break
            if raw.strip():
                out.append(raw)
        return out, f.tell()


def validate(src: Path, rec: BatchRecord, max_requests: int) -> dict[str, str] | None:
    """Count the input's lines into ``rec.request_counts``; the problem that fails the job."""
    if not src.exists():
        return {"code": "missing_file", "message": f"input file {rec.input_file_id} is gone"}
    total = 0
    with src.open("rb") as f:
        for raw in f:
            if raw.strip():
                total += 1
    if total == 0:
        return {"code": "empty_file", "message": "the input file has no lines"}
    if total > max_requests:
        return {
            "code": "too_many_requests",
            "message": f"the input file has {total} lines; the limit is {max_requests} per batch",
        }
    rec.request_counts["total"] = total
    return None
