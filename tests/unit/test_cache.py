"""The embedding cache on its own: keys, the byte-bounded LRU, partial hits in input order,
single-flight within and across requests, failures of the computing request, policies.
The compute function here counts what reaches it (the API and Redis tests use the app)."""

from __future__ import annotations

import asyncio
import gc
import os

import numpy as np
import psutil
import pytest

from embedhost.cache import (
    BYPASS,
    ENTRY_OVERHEAD,
    CachePolicy,
    EmbeddingCache,
    MemoryLRU,
    namespace,
)
from embedhost.config import CacheConfig, ModelConfig
from embedhost.engines.base import EngineInfo, Vectors
from tests.fakes import vector_for

DIMS = 8


class Counting:
    """A compute function that counts the sequences it is asked for."""

    def __init__(self, delay: float = 0.0, fail: BaseException | None = None) -> None:
        self.calls: list[list[list[int]]] = []
        self.delay = delay
        self.fail = fail

    async def __call__(self, seqs: list[list[int]]) -> list[Vectors]:
        self.calls.append(seqs)
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.fail is not None:
            raise self.fail
        return [vector_for(s, DIMS) for s in seqs]

    @property
    def sequences(self) -> int:
        return sum(len(c) for c in self.calls)


def _cache(**kw: object) -> EmbeddingCache:
    return EmbeddingCache(CacheConfig.model_validate(kw))


def test_policy_from_header() -> None:
    assert CachePolicy.from_header(None) == CachePolicy(True, True)
    assert CachePolicy.from_header("no-cache") == CachePolicy(read=False, write=True)
    assert CachePolicy.from_header("No-Store") == CachePolicy(read=True, write=False)
    assert CachePolicy.from_header("max-age=0, no-store, no-cache") == BYPASS
    assert CachePolicy.from_header("max-age=60") == CachePolicy(True, True)


def test_namespace_holds_everything_that_decides_a_vector() -> None:
    cfg = ModelConfig(name="m", path="/x", version="1", checksum="sha256:" + "a" * 64)
    info = EngineInfo("transformers", 384, 256, "mean", True, "float32", "cpu")
    base = namespace(cfg, info)
    assert base.startswith("m@1:")
    assert namespace(cfg.model_copy(update={"version": "2"}), info) != base
    assert namespace(cfg.model_copy(update={"checksum": "sha256:" + "b" * 64}), info) != base
    for field, value in (("dtype", "bfloat16"), ("pooling", "cls"), ("device", "cuda")):
        other = EngineInfo(**{**info.to_dict(), field: value})
        assert namespace(cfg, other) != base, field
    # The path only counts when no checksum identifies the weights.
    assert namespace(cfg.model_copy(update={"path": "/y"}), info) == base
    bare = cfg.model_copy(update={"checksum": None})
    assert namespace(bare, info) != namespace(bare.model_copy(update={"path": "/y"}), info)
    # normalize is applied after the cache: it is not part of the key.
    normed = EngineInfo(**{**info.to_dict(), "normalize": False})
    assert namespace(cfg, normed) == base


def test_lru_is_bounded_in_bytes_and_evicts_least_recent() -> None:
    value = b"x" * 100
    cost = len("k000") + len(value) + ENTRY_OVERHEAD
    lru = MemoryLRU(cost * 3)
    for i in range(3):
        lru.put(f"k{i:03d}", value)
    assert lru.get("k000") == value  # k000 is now the most recent
    lru.put("k003", value)
    assert lru.get("k001") is None  # the least recent went
    assert {k for k in ("k000", "k002", "k003") if lru.get(k)} == {"k000", "k002", "k003"}
    assert lru.bytes == cost * 3 == lru.max_bytes
    lru.put("big", b"x" * (cost * 4))  # larger than the whole bound: not kept
    assert lru.get("big") is None and len(lru) == 3
    assert lru.drop("k00") == 3 and lru.bytes == 0


def test_lru_resident_memory_stays_bounded_under_a_flood() -> None:
    """50,000 distinct 8 KiB vectors (400 MB if kept) through a 4 MB cache."""
    lru = MemoryLRU(4 * 1024 * 1024)
    gc.collect()
    proc = psutil.Process(os.getpid())
    before = proc.memory_info().rss
    vec = np.arange(2048, dtype=np.float32)
    for i in range(50_000):
        vec[0] = i
        lru.put(f"embedhost:cache:m@1:ns:s:{i:032x}", vec.tobytes())
    grown = proc.memory_info().rss - before
    assert lru.bytes <= lru.max_bytes
    assert 400 <= len(lru) <= 4 * 1024 * 1024 // 8192
    assert grown < 64 * 1024 * 1024, f"RSS grew {grown / 1e6:.0f} MB"


async def test_partial_hits_come_back_in_input_order_with_duplicates() -> None:
    cache = _cache()
    compute = Counting()
    a, b, c = [101, 1, 102], [101, 2, 102], [101, 3, 102]
    vecs, state = await cache.embed("m@1:x", "s", [a, b], DIMS, compute)
    assert state == "miss" and compute.sequences == 2
    seqs = [c, a, c, b, a, c]
    vecs, state = await cache.embed("m@1:x", "s", seqs, DIMS, compute)
    assert state == "partial"
    assert compute.calls[-1] == [c]  # only the miss, once, though it appears three times
    for s, v in zip(seqs, vecs, strict=True):
        assert v.tobytes() == vector_for(s, DIMS).tobytes()
    vecs, state = await cache.embed("m@1:x", "s", [b, b, a], DIMS, compute)
    assert state == "hit" and compute.sequences == 3
    # Another namespace or scope is another entry.
    _, state = await cache.embed("m@2:x", "s", [a], DIMS, compute)
    assert state == "miss"
    _, state = await cache.embed("m@1:x", "k.other", [a], DIMS, compute)
    assert state == "miss"


