"""The batcher's batch lane: online first, the floor share, its own bound, refused first.

Ordering is asserted with a gated engine (the first batch holds the engine while the rest
queue), never with timings.
"""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from embedhost.batching import Batcher, Ticket
from embedhost.config import BatchingConfig
from embedhost.errors import QueueFull

BULK = 1000  # batch-lane sequences carry ids from here, online ones below


class Gated:
    """Embeds each sequence as [first id]; the first batch waits for ``gate``."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.gate = asyncio.Event()
        self.called = asyncio.Event()

    async def __call__(self, batch: list[list[int]], timeout: float) -> np.ndarray:
        self.batches.append([s[0] for s in batch])
        self.called.set()
        await self.gate.wait()
        return np.array([[s[0]] for s in batch], dtype=np.float32)

    def lanes(self) -> str:
        """One letter per batch after the first: o(nline) or b(atch)."""
        out = []
        for ids in self.batches[1:]:
            kinds = {i >= BULK for i in ids}
            assert len(kinds) == 1, f"a batch mixes lanes: {ids}"
            out.append("b" if kinds.pop() else "o")
        return "".join(out)


def cfg(**kw: object) -> BatchingConfig:
    base: dict[str, object] = {
        "max_batch_size": 2,
        "max_batch_tokens": 64,
        "max_wait_ms": 0,
        "max_queue_items": 64,
        "batch_max_queue_items": 64,
        # Whole batch-lane batches: these tests count batches per lane; the slice taken
        # while online traffic is present has its own test below.
        "batch_slice_share": 1.0,
    }
    base.update(kw)
    return BatchingConfig.model_validate(base)


async def _run(share: float, online: int, bulk: int) -> Gated:
    eng = Gated()
    b = Batcher(eng, cfg(batch_floor_share=share), depth=1)
    b.start()
    first = b.submit([[1]], Ticket())  # holds the engine while the rest queue
    await asyncio.wait_for(eng.called.wait(), 10)
    # Batch work queued first: it still waits for online work.
    futs = b.submit([[BULK + i] for i in range(bulk)], Ticket(priority="batch"))
    futs += b.submit([[2 + i] for i in range(online)], Ticket())
    eng.gate.set()
    out = await asyncio.gather(*first, *futs)
    assert sorted(int(v[0]) for v in out[1:]) == sorted(
        [BULK + i for i in range(bulk)] + [2 + i for i in range(online)]
    )
    assert b.lane.sequences == bulk
    await b.close()
    return eng


async def test_online_first_then_batch_work_gets_the_rest() -> None:
    eng = await _run(0.0, online=6, bulk=4)
    assert eng.lanes() == "ooobb"


async def test_floor_share_gives_batch_work_its_turns() -> None:
    # share 0.25: each online batch earns a third of a batch-lane batch.
    eng = await _run(0.25, online=12, bulk=6)
    assert eng.lanes() == "ooobooobb"


async def test_default_floor_is_one_batch_in_ten() -> None:
    eng = await _run(0.1, online=40, bulk=4)
    assert eng.lanes() == "ooooooooob" + "ooooooooob" + "oo"


async def test_batch_lane_has_its_own_bound() -> None:
    eng = Gated()
    b = Batcher(eng, cfg(max_queue_items=8, batch_max_queue_items=4), depth=1)
    b.start()
    b.submit([[1]], Ticket())
    await asyncio.wait_for(eng.called.wait(), 10)
    futs = b.submit([[BULK + i] for i in range(4)], Ticket(priority="batch"))
    with pytest.raises(QueueFull, match="batch queue"):
        b.submit([[BULK + 9]], Ticket(priority="batch"))
    # The batch lane does not count against the online bound.
    futs += b.submit([[2 + i] for i in range(3)], Ticket())
    assert b.refuses(5) is None
    eng.gate.set()
    await asyncio.gather(*futs)
    await b.close()


async def test_batch_work_is_refused_first_under_overload() -> None:
    eng = Gated()
    b = Batcher(eng, cfg(max_queue_items=8, batch_max_queue_items=100), depth=1)
    b.start()
    b.submit([[1]], Ticket())
    await asyncio.wait_for(eng.called.wait(), 10)
    futs = b.submit([[2 + i] for i in range(4)], Ticket())  # the online queue half full
    with pytest.raises(QueueFull, match="online"):
        b.submit([[BULK]], Ticket(priority="batch"))
    futs += b.submit([[10 + i] for i in range(4)], Ticket())  # online still taken
    with pytest.raises(QueueFull):
        b.submit([[20]], Ticket())
    eng.gate.set()
    await asyncio.gather(*futs)
    await b.close()


async def test_batch_lane_batches_are_a_slice_while_online_traffic_is_present() -> None:
    # An online request waits behind a small bulk batch at most, never a whole one.
    eng = Gated()
    b = Batcher(eng, cfg(max_batch_size=8, batch_slice_share=0.25), depth=1)
    b.start()
    first = b.submit([[BULK]], Ticket(priority="batch"))  # holds the engine
    await asyncio.wait_for(eng.called.wait(), 10)
    futs = b.submit([[BULK + 1 + i] for i in range(8)], Ticket(priority="batch"))
    eng.gate.set()
    await asyncio.gather(*first, *futs)
    # No online request yet: the bulk work went as one whole batch.
    assert [len(x) for x in eng.batches[1:]] == [8]
    eng.batches.clear()
    eng.gate.clear()
    eng.called.clear()
    first = b.submit([[1]], Ticket())  # online traffic, holding the engine
    await asyncio.wait_for(eng.called.wait(), 10)
    futs = b.submit([[BULK + 20 + i] for i in range(8)], Ticket(priority="batch"))
    eng.gate.set()
    await asyncio.gather(*first, *futs)
    # With online traffic present, bulk batches are a quarter of max_batch_size.
    assert [len(x) for x in eng.batches[1:]] == [2, 2, 2, 2]
    await b.close()
