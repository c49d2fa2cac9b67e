"""The job store several replicas share: job state in PostgreSQL (psycopg 3, the
``embedhost[postgres]`` extra), file contents in ``jobs.data_dir``, a directory every
replica mounts (a ReadWriteMany volume).

A running job is held by a lease, ``lease_owner`` and ``lease_until`` on its row (the
database's clock, so the replicas' clocks do not matter): :meth:`PostgresStore.claim`
takes a job nobody holds or whose lease lapsed, the runner renews it every
``lease_s / 3`` and before writing each chunk, and every write of the job's progress is
fenced on the holder (:class:`~embedhost.jobs.store.LeaseLost` otherwise). A replica that
dies stops renewing; after ``lease_s`` another claims the job and resumes at the last
recorded chunk, so each line is still recorded exactly once.

Blocking, like the SQLite store: one connection (autocommit) behind a lock, reopened once
when the server dropped it; the runner calls every method in a thread.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import threading
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from embedhost.errors import NotFound
from embedhost.jobs.store import ACTIVE, BatchRecord, FileRecord, LeaseLost, Progress, _owner

try:
    import psycopg
    from psycopg.types.json import Jsonb
except ImportError as exc:  # pragma: no cover - the extra is part of the test set
    raise ImportError(
        "jobs.database_url needs PostgreSQL's driver: pip install 'embedhost[postgres]'"
    ) from exc

_SCHEMA = """
CREATE TABLE IF NOT EXISTS embedhost_files (
    seq BIGSERIAL PRIMARY KEY,
    id TEXT UNIQUE NOT NULL,
    owner TEXT NOT NULL,
    obj JSONB NOT NULL
);
CREATE TABLE IF NOT EXISTS embedhost_batches (
    seq BIGSERIAL PRIMARY KEY,
    id TEXT UNIQUE NOT NULL,
    owner TEXT NOT NULL,
    status TEXT NOT NULL,
    obj JSONB NOT NULL,
    progress JSONB NOT NULL,
    lease_owner TEXT,
    lease_until TIMESTAMPTZ
);
CREATE INDEX IF NOT EXISTS embedhost_batches_status ON embedhost_batches (status);
"""
_SCHEMA_LOCK = 0x23_0B47C4  # one replica creates the tables at a time


class PostgresStore:
    """PostgreSQL rows and a shared files directory (see the module docstring)."""

    def __init__(self, url: str, data_dir: str | Path, *, lease_s: float = 30.0) -> None:
        self.url = url
        self.lease_s = lease_s
        self.holder = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        """This process, as a lease owner."""
        root = Path(data_dir)
        self.files_dir = root / "files"
        self.work_dir = root / "work"
        self.files_dir.mkdir(parents=True, exist_ok=True)
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = self._connect()
        with self._lock, self._db.transaction():
            self._db.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
            self._db.execute(_SCHEMA.encode())

    def _connect(self) -> psycopg.Connection[tuple[Any, ...]]:
        return psycopg.connect(self.url, autocommit=True, connect_timeout=10)

    def _rows(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            try:
                return self._db.execute(sql.encode(), params).fetchall()
            except psycopg.OperationalError:
                if not self._db.closed:
                    raise
                self._db = self._connect()  # the server restarted or dropped us: once more
                return self._db.execute(sql.encode(), params).fetchall()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # -- files ----------------------------------------------------------------------------------

    def file_path(self, file_id: str) -> Path:
        return self.files_dir / file_id

    def add_file(
        self, key_id: str | None, src: Path, filename: str, purpose: str, file_id: str
    ) -> FileRecord:
        # Record first, move last (as the SQLite store): redoing it after a crash is safe.
        rec = FileRecord(file_id, src.stat().st_size, int(time.time()), filename, purpose)
        self._rows(
            "INSERT INTO embedhost_files (id, owner, obj) VALUES (%s, %s, %s) ON CONFLICT (id) "
            "DO UPDATE SET owner = EXCLUDED.owner, obj = EXCLUDED.obj RETURNING seq",
            (file_id, _owner(key_id), Jsonb(rec.to_openai())),
        )
        shutil.move(src, self.file_path(file_id))
        return rec

    def list_files(
        self, key_id: str | None, purpose: str | None, after: str | None, limit: int
    ) -> tuple[list[FileRecord], bool]:
        sql = "SELECT obj FROM embedhost_files WHERE owner = %s"
        params: list[Any] = [_owner(key_id)]
        if purpose is not None:
            sql += " AND obj->>'purpose' = %s"
            params.append(purpose)
        if after is not None:
            sql += " AND seq < (SELECT seq FROM embedhost_files WHERE id = %s)"
            params.append(after)
        sql += " ORDER BY seq DESC LIMIT %s"
        params.append(limit + 1)
        recs = [FileRecord(**r[0]) for r in self._rows(sql, tuple(params))]
        return recs[:limit], len(recs) > limit

    def has_file(self, file_id: str) -> bool:
        rows = self._rows("SELECT 1 FROM embedhost_files WHERE id = %s", (file_id,))
        return bool(rows) and self.file_path(file_id).exists()

    def get_file(self, file_id: str, key_id: str | None) -> FileRecord:
        rows = self._rows(
            "SELECT obj FROM embedhost_files WHERE id = %s AND owner = %s",
            (file_id, _owner(key_id)),
        )
        if not rows:
            raise NotFound(f"no file with id {file_id!r}", param="file_id")
        return FileRecord(**rows[0][0])

    def delete_file(self, file_id: str, key_id: str | None) -> None:
        self.get_file(file_id, key_id)
        self._rows("DELETE FROM embedhost_files WHERE id = %s RETURNING 1", (file_id,))
        self.file_path(file_id).unlink(missing_ok=True)

    # -- batches --------------------------------------------------------------------------------

    def add_batch(self, rec: BatchRecord) -> None:
        self._rows(
            "INSERT INTO embedhost_batches (id, owner, status, obj, progress) "
            "VALUES (%s, %s, %s, %s, %s) RETURNING seq",
            (rec.id, rec.owner, rec.status, *_encode(rec)),
        )

    def save(self, rec: BatchRecord) -> bool:
        rows = self._rows(
            "UPDATE embedhost_batches SET status = %s, obj = %s, progress = %s "
            "WHERE id = %s AND lease_owner = %s AND NOT "
            "(status = 'cancelling' AND %s IN ('validating', 'in_progress')) RETURNING 1",
            (rec.status, *_encode(rec), rec.id, self.holder, rec.status),
        )
        if rows:
            return True
        held = self._rows(
            "SELECT 1 FROM embedhost_batches WHERE id = %s AND lease_owner = %s",
            (rec.id, self.holder),
        )
        if not held:
            raise LeaseLost(rec.id)
        return False

    def mark_cancelling(self, batch_id: str) -> None:
        self._rows(
            "UPDATE embedhost_batches SET status = 'cancelling', obj = obj || "
            "jsonb_build_object('status', 'cancelling', 'cancelling_at', %s::bigint) "
            "WHERE id = %s AND status IN ('validating', 'in_progress') RETURNING 1",
            (int(time.time()), batch_id),
        )

    def status_of(self, batch_id: str) -> str | None:
        rows = self._rows("SELECT status FROM embedhost_batches WHERE id = %s", (batch_id,))
        return str(rows[0][0]) if rows else None

    def get_batch(
        self, batch_id: str, key_id: str | None = None, *, any_owner: bool = False
    ) -> BatchRecord:
        if any_owner:
            rows = self._rows(
                "SELECT owner, obj, progress FROM embedhost_batches WHERE id = %s", (batch_id,)
            )
        else:
            rows = self._rows(
                "SELECT owner, obj, progress FROM embedhost_batches WHERE id = %s AND owner = %s",
                (batch_id, _owner(key_id)),
            )
        if not rows:
            raise NotFound(f"no batch with id {batch_id!r}", param="batch_id")
        return _decode(rows[0])

    def list_batches(
        self, key_id: str | None, after: str | None, limit: int
    ) -> tuple[list[BatchRecord], bool]:
        sql = "SELECT owner, obj, progress FROM embedhost_batches WHERE owner = %s"
        params: list[Any] = [_owner(key_id)]
        if after is not None:
            sql += " AND seq < (SELECT seq FROM embedhost_batches WHERE id = %s)"
            params.append(after)
        sql += " ORDER BY seq DESC LIMIT %s"
        params.append(limit + 1)
        recs = [_decode(r) for r in self._rows(sql, tuple(params))]
        return recs[:limit], len(recs) > limit

    def active_batches(self) -> list[BatchRecord]:
        rows = self._rows(
            "SELECT owner, obj, progress FROM embedhost_batches WHERE status = ANY(%s) AND "
            "(lease_owner IS NULL OR lease_owner = %s OR lease_until < now()) ORDER BY seq",
            (list(ACTIVE), self.holder),
        )
        return [_decode(r) for r in rows]

    def count_by_status(self) -> dict[str, int]:
        rows = self._rows("SELECT status, COUNT(*) FROM embedhost_batches GROUP BY status")
        return {str(s): int(n) for s, n in rows}

    def work_paths(self, batch_id: str) -> tuple[Path, Path]:
        return self.work_dir / f"{batch_id}.out", self.work_dir / f"{batch_id}.err"

    # -- leases ---------------------------------------------------------------------------------

    def try_lock(self) -> bool:
        return True  # every replica runs jobs; each job is held by its own lease

    def claim(self, batch_id: str) -> BatchRecord | None:
        rows = self._rows(
            "UPDATE embedhost_batches SET lease_owner = %s, "
            "lease_until = now() + make_interval(secs => %s) WHERE id = %s AND "
            "status = ANY(%s) AND (lease_owner IS NULL OR lease_owner = %s OR "
            "lease_until < now()) RETURNING owner, obj, progress",
            (self.holder, self.lease_s, batch_id, list(ACTIVE), self.holder),
        )
        return _decode(rows[0]) if rows else None

    def renew(self, batch_id: str) -> bool:
        rows = self._rows(
            "UPDATE embedhost_batches SET lease_until = now() + make_interval(secs => %s) "
            "WHERE id = %s AND lease_owner = %s RETURNING 1",
            (self.lease_s, batch_id, self.holder),
        )
        return bool(rows)

    def release(self, batch_id: str) -> None:
        self._rows(
            "UPDATE embedhost_batches SET lease_owner = NULL, lease_until = NULL "
            "WHERE id = %s AND lease_owner = %s RETURNING 1",
            (batch_id, self.holder),
        )


def _encode(rec: BatchRecord) -> tuple[Jsonb, Jsonb]:
    return Jsonb(rec.to_openai()), Jsonb(asdict(rec.progress))


def _decode(row: tuple[Any, ...]) -> BatchRecord:
    owner, obj, progress = row
    d = dict(obj)
    d.pop("object", None)
    return BatchRecord(owner=owner, progress=Progress(**progress), **d)
