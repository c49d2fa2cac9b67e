"""The embedding cache, between the service and the batcher: an in-process LRU bounded in
bytes and, optionally, Redis shared by every replica, behind one call
(:meth:`EmbeddingCache.embed`).

- :mod:`~embedhost.cache.keys`: what a vector is filed under (the model's namespace, the
  digest of its token ids, the caller's scope) and the request's ``Cache-Control`` policy.
- :mod:`~embedhost.cache.tier`: the tier protocol (get many, set many, flush, clear,
  describe, close) and the metrics observer.
- :mod:`~embedhost.cache.memory`: the in-process LRU tier.
- :mod:`~embedhost.cache.redis`: the Redis tier: one round trip per request, background
  writes, and the fail-open window after an error.
- :mod:`~embedhost.cache.core`: :class:`EmbeddingCache`: the tier order and single-flight
  (identical inputs of concurrent requests computed once).

Values are the engine's float32 vectors before ``dimensions`` and normalization (applied
by the service after the cache), so one entry serves every ``dimensions``. The names below
are what the rest of embedhost imports; they are importable from here.
"""

from embedhost.cache.core import Compute, EmbeddingCache
from embedhost.cache.keys import BYPASS, DEFAULT_POLICY, CachePolicy, Keys, input_digest, namespace
from embedhost.cache.memory import ENTRY_OVERHEAD, MB, MemoryLRU, MemoryTier
from embedhost.cache.redis import MAX_PENDING_WRITES, RedisTier
from embedhost.cache.redis import _glob_escape as _glob_escape  # the clear test reads it
from embedhost.cache.tier import CacheObserver, Tier

__all__ = [
    "BYPASS",
    "DEFAULT_POLICY",
    "ENTRY_OVERHEAD",
    "MAX_PENDING_WRITES",
    "MB",
    "CacheObserver",
    "CachePolicy",
    "Compute",
    "EmbeddingCache",
    "Keys",
    "MemoryLRU",
    "MemoryTier",
    "RedisTier",
    "Tier",
    "input_digest",
    "namespace",
]
