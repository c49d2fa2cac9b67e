"""The contract between the cache and its tiers, and the observer the tiers report to.

A tier keeps vectors as little-endian float32 bytes under the keys of
:mod:`~embedhost.cache.keys`. It validates what it reads (a value of the wrong size is not
a hit), counts its own lookups and failures, and never raises from the request path: a
tier that cannot answer answers "nothing found" (fail open). Only :meth:`Tier.clear`
raises, because an operator asked for it and must learn it did not happen.
"""

from __future__ import annotations

from typing import Any, Protocol


class CacheObserver(Protocol):
    """Receives the cache's numbers (``metrics.CacheObserver`` implements it)."""

    def lookups(self, tier: str, result: str, n: int) -> None: ...

    def lookup_seconds(self, tier: str, seconds: float) -> None: ...

    def error(self, op: str) -> None: ...

    def size(self, nbytes: int, entries: int) -> None: ...


class Tier(Protocol):
    """One place vectors are kept (in this process, in Redis, ...)."""

    @property
    def name(self) -> str:
        """Its key in :meth:`describe`'s answer and its ``tier`` metric label."""
        ...

    @property
    def title(self) -> str:
        """How an operator calls it in an error message (``Redis``)."""
        ...

    @property
    def local(self) -> bool:
        """Answers from this process without a wait: asked before joining an identical
        computation in flight (which is cheaper than a network round trip, dearer than a
        dict lookup)."""
        ...

    @property
    def on(self) -> bool:
        """Configured; a tier that is off is never asked, and describes itself as None."""
        ...

    @property
    def removed_key(self) -> str:
        """Its count's key in :meth:`~embedhost.cache.EmbeddingCache.clear`'s answer."""
        ...

    @property
    def removed_what(self) -> str:
        """What that count counts, in words (``in-process entries``)."""
        ...

    async def get_many(self, keys: list[str], size: int) -> dict[str, bytes]:
        """The values found under ``keys`` that are ``size`` bytes long."""
        ...

    def set_many(self, items: list[tuple[str, bytes]]) -> None:
        """Store ``items``, now or in the background (:meth:`flush` waits for those)."""
        ...

    async def flush(self, timeout: float) -> None:
        """Wait up to ``timeout`` seconds for the background writes started so far."""
        ...

    async def clear(self, prefix: str) -> int | None:
        """Drop every entry whose key starts with ``prefix``: how many (None when off).
        Raises when it could not."""
        ...

    def describe(self) -> dict[str, Any] | None:
        """Settings and counters for ``/info``; None when off."""
        ...

    async def close(self) -> None:
        """Flush briefly, then release connections."""
        ...
