"""Prometheus metrics: every collector embedhost exports, on an injected registry.

:class:`Metrics` owns a :class:`~prometheus_client.CollectorRegistry` made for one app by
``create_app``, never the process-global default registry, so that several apps (tests, or
an embedding program) never share or collide on series. The layers that produce numbers
get small bound objects (:class:`BatchObserver`, :class:`WorkerObserver`) whose methods
only touch pre-labelled children: a few microseconds per batch on the hot path.

Names follow Prometheus' guide: ``embedhost_`` prefix, base units in the name (seconds,
bytes), ``_total`` on counters. Histograms of durations have buckets from 1 ms to 30 s.
``key_id`` labels appear on counters only (never on histograms) to bound cardinality; the
``model`` label carries configured model names only, never what a client sent.

Several API processes: when ``PROMETHEUS_MULTIPROC_DIR`` is set in the environment before
the process starts (prometheus-client's own switch), values are kept in files in that
directory, gauges are summed over live processes, and ``/metrics`` aggregates every
process with :class:`~prometheus_client.multiprocess.MultiProcessCollector`. Info metrics
and the scrape-time state (readiness, worker liveness, worker memory) describe the process
that answers the scrape. The process manager must call
``prometheus_client.multiprocess.mark_process_dead(pid)`` when a process exits.

This module imports nothing from the package.
"""

from __future__ import annotations

import os
import platform
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector

DURATION_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)
BATCH_SIZE_BUCKETS = tuple(float(2**i) for i in range(13))  # 1 .. 4096 sequences
BATCH_TOKEN_BUCKETS = tuple(float(4**i) for i in range(2, 11))  # 16 .. 1Mi padded tokens

ANONYMOUS = "anonymous"


def multiprocess_dir() -> str | None:
    """The directory of prometheus-client's multiprocess mode, when it is on."""
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


@dataclass(slots=True)
class WorkerSnapshot:
    model: str
    version: str
    replica: int
    up: bool
    pid: int | None
    load_ratio: float | None = None


@dataclass(slots=True)
class StateSnapshot:
    """What the scrape-time collector reports; built by the app from its live objects."""

    ready: bool
    draining: bool
    workers: list[WorkerSnapshot] = field(default_factory=list)
    overloaded_requests: int | None = None
    rate_limit_storage_errors: int | None = None


class _StateCollector(Collector):
    """Readiness, worker liveness and worker memory, read when scraped (no hot-path cost)."""

    def __init__(self, snapshot: Callable[[], StateSnapshot]) -> None:
        self._snapshot = snapshot

    def collect(self) -> Iterable[Metric]:
        s = self._snapshot()
        ready = GaugeMetricFamily(
            "embedhost_ready", "1 when /ready answers 200 (models loaded and warm, not draining)"
        )
        ready.add_metric([], 1.0 if s.ready and not s.draining else 0.0)
        draining = GaugeMetricFamily(
            "embedhost_draining", "1 once shutdown began: /ready answers 503, requests drain"
        )
        draining.add_metric([], 1.0 if s.draining else 0.0)
        up = GaugeMetricFamily(
            "embedhost_worker_up",
            "1 when the replica's worker is ready",
            labels=["model", "version", "replica"],
        )
        rss = GaugeMetricFamily(
            "embedhost_worker_resident_memory_bytes",
            "Resident memory of the replica's worker process",
            labels=["model", "version", "replica"],
        )
        load = GaugeMetricFamily(
            "embedhost_load_ratio",
            "Sequences queued or in the engine over what the replica's pipeline holds "
            "(max_batch_size x pipeline_depth); the autoscaling signal, >1 means work waits",
            labels=["model", "version", "replica"],
        )
        for w in s.workers:
            labels = [w.model, w.version, str(w.replica)]
            up.add_metric(labels, 1.0 if w.up else 0.0)
            mem = _rss(w.pid)
            if mem is not None:
                rss.add_metric(labels, float(mem))
            if w.load_ratio is not None:
                load.add_metric(labels, w.load_ratio)
        out: list[Metric] = [ready, draining, up, rss, load]
        if s.overloaded_requests is not None:
            c = CounterMetricFamily(
                "embedhost_overloaded_requests",
                "Requests refused with 503 over limits.max_concurrent_requests",
            )
            c.add_metric([], float(s.overloaded_requests))
            out.append(c)
        if s.rate_limit_storage_errors is not None:
            c = CounterMetricFamily(
                "embedhost_rate_limit_storage_errors",
                "Rate-limit store (Redis) failures; rate_limits.on_storage_error decides",
            )
            c.add_metric([], float(s.rate_limit_storage_errors))
            out.append(c)
        return out


