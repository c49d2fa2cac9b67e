"""The dynamic batcher in front of one model replica.

Requests are split into one item per sequence. A single loop forms batches:

* up to ``max_batch_size`` sequences and ``max_batch_tokens`` padded tokens (batch size x
  longest sequence, which is what a padding engine actually computes; for an engine that
  packs sequences without padding, ``packed``, the real tokens, and no padding rule);
* from a window of the oldest queued items, sorted by length, grown around the oldest
  item so that padding is small and nothing starves;
* when the engine is idle and the queue holds less than a full batch, it waits at most
  ``max_wait_ms`` for more; when the engine is busy, work accumulates by itself;
* at most ``depth`` batches are in the worker's pipe, so the engine never waits on IPC.

The queue is bounded (``max_queue_items``, and ``max_queue_wait_s`` when set: the wait
estimated from the engine's measured throughput): a request that does not fit gets
:class:`QueueFull` (429 + Retry-After) at once, before anything of it is queued. Its
Retry-After is the queue's estimated drain time (:meth:`Batcher.drain_s`), not a
constant. Batch-priority work waits in its own lane (:mod:`embedhost.lanes`: its own
bound, the capacity online work leaves, a floor share). Items of a request whose client went away are dropped when a batch is formed. Every future is
resolved on every path: results, engine errors, worker crash, timeout, shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol

from embedhost.config import BatchingConfig, Priority
from embedhost.engines.base import Vectors
from embedhost.errors import ClientGone, EmbedhostError, EngineError, QueueFull, ShuttingDown
from embedhost.lanes import BatchLane

log = logging.getLogger(__name__)

# Below this many sequences a batch always grows: tiny batches cost more than padding.
_MIN_BATCH_FOR_PADDING_RULE = 8

# Weight of the newest batch in the throughput estimate (an exponential moving average).
_RATE_ALPHA = 0.2
# Retry-After bounds (seconds): HTTP's smallest, and a cap so that one slow batch measured
# under a stall never tells clients to go away for minutes.
RETRY_AFTER_MIN_S = 1.0
RETRY_AFTER_MAX_S = 60.0

EmbedFn = Callable[[list[list[int]], float], Awaitable[Vectors]]


class BatchObserver(Protocol):
    """Receives the batcher's numbers (``metrics.BatchObserver`` implements it)."""

    def queue_depth(self, n: int) -> None: ...

    def batch(self, sequences: int, padded_tokens: int, seconds: float) -> None: ...


@dataclass(slots=True)
class Ticket:
    """Shared by the items of one request; ``gone`` is set when its client disconnects.

    ``dispatched`` (the first of its batches sent to the engine) and ``done`` (the last one
    answered), on the monotonic clock, give the request's queue and inference times.
    """

    gone: bool = False
    priority: Priority = "online"
    dispatched: float = 0.0
    done: float = 0.0


@dataclass(slots=True)
class Item:
    ids: list[int]
    future: asyncio.Future[Vectors]
    ticket: Ticket
    enqueued: float = field(default_factory=time.monotonic)


@dataclass(slots=True)
class BatchStats:
    batches: int = 0
    sequences: int = 0
    padded_tokens: int = 0
    real_tokens: int = 0
    dropped_gone: int = 0


