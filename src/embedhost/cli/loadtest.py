"""``embedhost loadtest``: load against any OpenAI-compatible embeddings endpoint.

Closed loop (``--concurrency`` clients, each sending its next request when the last one
answered) or open loop (``--rate`` arrivals per second on a fixed schedule, at most
``--concurrency`` in flight; a request's latency counts from its scheduled time, so a
server that falls behind is not flattered by the client waiting for it). For a number of
requests (``--requests``) or a time (``--duration``). ``--compare`` runs the same load,
the same bodies in the same order, against a second server afterwards.

The client is one :class:`aiohttp.ClientSession` with a connection per concurrent request
(httpx's async client, measured against the same trivial server, sustained a tenth of
aiohttp's rate at 32 connections: bench/RESULTS.md). Request bodies are encoded once,
before the clock starts; answers are read but not decoded.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import math
import os
import sys
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

if TYPE_CHECKING:
    from rich.console import Console
    from rich.table import Table

BUNDLED = ("queries", "passages")
"""Bundled corpora (real text: Python standard-library docstrings, as bench/data): short
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

    @property
    def endpoint(self) -> str:
        """The embeddings URL: a base URL gets ``/v1/embeddings``, a ``.../v1`` one ``/embeddings``."""
        url = self.url.rstrip("/")
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


# --- display -----------------------------------------------------------------------------------


def _fmt(v: float | None, unit: str = "") -> str:
    return "-" if v is None else f"{v:,.1f}{unit}"


def _errors_text(errors: dict[str, int]) -> str:
    return ", ".join(f"{k}: {v}" for k, v in errors.items()) or "none"


def report_table(load: Load, runs: list[tuple[str, dict[str, Any]]]) -> Table:
    """The final report: one column per server."""
    from rich.table import Table

    t = Table(title=_describe(load), title_justify="left")
    t.add_column("")
    for label, _ in runs:
        t.add_column(label, justify="right")
    rows: list[tuple[str, Callable[[dict[str, Any]], str]]] = [
        ("requests", lambda s: f"{s['requests']:,}"),
        ("ok", lambda s: f"{s['ok']:,}"),
        ("errors", lambda s: _errors_text(s["errors"])),
        ("elapsed", lambda s: f"{s['elapsed_s']:.2f} s"),
        ("requests/s", lambda s: _fmt(s["requests_per_s"])),
        ("texts/s", lambda s: _fmt(s["texts_per_s"])),
        *((f"p{p}", (lambda s, p=p: _fmt(s["latency_ms"][f"p{p}"], " ms"))) for p in PERCENTILES),
        ("mean", lambda s: _fmt(s["latency_ms"]["mean"], " ms")),
        ("max", lambda s: _fmt(s["latency_ms"]["max"], " ms")),
    ]
    if load.rate is not None:
        rows.append(("behind schedule", lambda s: f"{s['behind_schedule']:,}"))
    for name, cell in rows:
        t.add_row(name, *(cell(s) for _, s in runs))
    return t


def _describe(load: Load) -> str:
    what = f"{load.requests:,} requests" if load.requests else f"{load.duration_s:g} s"
    how = (
        f"{load.rate:g} req/s open loop, at most {load.concurrency} in flight"
        if load.rate
        else f"{load.concurrency} concurrent"
    )
    return f"{what}, {how}, {load.texts_per_request} text(s) per request from {load.corpus}"


class LiveView:
    """req/s over the last two seconds, texts/s, percentiles so far and errors by status."""

    def __init__(self, label: str, load: Load, rec: Recorder) -> None:
        self.label, self.load, self.rec = label, load, rec
        self.window: deque[tuple[float, int, int]] = deque()

    def __rich__(self) -> Table:
        import numpy as np
        from rich.table import Table

        rec = self.rec
        now = time.perf_counter()
        self.window.append((now, rec.done, rec.texts))
        while len(self.window) > 2 and now - self.window[0][0] > 2.0:
            self.window.popleft()
        t0, d0, x0 = self.window[0]
        span = now - t0
        rps = (rec.done - d0) / span if span > 0.05 else None
        tps = (rec.texts - x0) / span if span > 0.05 else None
        pct: list[float | None] = [None] * len(PERCENTILES)
        if rec.latencies:
            values = np.percentile(np.asarray(rec.latencies[-100_000:]) * 1000, PERCENTILES)
            pct = [float(v) for v in values]
        progress = (
            f"{rec.done:,}/{self.load.requests:,}"
            if self.load.requests
            else f"{rec.elapsed():.0f}/{self.load.duration_s:g} s"
        )
        t = Table(title=f"{self.label}: {progress}", title_justify="left")
        for col in ("req/s", "texts/s", *(f"p{p}" for p in PERCENTILES), "in flight", "errors"):
            t.add_column(col, justify="right")
        t.add_row(
            _fmt(rps),
            _fmt(tps),
            *(_fmt(v, " ms") for v in pct),
            str(rec.sent - rec.done),
            _errors_text(dict(sorted(rec.errors.items()))),
        )
        return t


