"""The in-process tier: least recently used vectors, bounded in bytes
(``cache.memory_max_mb``), one per app. It answers without a wait, so the cache asks it
first; it is off when that bound is 0 or the cache is disabled."""

from __future__ import annotations

import time
from collections import OrderedDict
from typing import Any

from embedhost.cache.tier import CacheObserver
from embedhost.config import CacheConfig

MB = 1024 * 1024
ENTRY_OVERHEAD = 200
"""Bytes an in-process entry costs beyond its key and value (the dict slot, the str and
bytes object headers): counted, so that the byte bound is about the real memory."""


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


class MemoryTier:
    """A :class:`MemoryLRU` as a cache tier: counted, measured, reporting its size."""

    name = "memory"
    title = "in-process memory"
    local = True
    removed_key = "memory_entries_removed"
    removed_what = "in-process entries"

    def __init__(self, config: CacheConfig, observer: CacheObserver | None = None) -> None:
        self.observer = observer
        self.lru = (
            MemoryLRU(int(config.memory_max_mb * MB))
            if config.enabled and config.memory_max_mb
            else None
        )
        self.hits = 0
        self.misses = 0

    @property
    def on(self) -> bool:
        return self.lru is not None

    async def get_many(self, keys: list[str], size: int) -> dict[str, bytes]:
        lru = self.lru
        if lru is None:
            return {}
        t0 = time.perf_counter()
        found: dict[str, bytes] = {}
        for k in keys:
            value = lru.get(k)
            if value is not None and len(value) == size:  # else written for another width
                found[k] = value
        hits = len(found)
        self.hits += hits
        self.misses += len(keys) - hits
        if self.observer is not None:
            self.observer.lookups("memory", "hit", hits)
            self.observer.lookups("memory", "miss", len(keys) - hits)
            self.observer.lookup_seconds("memory", time.perf_counter() - t0)
        return found

    def set_many(self, items: list[tuple[str, bytes]]) -> None:
        lru = self.lru
        if lru is None:
            return
        for k, value in items:
            lru.put(k, value)
        self._report_size()

    async def flush(self, timeout: float) -> None:
        """Nothing to wait for: :meth:`set_many` writes at once."""

    async def clear(self, prefix: str) -> int:
        if self.lru is None:
            return 0
        removed = self.lru.drop(prefix)
        self._report_size()
        return removed

    def describe(self) -> dict[str, Any] | None:
        lru = self.lru
        if lru is None:
            return None
        return {
            "max_bytes": lru.max_bytes,
            "bytes": lru.bytes,
            "entries": len(lru),
            "hits": self.hits,
            "misses": self.misses,
        }

    async def close(self) -> None:
        """Nothing to release: the entries go with the process."""

    def _report_size(self) -> None:
        if self.lru is not None and self.observer is not None:
            self.observer.size(self.lru.bytes, len(self.lru))
