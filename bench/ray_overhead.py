"""Ray Serve's cost and one replica's capacity, on this machine, in one run.

(a) capacity sweep (sizes the ``ray.*`` defaults): plain ``embedhost serve`` under wrk at
    1..32 connections of one short text and 1..8 connections of 16 passages: where
    throughput stops growing is what one replica can have in flight usefully
    (``target_ongoing_requests``), and the batcher's batch size bounds what it can use at
    all (``max_ongoing_requests``);
(b) overhead: the same wrk loads as bench/throughput.py against plain ``embedhost serve``,
    ``embedhost serve --ray`` with one replica and with two, in alternating rounds.

Run:  .venv/bin/python bench/ray_overhead.py [--rounds 2] [--duration 10] [--skip-sweep]
Needs wrk and embedhost[ray]. Writes bench/out/ray-<time>.json and prints markdown tables.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import (
    LOADS,
    MINILM,
    machine,
    run_wrk,
    start_serve,
    stop,
    tree_rss_mb,
    wait_ready,
    write_json,
)

# name -> (how it runs, extra config). One engine thread everywhere: on a shared, busy
# machine two spinning intra-op threads per engine wait on each other's time slices
# (seconds per request here at load average 20), which would measure the scheduler, not
# Ray; two replicas then use the 2 cores as two 1-thread engines.
MODES: dict[str, tuple[bool, dict[str, Any]]] = {
    "plain": (False, {"threads": 1}),
    "ray-1": (True, {"threads": 1}),
    "ray-2": (True, {"threads": 1}),
}


def start(mode: str, tmp: Path) -> tuple[subprocess.Popen[bytes], str, float]:
    on_ray, model = MODES[mode]
    cfg: dict[str, Any] = {
        "server": {"log_level": "warning"},
        "cache": {"enabled": False},  # the engine path, not the vector cache (issue 11)
        "models": [{"name": "bench", "path": MINILM, **model}],
    }
    if on_ray:
        n = int(mode.split("-")[1])
        cfg["ray"] = {"min_replicas": n, "max_replicas": n, "num_cpus": 1}
    return start_serve(cfg, tmp, mode, extra=("--ray",) if on_ray else (), append=True)


def ensure_gone(proc: subprocess.Popen[bytes]) -> None:
    """A Ray run's local cluster is the server's children: none may outlive it."""
    kids = psutil.Process(proc.pid).children(recursive=True) if proc.poll() is None else []
    stop(proc)
    _, alive = psutil.wait_procs(kids, timeout=30)
    for k in alive:
        k.kill()


def sequential_ms(url: str, n: int = 300) -> dict[str, float]:
    """One client, one request at a time: the median and p90 latency of ``GET /health``
    (no model work: the hop itself) and of one short text's embedding. The difference
    between plain and Ray is the proxy's per-request cost, with no queueing in it."""
    out: dict[str, float] = {}
    with httpx.Client(timeout=30) as c:
        for name, call in (
            ("health", lambda: c.get(f"{url}/health")),
            ("embed1", lambda: c.post(f"{url}/v1/embeddings", json={"input": "hello world"})),
        ):
            for _ in range(10):
                call()
            times = []
            for _ in range(n if name == "health" else n // 3):
                t = time.perf_counter()
                r = call()
                times.append((time.perf_counter() - t) * 1000)
                assert r.status_code == 200, r.text
            times.sort()
            out[f"{name}_p50"] = round(statistics.median(times), 2)
            out[f"{name}_p90"] = round(times[int(len(times) * 0.9)], 2)
    return out


def sweep(tmp: Path, duration: int) -> list[dict[str, Any]]:
    proc, url, t0 = start("plain", tmp)
    out = []
    try:
        wait_ready(proc, url, t0)
        for load, conns in [("short", c) for c in (1, 4, 8, 16, 32)] + [
            ("passages", c) for c in (1, 4)
        ]:
            LOADS[load] = (conns, *LOADS[load][1:])
            r = run_wrk(url, load, None, tmp, duration)
            out.append({**r.__dict__, "loadavg": os.getloadavg()[0]})
            print(
                f"sweep {load:8s} c={conns:2d}: {r.texts_per_s:7.1f} texts/s "
                f"p50 {r.p50_ms:6.1f} ms p99 {r.p99_ms:6.1f} ms non-2xx {r.non_2xx} "
                f"(load average {os.getloadavg()[0]:.1f})",
                flush=True,
            )
    finally:
        ensure_gone(proc)
        LOADS["short"] = (32, 1, "queries.txt")
        LOADS["passages"] = (4, 16, "passages.txt")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--skip-sweep", action="store_true")
    args = ap.parse_args()
    # SIGTERM unwinds like Ctrl-C, so that the servers (and Ray clusters) started are stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    results: dict[str, Any] = {"machine": machine(), "sweep": [], "rounds": []}
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        if not args.skip_sweep:
            results["sweep"] = sweep(tmp, args.duration)
        for i in range(args.rounds):
            order = list(MODES) if i % 2 == 0 else list(reversed(MODES))
            for mode in order:
                proc, url, t0 = start(mode, tmp)
                try:
                    ready = wait_ready(proc, url, t0, timeout=400)
                    loads = [
                        run_wrk(url, load, None, tmp, args.duration)
                        for load in ("short", "passages")
                    ]
                    hop = sequential_ms(url)
                    rss = tree_rss_mb(proc.pid)["total"]
                except Exception:
                    print((tmp / f"{mode}.log").read_text(errors="replace")[-3000:])
                    raise
                finally:
                    ensure_gone(proc)
                row = {
                    "round": i + 1,
                    "mode": mode,
                    "ready_s": ready,
                    "rss_mb": rss,
                    "loadavg": os.getloadavg()[0],
                }
                row["loads"] = [r.__dict__ for r in loads]
                row["sequential_ms"] = hop
                results["rounds"].append(row)
                s, p = loads
                print(
                    f"round {i + 1} {mode:6s}: short {s.texts_per_s:6.1f}/s p50 {s.p50_ms:6.1f} "
                    f"p99 {s.p99_ms:6.1f} | passages {p.texts_per_s:6.1f}/s p50 {p.p50_ms:6.1f} "
                    f"p99 {p.p99_ms:6.1f} | non-2xx {s.non_2xx + p.non_2xx} | RSS {rss:6.0f} MB "
                    f"| ready {ready:5.1f}s | load average {os.getloadavg()[0]:.1f}",
                    flush=True,
                )
                print(f"round {i + 1} {mode:6s}: one client, one at a time: {hop}", flush=True)
    path = write_json("ray", results)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
