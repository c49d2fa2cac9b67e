"""The batcher's queue bound counts only requests someone still waits for: a request whose
client has gone frees its slots at once, not when the next batch is formed."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from embedhost.batching import Batcher, Ticket
from embedhost.config import BatchingConfig
from embedhost.errors import ClientGone, QueueFull


class GatedEngine:
    """Holds every batch until ``gate`` is set; records what it was sent."""

    def __init__(self) -> None:
        self.gate = asyncio.Event()
        self.called = asyncio.Event()
        self.batches: list[list[list[int]]] = []

    async def __call__(self, batch: list[list[int]], timeout: float) -> np.ndarray:
        self.batches.append(batch)
        self.called.set()
        await self.gate.wait()
        return np.array([[s[0]] for s in batch], dtype=np.float32)


async def test_gone_requests_stop_counting_toward_max_queue_items() -> None:
    engine = GatedEngine()
    config = BatchingConfig.model_validate(
        {"max_batch_size": 1, "max_wait_ms": 0, "max_queue_items": 4}
    )
    b = Batcher(engine, config, depth=1)
    b.start()
    held = b.submit([[1]], Ticket())
    await asyncio.wait_for(engine.called.wait(), 10)  # the engine is busy: the rest queue
    gone = Ticket()
    lost = b.submit([[7]] * 4, gone)
    assert b.refuses(1) is not None, "the queue is full"
    with pytest.raises(QueueFull):
        b.submit([[8]], Ticket())
    gone.gone = True  # its client disconnected; no batch has been formed since
    assert b.refuses(4) is None
    kept = b.submit([[9]] * 4, Ticket())
    assert b.stats.dropped_gone == 4
    for f in lost:
        with pytest.raises(ClientGone):
            await f
    engine.gate.set()
    out = await asyncio.gather(*held, *kept)
    assert [float(v[0]) for v in out] == [1, 9, 9, 9, 9]
    assert all(7 not in s for batch in engine.batches for s in batch)
    await b.close()
