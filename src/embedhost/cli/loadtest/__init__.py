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

The parts, by job: :mod:`.load` generates the load and records what came back,
:mod:`.report` shows it (live and at the end), :mod:`.command` is the typer command. The
names other code uses are re-exported here.
"""

from __future__ import annotations

from embedhost.cli.loadtest.command import loadtest, run_all
from embedhost.cli.loadtest.load import (
    BUNDLED,
    OPEN_LOOP_IN_FLIGHT,
    PERCENTILES,
    Load,
    Recorder,
    Target,
    read_corpus,
    request_bodies,
    run_load,
)
from embedhost.cli.loadtest.report import LiveView, report_table

__all__ = [
    "BUNDLED",
    "OPEN_LOOP_IN_FLIGHT",
    "PERCENTILES",
    "LiveView",
    "Load",
    "Recorder",
    "Target",
    "loadtest",
    "read_corpus",
    "report_table",
    "request_bodies",
    "run_all",
    "run_load",
]
