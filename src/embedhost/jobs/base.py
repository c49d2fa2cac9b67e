"""The job store's interface, which the SQLite store (:mod:`embedhost.jobs.store`, one
process) and the PostgreSQL store (:mod:`embedhost.jobs.postgres`, several replicas)
implement, and :func:`open_store`, which picks one from ``jobs.database_url``.

Every method blocks; the runner calls them in a thread. File contents live in a
directory (``files_dir``, ``work_dir`` under ``jobs.data_dir``) in both cases: with
PostgreSQL that directory is shared by the replicas (a ReadWriteMany volume).

Who runs a job: :meth:`JobStore.try_lock` says whether this process may run jobs at all
(SQLite: the one holder of the data directory's flock; PostgreSQL: every replica), and
:meth:`JobStore.claim` hands one job to this process (PostgreSQL: a lease with an expiry
that the runner renews; a lapsed lease is taken over by another replica, which resumes
at the last recorded chunk). A write by a runner that lost its lease raises
:class:`LeaseLost` and changes nothing.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from embedhost.jobs.store import BatchRecord, FileRecord, LeaseLost, SqliteStore

if TYPE_CHECKING:
    from embedhost.config import JobsConfig

__all__ = ["JobStore", "LeaseLost", "open_store", "store_exists"]


class JobStore(Protocol):
    files_dir: Path
    work_dir: Path

    def close(self) -> None: ...

    # files
    def file_path(self, file_id: str) -> Path: ...
    def add_file(
        self, key_id: str | None, src: Path, filename: str, purpose: str, file_id: str
    ) -> FileRecord: ...
    def list_files(
        self, key_id: str | None, purpose: str | None, after: str | None, limit: int
    ) -> tuple[list[FileRecord], bool]: ...
    def has_file(self, file_id: str) -> bool: ...
    def get_file(self, file_id: str, key_id: str | None) -> FileRecord: ...
    def delete_file(self, file_id: str, key_id: str | None) -> None: ...

    # batches
    def add_batch(self, rec: BatchRecord) -> None: ...
    def save(self, rec: BatchRecord) -> bool:
        """The whole record in one write; False when a cancel recorded meanwhile would be
        undone by it; :class:`LeaseLost` when this process no longer holds the job."""
        ...

    def mark_cancelling(self, batch_id: str) -> None: ...
    def status_of(self, batch_id: str) -> str | None: ...
    def get_batch(
        self, batch_id: str, key_id: str | None = None, *, any_owner: bool = False
    ) -> BatchRecord: ...
    def list_batches(
        self, key_id: str | None, after: str | None, limit: int
    ) -> tuple[list[BatchRecord], bool]: ...
    def active_batches(self) -> list[BatchRecord]:
        """Jobs with work left that this process could claim, oldest first."""
        ...

    def count_by_status(self) -> dict[str, int]: ...
    def work_paths(self, batch_id: str) -> tuple[Path, Path]: ...

    # who runs what
    def try_lock(self) -> bool: ...
    def claim(self, batch_id: str) -> BatchRecord | None:
        """Take the job for this process (its record as last saved), or None if another
        holds it."""
        ...

    def renew(self, batch_id: str) -> bool:
        """Extend this process's hold on the job; False when it was lost."""
        ...

    def release(self, batch_id: str) -> None: ...


def open_store(config: JobsConfig) -> JobStore:
    """The store ``config`` names (blocking: it connects, creates tables and directories)."""
    if config.database_url is None:
        return SqliteStore(config.data_dir)
    from embedhost.jobs.postgres import PostgresStore

    return PostgresStore(
        config.database_url.get_secret_value(), config.data_dir, lease_s=config.lease_s
    )


def store_exists(config: JobsConfig) -> bool:
    """Whether reads would find anything (they never create a data directory)."""
    if config.database_url is not None:
        return True
    return (Path(config.data_dir) / "jobs.sqlite3").exists()
