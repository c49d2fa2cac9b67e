"""The embedding cache, between the service and the batcher: an in-process LRU bounded in
bytes and, optionally, Redis shared by every replica, behind one call
(:meth:`EmbeddingCache.embed`).

**What a key is.** A vector is cached under a hash of everything that decides it: the
model's *namespace* (:func:`namespace`: name, version, weights checksum, engine, dtype,
pooling, device, dimensions, quantization and engine options) and the input's token ids
after truncation (so truncation settings and token-id inputs are covered). Values are the
engine's own float32 vectors before ``dimensions`` and normalization, which the service
applies after the cache: one entry serves every ``dimensions``, and a hit is bit-identical
to the vector the engine returned. With ``scope: per_key`` the API key id is part of the
key. Because version and checksum are in the key, a swap, promote or rollback never
serves a vector of another version.

**One request.** Its distinct inputs are looked up in memory, then those missing are
joined to identical inputs already in flight in other requests (single-flight), then the
rest are fetched from Redis with one ``MGET`` (one round trip per request, not per
input). Only what is still missing goes to ``compute`` (the batcher), once per distinct
input; the answer is put back together in input order. Results fill memory at once and
Redis with one pipelined ``SET ... EX ttl`` in the background, off the response path.

**Fail open.** Redis errors and timeouts (``redis_timeout_s``, well under a batch's time)
make the request go on as if the cache were empty; they are counted, logged at most every
10 s, and Redis is skipped for ``redis_retry_s`` after each, so a dead or slow Redis costs
no request a wait. A value of the wrong size (corrupt, or written by something else) is
ignored, and overwritten by the recomputed vector.

``Cache-Control`` (:class:`CachePolicy`): ``no-cache`` computes afresh and refreshes the
entries, ``no-store`` writes nothing.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import math
import time
from array import array
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import urlsplit

import numpy as np

from embedhost.config import CacheConfig, ModelConfig
from embedhost.engines.base import EngineInfo, Vectors
from embedhost.errors import CacheUnavailable, ConfigError

log = logging.getLogger(__name__)

MB = 1024 * 1024
ENTRY_OVERHEAD = 200
"""Bytes an in-process entry costs beyond its key and value (the dict slot, the str and
bytes object headers): counted, so that the byte bound is about the real memory."""
MAX_PENDING_WRITES = 256
"""Background Redis writes in flight; beyond, a write is dropped (the entry is recomputed
once more later), never queued without bound."""
_LOG_EVERY_S = 10.0

Compute = Callable[[list[list[int]]], Awaitable[Sequence[Vectors]]]


class CacheObserver(Protocol):
    """Receives the cache's numbers (``metrics.CacheObserver`` implements it)."""

    def lookups(self, tier: str, result: str, n: int) -> None: ...

    def lookup_seconds(self, tier: str, seconds: float) -> None: ...

    def error(self, op: str) -> None: ...

    def size(self, nbytes: int, entries: int) -> None: ...


@dataclass(frozen=True, slots=True)
class CachePolicy:
    """What one request lets the cache do: read (``no-cache`` forbids) and write
    (``no-store`` forbids)."""

    read: bool = True
    write: bool = True

    @classmethod
    def from_header(cls, value: str | None) -> CachePolicy:
        """From an HTTP ``Cache-Control`` header (other directives are ignored)."""
        if not value:
            return DEFAULT_POLICY
        directives = {d.split("=", 1)[0].strip().lower() for d in value.split(",")}
        return cls(read="no-cache" not in directives, write="no-store" not in directives)


DEFAULT_POLICY = CachePolicy()
BYPASS = CachePolicy(read=False, write=False)


def namespace(config: ModelConfig, info: EngineInfo) -> str:
    """``name@version:fingerprint``: what, besides the token ids, decides a vector."""
    checksum = info.details.get("checksum") or config.checksum
    ident = {
        "checksum": checksum,
        # Without a checksum the weights are only known by where they are.
        "path": None if checksum else config.path,
        "engine": config.engine,
        "engine_impl": info.engine,
        "dtype": info.dtype,
        "pooling": info.pooling,
        "device": info.device,
        "dims": info.dims,
        "quantization": config.quantization,
        "engine_options": config.engine_options,
    }
    blob = json.dumps(ident, sort_keys=True, default=str).encode()
    return f"{config.name}@{config.version}:{hashlib.sha256(blob).hexdigest()[:16]}"