class Batcher:
    def __init__(
        self,
        embed: EmbedFn,
        config: BatchingConfig,
        *,
        retry_after_s: float = 1.0,
        depth: int = 2,
        window_factor: int = 4,
        observer: BatchObserver | None = None,
        packed: Callable[[], bool] | None = None,
    ) -> None:
        self._embed = embed
        # Whether the engine packs sequences without padding (asked per batch: it is known
        # once the worker has loaded, and a restart may change it).
        self._packed = packed
        self.observer = observer
        self.config = config
        self.retry_after_s = retry_after_s
        self._queue: deque[Item] = deque()  # online work; batch work waits in the lane
        self.lane: BatchLane[Item] = BatchLane(config)
        self._wake = asyncio.Event()
        self._slots = asyncio.Semaphore(depth)
        self._depth = depth
        self._in_flight = 0
        self._in_flight_seqs = 0
        self._window = max(config.max_batch_size * window_factor, 1)
        self._task: asyncio.Task[None] | None = None
        self._running: set[asyncio.Task[None]] = set()
        self._closed = False
        self.stats = BatchStats()
        self._rate = 0.0
        """Sequences per second the engine answers (0: not measured yet)."""
        self._last_done = 0.0

    # -- public ------------------------------------------------------------------------------

    @property
    def queued(self) -> int:
        return len(self._queue) + len(self.lane)

    @property
    def in_flight(self) -> int:
        return self._in_flight

    @property
    def rate(self) -> float:
        """The engine's measured throughput in sequences/s (0.0 until a batch has run)."""
        return self._rate

    def drain_s(self, extra: int = 0) -> float | None:
        """Estimated seconds until the queued and in-flight sequences (plus ``extra``) are
        answered, from the measured throughput; None before anything was measured."""
        if self._rate <= 0:
            return None
        return (len(self._queue) + self._in_flight_seqs + extra) / self._rate

    def retry_after(self) -> float:
        """Retry-After for a refusal: the queue's estimated drain time, within bounds
        (the configured constant until the throughput has been measured)."""
        drain = self.drain_s()
        if drain is None:
            return self.retry_after_s
        return min(max(drain, RETRY_AFTER_MIN_S), RETRY_AFTER_MAX_S)

    def refuses(self, n: int, priority: Priority = "online") -> str | None:
        """Why a request of ``n`` sequences would be refused now, or None if it fits."""
        cfg = self.config
        if priority == "batch":
            return self.lane.refuses(n, len(self._queue))
        if len(self._queue) + n > cfg.max_queue_items and not self._purge_gone(n):
            return f"the queue for this model is full ({cfg.max_queue_items} inputs)"
        limit = cfg.max_queue_wait_s
        if limit is not None and self._queue:
            wait = self.drain_s(n)
            if wait is not None and wait > limit:
                return (
                    f"the estimated wait for this model ({wait:.1f} s) is over its limit "
                    f"of {limit:g} s"
                )
        return None

    @property
    def in_flight_sequences(self) -> int:
        """Sequences in batches sent to the engine and not answered yet."""
        return self._in_flight_seqs

    @property
    def load_ratio(self) -> float:
        """Sequences queued or in the engine over what the engine's pipeline holds
        (``max_batch_size`` x pipeline depth): 1.0 means the pipeline is full and new work
        waits; the autoscaling signal (``embedhost_load_ratio``)."""
        held = self.config.max_batch_size * self._depth
        return (self.queued + self._in_flight_seqs) / held

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop(), name="batcher")

    def submit(self, seqs: list[list[int]], ticket: Ticket) -> list[asyncio.Future[Vectors]]:
        """Queue every sequence of one request, or none of them."""
        if self._closed:
            raise ShuttingDown("the server is shutting down", retry_after=self.retry_after_s)
        why = self.refuses(len(seqs), ticket.priority)
        if why is not None:
            raise QueueFull(
                f"{why}; retry after the indicated delay", retry_after=self.retry_after()
            )
        loop = asyncio.get_running_loop()
        now = time.monotonic()
        futures: list[asyncio.Future[Vectors]] = []
        queue = self.lane.queue if ticket.priority == "batch" else self._queue
        if ticket.priority != "batch":
            self.lane.online_seen(now)
        for s in seqs:
            fut: asyncio.Future[Vectors] = loop.create_future()
            queue.append(Item(s, fut, ticket, now))
            futures.append(fut)
        if self.observer is not None:
            self.observer.queue_depth(self.queued)
        self._wake.set()
        return futures

    async def close(self, drain: bool = True, timeout: float = 30.0) -> None:
        """Stop taking work; finish (or fail) what is queued; resolve every future."""
        self._closed = True
        if drain:
            deadline = time.monotonic() + timeout
            while (self.queued or self._running) and time.monotonic() < deadline:
                self._wake.set()
                await asyncio.sleep(0.01)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._fail_queue(ShuttingDown("the server is shutting down"))

    # -- internals ---------------------------------------------------------------------------

    def _purge_gone(self, n: int) -> bool:
        """Drop the queued items nobody waits for any more (client gone, already resolved),
        so that they stop counting toward ``max_queue_items``; whether ``n`` more now fit.
        Asked only when the queue looks full, so the scan is bounded by that limit."""
        if any(it.ticket.gone or it.future.done() for it in self._queue):
            kept = [it for it in self._queue if not (it.ticket.gone or it.future.done())]
            for it in self._queue:
                if it.ticket.gone or it.future.done():
                    self._drop(it)
            self._queue.clear()
            self._queue.extend(kept)
            if self.observer is not None:
                self.observer.queue_depth(len(kept))
        return len(self._queue) + n <= self.config.max_queue_items

    def _fail_queue(self, exc: EmbedhostError) -> None:
        for queue in (self._queue, self.lane.queue):
            while queue:
                it = queue.popleft()
                if not it.future.done():
                    it.future.set_exception(exc)
        if self.observer is not None:
            self.observer.queue_depth(0)

    async def _loop(self) -> None:
        try:
            while True:
                if not self.queued:
                    self._wake.clear()
                    await self._wake.wait()
                    continue
                await self._slots.acquire()
                if (
                    self._in_flight == 0
                    and self.config.max_wait_ms > 0
                    and self.queued < self.config.max_batch_size
                ):
                    await self._gather_more()
                batch = self._form()
                if self.observer is not None:
                    self.observer.queue_depth(self.queued)
                if not batch:
                    self._slots.release()
                    continue
                self._in_flight += 1
                self._in_flight_seqs += len(batch)
                task = asyncio.get_running_loop().create_task(self._run(batch))
                self._running.add(task)
                task.add_done_callback(self._running.discard)
        except asyncio.CancelledError:
            raise
        except Exception:  # a bug here must not strand waiting requests
            log.exception("batcher loop failed")
            self._fail_queue(EngineError("internal batching error"))
            raise

    async def _gather_more(self) -> None:
        deadline = time.monotonic() + self.config.max_wait_ms / 1000
        while self.queued < self.config.max_batch_size:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), left)

    def _form(self) -> list[Item]:
        """Pick the next batch: around the oldest item, among similar lengths, from the
        lane whose turn it is."""
        q, bulk = self.lane.choose(self._queue)
        # Drop items whose client is gone, and items already resolved.
        while q and (q[0].ticket.gone or q[0].future.done()):
            self._drop(q.popleft())
        if not q:
            return []
        window: list[Item] = []
        while q and len(window) < self._window:
            it = q.popleft()
            if it.ticket.gone or it.future.done():
                self._drop(it)
                continue
            window.append(it)
        if not window:
            return []
        cfg = self.config
        max_items, max_tokens = (
            self.lane.limits(time.monotonic())
            if bulk
            else (cfg.max_batch_size, cfg.max_batch_tokens)
        )
        packed = self._packed is not None and self._packed()
        oldest = window[0]
        order = sorted(range(len(window)), key=lambda i: len(window[i].ids))
        pos = order.index(0)
        lo, hi = pos, pos
        chosen = [oldest]
        width = len(oldest.ids)
        real = width
        while len(chosen) < max_items:
            cand_lo = order[lo - 1] if lo > 0 else None
            cand_hi = order[hi + 1] if hi + 1 < len(order) else None
            if cand_lo is None and cand_hi is None:
                break
            # Prefer the neighbour whose length is closer to the oldest item's.
            pick_hi = cand_lo is None or (
                cand_hi is not None
                and len(window[cand_hi].ids) - len(oldest.ids)
                <= len(oldest.ids) - len(window[cand_lo].ids)
            )
            idx = cand_hi if pick_hi else cand_lo
            assert idx is not None
            new_width = max(width, len(window[idx].ids))
            if packed:
                # No padding: the cost is the real tokens, whatever the lengths.
                if real + len(window[idx].ids) > max_tokens:
                    break
            elif new_width * (len(chosen) + 1) > max_tokens:
                # The other side may still fit (shorter sequences).
                if pick_hi and cand_lo is not None:
                    idx = cand_lo
                    pick_hi = False
                    new_width = width
                    if width * (len(chosen) + 1) > max_tokens:
                        break
                else:
                    break
            n_real = real + len(window[idx].ids)
            if (
                not packed
                and len(chosen) >= _MIN_BATCH_FOR_PADDING_RULE
                and new_width * (len(chosen) + 1) > cfg.max_padding_ratio * n_real
            ):
                # Padding would waste more compute than a smaller batch costs.
                break
            chosen.append(window[idx])
            real = n_real
            width = new_width
            if pick_hi:
                hi += 1
            else:
                lo -= 1
        taken = {id(it) for it in chosen}
        # Put back what was not taken, oldest first, ahead of newer arrivals.
        rest = [it for it in window if id(it) not in taken]
        q.extendleft(reversed(rest))
        chosen.sort(key=lambda it: len(it.ids))
        if bulk:
            self.lane.took(len(chosen))
        return chosen

    def _measure(self, sequences: int, sent: float, done: float) -> None:
        # The engine worked on this batch from when it was sent or the previous batch was
        # answered, whichever is later (with batches pipelined, both overlap in the pipe).
        busy = done - max(sent, self._last_done)
        self._last_done = done
        if busy <= 0:
            return
        rate = sequences / busy
        self._rate = rate if self._rate <= 0 else self._rate + _RATE_ALPHA * (rate - self._rate)

    def _drop(self, it: Item) -> None:
        if not it.future.done():
            self.stats.dropped_gone += 1
            it.future.set_exception(ClientGone("client disconnected"))
            it.future.exception()  # nobody awaits it: mark it retrieved

    async def _run(self, batch: list[Item]) -> None:
        try:
            seqs = [it.ids for it in batch]
            width = max(len(s) for s in seqs)
            self.stats.batches += 1
            self.stats.sequences += len(seqs)
            self.stats.padded_tokens += width * len(seqs)
            self.stats.real_tokens += sum(len(s) for s in seqs)
            t0 = time.monotonic()
            vecs = await self._embed(seqs, self.config.batch_timeout_s)
            t1 = time.monotonic()
            self._measure(len(seqs), t0, t1)
            for i, it in enumerate(batch):
                tk = it.ticket
                if tk.dispatched == 0.0 or t0 < tk.dispatched:
                    tk.dispatched = t0
                if t1 > tk.done:
                    tk.done = t1
                if not it.future.done():
                    it.future.set_result(vecs[i])
            if self.observer is not None:
                self.observer.batch(len(seqs), width * len(seqs), t1 - t0)
        except EmbedhostError as exc:
            for it in batch:
                if not it.future.done():
                    it.future.set_exception(exc)
        except Exception:
            log.exception("batch failed")
            err = EngineError("the engine failed to embed this batch")
            for it in batch:
                if not it.future.done():
                    it.future.set_exception(err)
        finally:
            self._in_flight -= 1
            self._in_flight_seqs -= len(batch)
            self._slots.release()
