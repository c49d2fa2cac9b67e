"""The batcher's drain estimate (Retry-After, admission by estimated wait) and the pacing of
refusals, on synthetic clocks: no timing asserts."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from embedhost.api.overload import RefusalPacer
from embedhost.batching import RETRY_AFTER_MAX_S, RETRY_AFTER_MIN_S, Batcher, Ticket
from embedhost.config import BatchingConfig
from embedhost.errors import QueueFull


async def _never(batch: list[list[int]], timeout: float) -> np.ndarray:
    raise AssertionError("the batcher is not started in these tests")


def batcher(**kw: object) -> Batcher:
    base: dict[str, object] = {"max_batch_size": 4, "max_queue_items": 64}
    base.update(kw)
    return Batcher(_never, BatchingConfig.model_validate(base), retry_after_s=2)


def test_retry_after_is_the_constant_until_throughput_is_measured() -> None:
    b = batcher()
    assert b.rate == 0.0
    assert b.drain_s() is None
    assert b.retry_after() == 2


async def test_retry_after_is_the_queue_drain_time() -> None:
    b = batcher()
    b._measure(10, sent=100.0, done=100.5)  # 10 sequences in 0.5 s: 20/s
    assert b.rate == pytest.approx(20.0)
    b.submit([[1, 2]] * 60, Ticket())
    assert b.drain_s() == pytest.approx(60 / 20)
    with pytest.raises(QueueFull) as exc:
        b.submit([[1, 2]] * 5, Ticket())
    assert exc.value.retry_after == pytest.approx(3.0)
    assert "full" in exc.value.message


async def test_retry_after_stays_within_bounds() -> None:
    fast, slow = batcher(), batcher()
    fast._measure(10_000, sent=0.0, done=0.01)
    slow._measure(1, sent=0.0, done=100.0)
    for b in (fast, slow):
        b.submit([[1]] * 64, Ticket())
    assert fast.retry_after() == RETRY_AFTER_MIN_S
    assert slow.retry_after() == RETRY_AFTER_MAX_S


def test_pipelined_batches_are_measured_by_the_time_each_held_the_engine() -> None:
    b = batcher()
    # Both sent at 0; the second waited behind the first, which was answered at 1.0.
    b._measure(10, sent=0.0, done=1.0)
    b._measure(10, sent=0.0, done=2.0)
    assert b.rate == pytest.approx(10.0)


async def test_admission_by_estimated_wait() -> None:
    b = batcher(max_queue_wait_s=1.0)
    b._measure(10, sent=0.0, done=1.0)  # 10/s
    # An empty queue takes any request that fits the item bound, however long it is.
    b.submit([[1]] * 20, Ticket())
    assert b.refuses(1) is not None  # 21 sequences ahead: 2.1 s > 1 s
    with pytest.raises(QueueFull) as exc:
        b.submit([[1]], Ticket())
    assert "estimated wait" in exc.value.message
    assert exc.value.retry_after == pytest.approx(2.0)


async def test_item_bound_alone_without_a_wait_limit() -> None:
    b = batcher()
    b._measure(1, sent=0.0, done=10.0)  # 0.1/s: minutes of wait, but no wait limit
    b.submit([[1]] * 64, Ticket())
    assert b.refuses(1) is not None
    assert batcher().refuses(64) is None


class Clock:
    """A synthetic monotonic clock: it moves only when the test says."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_pacer_holds_refusals_beyond_its_rate() -> None:
    clock = Clock()
    pacer = RefusalPacer(10.0, max_hold_s=0.5, clock=clock)
    # 20 refusals at one instant: one turn (0.1 s) each, none held beyond 0.5 s.
    holds = [pacer.hold_s() for _ in range(20)]
    assert holds[:6] == pytest.approx([0.0, 0.1, 0.2, 0.3, 0.4, 0.5])
    assert holds[6:] == pytest.approx([0.5] * 14)
    # A second later every claimed turn has passed: answered at once again.
    clock.now += 1.0
    assert pacer.hold_s() == 0.0
    # At the rate, never held: 0.1 s apart.
    clock.now += 1.0
    pacer.hold_s()
    for _ in range(5):
        clock.now += 0.1
        assert pacer.hold_s() == pytest.approx(0.0, abs=1e-9)


def test_pacer_off() -> None:
    pacer = RefusalPacer(None)
    assert {pacer.hold_s() for _ in range(100)} == {0.0}


async def test_pace_sleeps_only_when_held() -> None:
    pacer = RefusalPacer(1000.0)
    await asyncio.gather(*(pacer.pace() for _ in range(5)))
    assert pacer.held >= 1