async def _run_one(
    label: str, target: Target, load: Load, bodies: list[bytes], console: Console | None
) -> dict[str, Any]:
    rec = Recorder()
    if console is None:
        await run_load(target, load, bodies, recorder=rec)
    else:
        from rich.live import Live

        with Live(LiveView(label, load, rec), console=console, refresh_per_second=4):
            await run_load(target, load, bodies, recorder=rec)
    return {
        "label": label,
        "url": target.endpoint,
        "model": target.model,
        "results": rec.summary(),
    }


async def run_all(
    targets: list[tuple[str, Target]], load: Load, texts: list[str], console: Console | None
) -> dict[str, Any]:
    runs = []
    for label, target in targets:
        bodies = request_bodies(texts, target, load)
        runs.append(await _run_one(label, target, load, bodies, console))
    return {"load": asdict(load), "runs": runs}


# --- the command -------------------------------------------------------------------------------


def loadtest(
    url: Annotated[
        str,
        typer.Option(
            envvar="EMBEDHOST_URL",
            help="Server base URL (…/v1/embeddings is added), a …/v1 base, or the full URL.",
        ),
    ] = "http://127.0.0.1:8008",
    model: Annotated[str | None, typer.Option(help="Model name; default: the server's.")] = None,
    api_key: Annotated[
        str | None, typer.Option(envvar="EMBEDHOST_API_KEY", help="API key (Bearer).")
    ] = None,
    concurrency: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Closed loop: concurrent clients (default 8). With --rate: most requests "
            "in flight (default 256).",
        ),
    ] = None,
    duration: Annotated[
        float | None, typer.Option(min=0.1, help="Seconds to run (default 10).")
    ] = None,
    requests: Annotated[
        int | None, typer.Option(min=1, help="Number of requests, instead of --duration.")
    ] = None,
    texts_per_request: Annotated[int, typer.Option(min=1, help="Texts in each request.")] = 1,
    corpus: Annotated[
        str,
        typer.Option(
            help="A file with one text a line, or a bundled corpus: queries (short) or "
            "passages (~110 tokens)."
        ),
    ] = "queries",
    rate: Annotated[
        float | None,
        typer.Option(min=0.001, help="Open loop: requests per second on a fixed schedule."),
    ] = None,
    input_type: Annotated[
        str | None, typer.Option(help="Send input_type (embedhost's prompts).")
    ] = None,
    timeout: Annotated[float, typer.Option(min=0.1, help="Per-request timeout (s).")] = 60.0,
    compare: Annotated[
        str | None, typer.Option(help="A second server's URL: the same load, side by side.")
    ] = None,
    compare_model: Annotated[
        str | None, typer.Option(help="Model name on the second server (default: --model).")
    ] = None,
    compare_api_key: Annotated[
        str | None,
        typer.Option(envvar="EMBEDHOST_COMPARE_API_KEY", help="Second server's key."),
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the report as JSON (no live display).")
    ] = False,
) -> None:
    """Load-test an OpenAI-compatible embeddings endpoint (embedhost or any other)."""
    from rich.console import Console

    if requests is not None and duration is not None:
        raise typer.BadParameter("give --duration or --requests, not both")
    if requests is None and duration is None:
        duration = 10.0
    try:
        load = Load(
            concurrency=concurrency or (OPEN_LOOP_IN_FLIGHT if rate else 8),
            requests=requests,
            duration_s=duration,
            texts_per_request=texts_per_request,
            rate=rate,
            timeout_s=timeout,
            corpus=corpus,
            input_type=input_type,
        )
        texts = read_corpus(corpus)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    targets = [(url if compare else "server", Target(url, model, api_key))]
    if compare:
        second = Target(compare, compare_model or model, compare_api_key or api_key)
        if compare == url:
            targets = [(f"{url} (A)", targets[0][1]), (f"{url} (B)", second)]
        else:
            targets.append((compare, second))
    err = Console(stderr=True)
    live = None if as_json or not err.is_terminal or os.environ.get("TERM") == "dumb" else err
    report = _run(run_all(targets, load, texts, live))
    if as_json:
        sys.stdout.write(json.dumps(report, indent=2) + "\n")
    else:
        Console().print(report_table(load, [(r["label"], r["results"]) for r in report["runs"]]))
    if all(r["results"]["ok"] == 0 for r in report["runs"]):
        raise typer.Exit(1)


def _run(coro: Any) -> dict[str, Any]:
    with contextlib.suppress(ImportError):
        import uvloop

        result: dict[str, Any] = uvloop.run(coro)
        return result
    out: dict[str, Any] = asyncio.run(coro)
    return out