def input_digest(ids: list[int]) -> str:
    """128 bits of BLAKE2b over the token ids (ids are vocabulary indices: 32 bits do)."""
    return hashlib.blake2b(array("i", ids).tobytes(), digest_size=16).hexdigest()


class MemoryLRU:
    """Least recently used entries, bounded by ``max_bytes`` (keys, values and overhead)."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.bytes = 0
        self._d: OrderedDict[str, bytes] = OrderedDict()

    def __len__(self) -> int:
        return len(self._d)

    def get(self, key: str) -> bytes | None:
        value = self._d.get(key)
        if value is not None:
            self._d.move_to_end(key)
        return value

    def put(self, key: str, value: bytes) -> None:
        cost = len(key) + len(value) + ENTRY_OVERHEAD
        if cost > self.max_bytes:
            return
        old = self._d.pop(key, None)
        if old is not None:
            self.bytes -= len(key) + len(old) + ENTRY_OVERHEAD
        self._d[key] = value
        self.bytes += cost
        while self.bytes > self.max_bytes:
            k, v = self._d.popitem(last=False)
            self.bytes -= len(k) + len(v) + ENTRY_OVERHEAD

    def drop(self, prefix: str) -> int:
        """Remove every entry whose key starts with ``prefix``; how many."""
        doomed = [k for k in self._d if k.startswith(prefix)]
        for k in doomed:
            v = self._d.pop(k)
            self.bytes -= len(k) + len(v) + ENTRY_OVERHEAD
        return len(doomed)


class _Abandoned(Exception):
    """The request computing an input ended without its vector (its client left, its
    rate limit, an engine error): whoever waited on it computes it itself."""


def _glob_escape(text: str) -> str:
    """``text`` literally in a Redis MATCH pattern (a model named ``*`` clears itself only)."""
    return "".join("\\" + c if c in "*?[]\\^-" else c for c in text)


def _vector(value: bytes) -> Vectors:
    return np.frombuffer(value, dtype="<f4")


class EmbeddingCache:
    """Both tiers, single-flight and the counters; one per app (``create_app``)."""

    def __init__(self, config: CacheConfig, observer: CacheObserver | None = None) -> None:
        self.config = config
        self.observer = observer
        on = config.enabled
        self.memory = (
            MemoryLRU(int(config.memory_max_mb * MB)) if on and config.memory_max_mb else None
        )
        self.redis_url = (
            config.redis_url.get_secret_value() if on and config.redis_url is not None else None
        )
        if self.redis_url is not None:
            try:
                import redis.asyncio  # noqa: F401
            except ImportError:
                raise ConfigError(
                    "cache.redis_url needs the redis client; install it with: "
                    "pip install 'embedhost[redis]'"
                ) from None
        self._prefix = f"{config.key_prefix}:cache:"
        self._redis: Any = None
        self._redis_skip_until = -math.inf
        self._last_error_log = -math.inf
        self._inflight: dict[str, asyncio.Future[bytes]] = {}
        self._writes: set[asyncio.Task[None]] = set()
        self._namespaces: dict[tuple[Any, ...], str] = {}
        # Counters for /info (the metrics have their own).
        self.memory_hits = 0
        self.memory_misses = 0
        self.redis_hits = 0
        self.redis_misses = 0
        self.redis_corrupt = 0
        self.joined = 0
        """Inputs answered by joining an identical input in flight in another request."""
        self.errors = 0
        """Redis failures (timeouts, refused connections, protocol errors) since start."""
        self.round_trips = 0
        """Redis round trips made (one MGET per request that reached Redis; one pipelined
        SET per request that computed something)."""
        self.writes_dropped = 0

    @property
    def enabled(self) -> bool:
        return self.memory is not None or self.redis_url is not None

    # -- keys --------------------------------------------------------------------------------

    def namespace(self, config: ModelConfig, info: EngineInfo) -> str:
        memo = (config.ref, id(config), id(info), info.details.get("checksum"))
        ns = self._namespaces.get(memo)
        if ns is None:
            if len(self._namespaces) > 1024:
                self._namespaces.clear()
            ns = self._namespaces[memo] = namespace(config, info)
        return ns

    def scope_for(self, key_id: str | None) -> str:
        """The key part that separates callers: one for all (shared), or the key's id."""
        if self.config.scope == "shared":
            return "s"
        return f"k.{key_id or '-'}"

    def _key(self, ns: str, scope: str, ids: list[int]) -> str:
        return f"{self._prefix}{ns}:{scope}:{input_digest(ids)}"

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
        keys = [self._key(ns, scope, s) for s in seqs]
        first: dict[str, int] = {}
        for i, k in enumerate(keys):
            first.setdefault(k, i)
        size = dims * 4
        found: dict[str, Vectors] = {}
        todo = list(first)
        borrowed: dict[str, asyncio.Future[bytes]] = {}
        owned: dict[str, asyncio.Future[bytes]] = {}
        if policy.read:
            todo = self._from_memory(todo, size, found)
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
        computed = 0
        try:
            if todo and policy.read and self.redis_url is not None:
                remote = await self._mget(todo, size)
                for k, value in remote.items():
                    found[k] = _vector(value)
                    self._resolve(owned, k, value)
                    if policy.write and self.memory is not None:
                        self.memory.put(k, value)
                todo = [k for k in todo if k not in remote]
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
            if self.memory is not None and self.observer is not None:
                self.observer.size(self.memory.bytes, len(self.memory))
        state = "miss" if computed == len(first) else ("hit" if computed == 0 else "partial")
        return [found[k] for k in keys], state

    def _from_memory(self, todo: list[str], size: int, found: dict[str, Vectors]) -> list[str]:
        mem = self.memory
        if mem is None:
            return todo
        t0 = time.perf_counter()
        rest = []
        for k in todo:
            value = mem.get(k)
            if value is not None and len(value) == size:
                found[k] = _vector(value)
            else:
                rest.append(k)
        hits = len(todo) - len(rest)
        self.memory_hits += hits
        self.memory_misses += len(rest)
        if self.observer is not None:
            self.observer.lookups("memory", "hit", hits)
            self.observer.lookups("memory", "miss", len(rest))
            self.observer.lookup_seconds("memory", time.perf_counter() - t0)
        return rest

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
            self._resolve(owned, k, value)
            if policy.write:
                stores.append((k, value))
                if self.memory is not None:
                    self.memory.put(k, value)
        if stores:
            self._store_remote(stores)

    @staticmethod
    def _resolve(owned: dict[str, asyncio.Future[bytes]], k: str, value: bytes) -> None:
        fut = owned.get(k)
        if fut is not None and not fut.done():
            fut.set_result(value)

    # -- Redis -------------------------------------------------------------------------------

    def _client(self) -> Any:
        """The Redis client, or None while Redis is skipped after a failure."""
        if self.redis_url is None or time.monotonic() < self._redis_skip_until:
            return None
        if self._redis is None:
            # Built on first use: the client binds to the running event loop.
            import redis.asyncio as aioredis
            from redis.asyncio.retry import Retry
            from redis.backoff import NoBackoff
            from redis.exceptions import ConnectionError as RedisConnectionError

            t = self.config.redis_timeout_s
            self._redis = aioredis.Redis.from_url(
                self.redis_url,
                socket_timeout=t,
                socket_connect_timeout=t,
                # One immediate retry, on a broken connection only (a pooled connection
                # from before a Redis restart; reconnecting is instant or refused at
                # once); a timeout is never retried: the request goes on as a miss.
                retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
                health_check_interval=0,
            )
        return self._redis

    def _deadline(self) -> float:
        # Belt and braces over the socket timeouts: connect and read both bounded.
        return self.config.redis_timeout_s * 2

    async def _mget(self, keys: list[str], size: int) -> dict[str, bytes]:
        client = self._client()
        obs = self.observer
        if client is None:
            if obs is not None:
                obs.lookups("redis", "error", len(keys))
            return {}
        t0 = time.perf_counter()
        try:
            async with asyncio.timeout(self._deadline()):
                values = await client.mget(keys)
        except Exception as exc:  # Redis down, slow, or answering nonsense: a miss
            self._failed("get", exc)
            if obs is not None:
                obs.lookups("redis", "error", len(keys))
            return {}
        self.round_trips += 1
        out: dict[str, bytes] = {}
        corrupt = 0
        for k, v in zip(keys, values, strict=True):
            if v is None:
                continue
            if len(v) != size:
                corrupt += 1
                continue
            out[k] = bytes(v)
        self.redis_hits += len(out)
        self.redis_corrupt += corrupt
        self.redis_misses += len(keys) - len(out)
        if obs is not None:
            obs.lookup_seconds("redis", time.perf_counter() - t0)
            obs.lookups("redis", "hit", len(out))
            obs.lookups("redis", "corrupt", corrupt)
            obs.lookups("redis", "miss", len(keys) - len(out) - corrupt)
        return out

    def _store_remote(self, items: list[tuple[str, bytes]]) -> None:
        if self._client() is None:
            return
        if len(self._writes) >= MAX_PENDING_WRITES:
            self.writes_dropped += 1
            return
        task = asyncio.get_running_loop().create_task(self._mset(items), name="cache-write")
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)

    async def _mset(self, items: list[tuple[str, bytes]]) -> None:
        client = self._client()
        if client is None:
            return
        try:
            async with asyncio.timeout(self._deadline()):
                pipe = client.pipeline(transaction=False)
                for k, v in items:
                    pipe.set(k, v, ex=self.config.ttl_s)
                await pipe.execute()
            self.round_trips += 1
        except Exception as exc:
            self._failed("set", exc)

    def _failed(self, op: str, exc: BaseException) -> None:
        self.errors += 1
        if self.observer is not None:
            self.observer.error(op)
        now = time.monotonic()
        self._redis_skip_until = now + self.config.redis_retry_s
        if now - self._last_error_log >= _LOG_EVERY_S:
            self._last_error_log = now
            log.warning(
                "cache: Redis %s failed (%s: %s); requests go on without it and retry it in "
                "%.1fs (%d failures so far)",
                op,
                type(exc).__name__,
                exc,
                self.config.redis_retry_s,
                self.errors,
            )

    async def flush(self, timeout: float = 5.0) -> None:
        """Wait for the background Redis writes started so far."""
        if self._writes:
            await asyncio.wait(list(self._writes), timeout=timeout)

    # -- admin -------------------------------------------------------------------------------

    async def clear(self, model: str | None = None, version: str | None = None) -> dict[str, Any]:
        """Drop every entry, or those of one model, or of one model version, from both tiers.

        Raises :class:`CacheUnavailable` when Redis cannot be cleared (the memory tier is
        cleared first either way)."""
        prefix = self._prefix
        if model is not None:
            prefix += f"{model}@" + (f"{version}:" if version is not None else "")
        memory = self.memory.drop(prefix) if self.memory is not None else 0
        if self.memory is not None and self.observer is not None:
            self.observer.size(self.memory.bytes, len(self.memory))
        redis_removed: int | None = None
        if self.redis_url is not None:
            self._redis_skip_until = -math.inf  # an operator asked: try now
            client = self._client()
            redis_removed = 0
            try:
                batch: list[bytes] = []
                async for key in client.scan_iter(match=_glob_escape(prefix) + "*", count=1000):
                    batch.append(key)
                    if len(batch) >= 1000:
                        redis_removed += await client.unlink(*batch)
                        batch.clear()
                if batch:
                    redis_removed += await client.unlink(*batch)
            except Exception as exc:
                self._failed("clear", exc)
                raise CacheUnavailable(
                    f"the cache's Redis could not be cleared ({type(exc).__name__}); "
                    f"{memory} in-process entries were removed; retry when Redis is back",
                    retry_after=1,
                ) from None
        return {"memory_entries_removed": memory, "redis_keys_removed": redis_removed}

    def describe(self) -> dict[str, Any]:
        mem = self.memory
        redis_info: dict[str, Any] | None = None
        if self.redis_url is not None:
            parts = urlsplit(self.redis_url)
            where = f"{parts.scheme}://{parts.hostname or ''}" + (
                f":{parts.port}" if parts.port else ""
            )
            redis_info = {
                "url": where + (parts.path or ""),  # never the password
                "ttl_s": self.config.ttl_s,
                "timeout_s": self.config.redis_timeout_s,
                "state": "skipped" if time.monotonic() < self._redis_skip_until else "ok",
                "hits": self.redis_hits,
                "misses": self.redis_misses,
                "corrupt": self.redis_corrupt,
                "errors": self.errors,
                "round_trips": self.round_trips,
                "writes_dropped": self.writes_dropped,
            }
        return {
            "enabled": self.enabled,
            "scope": self.config.scope,
            "charge_hits": self.config.charge_hits,
            "memory": {
                "max_bytes": mem.max_bytes,
                "bytes": mem.bytes,
                "entries": len(mem),
                "hits": self.memory_hits,
                "misses": self.memory_misses,
            }
            if mem is not None
            else None,
            "redis": redis_info,
            "in_flight": len(self._inflight),
            "joined_in_flight": self.joined,
        }

    async def close(self) -> None:
        await self.flush(timeout=2.0)
        client, self._redis = self._redis, None
        if client is not None:
            try:
                await client.aclose()
            except Exception as exc:
                log.debug("closing the cache's Redis client failed: %s", exc)
