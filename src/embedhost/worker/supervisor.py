"""The supervisor of one engine worker process, in the API process.

Native inference code can segfault, leak or wedge. Each model replica therefore runs in its
own process (``multiprocessing`` spawn, see :mod:`embedhost.worker.process`), fed token ids
over a pipe and answering float32 vectors. :class:`EngineWorker`:

* starts the process and waits for it to verify the checksum, load and warm up;
* sends each batch it is given and resolves one future per batch (how many batches are
  in the pipe at once, so that the engine never idles waiting for the next one, is the
  batcher's ``pipeline_depth``: :mod:`embedhost.batching`);
* notices death (EOF on the pipe, whatever the cause, SIGSEGV and SIGKILL included), fails
  every in-flight batch with :class:`WorkerCrashed` (503 + Retry-After) and restarts the
  process with exponential backoff (tenacity's ``wait_exponential``; only the process is
  restarted, a client's batch is never retried); after ``max_restarts`` crashes within
  ``restart_window_s`` it marks the replica failed, with the reason, instead of looping;
* treats a batch that outlives ``batch_timeout_s`` as a wedged worker: that batch gets
  :class:`WorkerTimeout` (504), the process is killed and restarted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing as mp
import os
import signal
import threading
import time
from collections import deque
from enum import StrEnum
from multiprocessing.connection import Connection
from typing import Any, Protocol

import tenacity

from embedhost import catalog
from embedhost.config import ModelConfig, WorkerConfig
from embedhost.engines.base import EngineInfo, Vectors
from embedhost.errors import (
    EngineError,
    ModelNotReady,
    ShuttingDown,
    WorkerCrashed,
    WorkerTimeout,
)
from embedhost.logs import worker_log_config
from embedhost.modelfiles import hashed_files, remember
from embedhost.worker.process import worker_main

log = logging.getLogger(__name__)


class WorkerState(StrEnum):
    STARTING = "starting"
    READY = "ready"
    RESTARTING = "restarting"
    FAILED = "failed"
    STOPPED = "stopped"


class WorkerObserver(Protocol):
    """Receives the supervisor's events (``metrics.WorkerObserver`` implements it)."""

    def restarted(self) -> None: ...

    def ready(self, load_seconds: float, info: dict[str, str]) -> None: ...


