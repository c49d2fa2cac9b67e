"""Running batch jobs: :class:`Jobs`, what the Batch API routes call, and the runner loop.

A job goes ``validating`` (its input file counted against ``jobs.max_requests``) ->
``in_progress`` -> ``finalizing`` -> ``completed``; or ``failed`` (no such input, too many
lines, no lines), ``cancelling`` -> ``cancelled``, or ``expired`` once
``completion_window`` has passed. Cancelled and expired jobs keep the lines they finished.

Lines are read, embedded and written ``jobs.chunk_lines`` at a time, in input order; the
lines of a chunk go to the embedding service together, as separate requests at ``batch``
priority (the batcher's batch lane, :mod:`embedhost.lanes`), through the vector cache, as
the job's owner: its API key's allowed models and token budget apply. A line refused for
now (the batch lane full, the token budget spent, no model ready) waits and is retried:
over budget, a job pauses; it does not fail. See :mod:`embedhost.jobs.store` for how a
chunk is recorded exactly once.

Who runs a job: with SQLite, the one process holding the data directory's lock; with
PostgreSQL (several replicas), the replica holding the job's lease, renewed every
``jobs.lease_s / 3`` and before each chunk is written. A replica that dies lets its lease
lapse and another claims the job; one that finds its lease lost stops without writing
(:mod:`embedhost.jobs.base`).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING

from embedhost.config import ApiKeyConfig, Settings
from embedhost.errors import (
    EmbedhostError,
    InvalidRequest,
    ModelNotReady,
    NotFound,
    Overloaded,
    PayloadTooLarge,
    QueueFull,
    RateLimited,
    RateLimiterUnavailable,
    ShuttingDown,
)
from embedhost.jobs import lines
from embedhost.jobs.base import JobStore, LeaseLost, open_store, store_exists
from embedhost.jobs.store import BatchRecord, FileRecord, new_id
from embedhost.jobs.workfiles import nonempty, read_chunk, truncate, validate, write_at
from embedhost.security.admission import Admission, Security
from embedhost.security.keys import all_keys
from embedhost.service import EmbeddingService, EmbedOptions

if TYPE_CHECKING:
    from embedhost.models.registry import ModelRegistry

log = logging.getLogger(__name__)

WINDOWS = ("24h",)
# Refused for now: the line waits and is retried (a job over budget pauses, not fails).
_TRANSIENT = (
    QueueFull,
    RateLimited,
    ModelNotReady,
    Overloaded,
    RateLimiterUnavailable,
    ShuttingDown,
)
_MAX_PAUSE_S = 30.0


class _Stop(Exception):
    """The job was cancelled or expired while a line waited."""


class Jobs:
    """The Batch API's state: the store (opened on first use), the running jobs."""

    def __init__(self, settings: Settings, security: Security) -> None:
        self.config = settings.jobs
        self.security = security
        self._keys: dict[str, ApiKeyConfig] = {k.id: k for k in all_keys(settings)}
        self._store: JobStore | None = None
        self._open = asyncio.Lock()
        self.service: EmbeddingService | None = None
        self._running: dict[str, asyncio.Task[None]] = {}
        self._cancel: set[str] = set()
        self._wake = asyncio.Event()
        self._loop: asyncio.Task[None] | None = None
        self._runs_here = False
        self._renewed = 0.0
        self.lines = {"completed": 0, "failed": 0}
        """Lines finished by this process since it started (the metrics)."""
        self.waiting = 0
        """Lines refused for now (token budget spent, batch lane full) and waiting to retry."""

    # -- lifecycle ------------------------------------------------------------------------------

    @property
    def registry(self) -> ModelRegistry | None:
        return self.service.registry if self.service is not None else None

    def start(self, service: EmbeddingService) -> None:
        self.service = service
        self._loop = asyncio.get_running_loop().create_task(self._supervise(), name="jobs")

    async def stop(self) -> None:
        held = list(self._running)
        tasks = [t for t in (self._loop, *self._running.values()) if t is not None]
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        if self._store is not None:
            for batch_id in held:  # another replica takes them over now, not after lease_s
                with contextlib.suppress(Exception):
                    await asyncio.to_thread(self._store.release, batch_id)
            await asyncio.to_thread(self._store.close)
            self._store = None

    async def store(self) -> JobStore:
        if self._store is None:
            async with self._open:
                if self._store is None:
                    self._store = await asyncio.to_thread(open_store, self.config)
        return self._store

    async def existing_store(self) -> JobStore | None:
        """The store if one exists: reads (a list, a lookup) never create a data directory."""
        if self._store is None and not await asyncio.to_thread(store_exists, self.config):
            return None
        return await self.store()

    async def _reading(self, what: str, param: str) -> JobStore:
        store = await self.existing_store()
        if store is None:
            raise NotFound(f"no {what} with that id", param=param)
        return store

    def peek_store(self) -> JobStore | None:
        """The store if it is open (the metrics do not open it)."""
        return self._store

    # -- files ------------------------------------------------------------------------------------

    async def add_file(
        self,
        key_id: str | None,
        src: Path,
        filename: str,
        purpose: str,
        file_id: str | None = None,
    ) -> FileRecord:
        store = await self.store()
        return await asyncio.to_thread(
            store.add_file, key_id, src, filename, purpose, file_id or new_id("file")
        )

    async def file(self, file_id: str, key_id: str | None) -> FileRecord:
        store = await self._reading("file", "file_id")
        return await asyncio.to_thread(store.get_file, file_id, key_id)

    async def files(
        self, key_id: str | None, purpose: str | None, after: str | None, limit: int
    ) -> tuple[list[FileRecord], bool]:
        store = await self.existing_store()
        if store is None:
            return [], False
        return await asyncio.to_thread(store.list_files, key_id, purpose, after, limit)

    async def file_content(self, file_id: str, key_id: str | None) -> Path:
        store = await self._reading("file", "file_id")
        await asyncio.to_thread(store.get_file, file_id, key_id)
        return store.file_path(file_id)

    async def delete_file(self, file_id: str, key_id: str | None) -> None:
        store = await self._reading("file", "file_id")
        await asyncio.to_thread(store.delete_file, file_id, key_id)

    # -- batches ----------------------------------------------------------------------------------

    async def create(
        self,
        key_id: str | None,
        input_file_id: str,
        endpoint: str,
        completion_window: str,
        metadata: dict[str, str] | None,
    ) -> BatchRecord:
        if endpoint != lines.ENDPOINT:
            raise InvalidRequest(
                f"endpoint {endpoint!r} is not served here; batches run {lines.ENDPOINT}",
                param="endpoint",
            )
        if completion_window not in WINDOWS:
            raise InvalidRequest(
                f"completion_window must be one of {', '.join(WINDOWS)}", param="completion_window"
            )
        inp = await self.file(input_file_id, key_id)
        if inp.purpose != "batch":
            raise InvalidRequest(
                f"file {input_file_id} has purpose {inp.purpose!r}, not 'batch'",
                param="input_file_id",
            )
        now = int(time.time())
        rec = BatchRecord(
            id=new_id("batch"),
            input_file_id=input_file_id,
            endpoint=endpoint,
            completion_window=completion_window,
            created_at=now,
            expires_at=now + int(self.config.completion_window_s),
            owner=key_id or "",
            metadata=metadata,
        )
        store = await self.store()
        await asyncio.to_thread(store.add_batch, rec)
        self._wake.set()
        return rec

    async def get(self, batch_id: str, key_id: str | None) -> BatchRecord:
        store = await self._reading("batch", "batch_id")
        return await asyncio.to_thread(store.get_batch, batch_id, key_id)

    async def list(
        self, key_id: str | None, after: str | None, limit: int
    ) -> tuple[list[BatchRecord], bool]:
        store = await self.existing_store()
        if store is None:
            return [], False
        return await asyncio.to_thread(store.list_batches, key_id, after, limit)

    async def cancel(self, batch_id: str, key_id: str | None) -> BatchRecord:
        store = await self._reading("batch", "batch_id")
        rec = await asyncio.to_thread(store.get_batch, batch_id, key_id)
        if rec.status not in ("validating", "in_progress", "cancelling"):
            raise InvalidRequest(
                f"batch {batch_id} is {rec.status}; only a running batch can be cancelled",
                param="batch_id",
            )
        self._cancel.add(batch_id)
        await asyncio.to_thread(store.mark_cancelling, batch_id)
        self._wake.set()
        return await asyncio.to_thread(store.get_batch, batch_id, key_id)

    # -- the runner -------------------------------------------------------------------------------

    async def _supervise(self) -> None:
        while True:
            try:
                await self._tick()
            except Exception:  # the database unreachable, say: try again on the next tick
                log.exception("reading the job store failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), min(1.0, self.config.lease_s / 3))
            self._wake.clear()

    async def _tick(self) -> None:
        # Resume what a previous run left, but do not create a store nobody asked for.
        store = await self.existing_store()
        if store is None:
            return
        if not self._runs_here:
            # Another process holds this directory's runner lock: serve the routes only,
            # and take over if it goes away.
            self._runs_here = await asyncio.to_thread(store.try_lock)
            if not self._runs_here:
                return
        await self._renew(store)
        for found in await asyncio.to_thread(store.active_batches):
            if found.id in self._running or len(self._running) >= self.config.max_running:
                continue
            rec = await asyncio.to_thread(store.claim, found.id)
            if rec is None:  # another replica took it meanwhile
                continue
            task = asyncio.get_running_loop().create_task(self._run(rec), name=rec.id)
            self._running[rec.id] = task
            task.add_done_callback(functools.partial(self._done, rec.id))

    async def _renew(self, store: JobStore) -> None:
        """Renew the leases of the jobs running here; stop those whose lease was lost."""
        if time.monotonic() - self._renewed < self.config.lease_s / 3:
            return
        self._renewed = time.monotonic()
        for batch_id, task in list(self._running.items()):
            if not await asyncio.to_thread(store.renew, batch_id):
                log.warning("batch %s: lease lost to another replica; stopping here", batch_id)
                task.cancel()

    def _done(self, batch_id: str, _task: object = None) -> None:
        self._running.pop(batch_id, None)
        self._cancel.discard(batch_id)
        self._wake.set()

    async def _run(self, rec: BatchRecord) -> None:
        store = await self.store()
        try:
            await self._job(store, rec)
            await asyncio.to_thread(store.release, rec.id)
        except asyncio.CancelledError:
            raise
        except LeaseLost:
            log.warning("batch %s: lease lost to another replica; stopping here", rec.id)
        except Exception:
            log.exception("batch %s failed", rec.id)
            rec.errors = {
                "object": "list",
                "data": [{"code": "server_error", "message": "the job failed on the server"}],
            }
            rec.stamp("failed")
            with contextlib.suppress(LeaseLost):
                await self._save(store, rec)
                await asyncio.to_thread(store.release, rec.id)

    async def _job(self, store: JobStore, rec: BatchRecord) -> None:
        src = store.file_path(rec.input_file_id)
        if rec.status == "validating":
            problem = await asyncio.to_thread(validate, src, rec, self.config.max_requests)
            if problem is not None:
                rec.errors = {"object": "list", "data": [problem]}
                rec.stamp("failed")
                await self._save(store, rec)
                return
            rec.stamp("in_progress")
            await self._save(store, rec)
        out_p, err_p = store.work_paths(rec.id)
        if rec.status == "finalizing":  # a restart while its files were being kept
            await self._finish(store, rec, "completed", out_p, err_p)
            return
        await asyncio.to_thread(truncate, out_p, rec.progress.out_bytes)
        await asyncio.to_thread(truncate, err_p, rec.progress.err_bytes)
        key = self._keys.get(rec.owner) if rec.owner else None
        admission = Admission(key, f"batch:{rec.id}", self.security)
        end = "completed"
        while True:
            await self._cancelled_elsewhere(store, rec)
            end = self._stop_reason(rec) or "completed"
            if end != "completed":
                break
            chunk, offset = await asyncio.to_thread(
                read_chunk, src, rec.progress.in_offset, self.config.chunk_lines
            )
            if not chunk:
                break
            try:
                answers = await asyncio.gather(
                    *(self._answer(raw, rec, admission) for raw in chunk)
                )
            except _Stop:
                end = self._stop_reason(rec) or "cancelled"
                break
            out, err = await asyncio.to_thread(lines.render, list(answers))
            p = rec.progress
            if not await asyncio.to_thread(store.renew, rec.id):
                raise LeaseLost(rec.id)  # another replica resumed it: write nothing
            if out:
                p.out_bytes = await asyncio.to_thread(write_at, out_p, p.out_bytes, out)
            if err:
                p.err_bytes = await asyncio.to_thread(write_at, err_p, p.err_bytes, err)
            ok = sum(1 for a in answers if a.ok)
            rec.request_counts["completed"] += ok
            rec.request_counts["failed"] += len(answers) - ok
            p.next_line += len(chunk)
            p.in_offset = offset
            if rec.id in self._cancel and rec.status != "cancelling":
                rec.stamp("cancelling")
            await self._save(store, rec)
            self.lines["completed"] += ok
            self.lines["failed"] += len(answers) - ok
        await self._finish(store, rec, end, out_p, err_p)

    async def _save(self, store: JobStore, rec: BatchRecord) -> None:
        if not await asyncio.to_thread(store.save, rec):
            # Cancelled meanwhile (through this process or another sharing the store).
            self._cancel.add(rec.id)
            rec.stamp("cancelling")
            await asyncio.to_thread(store.save, rec)

    async def _cancelled_elsewhere(self, store: JobStore, rec: BatchRecord) -> None:
        if (
            rec.id not in self._cancel
            and await asyncio.to_thread(store.status_of, rec.id) == "cancelling"
        ):
            self._cancel.add(rec.id)

    def _stop_reason(self, rec: BatchRecord) -> str | None:
        if rec.id in self._cancel or rec.status == "cancelling":
            return "cancelled"
        if time.time() >= rec.expires_at:
            return "expired"
        return None

    async def _finish(
        self, store: JobStore, rec: BatchRecord, end: str, out_p: Path, err_p: Path
    ) -> None:
        if end == "completed":
            rec.stamp("finalizing")
            await self._save(store, rec)
        key_id = rec.owner or None
        for path, attr, name in (
            (out_p, "output_file_id", "output"),
            (err_p, "error_file_id", "error"),
        ):
            # Ids derived from the job's: a restart mid-way finds (or redoes) the same file.
            fid = f"file_{rec.id.removeprefix('batch_')}_{name}"
            if await asyncio.to_thread(nonempty, path):
                f = await self.add_file(key_id, path, f"{rec.id}_{name}.jsonl", "batch_output", fid)
                setattr(rec, attr, f.id)
            elif await asyncio.to_thread(store.has_file, fid):
                setattr(rec, attr, fid)
            else:
                await asyncio.to_thread(path.unlink, missing_ok=True)
        rec.stamp(end)
        await self._save(store, rec)

    async def _answer(self, raw: bytes, rec: BatchRecord, admission: Admission) -> lines.Answer:
        try:
            parsed = lines.parse(raw)
        except lines.LineError as exc:
            return lines.line_error(exc)
        req, cid = parsed.request, parsed.custom_id
        inp = req.input
        inputs = [inp] if isinstance(inp, str) or (inp and isinstance(inp[0], int)) else inp
        options = EmbedOptions(
            truncate=req.truncate,
            dimensions=req.dimensions,
            input_type=req.input_type,
            prompt_name=req.prompt_name,
            priority="batch",
        )
        service = self.service
        assert service is not None
        route_key = f"key:{rec.owner}" if rec.owner else f"user:{req.user or rec.id}"
        while True:
            try:
                handle = service.resolve(req.model, route_key)
                result = await service.embed(handle, inputs, options, admission=admission)  # type: ignore[arg-type]
            except PayloadTooLarge as exc:  # never fits (e.g. over the whole token budget)
                return lines.failed(cid, exc)
            except _TRANSIENT as exc:
                self.waiting += 1
                try:
                    await self._pause(rec, exc.retry_after)
                finally:
                    self.waiting -= 1
                continue
            except EmbedhostError as exc:
                return lines.failed(cid, exc)
            return lines.Answer(
                cid,
                True,
                vectors=result.vectors,
                model=req.model or result.model.name,
                tokens=result.tokens.total,
                base64=req.encoding_format == "base64",
            )

    async def _pause(self, rec: BatchRecord, retry_after: float | None) -> None:
        wait = min(max(retry_after or self.config.retry_s, 0.05), _MAX_PAUSE_S)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if self._stop_reason(rec) is not None:
                raise _Stop
            await asyncio.sleep(min(0.25, wait))
            await self._cancelled_elsewhere(await self.store(), rec)
        if self._stop_reason(rec) is not None:
            raise _Stop
