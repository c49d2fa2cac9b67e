"""A/B traffic splits: which version of a model an unpinned request goes to.

A caller is placed by a stable hash of (model name, routing key) onto [0, 1), and the
split's versions take consecutive slices of that interval in a fixed order (version
names, sorted). The same caller therefore keeps seeing the same version for as long as
the split stands, across server restarts and replicas (sha256, not Python's salted
``hash``); moving weights from 90/10 to 80/20 moves only the callers in the slice that
changed hands.

The routing key (built by the API layer) is the API key's id when the request carries
one, else the OpenAI ``user`` field, else the client address.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping


def bucket(name: str, key: str) -> float:
    """A stable point in [0, 1) for this caller and model."""
    digest = hashlib.sha256(f"{name}\x00{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def choose(name: str, key: str, weights: Mapping[str, float]) -> str | None:
    """The version whose slice holds this caller; None when no version has weight."""
    total = sum(w for w in weights.values() if w > 0)
    if total <= 0:
        return None
    point = bucket(name, key) * total
    acc = 0.0
    last: str | None = None
    for version in sorted(weights):
        w = weights[version]
        if w <= 0:
            continue
        acc += w
        last = version
        if point < acc:
            return version
    return last