def _rss(pid: int | None) -> int | None:
    if pid is None:
        return None
    try:
        import psutil

        return int(psutil.Process(pid).memory_info().rss)
    except Exception:  # the process may be gone between snapshot and read
        return None


class BatchObserver:
    """Bound to one model replica; called by its batcher."""

    __slots__ = ("_batch_size", "_batch_tokens", "_depth", "_inference")

    def __init__(self, m: Metrics, model: str, version: str, replica: int, capacity: int) -> None:
        rep = str(replica)
        self._depth = m.queue_depth.labels(model, version, rep)
        self._batch_size = m.batch_size.labels(model, version)
        self._batch_tokens = m.batch_tokens.labels(model, version)
        self._inference = m.inference_seconds.labels(model, version)
        m.queue_capacity.labels(model, version, rep).set(capacity)

    def queue_depth(self, n: int) -> None:
        self._depth.set(n)

    def batch(self, sequences: int, padded_tokens: int, seconds: float) -> None:
        self._batch_size.observe(sequences)
        self._batch_tokens.observe(padded_tokens)
        self._inference.observe(seconds)


class WorkerObserver:
    """Bound to one model replica; called by its worker supervisor."""

    __slots__ = ("_load", "_m", "_model", "_restarts", "_version")

    def __init__(self, m: Metrics, model: str, version: str, replica: int) -> None:
        self._m = m
        self._model = model
        self._version = version
        self._restarts = m.worker_restarts.labels(model, version)
        self._load = m.model_load_seconds.labels(model, version, str(replica))

    def restarted(self) -> None:
        self._restarts.inc()

    def ready(self, load_seconds: float, info: dict[str, str]) -> None:
        self._load.set(load_seconds)
        self._m.model_info.labels(self._model).info(info)  # the version is in info


class CacheObserver:
    """Bound to the app's embedding cache; called by it (``cache/``)."""

    __slots__ = ("_bytes", "_entries", "_errors", "_lookups", "_seconds")

    def __init__(self, m: Metrics) -> None:
        self._lookups = {
            (tier, result): m.cache_requests.labels(tier, result)
            for tier in ("memory", "redis")
            for result in ("hit", "miss", "error", "corrupt")
        }
        self._seconds = {tier: m.cache_lookup_seconds.labels(tier) for tier in ("memory", "redis")}
        self._errors = m.cache_errors
        self._bytes = m.cache_bytes
        self._entries = m.cache_entries

    def lookups(self, tier: str, result: str, n: int) -> None:
        if n:
            self._lookups[(tier, result)].inc(n)

    def lookup_seconds(self, tier: str, seconds: float) -> None:
        self._seconds[tier].observe(seconds)

    def error(self, op: str) -> None:
        self._errors.labels(op).inc()

    def size(self, nbytes: int, entries: int) -> None:
        self._bytes.set(nbytes)
        self._entries.set(entries)


