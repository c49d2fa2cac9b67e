"""The Redis tier (``cache.redis_url``): vectors shared by every replica, with a TTL
(``cache.ttl_s``), and what happens when Redis fails.

**Round trips.** A request's lookups are one ``MGET`` (one round trip per request, not per
input); its results go back with one pipelined ``SET ... EX ttl`` in a background task, off
the response path. At most :data:`MAX_PENDING_WRITES` such writes are in flight; beyond,
a write is dropped and counted.

**Fail open.** Redis errors and timeouts (``redis_timeout_s``, well under a batch's time)
make the request go on as if the tier were empty; they are counted, logged at most every
10 s, and Redis is skipped for ``redis_retry_s`` after each (the *fail-open window*), so a
dead or slow Redis costs no request a wait. A value of the wrong size (corrupt, or written
by something else) is counted and ignored, and overwritten by the recomputed vector.

This module is ``embedhost.cache.redis``; ``import redis`` in it is absolute, so it is the
client library, not this module.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from typing import Any
from urllib.parse import urlsplit

from embedhost.cache.tier import CacheObserver
from embedhost.config import CacheConfig
from embedhost.errors import ConfigError

log = logging.getLogger(__name__)

MAX_PENDING_WRITES = 256
"""Background Redis writes in flight; beyond, a write is dropped (the entry is recomputed
once more later), never queued without bound."""
_LOG_EVERY_S = 10.0


def _glob_escape(text: str) -> str:
    """``text`` literally in a Redis MATCH pattern (a model named ``*`` clears itself only)."""
    return "".join("\\" + c if c in "*?[]\\^-" else c for c in text)


class RedisTier:
    """The cache's Redis: one client per app, built on first use."""

    name = "redis"
    title = "Redis"
    local = False
    removed_key = "redis_keys_removed"
    removed_what = "Redis keys"

    def __init__(self, config: CacheConfig, observer: CacheObserver | None = None) -> None:
        self.config = config
        self.observer = observer
        self.url = (
            config.redis_url.get_secret_value()
            if config.enabled and config.redis_url is not None
            else None
        )
        if self.url is not None:
            try:
                import redis.asyncio  # noqa: F401
            except ImportError:
                raise ConfigError(
                    "cache.redis_url needs the redis client; install it with: "
                    "pip install 'embedhost[redis]'"
                ) from None
        self._redis: Any = None
        self._skip_until = -math.inf
        self._last_error_log = -math.inf
        self._writes: set[asyncio.Task[None]] = set()
        self.hits = 0
        self.misses = 0
        self.corrupt = 0
        self.errors = 0
        """Failures (timeouts, refused connections, protocol errors) since start."""
        self.round_trips = 0
        """Round trips made (one MGET per request that reached Redis; one pipelined SET per
        request that computed something)."""
        self.writes_dropped = 0

    @property
    def on(self) -> bool:
        return self.url is not None

    @property
    def skipped(self) -> bool:
        """Inside the fail-open window after a failure: not asked."""
        return time.monotonic() < self._skip_until

    def _client(self) -> Any:
        """The Redis client, or None while Redis is skipped after a failure."""
        if self.url is None or self.skipped:
            return None
        if self._redis is None:
            # Built on first use: the client binds to the running event loop.
            import redis.asyncio as aioredis
            from redis.asyncio.retry import Retry
            from redis.backoff import NoBackoff
            from redis.exceptions import ConnectionError as RedisConnectionError

            t = self.config.redis_timeout_s
            self._redis = aioredis.Redis.from_url(
                self.url,
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

    async def get_many(self, keys: list[str], size: int) -> dict[str, bytes]:
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
        self.hits += len(out)
        self.corrupt += corrupt
        self.misses += len(keys) - len(out)
        if obs is not None:
            obs.lookup_seconds("redis", time.perf_counter() - t0)
            obs.lookups("redis", "hit", len(out))
            obs.lookups("redis", "corrupt", corrupt)
            obs.lookups("redis", "miss", len(keys) - len(out) - corrupt)
        return out

    def set_many(self, items: list[tuple[str, bytes]]) -> None:
        """One pipelined write in the background (needs a running event loop)."""
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
        """Count, log now and then, and open the fail-open window."""
        self.errors += 1
        if self.observer is not None:
            self.observer.error(op)
        now = time.monotonic()
        self._skip_until = now + self.config.redis_retry_s
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

    async def flush(self, timeout: float) -> None:
        if self._writes:
            await asyncio.wait(list(self._writes), timeout=timeout)

    async def clear(self, prefix: str) -> int | None:
        """``SCAN`` + ``UNLINK`` in batches of 1000; raises when Redis fails (counted)."""
        if self.url is None:
            return None
        self._skip_until = -math.inf  # an operator asked: try now
        client = self._client()
        removed = 0
        try:
            batch: list[bytes] = []
            async for key in client.scan_iter(match=_glob_escape(prefix) + "*", count=1000):
                batch.append(key)
                if len(batch) >= 1000:
                    removed += await client.unlink(*batch)
                    batch.clear()
            if batch:
                removed += await client.unlink(*batch)
        except Exception as exc:
            self._failed("clear", exc)
            raise
        return removed

    def describe(self) -> dict[str, Any] | None:
        if self.url is None:
            return None
        parts = urlsplit(self.url)
        where = f"{parts.scheme}://{parts.hostname or ''}" + (
            f":{parts.port}" if parts.port else ""
        )
        return {
            "url": where + (parts.path or ""),  # never the password
            "ttl_s": self.config.ttl_s,
            "timeout_s": self.config.redis_timeout_s,
            "state": "skipped" if self.skipped else "ok",
            "hits": self.hits,
            "misses": self.misses,
            "corrupt": self.corrupt,
            "errors": self.errors,
            "round_trips": self.round_trips,
            "writes_dropped": self.writes_dropped,
        }

    async def close(self) -> None:
        await self.flush(timeout=2.0)
        client, self._redis = self._redis, None
        if client is not None:
            try:
                await client.aclose()
            except Exception as exc:
                log.debug("closing the cache's Redis client failed: %s", exc)
