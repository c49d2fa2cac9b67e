"""Per-version counters and latency figures, kept on each version object.

Plain numbers (no Prometheus here): the admin API and ``/info`` show them, and the
metrics layer can read them with the labels ``model`` and ``version``. Percentiles come
from a bounded window of recent samples.
"""

from __future__ import annotations

from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np

_WINDOW = 2048


@dataclass(slots=True)
class Samples:
    """Count, total, extremes, and a window of recent values for percentiles."""

    count: int = 0
    total: float = 0.0
    low: float = float("inf")
    high: float = float("-inf")
    recent: deque[float] = field(default_factory=lambda: deque(maxlen=_WINDOW))

    def add(self, values: Any) -> None:
        for v in np.atleast_1d(np.asarray(values, dtype=np.float64)).tolist():
            self.count += 1
            self.total += v
            self.low = min(self.low, v)
            self.high = max(self.high, v)
            self.recent.append(v)

    def percentile(self, q: float) -> float:
        return float(np.percentile(np.fromiter(self.recent, dtype=np.float64), q))

    def latency_ms(self) -> dict[str, Any]:
        if not self.count:
            return {"count": 0}
        return {
            "count": self.count,
            "mean_ms": round(1000 * self.total / self.count, 3),
            "p50_ms": round(1000 * self.percentile(50), 3),
            "p95_ms": round(1000 * self.percentile(95), 3),
            "p99_ms": round(1000 * self.percentile(99), 3),
            "max_ms": round(1000 * self.high, 3),
        }


@dataclass(slots=True)
class VersionStats:
    requests: int = 0
    errors: int = 0
    errors_by_code: Counter[str] = field(default_factory=Counter)
    inputs: int = 0
    tokens: int = 0
    latency: Samples = field(default_factory=Samples)
    # As a shadow: mirrored copies of another version's traffic.
    shadow_errors: int = 0
    shadow_dropped: int = 0
    shadow_latency: Samples = field(default_factory=Samples)
    agreement: Samples = field(default_factory=Samples)

    def ok(self, seconds: float, inputs: int, tokens: int) -> None:
        self.requests += 1
        self.inputs += inputs
        self.tokens += tokens
        self.latency.add(seconds)

    def error(self, code: str) -> None:
        self.requests += 1
        self.errors += 1
        self.errors_by_code[code] += 1

    def shadow_ok(self, seconds: float, cosines: np.ndarray[Any, Any] | None) -> None:
        self.shadow_latency.add(seconds)
        if cosines is not None:
            self.agreement.add(cosines)

    def snapshot(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "requests": self.requests,
            "errors": self.errors,
            "errors_by_code": dict(self.errors_by_code),
            "inputs": self.inputs,
            "tokens": self.tokens,
            "latency": self.latency.latency_ms(),
        }
        if self.shadow_latency.count or self.shadow_errors or self.shadow_dropped:
            agreement: dict[str, Any] = {"count": self.agreement.count}
            if self.agreement.count:
                agreement.update(
                    mean_cosine=round(self.agreement.total / self.agreement.count, 6),
                    min_cosine=round(self.agreement.low, 6),
                    p05_cosine=round(self.agreement.percentile(5), 6),
                )
            out["shadow"] = {
                "requests": self.shadow_latency.count,
                "errors": self.shadow_errors,
                "dropped": self.shadow_dropped,
                "latency": self.shadow_latency.latency_ms(),
                "agreement": agreement,
            }
        return out
