"""``GET /console/stats``: the live numbers the console shows, as JSON.

Read from the app's Prometheus registry (the same series ``/metrics`` exposes, summed over
models, routes and keys: no per-key figure leaves here), so the page never parses the
Prometheus text format. Counters and histogram buckets are cumulative; the page turns two
polls into rates and windowed percentiles, and ``p50_ms``/``p99_ms`` here are since start.
Needs the ``embed`` scope, as every call the console makes; the figures themselves (all
tenants' traffic) only with the ``metrics`` or ``admin`` scope.
"""

from __future__ import annotations

import asyncio
import math
from collections import defaultdict
from typing import Any

from fastapi import APIRouter

from embedhost.api.deps import EmbedAdmission, MetricsDep
from embedhost.metrics import Metrics
from embedhost.protocol import ErrorResponse

router = APIRouter()

EMBED_ROUTES = ("/v1/embeddings", "/embed", "/v2/embed")


def quantile(buckets: list[tuple[float, float]], q: float) -> float | None:
    """Prometheus' ``histogram_quantile`` on cumulative ``(le, count)`` buckets, sorted."""
    if not buckets or buckets[-1][1] <= 0:
        return None
    rank = q * buckets[-1][1]
    prev_le, prev_count = 0.0, 0.0
    for le, count in buckets:
        if count >= rank:
            if math.isinf(le):
                return prev_le
            if count == prev_count:
                return le
            return prev_le + (le - prev_le) * (rank - prev_count) / (count - prev_count)
        prev_le, prev_count = le, count
    return prev_le


def _histogram(b: dict[float, float], total: float, count: float) -> dict[str, Any]:
    buckets = sorted(b.items())
    p50, p99 = quantile(buckets, 0.5), quantile(buckets, 0.99)
    return {
        "buckets": [[le if math.isfinite(le) else "+Inf", c] for le, c in buckets],
        "count": count,
        "sum": total,
        "p50": p50,
        "p99": p99,
    }


def summarize(m: Metrics) -> dict[str, Any]:
    """One pass over every sample of the registry."""
    requests: dict[str, float] = defaultdict(float)  # status class -> count
    lat_b: dict[float, float] = defaultdict(float)
    lat = [0.0, 0.0]  # sum, count
    batch_b: dict[float, float] = defaultdict(float)
    batch = [0.0, 0.0]
    queue = [0.0, 0.0]  # depth, capacity
    texts = tokens = in_flight = 0.0
    workers: dict[tuple[str, str, str], dict[str, Any]] = {}
    restarts: dict[tuple[str, str], float] = defaultdict(float)
    cache: dict[str, dict[str, float]] = {}

    def worker(labels: dict[str, str]) -> dict[str, Any]:
        key = (labels["model"], labels["version"], labels["replica"])
        return workers.setdefault(
            key,
            {
                "model": key[0],
                "version": key[1],
                "replica": int(key[2]),
                "up": False,
                "rss_bytes": None,
            },
        )

    for family in m.exposition_registry().collect():
        for s in family.samples:
            name, labels, value = s.name, s.labels, float(s.value)
            if name == "embedhost_requests_total" and labels.get("route") in EMBED_ROUTES:
                requests[labels.get("status", "")[:1] + "xx"] += value
            elif name.startswith("embedhost_request_duration_seconds") and (
                labels.get("route") in EMBED_ROUTES
            ):
                _hist_sample(name, labels, value, lat_b, lat)
            elif name.startswith("embedhost_batch_size_sequences"):
                _hist_sample(name, labels, value, batch_b, batch)
            elif name == "embedhost_queue_depth_sequences":
                queue[0] += value
            elif name == "embedhost_queue_capacity_sequences":
                queue[1] += value
            elif name == "embedhost_input_texts_total":
                texts += value
            elif name == "embedhost_input_tokens_total":
                tokens += value
            elif name == "embedhost_requests_in_flight":
                in_flight += value
            elif name == "embedhost_worker_up":
                worker(labels)["up"] = value > 0
            elif name == "embedhost_worker_resident_memory_bytes":
                worker(labels)["rss_bytes"] = int(value)
            elif name == "embedhost_worker_restarts_total":
                restarts[(labels["model"], labels["version"])] += value
            elif name == "embedhost_cache_requests_total":
                tier = cache.setdefault(labels.get("tier", ""), {})
                result = labels.get("result", "")
                tier[result] = tier.get(result, 0.0) + value
    for w in workers.values():
        w["restarts"] = restarts.get((w["model"], w["version"]), 0.0)
    return {
        "metrics": True,
        "requests": {
            "total": sum(requests.values()),
            "ok": requests.get("2xx", 0.0),
            "errors": sum(v for k, v in requests.items() if k != "2xx"),
            "by_class": dict(sorted(requests.items())),
        },
        "latency_seconds": _histogram(lat_b, lat[0], lat[1]),
        "batch_size": _histogram(batch_b, batch[0], batch[1]),
        "queue": {"depth": queue[0], "capacity": queue[1]},
        "in_flight": in_flight,
        "texts": texts,
        "tokens": tokens,
        "workers": sorted(workers.values(), key=lambda w: (w["model"], w["version"], w["replica"])),
        "cache": _cache(cache) if cache else None,
    }


def _hist_sample(
    name: str, labels: dict[str, str], value: float, buckets: dict[float, float], acc: list[float]
) -> None:
    if name.endswith("_bucket"):
        buckets[float(labels["le"])] += value
    elif name.endswith("_sum"):
        acc[0] += value
    elif name.endswith("_count"):
        acc[1] += value


def _cache(tiers: dict[str, dict[str, float]]) -> dict[str, Any]:
    """Per tier and overall: hits, misses and the hit rate (None before any lookup)."""
    out: dict[str, Any] = {"tiers": {}}
    hits = lookups = 0.0
    for tier, results in sorted(tiers.items()):
        h = results.get("hit", 0.0)
        n = h + results.get("miss", 0.0)
        out["tiers"][tier] = {"hits": h, "lookups": n, "hit_rate": h / n if n else None}
        hits += h
        lookups += n
    out.update(hits=hits, lookups=lookups, hit_rate=hits / lookups if lookups else None)
    return out


@router.get(
    "/console/stats",
    summary="Live numbers for the web console",
    responses={code: {"model": ErrorResponse} for code in (401, 403, 429, 503)},
)
async def console_stats(admission: EmbedAdmission, m: MetricsDep) -> dict[str, Any]:
    if m is None:
        return {"metrics": False}
    if not admission.sees_server_figures:
        # Every figure here sums all tenants' traffic (issue 20).
        return {
            "metrics": False,
            "reason": "the live figures are server-wide: they need a key with the "
            "metrics or admin scope",
        }
    # A walk over every series, and /proc reads for worker memory: off the event loop.
    return await asyncio.to_thread(summarize, m)