class Metrics:
    """Every embedhost collector, registered on ``registry``."""

    def __init__(
        self, registry: CollectorRegistry | None = None, *, version: str = "", instance: str = ""
    ) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.multiprocess_dir = multiprocess_dir()
        # Collectors whose values are not file-backed in multiprocess mode live here, and are
        # added to every exposition from this process.
        self.local = CollectorRegistry() if self.multiprocess_dir else self.registry
        r = self.registry
        self.requests = Counter(
            "embedhost_requests",
            "HTTP requests answered, by route template and status",
            ["route", "method", "status", "model", "key_id"],
            registry=r,
        )
        self.request_seconds = Histogram(
            "embedhost_request_duration_seconds",
            "Time from the request's arrival to its response, by route template",
            ["route", "model"],
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.in_flight = Gauge(
            "embedhost_requests_in_flight",
            "HTTP requests being served",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.queue_wait_seconds = Histogram(
            "embedhost_queue_wait_seconds",
            "Time an embedding request waited in the batch queue before its first batch ran",
            ["model"],
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.tokenization_seconds = Histogram(
            "embedhost_tokenization_duration_seconds",
            "Time spent tokenizing one request",
            ["model"],
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.inference_seconds = Histogram(
            "embedhost_inference_duration_seconds",
            "Time one batch spent in the engine worker, IPC included",
            ["model", "version"],
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "embedhost_batch_size_sequences",
            "Sequences per batch sent to the engine",
            ["model", "version"],
            buckets=BATCH_SIZE_BUCKETS,
            registry=r,
        )
        self.batch_tokens = Histogram(
            "embedhost_batch_tokens",
            "Padded tokens per batch (sequences x longest sequence)",
            ["model", "version"],
            buckets=BATCH_TOKEN_BUCKETS,
            registry=r,
        )
        self.queue_depth = Gauge(
            "embedhost_queue_depth_sequences",
            "Sequences waiting in a replica's batch queue",
            ["model", "version", "replica"],
            registry=r,
            multiprocess_mode="livesum",
        )
        self.queue_capacity = Gauge(
            "embedhost_queue_capacity_sequences",
            "A replica's queue bound (batching.max_queue_items); 429 beyond",
            ["model", "version", "replica"],
            registry=r,
            multiprocess_mode="livesum",
        )
        self.input_tokens = Counter(
            "embedhost_input_tokens",
            "Tokens embedded (after truncation)",
            ["model", "key_id"],
            registry=r,
        )
        self.input_texts = Counter(
            "embedhost_input_texts",
            "Inputs embedded (texts or token-id sequences)",
            ["model", "key_id"],
            registry=r,
        )
        # Rerank and score (issue 21), by the model's task (rerank, or embed for /score's
        # cosines): documents scored and the tokens of every pair and window scored.
        self.scored_documents = Counter(
            "embedhost_scored_documents",
            "Documents scored by the rerank and score routes",
            ["model", "task"],
            registry=r,
        )
        self.scored_tokens = Counter(
            "embedhost_scored_tokens",
            "Tokens scored by the rerank and score routes (every window counted)",
            ["model", "task"],
            registry=r,
        )
        self.errors = Counter(
            "embedhost_errors",
            "Error responses, by error code (queue_full, engine_error, worker_timeout, ...)",
            ["code", "model"],
            registry=r,
        )
        self.rate_limited_requests = Counter(
            "embedhost_rate_limited_requests",
            "Requests refused by a rate limit",
            ["key_id", "limit"],
            registry=r,
        )
        self.worker_restarts = Counter(
            "embedhost_worker_restarts",
            "Engine worker processes restarted after a crash or a wedge",
            ["model", "version"],
            registry=r,
        )
        self.model_load_seconds = Gauge(
            "embedhost_model_load_seconds",
            "Time the replica's last worker took to verify, load and warm its model",
            ["model", "version", "replica"],
            registry=r,
            multiprocess_mode="max",
        )
        self.model_info = Info(
            "embedhost_model",
            "Served model: version, checksum, engine, dimensions, dtype, device",
            ["model"],
            registry=self.local,
        )
        # -- the embedding cache (cache/) --
        self.cache_requests = Counter(
            "embedhost_cache_requests",
            "Cache lookups, one per distinct input of a request, by tier and result",
            ["tier", "result"],
            registry=r,
        )
        self.cache_lookup_seconds = Histogram(
            "embedhost_cache_lookup_seconds",
            "Time one request's cache lookup took, by tier (redis: one pipelined round trip)",
            ["tier"],
            buckets=(0.00005, 0.0001, 0.00025, 0.0005, *DURATION_BUCKETS),
            registry=r,
        )
        self.cache_errors = Counter(
            "embedhost_cache_errors",
            "Cache store (Redis) failures; the request goes on as a miss",
            ["op"],
            registry=r,
        )
        self.cache_bytes = Gauge(
            "embedhost_cache_bytes",
            "Bytes held by the in-process cache (vectors and keys)",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.cache_entries = Gauge(
            "embedhost_cache_entries",
            "Vectors held by the in-process cache",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.build_info = Info("embedhost_build", "embedhost build", registry=self.local)
        self.build_info.info(
            {
                "version": version,
                "python": platform.python_version(),
                "implementation": platform.python_implementation(),
                # server.instance_id: ties a series to one replica (as /info and logs do).
                **({"instance_id": instance} if instance else {}),
            }
        )
        if not self.multiprocess_dir:
            # Per-process stats; meaningless summed across processes.
            ProcessCollector(registry=self.registry)
            PlatformCollector(registry=self.registry)

    # -- wiring ------------------------------------------------------------------------------

    def add_state(self, snapshot: Callable[[], StateSnapshot]) -> None:
        """Report readiness and worker state from ``snapshot`` at scrape time."""
        self.local.register(_StateCollector(snapshot))

    def batch_observer(
        self, model: str, version: str, replica: int, capacity: int
    ) -> BatchObserver:
        return BatchObserver(self, model, version, replica, capacity)

    def worker_observer(self, model: str, version: str, replica: int) -> WorkerObserver:
        return WorkerObserver(self, model, version, replica)

    def cache_observer(self) -> CacheObserver:
        return CacheObserver(self)

    # -- per request -------------------------------------------------------------------------

    def observe_request(
        self,
        *,
        route: str,
        method: str,
        status: int,
        seconds: float,
        model: str,
        key_id: str,
        error_code: str | None,
    ) -> None:
        self.requests.labels(route, method, str(status), model, key_id).inc()
        self.request_seconds.labels(route, model).observe(seconds)
        if error_code is not None:
            self.errors.labels(error_code, model).inc()

    def observe_embedding(
        self,
        *,
        model: str,
        key_id: str,
        texts: int,
        tokens: int,
        tokenize_s: float,
        queue_s: float,
    ) -> None:
        self.input_texts.labels(model, key_id).inc(texts)
        self.input_tokens.labels(model, key_id).inc(tokens)
        self.tokenization_seconds.labels(model).observe(tokenize_s)
        self.queue_wait_seconds.labels(model).observe(queue_s)

    def rate_limited(self, key_id: str | None, limit: str = "requests") -> None:
        """Count one request refused by a rate limit; ``limit`` names which (requests, tokens)."""
        self.rate_limited_requests.labels(key_id or ANONYMOUS, limit).inc()

    # -- exposition --------------------------------------------------------------------------

    def exposition_registry(self) -> CollectorRegistry:
        if not self.multiprocess_dir:
            return self.registry
        from prometheus_client.multiprocess import MultiProcessCollector

        out = CollectorRegistry()
        MultiProcessCollector(out, self.multiprocess_dir)  # type: ignore[no-untyped-call]
        out.register(_Chain(self.local))
        return out

    def render(self, accept: str | None) -> tuple[bytes, str]:
        """The exposition in the format the scraper asked for (Prometheus text or OpenMetrics)."""
        encoder, content_type = choose_encoder(accept or "")
        return encoder(self.exposition_registry()), content_type


class _Chain(Collector):
    """Another registry's collectors, as one collector."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._registry = registry

    def collect(self) -> Iterator[Metric]:
        yield from self._registry.collect()
