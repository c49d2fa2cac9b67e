"""Overload, in numbers the rest of the app shares: requests in flight under
``limits.max_concurrent_requests`` (:class:`ConcurrencyLimit`) and the pace at which
refusals are answered (:class:`RefusalPacer`). The middleware that enforces them is
:mod:`embedhost.api.middleware`; the error handler paces the refusals raised by routes
(:mod:`embedhost.api.errors`); the metrics read the counters.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable


class RefusalPacer:
    """Bounds how fast the server answers refusals (429/503 for overload): at most
    ``per_s`` a second; beyond, each refusal is held (an asyncio timer, no CPU) until its
    turn, at most ``max_hold_s``.

    Clients that retry a refusal at once would otherwise turn the API process into a
    refusal loop that takes the CPU the engine needs: however cheap one refusal is, their
    number grows until a core is spent on them. Held, a naive client retries no faster
    than a polite one; a client that honours Retry-After never waits here.
    """

    def __init__(
        self,
        per_s: float | None,
        max_hold_s: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.per_s = per_s
        self.max_hold_s = max_hold_s
        self._clock = clock  # a test's synthetic clock
        self._next = 0.0
        self.held = 0
        """Refusals held since start."""

    def hold_s(self) -> float:
        """Claim the next refusal's turn; how long to hold it (0: answer now)."""
        if self.per_s is None:
            return 0.0
        now = self._clock()
        start = min(max(now, self._next), now + self.max_hold_s)
        self._next = start + 1.0 / self.per_s
        return start - now

    async def pace(self) -> None:
        wait = self.hold_s()
        if wait > 0:
            self.held += 1
            await asyncio.sleep(wait)


class ConcurrencyLimit:
    """At most ``max_concurrent`` requests in flight (None: no limit), and the counters
    the metrics read. Built by ``create_app`` (the app context's ``concurrency``) and
    enforced by :class:`~embedhost.api.middleware.ConcurrencyLimitMiddleware`."""

    def __init__(
        self,
        max_concurrent: int | None,
        retry_after_s: int,
        pacer: RefusalPacer | None = None,
        drain_s: Callable[[], float | None] = lambda: None,
    ) -> None:
        self.max_concurrent = max_concurrent
        self.retry_after_s = retry_after_s
        # The queues' drain estimate (the registry's answer, None before the models
        # exist), as the 429 of a full queue sends it; the constant until then.
        self._drain_s = drain_s
        self.pacer = pacer or RefusalPacer(None)
        self.in_flight = 0
        """Requests in flight under the limit (probes are not counted)."""
        self.overloaded = 0
        """Requests refused with 503 since start."""

    def retry_after(self) -> int:
        """Retry-After of a 503 beyond the limit, in whole seconds (at least 1)."""
        drain = self._drain_s()
        return max(1, math.ceil(self.retry_after_s if drain is None else drain))
