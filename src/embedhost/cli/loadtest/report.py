"""What ``loadtest`` shows: the final :func:`report_table` (one column per server) and the
:class:`LiveView` refreshed while the load runs."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from embedhost.cli.loadtest.load import PERCENTILES, Load, Recorder

if TYPE_CHECKING:
    from rich.table import Table


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