async def test_single_flight_across_concurrent_requests() -> None:
    cache = _cache()
    compute = Counting(delay=0.05)
    seq = [101, 7, 102]
    results = await asyncio.gather(
        *(cache.embed("m@1:x", "s", [seq, [101, 8 + i, 102]], DIMS, compute) for i in range(8))
    )
    # The shared input was computed once; each request's own input once.
    assert compute.sequences == 9
    assert sum(c.count(seq) for c in compute.calls) == 1
    assert cache.joined == 7
    for vecs, _ in results:
        assert vecs[0].tobytes() == vector_for(seq, DIMS).tobytes()
    assert not cache._inflight  # nothing left behind


class Gated(Counting):
    """Computes (or fails) only once ``gate`` is set; ``started`` once it was called."""

    def __init__(self, fail: BaseException | None = None) -> None:
        super().__init__(fail=fail)
        self.gate = asyncio.Event()
        self.started = asyncio.Event()

    async def __call__(self, seqs: list[list[int]]) -> list[Vectors]:
        self.calls.append(seqs)
        self.started.set()
        await self.gate.wait()
        if self.fail is not None:
            raise self.fail
        return [vector_for(s, DIMS) for s in seqs]


async def _settle() -> None:
    """Let every runnable task run until it blocks (no I/O here: the memory tier only)."""
    for _ in range(50):
        await asyncio.sleep(0)


async def test_a_failed_computing_request_does_not_fail_its_followers() -> None:
    cache = _cache()
    owner = Gated(fail=RuntimeError("client gone"))
    follower = Counting()
    seq = [101, 9, 102]
    first = asyncio.ensure_future(cache.embed("m@1:x", "s", [seq], DIMS, owner))
    await asyncio.wait_for(owner.started.wait(), 10)  # the first request owns the input now
    second = asyncio.ensure_future(cache.embed("m@1:x", "s", [seq], DIMS, follower))
    await _settle()
    # It joined: it waits for the owner's answer instead of computing its own.
    assert not second.done() and follower.calls == []
    owner.gate.set()
    with pytest.raises(RuntimeError):
        await first
    vecs, state = await second
    assert vecs[0].tobytes() == vector_for(seq, DIMS).tobytes()
    assert state == "miss" and follower.sequences == 1  # computed once the owner failed
    # A cancelled owner too.
    slow = Gated()
    task = asyncio.ensure_future(cache.embed("m@1:x", "s", [[101, 10, 102]], DIMS, slow))
    await asyncio.wait_for(slow.started.wait(), 10)
    waiter = asyncio.ensure_future(cache.embed("m@1:x", "s", [[101, 10, 102]], DIMS, follower))
    await _settle()
    assert not waiter.done() and follower.sequences == 1
    task.cancel()
    vecs, _ = await waiter
    assert vecs[0].tobytes() == vector_for([101, 10, 102], DIMS).tobytes()
    assert follower.sequences == 2
    assert not cache._inflight


async def test_policies_and_wrong_sized_entries() -> None:
    cache = _cache()
    compute = Counting()
    seq = [101, 11, 102]
    _, state = await cache.embed("m@1:x", "s", [seq], DIMS, compute, CachePolicy(write=False))
    assert state == "miss"
    _, state = await cache.embed("m@1:x", "s", [seq], DIMS, compute)
    assert state == "miss"  # no-store wrote nothing; this one did
    _, state = await cache.embed("m@1:x", "s", [seq], DIMS, compute, CachePolicy(read=False))
    assert state == "miss" and compute.sequences == 3  # no-cache computed again
    _, state = await cache.embed("m@1:x", "s", [seq], DIMS, compute)
    assert state == "hit"
    # A value of the wrong size is ignored and replaced.
    assert cache.memory is not None
    key = cache._key("m@1:x", "s", seq)
    cache.memory.put(key, b"\x00" * 12)
    vecs, state = await cache.embed("m@1:x", "s", [seq], DIMS, compute)
    assert state == "miss" and vecs[0].tobytes() == vector_for(seq, DIMS).tobytes()
    assert cache.memory.get(key) == vector_for(seq, DIMS).tobytes()


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="redis_url must start with"):
        CacheConfig.model_validate({"redis_url": "localhost:6379"})
    with pytest.raises(ValueError, match="shared"):
        CacheConfig.model_validate({"scope": "global"})
    assert not _cache(enabled=False).enabled
    assert not _cache(memory_max_mb=0).enabled
    assert _cache(memory_max_mb=0, redis_url="redis://127.0.0.1:1/0").enabled


def test_clear_pattern_is_literal() -> None:
    from embedhost.cache import _glob_escape

    # A `model` query parameter of "*" must not clear every model's Redis keys.
    assert _glob_escape("p:cache:*@") == "p:cache:\\*@"
    assert _glob_escape("p:cache:m[1]?@") == "p:cache:m\\[1\\]\\?@"