class EngineWorker:
    """Supervises one worker process for one model replica."""

    def __init__(
        self,
        config: ModelConfig,
        settings: WorkerConfig,
        *,
        replica: int = 0,
        observer: WorkerObserver | None = None,
        retry_failed_load: bool = True,
    ) -> None:
        self.config = config
        # A version loaded at run time by an operator fails at once on a load error: the
        # current version keeps serving and the operator sees why, instead of a retry loop.
        self.retry_failed_load = retry_failed_load
        self.phase = "starting"
        self._ever_ready = False
        self.settings = settings
        self.replica = replica
        self.observer = observer
        self._backoff = tenacity.wait_exponential(
            multiplier=settings.restart_backoff_initial_s,
            max=settings.restart_backoff_max_s,
        )
        self.state = WorkerState.STARTING
        self.reason: str | None = None
        self.info: EngineInfo | None = None
        self.restarts = 0
        self.started_at: float | None = None
        self.ready_at: float | None = None
        self._crashes: deque[float] = deque()
        self._proc: Any = None
        self._conn: Connection | None = None
        self._pending: dict[int, asyncio.Future[Vectors]] = {}
        self._next_id = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._start_future: asyncio.Future[None] | None = None
        self._restart_task: asyncio.Task[None] | None = None
        self._stopping = False
        self._generation = 0
        self._phases: list[tuple[str, float]] = []
        self._hashed: tuple[int, int] | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def in_flight(self) -> int:
        return len(self._pending)

    async def start(self) -> None:
        """Spawn the process and wait until it is ready (or failed)."""
        self._loop = asyncio.get_running_loop()
        self._stopping = False
        await self._spawn()

    async def _spawn(self) -> None:
        assert self._loop is not None
        self._generation += 1
        gen = self._generation
        self.state = WorkerState.STARTING if self.restarts == 0 else WorkerState.RESTARTING
        ctx = mp.get_context("spawn")
        parent, child = ctx.Pipe(duplex=True)
        proc = ctx.Process(
            target=worker_main,
            args=(
                child,
                self.config.model_dump_json(),
                catalog.row(self.config.engine),  # the child's catalog lacks registered rows
                worker_log_config(),
                hashed_files(),
                self._ever_ready,  # a restart: a brief warm-up
            ),
            name=f"embedhost-worker-{self.config.name}-{self.replica}",
            daemon=True,
        )
        self.started_at = time.monotonic()
        self._phases = [("start", self.started_at)]
        self._hashed = None
        # Starting a process forks/execs: off the event loop.
        await asyncio.to_thread(proc.start)
        child.close()
        self._proc, self._conn = proc, parent
        self._start_future = self._loop.create_future()
        threading.Thread(
            target=self._read_loop, args=(parent, proc, gen), daemon=True, name="worker-pipe"
        ).start()
        try:
            await asyncio.wait_for(
                asyncio.shield(self._start_future), self.settings.start_timeout_s
            )
        except TimeoutError:
            self._kill()
            self._fail_permanently(
                f"did not load within start_timeout_s={self.settings.start_timeout_s}"
            )

    def _read_loop(self, conn: Connection, proc: Any, gen: int) -> None:
        assert self._loop is not None
        loop = self._loop
        try:
            while True:
                msg = conn.recv()
                loop.call_soon_threadsafe(self._on_message, msg, gen)
        except (EOFError, OSError):
            pass
        except Exception:  # an unpicklable message: the worker is unusable either way
            log.exception("worker pipe read failed")
        # EOF comes as the process dies; reap it here (off the loop) to learn how it died.
        proc.join(timeout=5)
        with contextlib.suppress(RuntimeError):  # loop closed at interpreter exit
            loop.call_soon_threadsafe(self._on_exit, gen, proc.exitcode)

    def _on_message(self, msg: tuple[Any, ...], gen: int) -> None:
        if gen != self._generation:
            return
        kind = msg[0]
        if kind == "ok":
            fut = self._pending.pop(msg[1], None)
            if fut is not None and not fut.done():
                fut.set_result(msg[2])
        elif kind == "error":
            fut = self._pending.pop(msg[1], None)
            if fut is not None and not fut.done():
                log.error("model %s: batch failed in the engine: %s", self.config.ref, msg[2])
                fut.set_exception(EngineError("the engine failed to embed this batch"))
        elif kind == "phase":
            self.phase = str(msg[1])
            self._phases.append((self.phase, time.monotonic()))
        elif kind == "verified":
            # Shared by every worker of this process: a restart skips unchanged files.
            remember(msg[1])
            self._hashed = (int(msg[2]), int(msg[3]))
        elif kind == "ready":
            self.phase = "ready"
            self._ever_ready = True
            self.info = EngineInfo.from_dict(msg[1])
            self.state = WorkerState.READY
            self.reason = None
            self.ready_at = time.monotonic()
            self._phases.append(("ready", self.ready_at))
            log.info(
                "model %s replica %d ready (pid %s, %.1fs: %s)",
                self.config.ref,
                self.replica,
                self.pid,
                self.ready_at - (self.started_at or self.ready_at),
                self.phase_timings(),
            )
            if self.observer is not None:
                self.observer.ready(
                    self.ready_at - (self.started_at or self.ready_at), self._labels()
                )
            if self._start_future is not None and not self._start_future.done():
                self._start_future.set_result(None)
        elif kind == "load_failed":
            permanent, message = msg[1], msg[2]
            log.error("model %s failed to load: %s", self.config.ref, message)
            if permanent or not (self.retry_failed_load or self._ever_ready):
                self._fail_permanently(message)
            else:
                self.reason = message
                # The process exits next; _on_exit counts it as a crash and backs off.

    def _on_exit(self, gen: int, code: int | None) -> None:
        if gen != self._generation:
            return
        self._fail_pending(
            ShuttingDown("the server is shutting down", retry_after=self.settings.retry_after_s)
            if self._stopping
            else WorkerCrashed(
                "the model worker stopped unexpectedly; retry shortly",
                retry_after=self.settings.retry_after_s,
            )
        )
        if self._start_future is not None and not self._start_future.done():
            self._start_future.set_result(None)
        if self._stopping or self.state in (WorkerState.FAILED, WorkerState.STOPPED):
            return
        why = self.reason or f"worker exited with code {code}"
        if code is not None and code < 0:
            with contextlib.suppress(ValueError):
                why = f"worker killed by {signal.Signals(-code).name}"
        log.error("model %s replica %d: %s", self.config.ref, self.replica, why)
        now = time.monotonic()
        self._crashes.append(now)
        while self._crashes and now - self._crashes[0] > self.settings.restart_window_s:
            self._crashes.popleft()
        if len(self._crashes) > self.settings.max_restarts:
            self._fail_permanently(
                f"{len(self._crashes)} crashes within {self.settings.restart_window_s:.0f}s; "
                f"last: {why}"
            )
            return
        self.state = WorkerState.RESTARTING
        self.reason = why
        delay = self.restart_delay(len(self._crashes))
        self._restart_task = asyncio.get_running_loop().create_task(self._restart(delay))

    def phase_timings(self) -> str:
        """Where the last start went, e.g. ``start 1.10s, verifying 0.00s (re-hash
        skipped), loading 0.52s, warming 0.31s``: ``start`` is the process starting up to
        its first phase (spawn, imports)."""
        parts = []
        for (name, t0), (_, t1) in zip(self._phases, self._phases[1:], strict=False):
            part = f"{name} {t1 - t0:.2f}s"
            if name == "verifying" and self._hashed is not None:
                files, size = self._hashed
                part += (
                    f" (hashed {files} file(s), {size / 2**20:.0f} MiB)"
                    if files
                    else (" (re-hash skipped)" if self.config.checksum else " (no checksum)")
                )
            parts.append(part)
        return ", ".join(parts)

    def restart_delay(self, crashes: int) -> float:
        """Backoff before the restart that follows the ``crashes``-th recent crash."""
        state = tenacity.RetryCallState(tenacity.Retrying(), None, (), {})
        state.attempt_number = max(crashes, 1)
        return float(self._backoff(state))

    def _labels(self) -> dict[str, str]:
        """The model's identity for the info metric."""
        info = self.info
        details = info.details if info is not None else {}
        return {
            "version": self.config.version,
            "engine": self.config.engine,
            "dimensions": str(info.dims) if info is not None else "",
            "max_input_tokens": str(info.max_tokens) if info is not None else "",
            "dtype": info.dtype if info is not None else self.config.dtype,
            "device": self.config.device,
            "checksum": str(details.get("checksum") or self.config.checksum or ""),
        }

    async def _restart(self, delay: float) -> None:
        await asyncio.sleep(delay)
        if self._stopping:
            return
        self.restarts += 1
        if self.observer is not None:
            self.observer.restarted()
        log.info("model %s replica %d: restarting worker", self.config.ref, self.replica)
        await self._spawn()

    def _fail_permanently(self, reason: str) -> None:
        self.state = WorkerState.FAILED
        self.reason = reason
        if self._start_future is not None and not self._start_future.done():
            self._start_future.set_result(None)

    def _fail_pending(self, exc: Exception) -> None:
        pending, self._pending = self._pending, {}
        for fut in pending.values():
            if not fut.done():
                fut.set_exception(exc)

    def _kill(self) -> None:
        if self._proc is not None and self._proc.is_alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(self._proc.pid, signal.SIGKILL)

    async def stop(self, timeout: float = 10.0) -> None:
        """Ask the worker to exit after its current batch; kill it if it does not."""
        self._stopping = True
        if self._restart_task is not None:
            self._restart_task.cancel()
        proc, conn = self._proc, self._conn
        if conn is not None:
            with contextlib.suppress(OSError, ValueError):
                conn.send(("stop",))
        if proc is not None:
            await asyncio.to_thread(proc.join, timeout)
            if proc.is_alive():
                self._kill()
                await asyncio.to_thread(proc.join, 5)
        if conn is not None:
            conn.close()
        self._fail_pending(ShuttingDown("the server is shutting down"))
        self.state = WorkerState.STOPPED

    # -- work --------------------------------------------------------------------------------

    def check_ready(self) -> None:
        if self.state is WorkerState.READY:
            return
        if self.state is WorkerState.FAILED:
            raise ModelNotReady(f"model {self.config.ref} failed to load", retry_after=None)
        raise ModelNotReady(
            f"model {self.config.ref} is {self.state.value}; retry shortly",
            retry_after=self.settings.retry_after_s,
        )

    async def embed(self, batch: list[list[int]], timeout: float) -> Vectors:
        """Send one batch and await its vectors."""
        return await self._request("embed", batch, timeout)

    async def token_states(self, ids: list[int], timeout: float) -> Vectors:
        """One sequence's token states ``[tokens, hidden]`` (late chunking)."""
        return await self._request("states", ids, timeout)

    async def _request(self, op: str, payload: object, timeout: float) -> Vectors:
        self.check_ready()
        assert self._conn is not None and self._loop is not None
        batch_id = self._next_id
        self._next_id += 1
        fut: asyncio.Future[Vectors] = self._loop.create_future()
        self._pending[batch_id] = fut
        try:
            self._conn.send((op, batch_id, payload))
        except (OSError, ValueError):
            self._pending.pop(batch_id, None)
            raise WorkerCrashed(
                "the model worker is not reachable; retry shortly",
                retry_after=self.settings.retry_after_s,
            ) from None
        try:
            return await asyncio.wait_for(fut, timeout)
        except TimeoutError:
            self._pending.pop(batch_id, None)
            log.error(
                "model %s replica %d: batch exceeded %.1fs; killing the wedged worker",
                self.config.ref,
                self.replica,
                timeout,
            )
            self._kill()
            raise WorkerTimeout(
                f"the model did not answer within {timeout:.0f}s",
                retry_after=self.settings.retry_after_s,
            ) from None
