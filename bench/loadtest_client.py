"""Is ``embedhost loadtest`` the bottleneck? Measured against a trivial server.

Starts bench/stub_server.py (raw ASGI under uvicorn, a fixed answer) in its own process,
then, in this process, for ``--rounds`` rounds:

- ``embedhost loadtest``'s client (aiohttp) in open loop at ``--rate`` (default 2,000
  req/s) for ``--duration`` seconds: the rate achieved, requests behind schedule, latency,
  and the CPU time this process spent per request (user + sys);
- the same client in closed loop (32 connections, as fast as it goes);
- httpx's AsyncClient in the same closed loop (the alternative the command was not built
  on), so the two are compared within one run.

CPU per request is the figure that survives a shared machine: one core's worth of it is
the most the client can send, whatever else runs beside it.

Run:  .venv/bin/python bench/loadtest_client.py [--rate 2000] [--duration 10] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import subprocess
import sys
import time
from typing import Any

import httpx
import psutil
import uvloop
from _harness import ROOT, free_port, wait_answering

from embedhost.cli.loadtest import (
    OPEN_LOOP_IN_FLIGHT,
    Load,
    Recorder,
    Target,
    read_corpus,
    request_bodies,
    run_load,
)


def cpu() -> float:
    t = os.times()
    return t.user + t.system


async def aiohttp_run(target: Target, load: Load, bodies: list[bytes]) -> Recorder:
    return await run_load(target, load, bodies)


async def httpx_closed(target: Target, load: Load, bodies: list[bytes]) -> Recorder:
    rec = Recorder()
    limits = httpx.Limits(max_connections=load.concurrency)
    assert load.requests is not None
    tickets = iter(range(load.requests))
    async with httpx.AsyncClient(limits=limits, timeout=60) as client:

        async def loop() -> None:
            for i in tickets:
                t0 = time.perf_counter()
                r = await client.post(
                    target.endpoint,
                    content=bodies[i % len(bodies)],
                    headers={"content-type": "application/json"},
                )
                if r.status_code == 200:
                    rec.ok(time.perf_counter() - t0, 1)
                else:
                    rec.error(str(r.status_code))

        rec.started = time.perf_counter()
        await asyncio.gather(*(loop() for _ in range(load.concurrency)))
        rec.finished = time.perf_counter()
    return rec


def measure(
    name: str, coro_fn: Any, target: Target, load: Load, bodies: list[bytes], stub: psutil.Process
) -> dict[str, Any]:
    c0, s0 = cpu(), stub.cpu_times()
    rec: Recorder = uvloop.run(coro_fn(target, load, bodies))
    c1, s1 = cpu(), stub.cpu_times()
    out = rec.summary()
    n = max(out["requests"], 1)
    out["client_cpu_us_per_request"] = round((c1 - c0) / n * 1e6, 1)
    out["client_max_req_per_core_s"] = round(n / max(c1 - c0, 1e-9))
    out["server_cpu_us_per_request"] = round(
        ((s1.user + s1.system) - (s0.user + s0.system)) / n * 1e6, 1
    )
    out["name"] = name
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rate", type=float, default=2000)
    ap.add_argument("--duration", type=float, default=10)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    port = free_port()
    proc = subprocess.Popen([sys.executable, str(ROOT / "bench" / "stub_server.py"), str(port)])
    try:
        wait_answering(proc, f"http://127.0.0.1:{port}/v1/embeddings", timeout=30, what="stub")
        stub = psutil.Process(proc.pid)
        target = Target(f"http://127.0.0.1:{port}", "stub")
        texts = read_corpus("queries")
        open_load = Load(concurrency=OPEN_LOOP_IN_FLIGHT, duration_s=args.duration, rate=args.rate)
        n_closed = int(args.rate * args.duration)
        closed = Load(concurrency=32, requests=n_closed)
        # httpx is ~10x slower per request: fewer of them, the per-request figures compare.
        closed_httpx = Load(concurrency=32, requests=max(n_closed // 5, 500))
        bodies = request_bodies(texts, target, open_load)
        rows = []
        for r in range(args.rounds):
            order = [
                ("aiohttp open loop", aiohttp_run, open_load),
                ("aiohttp closed 32", aiohttp_run, closed),
                ("httpx closed 32", httpx_closed, closed_httpx),
            ]
            if r % 2:
                order.reverse()
            for name, fn, load in order:
                row = measure(name, fn, target, load, bodies, stub)
                row["round"] = r + 1
                rows.append(row)
                print(json.dumps(row), flush=True)
        print(
            f"\nmachine: {platform.machine()}, {psutil.cpu_count()} CPUs, "
            f"load average {os.getloadavg()[0]:.1f}, Python {platform.python_version()}"
        )
        print(
            "| round | client | req/s | behind schedule | p50 ms | p99 ms | client CPU µs/req | "
            "client max req/s per core | stub CPU µs/req |"
        )
        print("|---|---|---|---|---|---|---|---|---|")
        for x in rows:
            lat = x["latency_ms"]
            print(
                f"| {x['round']} | {x['name']} | {x['requests_per_s']:.0f} | "
                f"{x['behind_schedule']} | {lat['p50']} | {lat['p99']} | "
                f"{x['client_cpu_us_per_request']} | {x['client_max_req_per_core_s']} | "
                f"{x['server_cpu_us_per_request']} |"
            )
    finally:
        proc.terminate()
        proc.wait(10)


if __name__ == "__main__":
    main()
