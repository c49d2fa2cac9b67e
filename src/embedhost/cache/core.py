"""The embedding cache itself (:class:`EmbeddingCache`): the tier order and single-flight,
written over the :class:`~embedhost.cache.tier.Tier` protocol, behind one call
(:meth:`EmbeddingCache.embed`).

Values are the engine's own float32 vectors before ``dimensions`` and normalization, which
the service applies after the cache: one entry serves every ``dimensions``, and a hit is
bit-identical to the vector the engine returned.

**One request.** Its distinct inputs are looked up in the local tiers (memory), then those
missing are joined to identical inputs already in flight in other requests
(single-flight), then the rest are looked up in the shared tiers (Redis: one round trip
per request). Only what is still missing goes to ``compute`` (the batcher), once per
distinct input; the answer is put back together in input order. A hit in one tier fills
the tiers asked before it; computed vectors go to every tier (Redis in the background).

**Tiers.** They are assembled in :meth:`EmbeddingCache.__init__`, in lookup order; a new
tier is a module implementing the protocol and one line there. ``embed``, ``clear``,
``describe``, ``flush`` and ``close`` go through the list.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import numpy as np

from embedhost.cache.keys import DEFAULT_POLICY, CachePolicy, Keys
from embedhost.cache.memory import MemoryLRU, MemoryTier
from embedhost.cache.redis import RedisTier
from embedhost.cache.tier import CacheObserver, Tier
from embedhost.config import CacheConfig, ModelConfig
from embedhost.engines.base import EngineInfo, Vectors
from embedhost.errors import CacheUnavailable

Compute = Callable[[list[list[int]]], Awaitable[Sequence[Vectors]]]


class _Abandoned(Exception):
    """The request computing an input ended without its vector (its client left, its
    rate limit, an engine error): whoever waited on it computes it itself."""


def _vector(value: bytes) -> Vectors:
    return np.frombuffer(value, dtype="<f4")


def _resolve(owned: dict[str, asyncio.Future[bytes]], k: str, value: bytes) -> None:
    fut = owned.get(k)
    if fut is not None and not fut.done():
        fut.set_result(value)


class EmbeddingCache:
    """The tiers, single-flight and the counters; one per app (``create_app``)."""

    def __init__(self, config: CacheConfig, observer: CacheObserver | None = None) -> None:
        self.config = config
        self.observer = observer
        self.keys = Keys(config.key_prefix, config.scope)
        self._memory = MemoryTier(config, observer)
        self._redis = RedisTier(config, observer)
        self.tiers: tuple[Tier, ...] = (self._memory, self._redis)
        """Every tier, on or off, in lookup order (local tiers first). Off tiers stay in
        the list: they answer describe (None) and clear (0 or None), so /info and
        DELETE /admin/cache have one shape whichever tiers are configured."""
        active: list[Tier] = [t for t in self.tiers if t.on]
        self._local = [t for t in active if t.local]
        self._shared = [t for t in active if not t.local]
        self._active = self._local + self._shared
        self._inflight: dict[str, asyncio.Future[bytes]] = {}
        self.joined = 0
        """Inputs answered by joining an identical input in flight in another request."""

    @property
    def enabled(self) -> bool:
        return bool(self._active)

    # -- the tiers' counters, by the names /info readers and tests know --------------------

    @property
    def memory(self) -> MemoryLRU | None:
        return self._memory.lru

    @property
    def redis_url(self) -> str | None:
        return self._redis.url

    @property
    def memory_hits(self) -> int:
        return self._memory.hits

    @property
    def memory_misses(self) -> int:
        return self._memory.misses

    @property
    def redis_hits(self) -> int:
        return self._redis.hits

    @property
    def redis_misses(self) -> int:
        return self._redis.misses

    @property
    def redis_corrupt(self) -> int:
        return self._redis.corrupt

    @property
    def errors(self) -> int:
        """Redis failures (timeouts, refused connections, protocol errors) since start."""
        return self._redis.errors

    @property
    def round_trips(self) -> int:
        """Redis round trips made (one MGET per request that reached Redis; one pipelined
        SET per request that computed something)."""
        return self._redis.round_trips

    @property
    def writes_dropped(self) -> int:
        return self._redis.writes_dropped

    # -- keys --------------------------------------------------------------------------------

    def namespace(self, config: ModelConfig, info: EngineInfo) -> str:
        return self.keys.namespace(config, info)

    def scope_for(self, key_id: str | None) -> str:
        """The key part that separates callers: one for all (shared), or the key's id."""
        return self.keys.scope_for(key_id)

    def _key(self, ns: str, scope: str, ids: list[int]) -> str:
        return self.keys.key(ns, scope, ids)

    # -- the request path --------------------------------------------------------------------

    async def embed(
        self,
        ns: str,
        scope: str,
        seqs: list[list[int]],
        dims: int,
        compute: Compute,
        policy: CachePolicy = DEFAULT_POLICY,
    ) -> tuple[list[Vectors], str]:
        """The vector of each sequence, in order, and ``hit``, ``miss`` or ``partial``
        (whether the distinct inputs were all, none or some answered without computing).

        ``compute`` embeds a list of sequences (the batcher); it is called at most twice:
        once for what nobody had, once more for inputs whose computing request failed.
        """
        key = self.keys.key
        keys = [key(ns, scope, s) for s in seqs]
        first: dict[str, int] = {}
        for i, k in enumerate(keys):
            first.setdefault(k, i)
        size = dims * 4
        found: dict[str, Vectors] = {}
        todo = list(first)
        borrowed: dict[str, asyncio.Future[bytes]] = {}
        owned: dict[str, asyncio.Future[bytes]] = {}
        computed = 0
        try:
            if policy.read:
                if self._local:
                    todo = await self._look_up(self._local, todo, size, found, owned, policy)
                rest = []
                for k in todo:
                    fut = self._inflight.get(k)
                    if fut is not None:
                        borrowed[k] = fut
                    else:
                        rest.append(k)
                todo = rest
                loop = asyncio.get_running_loop()
                for k in todo:
                    fut = loop.create_future()
                    self._inflight[k] = owned[k] = fut
                if todo and self._shared:
                    todo = await self._look_up(self._shared, todo, size, found, owned, policy)
            retry: list[str] = []
            if todo:
                await self._compute(todo, seqs, first, size, compute, owned, found, policy)
                computed += len(todo)
            for k, fut in borrowed.items():
                try:
                    found[k] = _vector(await asyncio.shield(fut))
                    self.joined += 1
                except _Abandoned:
                    retry.append(k)
            if retry:
                await self._compute(retry, seqs, first, size, compute, {}, found, policy)
                computed += len(retry)
        finally:
            for k, fut in owned.items():
                if self._inflight.get(k) is fut:
                    del self._inflight[k]
                if not fut.done():
                    fut.set_exception(_Abandoned())
                    fut.exception()  # retrieved: nobody may be waiting
        state = "miss" if computed == len(first) else ("hit" if computed == 0 else "partial")
        return [found[k] for k in keys], state

    async def _look_up(
        self,
        tiers: list[Tier],
        todo: list[str],
        size: int,
        found: dict[str, Vectors],
        owned: dict[str, asyncio.Future[bytes]],
        policy: CachePolicy,
    ) -> list[str]:
        """Ask ``tiers`` in order for ``todo``; what none of them had."""
        for tier in tiers:
            if not todo:
                break
            hits = await tier.get_many(todo, size)
            if not hits:
                continue
            for k, value in hits.items():
                found[k] = _vector(value)
                _resolve(owned, k, value)
            todo = [k for k in todo if k not in hits] if len(hits) < len(todo) else []
            faster = self._active[: self._active.index(tier)]
            if policy.write and faster:  # a hit fills the tiers asked before this one
                items = list(hits.items())
                for t in faster:
                    t.set_many(items)
        return todo

    async def _compute(
        self,
        todo: list[str],
        seqs: list[list[int]],
        first: dict[str, int],
        size: int,
        compute: Compute,
        owned: dict[str, asyncio.Future[bytes]],
        found: dict[str, Vectors],
        policy: CachePolicy,
    ) -> None:
        vectors = await compute([seqs[first[k]] for k in todo])
        stores: list[tuple[str, bytes]] = []
        for k, vec in zip(todo, vectors, strict=True):
            found[k] = vec
            value = np.ascontiguousarray(vec, dtype="<f4").tobytes()
            if len(value) != size:  # not the model's width: never cache it
                continue
            _resolve(owned, k, value)
            if policy.write:
                stores.append((k, value))
        if stores:
            for tier in self._active:
                tier.set_many(stores)

    async def flush(self, timeout: float = 5.0) -> None:
        """Wait for the background writes (Redis) started so far."""
        for tier in self._active:
            await tier.flush(timeout)

    # -- admin -------------------------------------------------------------------------------

    async def clear(self, model: str | None = None, version: str | None = None) -> dict[str, Any]:
        """Drop every entry, or those of one model, or of one model version, from every tier.

        Raises :class:`CacheUnavailable` when a tier (Redis) cannot be cleared; the tiers
        before it in lookup order (memory) are cleared either way."""
        prefix = self.keys.prefix_for(model, version)
        removed: dict[str, Any] = {}
        done = ""
        for tier in self.tiers:
            try:
                n = await tier.clear(prefix)
            except Exception as exc:
                raise CacheUnavailable(
                    f"the cache's {tier.title} could not be cleared ({type(exc).__name__}); "
                    f"{done}retry when {tier.title} is back",
                    retry_after=1,
                ) from None
            removed[tier.removed_key] = n
            if n is not None:
                done += f"{n} {tier.removed_what} were removed; "
        return removed

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "enabled": self.enabled,
            "scope": self.config.scope,
            "charge_hits": self.config.charge_hits,
        }
        for tier in self.tiers:
            out[tier.name] = tier.describe()
        out["in_flight"] = len(self._inflight)
        out["joined_in_flight"] = self.joined
        return out

    async def close(self) -> None:
        for tier in self.tiers:
            await tier.close()
