"""The load generator: what to send (:class:`Target`, :class:`Load`, the corpus and the
request bodies), :func:`run_load` (closed or open loop over one aiohttp session) and the
:class:`Recorder` of what came back."""

from __future__ import annotations

import asyncio
import itertools
import math
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

BUNDLED = ("queries", "passages")
"""Bundled corpora (real text: Python standard-library docstrings; bench/ reads them too): short
one-sentence texts, or passages of about 110 tokens."""

PERCENTILES = (50, 95, 99)
OPEN_LOOP_IN_FLIGHT = 256
"""--rate's default cap on requests in flight: enough for 2,000 req/s at 100 ms, while a
cap of 512 (a connection each) measured slower here than 64 once the server fell behind."""


# --- what to send ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Target:
    url: str
    model: str | None = None
    api_key: str | None = None
    rerank: bool = False
    """Rerank mode: each request is a query and ``texts_per_request`` documents, posted
    to ``/v1/rerank`` (Jina's and Cohere v1's shape)."""

    @property
    def endpoint(self) -> str:
        """The embeddings URL: a base URL gets ``/v1/embeddings``, a ``.../v1`` one ``/embeddings``
        (in rerank mode ``/v1/rerank`` and ``/rerank``)."""
        url = self.url.rstrip("/")
        if self.rerank:
            if url.endswith("/rerank"):
                return url
            return url + ("/rerank" if url.endswith(("/v1", "/v2")) else "/v1/rerank")
        if url.endswith("/embeddings"):
            return url
        if url.endswith("/v1"):
            return url + "/embeddings"
        return url + "/v1/embeddings"


@dataclass(frozen=True, slots=True)
class Load:
    concurrency: int = 8
    requests: int | None = None
    duration_s: float | None = None
    texts_per_request: int = 1
    rate: float | None = None
    timeout_s: float = 60.0
    corpus: str = "queries"
    input_type: str | None = None

    def __post_init__(self) -> None:
        if (self.requests is None) == (self.duration_s is None):
            raise ValueError("give exactly one of requests and duration")
        if self.concurrency < 1 or self.texts_per_request < 1:
            raise ValueError("concurrency and texts per request must be at least 1")
        if self.rate is not None and self.rate <= 0:
            raise ValueError("rate must be positive")


def read_corpus(corpus: str) -> list[str]:
    """A bundled corpus by name, or a file: one text a line (blank lines skipped)."""
    if corpus in BUNDLED:
        text = (resources.files("embedhost.cli") / "texts" / f"{corpus}.txt").read_text("utf-8")
    else:
        path = Path(corpus)
        if not path.is_file():
            raise ValueError(
                f"corpus {corpus!r} is neither a file nor a bundled corpus ({', '.join(BUNDLED)})"
            )
        text = path.read_text("utf-8")
    texts = [line.strip() for line in text.splitlines() if line.strip()]
    if not texts:
        raise ValueError(f"corpus {corpus!r} has no text")
    return texts


def request_bodies(texts: list[str], target: Target, load: Load) -> list[bytes]:
    """Every distinct request body, encoded once: request ``i`` sends ``bodies[i % len]``.

    Consecutive requests take consecutive texts of the corpus, wrapping around.
    """
    import orjson

    k = load.texts_per_request
    n = len(texts) // math.gcd(len(texts), k)  # bodies until the cycle repeats
    out = []
    for i in range(n):
        batch = [texts[(i * k + j) % len(texts)] for j in range(k)]
        body: dict[str, Any] = {"input": batch}
        if target.rerank:
            # The query: a text of the corpus that is not among the documents.
            body = {"query": texts[(i * k + k) % len(texts)], "documents": batch}
        if target.model:
            body["model"] = target.model
        if load.input_type:
            body["input_type"] = load.input_type
        out.append(orjson.dumps(body))
    return out


# --- what came back ----------------------------------------------------------------------------


