"""The batcher with a scripted embed function: shapes, bounds, and every future resolved."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from embedhost.batching import Batcher, Ticket
from embedhost.config import BatchingConfig
from embedhost.errors import ClientGone, EngineError, QueueFull, ShuttingDown, WorkerCrashed


class Recorder:
    """Embeds each sequence as [len, first id, ...]; records batch shapes."""

    def __init__(self, delay: float = 0.0, fail: Exception | None = None) -> None:
        self.batches: list[list[list[int]]] = []
        self.delay = delay
        self.fail = fail
        self.gate: asyncio.Event | None = None
        self.called = asyncio.Event()

    async def __call__(self, batch: list[list[int]], timeout: float) -> np.ndarray:
        self.batches.append(batch)
        self.called.set()
        if self.gate is not None:
            await self.gate.wait()
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.fail is not None:
            raise self.fail
        return np.array([[len(s), s[0], sum(s)] for s in batch], dtype=np.float32)


async def engine_busy(rec: Recorder, deadline_s: float = 10.0) -> None:
    """Wait until the first batch has reached the (gated) engine, so the rest queue behind it."""
    await asyncio.wait_for(rec.called.wait(), deadline_s)


def cfg(**kw: object) -> BatchingConfig:
    base: dict[str, object] = {
        "max_batch_size": 4,
        "max_batch_tokens": 64,
        "max_wait_ms": 1,
        "max_queue_items": 32,
    }
    base.update(kw)
    return BatchingConfig.model_validate(base)


async def test_results_in_order_and_batches_bounded() -> None:
    rec = Recorder(delay=0.01)
    b = Batcher(rec, cfg())
    b.start()
    seqs = [[i] * (1 + i % 7) for i in range(1, 30)]
    futs = b.submit(seqs, Ticket())
    out = await asyncio.gather(*futs)
    for s, v in zip(seqs, out, strict=True):
        assert v.tolist() == [len(s), s[0], sum(s)]
    for batch in rec.batches:
        assert len(batch) <= 4
        assert max(len(s) for s in batch) * len(batch) <= 64
    await b.close()


async def test_similar_lengths_grouped() -> None:
    rec = Recorder()
    rec.gate = asyncio.Event()
    b = Batcher(rec, cfg(max_batch_size=4, max_batch_tokens=1000), depth=1)
    b.start()
    first = b.submit([[1]], Ticket())  # occupies the engine while the rest queue
    await engine_busy(rec)
    seqs = [[2] * 2, [3] * 40, [4] * 3, [5] * 41, [6] * 2, [7] * 39, [8] * 3, [9] * 42]
    futs = b.submit(seqs, Ticket())
    rec.gate.set()
    await asyncio.gather(*first, *futs)
    widths = [sorted(len(s) for s in batch) for batch in rec.batches[1:]]
    assert widths == [[2, 2, 3, 3], [39, 40, 41, 42]]
    await b.close()


async def test_queue_bound_rejects_whole_request() -> None:
    rec = Recorder()
    rec.gate = asyncio.Event()
    b = Batcher(rec, cfg(max_queue_items=8), retry_after_s=3)
    b.start()
    held = b.submit([[1]], Ticket())
    await engine_busy(rec)
    ok = b.submit([[1]] * 6, Ticket())
    with pytest.raises(QueueFull) as info:
        b.submit([[1]] * 3, Ticket())
    assert info.value.retry_after == 3
    assert b.queued <= 8
    rec.gate.set()
    await asyncio.gather(*held, *ok)
    await b.close()


async def test_gone_clients_are_skipped() -> None:
    rec = Recorder()
    rec.gate = asyncio.Event()
    b = Batcher(rec, cfg(), depth=1)
    b.start()
    held = b.submit([[1]], Ticket())
    await engine_busy(rec)
    gone = Ticket()
    lost = b.submit([[7, 7], [7, 7, 7]], gone)
    kept = b.submit([[9, 9]], Ticket())
    gone.gone = True
    rec.gate.set()
    await asyncio.gather(*held, *kept)
    for f in lost:
        with pytest.raises(ClientGone):
            await f
    assert all(7 not in s for batch in rec.batches for s in batch)
    assert b.stats.dropped_gone == 2
    await b.close()


@pytest.mark.parametrize("exc", [WorkerCrashed("boom", retry_after=2), RuntimeError("bug")])
async def test_failure_resolves_every_future(exc: Exception) -> None:
    b = Batcher(Recorder(fail=exc), cfg())
    b.start()
    futs = b.submit([[1], [2, 2], [3, 3, 3], [4], [5], [6]], Ticket())
    results = await asyncio.gather(*futs, return_exceptions=True)
    expected = WorkerCrashed if isinstance(exc, WorkerCrashed) else EngineError
    assert all(isinstance(r, expected) for r in results)
    await b.close()


async def test_close_drains_then_refuses() -> None:
    b = Batcher(Recorder(delay=0.02), cfg())
    b.start()
    futs = b.submit([[1]] * 10, Ticket())
    await b.close(drain=True, timeout=5)
    assert all(f.done() and f.exception() is None for f in futs)
    with pytest.raises(ShuttingDown):
        b.submit([[1]], Ticket())


async def test_close_without_drain_fails_queued() -> None:
    rec = Recorder()
    rec.gate = asyncio.Event()
    b = Batcher(rec, cfg(), depth=1)
    b.start()
    futs = b.submit([[1]] * 10, Ticket())
    await engine_busy(rec)
    await b.close(drain=False)
    rec.gate.set()
    await asyncio.sleep(0.01)
    results = await asyncio.gather(*futs, return_exceptions=True)
    assert all(not isinstance(r, BaseException) or isinstance(r, ShuttingDown) for r in results)
    assert any(isinstance(r, ShuttingDown) for r in results)


async def test_oldest_item_is_never_starved() -> None:
    """A long item runs before any short item that arrived after it, even with many short
    ones queued around it (a shortest-first batcher would run it last)."""
    rec = Recorder()
    rec.gate = asyncio.Event()
    b = Batcher(rec, cfg(max_batch_size=4, max_batch_tokens=64, max_queue_items=1000), depth=1)
    b.start()
    first = b.submit([[3]], Ticket())  # holds the only pipeline slot until the gate opens
    await engine_busy(rec)
    early = b.submit([[2]] * 8, Ticket())
    long = b.submit([[1] * 60], Ticket())
    late = b.submit([[4]] * 40, Ticket())
    rec.gate.set()
    await asyncio.gather(*first, *early, *long, *late)
    await b.close()
    kinds = [{s[0] for s in batch} for batch in rec.batches[1:]]
    at = kinds.index({1})  # the long item runs alone (60 tokens of a 64-token budget)
    assert all(k == {2} for k in kinds[:at]), kinds
    assert all(k == {4} for k in kinds[at + 1 :]), kinds


async def test_padding_ratio_splits_mixed_lengths() -> None:
    rec = Recorder()
    rec.gate = asyncio.Event()
    b = Batcher(rec, cfg(max_batch_size=32, max_batch_tokens=4096, max_padding_ratio=1.5), depth=1)
    b.start()
    first = b.submit([[1]], Ticket())
    await engine_busy(rec)
    seqs = [[2] * 4, [3] * 40] * 8
    futs = b.submit(seqs, Ticket())
    rec.gate.set()
    await asyncio.gather(*first, *futs)
    assert [sorted({len(s) for s in batch}) for batch in rec.batches[1:]] == [[4], [40]]


async def test_without_padding_rule_one_batch() -> None:
    rec = Recorder()
    rec.gate = asyncio.Event()
    b = Batcher(rec, cfg(max_batch_size=32, max_batch_tokens=4096, max_padding_ratio=100), depth=1)
    b.start()
    first = b.submit([[1]], Ticket())
    await engine_busy(rec)
    futs = b.submit([[2] * 4, [3] * 40] * 8, Ticket())
    rec.gate.set()
    await asyncio.gather(*first, *futs)
    assert len(rec.batches) == 2


async def test_packing_engine_mixes_lengths_under_a_real_token_budget() -> None:
    """An engine that packs pays no padding: no padding rule, and the budget counts real tokens."""
    rec = Recorder()
    rec.gate = asyncio.Event()
    config = cfg(max_batch_size=32, max_batch_tokens=200, max_padding_ratio=1.5)
    b = Batcher(rec, config, depth=1, packed=lambda: True)
    b.start()
    first = b.submit([[1]], Ticket())
    await engine_busy(rec)
    futs = b.submit([[2] * 4, [3] * 40] * 8, Ticket())  # 352 real tokens, 640 padded
    rec.gate.set()
    await asyncio.gather(*first, *futs)
    batches = rec.batches[1:]
    assert len(batches) == 2
    assert {len(s) for s in batches[0]} == {4, 40}  # lengths mixed
    assert all(sum(len(s) for s in batch) <= 200 for batch in batches)
    assert max(len(s) for s in batches[0]) * len(batches[0]) > 200  # padded count would not fit
    await b.close()
