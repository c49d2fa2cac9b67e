"""Rate limits: budgets in requests and tokens per minute, per API key and per client
address, kept by the ``limits`` library in memory or in Redis (so that replicas share one
budget).

:class:`RateLimiter` spends from budgets and raises 429 when one is spent; storage errors
(Redis down) allow or deny as configured and never become a 500. :func:`budgets_for` says
which budgets apply to a request; :class:`LimitState` is one budget after a hit, which the
API turns into the ``X-RateLimit-*`` headers.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from embedhost.config import RateLimit, RateLimitsConfig
from embedhost.errors import RateLimited, RateLimiterUnavailable

if TYPE_CHECKING:
    import asyncio

    from limits import RateLimitItem
    from limits.aio.strategies import RateLimiter as _LimitsStrategy

log = logging.getLogger(__name__)

RATE_LIMIT_HEADERS = ("X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset")


@dataclass(slots=True)
class LimitState:
    """One budget after a hit, for the X-RateLimit-* headers."""

    limit: int
    remaining: int
    reset_s: float

    def headers(self) -> dict[str, str]:
        return {
            "X-RateLimit-Limit": str(self.limit),
            "X-RateLimit-Remaining": str(max(0, self.remaining)),
            "X-RateLimit-Reset": str(max(1, math.ceil(self.reset_s))),
        }


class RateLimiter:
    """Requests and tokens per minute, per key and per client address.

    A sliding-window counter: two counters per budget, so a token cost of thousands is
    one increment (a moving window would store one entry per token). Storage errors
    (Redis down) are logged at most every 10 s, counted in :attr:`storage_errors` (for
    metrics), and then allow or deny as configured; they never become a 500.
    """

    def __init__(self, config: RateLimitsConfig) -> None:
        self.config = config
        self.storage_errors = 0
        """Storage (Redis) failures since start: read by the metrics layer."""
        self.denied = 0
        """Requests refused with 429 since start."""
        self._last_error_log = -math.inf
        self._strategy: _LimitsStrategy | None = None
        self._items: dict[tuple[str, int], RateLimitItem] = {}

    def _limiter(self) -> _LimitsStrategy:
        # Built on first use: the Redis client binds to the running event loop.
        if self._strategy is None:
            from limits.aio.storage import MemoryStorage, RedisStorage
            from limits.aio.strategies import SlidingWindowCounterRateLimiter

            cfg = self.config
            if cfg.storage == "redis" and cfg.redis_url is not None:
                url = cfg.redis_url.get_secret_value()
                storage: Any = RedisStorage(
                    url if url.startswith("async+") else "async+" + url,
                    implementation="redispy",
                    key_prefix=cfg.key_prefix,
                    wrap_exceptions=True,
                    socket_timeout=cfg.redis_timeout_s,
                    socket_connect_timeout=cfg.redis_timeout_s,
                )
            else:
                storage = MemoryStorage()
            self._strategy = SlidingWindowCounterRateLimiter(storage)
        return self._strategy

    def _item(self, kind: str, amount: int) -> RateLimitItem:
        item = self._items.get((kind, amount))
        if item is None:
            from limits import RateLimitItemPerMinute

            item = RateLimitItemPerMinute(amount, namespace=kind)
            self._items[(kind, amount)] = item
        return item

    async def hit(self, budgets: list[tuple[str, int, str]], cost: int) -> LimitState | None:
        """Spend ``cost`` from each ``(kind, per_minute, identity)`` budget, in order.

        Raises :class:`RateLimited` on the first that is spent, with its headers. Returns the
        state of the first budget (for the success headers), or None when none applies.
        """
        if not budgets:
            return None
        try:
            limiter = self._limiter()
            first: LimitState | None = None
            for kind, amount, ident in budgets:
                item = self._item(kind, amount)
                if not await limiter.hit(item, ident, cost=cost):
                    stats = await limiter.get_window_stats(item, ident)
                    state = LimitState(amount, stats.remaining, stats.reset_time - time.time())
                    self.denied += 1
                    what = "requests" if kind.endswith("requests") else "tokens"
                    who = "this API key" if kind.startswith("key") else "this client address"
                    err = RateLimited(
                        f"rate limit exceeded: {amount} {what} per minute for {who}",
                        retry_after=max(1.0, math.ceil(state.reset_s)),
                        headers=state.headers(),
                    )
                    err.limit = kind
                    err.key_id = ident if kind.startswith("key") else None
                    raise err
                if first is None:
                    stats = await limiter.get_window_stats(item, ident)
                    first = LimitState(amount, stats.remaining, stats.reset_time - time.time())
            return first
        except RateLimited:
            raise
        except Exception as exc:  # the store failed: Redis down, timeout, protocol error
            self._storage_failed(exc)
            return None

    def _storage_failed(self, exc: Exception) -> None:
        self.storage_errors += 1
        now = time.monotonic()
        if now - self._last_error_log >= 10.0:
            self._last_error_log = now
            log.warning(
                "rate-limit storage failed (%s: %s); %s requests until it is back "
                "(%d failures so far)",
                type(exc).__name__,
                exc,
                "allowing" if self.config.on_storage_error == "allow" else "refusing",
                self.storage_errors,
            )
        if self.config.on_storage_error == "deny":
            raise RateLimiterUnavailable(
                "rate limiting is unavailable; try again shortly", retry_after=1
            ) from None

    async def close(self) -> None:
        strategy, self._strategy = self._strategy, None
        if strategy is None:
            return
        storage: Any = strategy.storage
        bridge = getattr(storage, "bridge", None)
        client = getattr(bridge, "storage", None)
        try:
            if client is not None and hasattr(client, "aclose"):
                await client.aclose()
        except Exception as exc:
            log.debug("closing the rate-limit storage failed: %s", exc)
        task: asyncio.Task[None] | None = getattr(storage, "timer", None)
        if task is not None and not task.done():
            task.cancel()


def budgets_for(
    limits: RateLimit, key_limits: RateLimit, key_id: str | None, address: str, unit: str
) -> list[tuple[str, int, str]]:
    """The ``(kind, per_minute, identity)`` budgets in ``unit`` (requests or tokens) that
    apply: the key's, when there is a key and it has one, then the address's."""
    out: list[tuple[str, int, str]] = []
    attr = f"{unit}_per_minute"
    per_key: int | None = getattr(key_limits, attr)
    per_addr: int | None = getattr(limits, attr)
    if key_id is not None and per_key is not None:
        out.append((f"key-{unit}", per_key, key_id))
    if per_addr is not None:
        out.append((f"addr-{unit}", per_addr, address))
    return out
