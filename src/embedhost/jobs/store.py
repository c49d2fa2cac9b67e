"""The records (files, batches, progress) and the embedded job store: SQLite plus a files
directory, for one process (:mod:`embedhost.jobs.base` has the interface it implements,
:mod:`embedhost.jobs.postgres` the store several replicas share).

Layout under ``jobs.data_dir``: ``jobs.sqlite3`` (WAL), ``files/<file id>`` (uploads and
finished output/error files), ``work/<batch id>.out`` / ``.err`` (a running job's output
so far). Every method is blocking; :class:`~embedhost.jobs.runner.Jobs` calls them in a
thread, never on the event loop.

Exactly once: a job's progress is one row update per chunk of lines
(:meth:`JobStore.commit_chunk`: the next input line and byte offset, and the sizes of its
output and error files), written after the chunk's lines were appended and fsynced. On a
restart the runner truncates both files to the recorded sizes and resumes at the
recorded line, so a line is never lost once recorded, and never written twice.

One process runs a data directory's jobs: the holder of an exclusive ``flock`` on
``runner.lock`` (:meth:`SqliteStore.try_lock`); the others serve the routes only.
"""

from __future__ import annotations

import fcntl
import json
import os
import secrets
import shutil
import sqlite3
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from embedhost.errors import NotFound