@dataclass(slots=True)
class Recorder:
    """Outcomes as they arrive; read by the live display while the load runs."""

    started: float = field(default_factory=time.perf_counter)
    finished: float | None = None
    latencies: list[float] = field(default_factory=list)  # seconds, answered 2xx
    errors: Counter[str] = field(default_factory=Counter)
    sent: int = 0
    done: int = 0
    texts: int = 0
    behind: int = 0
    """Open loop: requests sent more than 10 ms after their scheduled time."""

    def ok(self, seconds: float, texts: int) -> None:
        self.latencies.append(seconds)
        self.texts += texts
        self.done += 1

    def error(self, kind: str) -> None:
        self.errors[kind] += 1
        self.done += 1

    def elapsed(self) -> float:
        end = self.finished if self.finished is not None else time.perf_counter()
        return max(end - self.started, 1e-9)

    def summary(self) -> dict[str, Any]:
        import numpy as np

        elapsed = self.elapsed()
        lat: dict[str, float | None] = {f"p{p}": None for p in PERCENTILES}
        lat.update(mean=None, min=None, max=None)
        if self.latencies:
            a = np.asarray(self.latencies) * 1000.0
            for p, v in zip(PERCENTILES, np.percentile(a, PERCENTILES), strict=True):
                lat[f"p{p}"] = round(float(v), 3)
            lat.update(
                mean=round(float(a.mean()), 3),
                min=round(float(a.min()), 3),
                max=round(float(a.max()), 3),
            )
        return {
            "requests": self.done,
            "ok": len(self.latencies),
            "errors": dict(sorted(self.errors.items())),
            "texts": self.texts,
            "elapsed_s": round(elapsed, 3),
            "requests_per_s": round(self.done / elapsed, 2),
            "ok_per_s": round(len(self.latencies) / elapsed, 2),
            "texts_per_s": round(self.texts / elapsed, 2),
            "latency_ms": lat,
            "behind_schedule": self.behind,
        }


def _error_kind(exc: Exception) -> str:
    import aiohttp

    if isinstance(exc, TimeoutError):
        return "timeout"
    if isinstance(exc, aiohttp.ClientConnectorError):
        return "connect_error"
    if isinstance(exc, aiohttp.ClientError):
        return "transport_error"
    return type(exc).__name__


# --- the load ----------------------------------------------------------------------------------


async def run_load(
    target: Target, load: Load, bodies: list[bytes], *, recorder: Recorder | None = None
) -> Recorder:
    """Send the load to ``target``; every request sent is answered or counted as an error."""
    import aiohttp

    rec = recorder if recorder is not None else Recorder()
    headers = {"content-type": "application/json", "accept": "application/json"}
    if target.api_key:
        headers["authorization"] = f"Bearer {target.api_key}"
    connector = aiohttp.TCPConnector(limit=load.concurrency, limit_per_host=load.concurrency)
    timeout = aiohttp.ClientTimeout(total=load.timeout_s, connect=min(load.timeout_s, 10.0))
    k = load.texts_per_request
    n = len(bodies)
    async with aiohttp.ClientSession(
        connector=connector, timeout=timeout, headers=headers, auto_decompress=False
    ) as session:
        endpoint = target.endpoint

        async def one(i: int, t0: float) -> None:
            rec.sent += 1
            try:
                async with session.post(endpoint, data=bodies[i % n]) as r:
                    await r.read()
                    status = r.status
            except Exception as exc:
                rec.error(_error_kind(exc))
                return
            if 200 <= status < 300:
                rec.ok(time.perf_counter() - t0, k)
            else:
                rec.error(str(status))

        rec.started = time.perf_counter()
        deadline = rec.started + load.duration_s if load.duration_s is not None else math.inf
        if load.rate is None:
            tickets: Iterator[int] = (
                iter(range(load.requests)) if load.requests else itertools.count()
            )

            async def client_loop() -> None:
                for i in tickets:
                    t0 = time.perf_counter()
                    if t0 >= deadline:
                        return
                    await one(i, t0)

            await asyncio.gather(*(client_loop() for _ in range(load.concurrency)))
        else:
            await _open_loop(one, load, rec, deadline)
        rec.finished = time.perf_counter()
    return rec


async def _open_loop(
    one: Callable[[int, float], Any], load: Load, rec: Recorder, deadline: float
) -> None:
    assert load.rate is not None
    slots = asyncio.Semaphore(load.concurrency)
    tasks: set[asyncio.Task[None]] = set()
    interval = 1.0 / load.rate

    async def run(i: int, at: float) -> None:
        try:
            await one(i, at)
        finally:
            slots.release()

    # Each wake-up sends every request that is due: sleeping once per request would cap the
    # rate at the event loop's timer resolution (about 1 ms).
    total = load.requests if load.requests is not None else math.inf
    i = 0
    while i < total:
        at = rec.started + i * interval
        if at >= deadline:
            break
        delay = at - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        now = time.perf_counter()
        while i < total:
            at = rec.started + i * interval
            if at > now or at >= deadline:
                break
            await slots.acquire()  # all slots busy: it waits, its clock already running
            if time.perf_counter() - at > 0.010:
                rec.behind += 1
            task = asyncio.create_task(run(i, at))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            i += 1
    if tasks:
        await asyncio.gather(*tasks)
