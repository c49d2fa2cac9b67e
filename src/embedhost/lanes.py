"""The batch lane of the batcher: bulk work that runs in the capacity online work leaves.

Every request has a priority (:data:`~embedhost.config.Priority`): ``online`` (the
default) or ``batch`` (``X-Embedhost-Priority: batch``, a key's default, and always the
Batch API's jobs). The batcher keeps online items in its own queue and batch items here.
Batches are formed from one lane at a time:

* with only one lane holding work, that lane gets every batch (batch work uses all the
  capacity online traffic leaves idle);
* with both holding work, online gets the batches, except that each online batch earns
  the batch lane ``share / (1 - share)`` of a batch (``batching.batch_floor_share``,
  10% by default) and a batch lane batch is formed whenever a whole one is owed: the
  floor, so that batch work never starves behind a steady online load. The count is
  kept in batches, not time, so it is exact and tests can assert it with gates.

While online requests are arriving, a batch of this lane takes at most
``batching.batch_slice_share`` of the batcher's size and token limits: an online request
then waits behind a small bulk batch, not a whole one, and bulk work still fills the
engine's idle time in small steps.

Batch items have their own bound (``batching.batch_max_queue_items``), not counted
against the online ``max_queue_items``, and are refused first under overload: a batch
request is refused once the online queue is half full, long before online requests are.
"""

from __future__ import annotations

from collections import deque
from typing import Generic, TypeVar

from embedhost.config import BatchingConfig

T = TypeVar("T")

# A batch request is refused once the online queue is this full: bulk work backs off
# (429) before any online request does.
ONLINE_PRESSURE = 0.5
# Online traffic counts as present for this long after its last request: its batch-lane
# batches stay small (batch_slice_share) meanwhile.
ONLINE_RECENT_S = 1.0


class BatchLane(Generic[T]):
    """The batch lane's queue, its bound, and the floor share of batches it is owed."""

    def __init__(self, config: BatchingConfig) -> None:
        self.config = config
        self.queue: deque[T] = deque()
        self._owed = 0.0
        self.sequences = 0
        """Sequences sent to the engine from this lane (the metrics' batch share)."""
        self._online_at = float("-inf")

    def online_seen(self, now: float) -> None:
        """An online request arrived (``time.monotonic()``)."""
        self._online_at = now

    def limits(self, now: float) -> tuple[int, int]:
        """(sequences, tokens) a batch of this lane may take now: a slice of the batcher's
        limits while online traffic is present, so that an online request waits behind a
        small bulk batch at most, never a whole one; all of them otherwise."""
        cfg = self.config
        if now - self._online_at > ONLINE_RECENT_S:
            return cfg.max_batch_size, cfg.max_batch_tokens
        share = cfg.batch_slice_share
        return max(1, int(cfg.max_batch_size * share)), max(1, int(cfg.max_batch_tokens * share))

    def __len__(self) -> int:
        return len(self.queue)

    def refuses(self, n: int, online_queued: int) -> str | None:
        """Why ``n`` more batch-priority sequences would be refused now, or None."""
        cfg = self.config
        if len(self.queue) + n > cfg.batch_max_queue_items:
            return f"the batch queue for this model is full ({cfg.batch_max_queue_items} inputs)"
        if online_queued >= ONLINE_PRESSURE * cfg.max_queue_items:
            return "this model is busy with online requests; batch work waits"
        return None

    def choose(self, online: deque[T]) -> tuple[deque[T], bool]:
        """The queue to form the next batch from, and whether it is this lane's."""
        if not self.queue:
            # Credit earned while contended is not carried into the next contention (it
            # would hand bulk work a burst of batches then).
            self._owed = 0.0
            return online, False
        if not online:
            return self.queue, True
        share = self.config.batch_floor_share
        if share <= 0:
            return online, False
        if self._owed >= 1.0 - 1e-9:  # (float sums of share/(1-share))
            self._owed -= 1.0
            return self.queue, True
        self._owed += share / (1.0 - share)
        return online, False

    def took(self, sequences: int) -> None:
        self.sequences += sequences