ACTIVE = ("validating", "in_progress", "finalizing", "cancelling")
"""Statuses of a job the runner still has work on."""
STATUSES = (
    "validating",
    "failed",
    "in_progress",
    "finalizing",
    "completed",
    "expired",
    "cancelling",
    "cancelled",
)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS files (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT UNIQUE NOT NULL,
    owner TEXT NOT NULL,
    obj TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS batches (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT UNIQUE NOT NULL,
    owner TEXT NOT NULL,
    status TEXT NOT NULL,
    obj TEXT NOT NULL,
    progress TEXT NOT NULL
);
"""


class LeaseLost(Exception):
    """Another replica took this job over (this one's lease lapsed): stop, write nothing."""


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(12)}"


def _owner(key_id: str | None) -> str:
    # Without keys (auth off) every caller is the same owner.
    return key_id or ""


@dataclass(slots=True)
class FileRecord:
    """OpenAI's file object."""

    id: str
    bytes: int
    created_at: int
    filename: str
    purpose: str
    object: str = "file"
    status: str = "processed"
    status_details: str | None = None
    expires_at: int | None = None

    def to_openai(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(slots=True)
class Progress:
    """Where a job is: the next input line and byte, and its output files' sizes."""

    next_line: int = 0
    in_offset: int = 0
    out_bytes: int = 0
    err_bytes: int = 0


@dataclass(slots=True)
class BatchRecord:
    """OpenAI's batch object, plus the owner (the API key id) and the progress."""

    id: str
    input_file_id: str
    endpoint: str
    completion_window: str
    created_at: int
    expires_at: int
    owner: str = ""
    status: str = "validating"
    metadata: dict[str, str] | None = None
    output_file_id: str | None = None
    error_file_id: str | None = None
    errors: dict[str, Any] | None = None
    in_progress_at: int | None = None
    finalizing_at: int | None = None
    completed_at: int | None = None
    failed_at: int | None = None
    expired_at: int | None = None
    cancelling_at: int | None = None
    cancelled_at: int | None = None
    request_counts: dict[str, int] = field(
        default_factory=lambda: {"total": 0, "completed": 0, "failed": 0}
    )
    progress: Progress = field(default_factory=Progress)

    def to_openai(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("owner")
        d.pop("progress")
        d["object"] = "batch"
        return d

    def stamp(self, status: str) -> None:
        """Move to ``status``, with its ``<status>_at`` time."""
        self.status = status
        attr = f"{status}_at"
        if hasattr(self, attr):
            setattr(self, attr, int(time.time()))


class SqliteStore:
    """SQLite rows and the files directory (see the module docstring)."""

    def __init__(self, data_dir: str | Path) -> None:
        self.root = Path(data_dir)
        self.files_dir = self.root / "files"
        self.work_dir = self.root / "work"
        self.files_dir.mkdir(parents=True, exist_ok=True)
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(
            self.root / "jobs.sqlite3", check_same_thread=False, isolation_level=None
        )
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)
        self._lock = threading.Lock()
        self._lock_fd: int | None = None

    def close(self) -> None:
        with self._lock:
            self._db.close()
            if self._lock_fd is not None:
                os.close(self._lock_fd)  # frees the runner lock
                self._lock_fd = None

    # -- files ----------------------------------------------------------------------------------

    def file_path(self, file_id: str) -> Path:
        return self.files_dir / file_id

    def add_file(
        self, key_id: str | None, src: Path, filename: str, purpose: str, file_id: str
    ) -> FileRecord:
        """Move ``src`` into the store as ``file_id``. The record is written first and the
        move is last, so that a crash in between is repaired by doing it again (a job's
        output files are added under ids derived from the job's)."""
        rec = FileRecord(file_id, src.stat().st_size, int(time.time()), filename, purpose)
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO files (id, owner, obj) VALUES (?, ?, ?)",
                (file_id, _owner(key_id), json.dumps(rec.to_openai())),
            )
        shutil.move(src, self.file_path(file_id))
        return rec

    def list_files(
        self, key_id: str | None, purpose: str | None, after: str | None, limit: int
    ) -> tuple[list[FileRecord], bool]:
        """Newest first, after the file ``after``; and whether more follow."""
        query = "SELECT obj FROM files WHERE owner = ?"
        params: list[object] = [_owner(key_id)]
        if after is not None:
            query += " AND seq < (SELECT seq FROM files WHERE id = ?)"
            params.append(after)
        query += " ORDER BY seq DESC"
        with self._lock:
            rows = self._db.execute(query, params).fetchall()
        recs = [FileRecord(**json.loads(r[0])) for r in rows]
        if purpose is not None:
            recs = [r for r in recs if r.purpose == purpose]
        return recs[:limit], len(recs) > limit

    def has_file(self, file_id: str) -> bool:
        with self._lock:
            row = self._db.execute("SELECT 1 FROM files WHERE id = ?", (file_id,)).fetchone()
        return row is not None and self.file_path(file_id).exists()

    def get_file(self, file_id: str, key_id: str | None) -> FileRecord:
        with self._lock:
            row = self._db.execute(
                "SELECT obj FROM files WHERE id = ? AND owner = ?", (file_id, _owner(key_id))
            ).fetchone()
        if row is None:
            raise NotFound(f"no file with id {file_id!r}", param="file_id")
        return FileRecord(**json.loads(row[0]))

    def delete_file(self, file_id: str, key_id: str | None) -> None:
        self.get_file(file_id, key_id)
        with self._lock:
            self._db.execute("DELETE FROM files WHERE id = ?", (file_id,))
        self.file_path(file_id).unlink(missing_ok=True)

    # -- batches --------------------------------------------------------------------------------

    def add_batch(self, rec: BatchRecord) -> None:
        with self._lock:
            self._db.execute(
                "INSERT INTO batches (id, owner, status, obj, progress) VALUES (?, ?, ?, ?, ?)",
                (rec.id, rec.owner, rec.status, *self._encode(rec)),
            )

    def save(self, rec: BatchRecord) -> bool:
        """Write the whole record (status, counts, progress) in one row update; False (and
        nothing written) when a cancel recorded meanwhile would be undone by it."""
        with self._lock:
            cur = self._db.execute(
                "UPDATE batches SET status = ?, obj = ?, progress = ? WHERE id = ? AND NOT "
                "(status = 'cancelling' AND ? IN ('validating', 'in_progress'))",
                (rec.status, *self._encode(rec), rec.id, rec.status),
            )
            return cur.rowcount == 1

    def mark_cancelling(self, batch_id: str) -> None:
        """Record a cancel, touching nothing else of the row (the runner owns the rest)."""
        with self._lock:
            self._db.execute(
                "UPDATE batches SET status = 'cancelling', obj = json_set(obj, "
                "'$.status', 'cancelling', '$.cancelling_at', ?) "
                "WHERE id = ? AND status IN ('validating', 'in_progress')",
                (int(time.time()), batch_id),
            )

    def status_of(self, batch_id: str) -> str | None:
        with self._lock:
            row = self._db.execute(
                "SELECT status FROM batches WHERE id = ?", (batch_id,)
            ).fetchone()
        return str(row[0]) if row else None

    def try_lock(self) -> bool:
        """Become the one process that runs this directory's jobs (an exclusive ``flock``
        on ``runner.lock``, held until the process exits: a killed runner's lock is freed
        by the kernel, and another process takes over)."""
        if self._lock_fd is not None:
            return True
        fd = os.open(self.root / "runner.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return False
        self._lock_fd = fd
        return True

    def claim(self, batch_id: str) -> BatchRecord | None:
        # The flock holder runs every job of the directory: nothing more to take.
        return self.get_batch(batch_id, any_owner=True)

    def renew(self, batch_id: str) -> bool:
        return self._lock_fd is not None

    def release(self, batch_id: str) -> None:
        pass

    def get_batch(
        self, batch_id: str, key_id: str | None = None, *, any_owner: bool = False
    ) -> BatchRecord:
        with self._lock:
            if any_owner:
                row = self._db.execute(
                    "SELECT owner, obj, progress FROM batches WHERE id = ?", (batch_id,)
                ).fetchone()
            else:
                row = self._db.execute(
                    "SELECT owner, obj, progress FROM batches WHERE id = ? AND owner = ?",
                    (batch_id, _owner(key_id)),
                ).fetchone()
        if row is None:
            raise NotFound(f"no batch with id {batch_id!r}", param="batch_id")
        return self._decode(row)

    def list_batches(
        self, key_id: str | None, after: str | None, limit: int
    ) -> tuple[list[BatchRecord], bool]:
        """Newest first, after the batch ``after``; and whether more follow."""
        owner = _owner(key_id)
        with self._lock:
            if after is None:
                rows = self._db.execute(
                    "SELECT owner, obj, progress FROM batches WHERE owner = ? "
                    "ORDER BY seq DESC LIMIT ?",
                    (owner, limit + 1),
                ).fetchall()
            else:
                rows = self._db.execute(
                    "SELECT owner, obj, progress FROM batches WHERE owner = ? AND seq < "
                    "(SELECT seq FROM batches WHERE id = ?) ORDER BY seq DESC LIMIT ?",
                    (owner, after, limit + 1),
                ).fetchall()
        recs = [self._decode(r) for r in rows]
        return recs[:limit], len(recs) > limit

    def active_batches(self) -> list[BatchRecord]:
        """Jobs with work left, oldest first (what the runner resumes after a restart)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT owner, obj, progress FROM batches WHERE status IN "
                "('validating', 'in_progress', 'finalizing', 'cancelling') ORDER BY seq"
            ).fetchall()
        return [self._decode(r) for r in rows]

    def count_by_status(self) -> dict[str, int]:
        with self._lock:
            rows = self._db.execute(
                "SELECT status, COUNT(*) FROM batches GROUP BY status"
            ).fetchall()
        return {str(s): int(n) for s, n in rows}

    def work_paths(self, batch_id: str) -> tuple[Path, Path]:
        return self.work_dir / f"{batch_id}.out", self.work_dir / f"{batch_id}.err"

    @staticmethod
    def _encode(rec: BatchRecord) -> tuple[str, str]:
        return json.dumps(rec.to_openai()), json.dumps(asdict(rec.progress))

    @staticmethod
    def _decode(row: tuple[str, str, str]) -> BatchRecord:
        owner, obj, progress = row
        d = json.loads(obj)
        d.pop("object", None)
        return BatchRecord(owner=owner, progress=Progress(**json.loads(progress)), **d)
