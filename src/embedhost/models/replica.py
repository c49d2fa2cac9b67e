"""One replica of one model version: its engine worker process and the batcher in front
of it, and the answers about them that the rest of the server asks.

A :class:`Replica` owns both parts: nothing outside this module reaches into the worker
or the batcher. It answers whether it serves (:attr:`Replica.ready`), whether it would
take ``n`` more sequences (:meth:`Replica.refuses`) and when to come back if not
(:meth:`Replica.retry_after`), takes a request's sequences (:meth:`Replica.submit`), and
describes itself for ``/info`` and the metrics. The batcher's :class:`Ticket` (a request's
claim on its queued sequences) is re-exported here, so that callers of :meth:`submit`
need not import the batching layer.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from embedhost.batching import Batcher, Ticket
from embedhost.config import ModelConfig, Settings
from embedhost.engines.base import EngineInfo, Vectors
from embedhost.errors import QueueFull
from embedhost.worker.supervisor import EngineWorker, WorkerState

if TYPE_CHECKING:
    from embedhost.metrics import Metrics

__all__ = ["Replica", "ReplicaLoad", "Ticket", "WorkerState"]


@dataclass(frozen=True, slots=True)
class ReplicaLoad:
    """What the metrics read of one replica at scrape time."""

    replica: int
    ready: bool
    pid: int | None
    load_ratio: float
    sequences: int = 0
    """Sequences sent to the engine, and of them from the batch lane (its share)."""
    batch_sequences: int = 0


class Replica:
    """An engine worker process (supervised, restarted on crash) and its batcher."""

    def __init__(
        self,
        config: ModelConfig,
        settings: Settings,
        index: int,
        *,
        worker_config: ModelConfig | None = None,
        runtime: bool = False,
        metrics: Metrics | None = None,
    ) -> None:
        """``config``: the version's config; ``worker_config``: the same with its share of
        the CPU budget as ``threads`` (what the worker process is started with)."""
        self.index = index
        self.worker = EngineWorker(
            worker_config or config,
            settings.worker,
            replica=index,
            observer=metrics.worker_observer(config.name, config.version, index)
            if metrics
            else None,
            # A version loaded at run time fails at once on a load error (see EngineWorker).
            retry_failed_load=not runtime,
        )
        batching = config.batching
        self.batcher = Batcher(
            self.worker.embed,
            batching,
            retry_after_s=settings.worker.retry_after_s,
            depth=batching.pipeline_depth,
            observer=(
                metrics.batch_observer(config.name, config.version, index, batching.max_queue_items)
                if metrics
                else None
            ),
            # Asked per batch: known once the worker has loaded, and a restart may change it.
            packed=lambda: self.packs,
        )

    # -- what it is ---------------------------------------------------------------------------

    @property
    def state(self) -> WorkerState:
        return self.worker.state

    @property
    def ready(self) -> bool:
        return self.worker.state is WorkerState.READY

    @property
    def warming(self) -> bool:
        return self.worker.phase == "warming"

    @property
    def reason(self) -> str | None:
        """Why it is not serving (a failed load, a crash loop), if it said."""
        return self.worker.reason

    @property
    def info(self) -> EngineInfo | None:
        """What the engine reported once loaded (dimensions, window, dtype, ...)."""
        return self.worker.info

    @property
    def packs(self) -> bool:
        """Whether the loaded engine packs sequences without padding (the batcher then
        counts real tokens against its budget, with no padding rule)."""
        info = self.worker.info
        return info is not None and info.packs

    # -- its load -----------------------------------------------------------------------------

    @property
    def load(self) -> int:
        """Batches queued and in the engine: what :meth:`ModelVersion.pick` balances on."""
        return self.batcher.queued + self.batcher.in_flight

    def refuses(self, n: int) -> str | None:
        """Why ``n`` more sequences would be refused now (a full queue, a wait over its
        limit), or None if they fit."""
        return self.batcher.refuses(n)

    def retry_after(self) -> float:
        """Seconds a refused client should wait: the queue's estimated drain time."""
        return self.batcher.retry_after()

    def snapshot(self) -> ReplicaLoad:
        b = self.batcher
        return ReplicaLoad(
            self.index,
            self.ready,
            self.worker.pid,
            b.load_ratio,
            b.stats.sequences,
            b.lane.sequences,
        )

    # -- work ---------------------------------------------------------------------------------

    def check_ready(self) -> None:
        """Raise :class:`~embedhost.errors.ModelNotReady` with the precise reason unless
        it serves."""
        self.worker.check_ready()

    def submit(self, seqs: list[list[int]], ticket: Ticket) -> list[asyncio.Future[Vectors]]:
        """Queue one request's sequences (all or none); one future per sequence."""
        return self.batcher.submit(seqs, ticket)

    async def token_states(self, ids: list[int]) -> Vectors:
        """One sequence's token states, sent to the worker beside the batches (the worker
        runs its messages in order, so it waits its turn behind batches already sent);
        refused as a batch would be when the queue is full."""
        why = self.batcher.refuses(1)
        if why is not None:
            raise QueueFull(
                f"{why}; retry after the indicated delay", retry_after=self.batcher.retry_after()
            )
        return await self.worker.token_states(ids, self.batcher.config.batch_timeout_s)

    # -- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the batcher, then the worker; returns once the worker is ready or failed."""
        self.batcher.start()
        await self.worker.start()

    async def close_batcher(self, drain_timeout: float) -> None:
        """Take no more work; finish (or fail) what is queued."""
        await self.batcher.close(True, drain_timeout)

    async def stop_worker(self) -> None:
        await self.worker.stop()

    def describe(self) -> dict[str, Any]:
        return {
            "replica": self.index,
            "state": self.worker.state.value,
            "phase": self.worker.phase,
            "pid": self.worker.pid,
            "restarts": self.worker.restarts,
            "queued": self.batcher.queued,
            "in_flight": self.batcher.in_flight,
        }
