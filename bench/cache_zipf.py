"""Repeated traffic: the embedding cache on vs off, in one run (issue 11).

One ``embedhost serve`` with two model names on the same weights: ``cached`` (the default
in-process cache) and ``uncached`` (``cache: false``). Each round sends the same fixed
sequence of ``--requests`` short queries (the package's queries.txt, one per request), drawn
from a Zipf distribution over the corpus whose exponent is chosen so that about half of the
requests repeat an earlier text, through ``--clients`` (32) concurrent keep-alive clients
(httpx, in this process: the same client cost for both models). Rounds alternate off / on
(order swapped every round); each cache-on round starts from a cleared cache. Per round:
texts/s, p50/p99, the hit rate (the server's own counters, /info), and the API process's
CPU time per request (psutil: the API process only, not its workers).

A last phase sends texts already cached (every request a memory hit) and the same texts
to ``uncached``: the API process's CPU per request of a hit vs of any request.

Run:  .venv/bin/python bench/cache_zipf.py [--rounds 4] [--requests 400]
Writes bench/out/cache-zipf-<time>.json and prints markdown rows for RESULTS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import (
    MINILM,
    corpus,
    machine,
    start_serve,
    stop,
    tree_rss_mb,
    wait_ready,
    write_json,
)

MODELS = ("uncached", "cached")


def zipf_sequence(n_texts: int, length: int, expect: int, seed: int = 0) -> tuple[list[int], float]:
    """Ranks drawn from a Zipf law over ``n_texts`` texts; the exponent is bisected so that
    about half of the first ``expect`` draws repeat an earlier one."""

    def draw(s: float) -> list[int]:
        weights = [1.0 / (k**s) for k in range(1, n_texts + 1)]
        return random.Random(seed).choices(range(n_texts), weights=weights, k=length)

    def repeats(seq: list[int]) -> float:
        seen: set[int] = set()
        rep = 0
        for x in seq:
            rep += x in seen
            seen.add(x)
        return rep / len(seq)

    lo, hi = 0.0, 3.0
    for _ in range(30):
        mid = (lo + hi) / 2
        if repeats(draw(mid)[:expect]) < 0.5:
            lo = mid
        else:
            hi = mid
    seq = draw(hi)
    return seq, hi


def run_clients(url: str, bodies: list[dict[str, Any]], clients: int) -> dict[str, Any]:
    """Send every body once, ``clients`` at a time, in order; latencies and cache states."""

    async def go() -> tuple[float, list[float], list[str], int]:
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        for b in bodies:
            queue.put_nowait(b)
        lat: list[float] = []
        states: list[str] = []
        bad = 0
        limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
        async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:

            async def worker() -> None:
                nonlocal bad
                while not queue.empty():
                    body = queue.get_nowait()
                    t = time.perf_counter()
                    r = await client.post("/v1/embeddings", json=body)
                    lat.append(time.perf_counter() - t)
                    bad += r.status_code != 200
                    states.append(r.headers.get("x-embedhost-cache", "-"))

            t0 = time.perf_counter()
            await asyncio.gather(*(worker() for _ in range(clients)))
            return time.perf_counter() - t0, lat, states, bad

    wall, lat, states, bad = asyncio.run(go())
    lat.sort()
    return {
        "requests": len(bodies),
        "seconds": round(wall, 2),
        "texts_per_s": len(bodies) / wall,
        "p50_ms": lat[len(lat) // 2] * 1000,
        "p99_ms": lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1000,
        "non_2xx": bad,
        "hit_responses": states.count("hit") / len(states) if states[0] != "-" else None,
    }


def cache_counts(url: str) -> tuple[int, int]:
    mem = httpx.get(f"{url}/info", timeout=10).json()["cache"]["memory"]
    return int(mem["hits"]), int(mem["misses"])


def api_cpu_s(pid: int) -> float:
    t = psutil.Process(pid).cpu_times()
    return float(t.user + t.system)


def measured(
    url: str, pid: int, bodies: list[dict[str, Any]], clients: int, *, clear: str | None
) -> dict[str, Any]:
    """One round: optionally a cache clear, then every body once, with the server's hit
    counters and the API process's CPU time around it."""
    if clear:
        httpx.delete(f"{url}/admin/cache", params={"model": clear}, timeout=10).raise_for_status()
    h0, m0 = cache_counts(url)
    c0 = api_cpu_s(pid)
    res = run_clients(url, bodies, clients)
    c1 = api_cpu_s(pid)
    h1, m1 = cache_counts(url)
    looked = (h1 - h0) + (m1 - m0)
    res["hit_rate"] = (h1 - h0) / looked if looked else None
    res["api_cpu_ms_per_request"] = (c1 - c0) * 1000 / max(res["requests"], 1)
    return res


def cache_cpu_per_hit() -> dict[str, float]:
    """The cache's own CPU per request answered from memory (this process, no HTTP):
    keys (BLAKE2b of the token ids), lookups, reassembly."""
    import numpy as np

    from embedhost.cache import EmbeddingCache
    from embedhost.config import CacheConfig

    async def go() -> dict[str, float]:
        cache = EmbeddingCache(CacheConfig())
        rng = np.random.default_rng(0)
        seqs = [[101, *rng.integers(1000, 30000, 12).tolist(), 102] for _ in range(32)]
        vec = rng.standard_normal(384).astype(np.float32)

        async def compute(batch: list[list[int]]) -> list[Any]:
            return [vec] * len(batch)

        await cache.embed("m@1:x", "s", seqs, 384, compute)
        out = {}
        for n in (1, 32):
            reps = 20_000 // n
            t = time.process_time()
            for _ in range(reps):
                await cache.embed("m@1:x", "s", seqs[:n], 384, compute)
            out[f"us_per_request_{n}_inputs"] = (time.process_time() - t) / reps * 1e6
        return out

    return asyncio.run(go())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=4, help="alternating off/on pairs")
    ap.add_argument("--requests", type=int, default=400, help="requests per round")
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--dtype", default="bfloat16")
    args = ap.parse_args()

    texts = corpus("queries.txt")
    order, exponent = zipf_sequence(len(texts), args.requests, args.requests)
    distinct = len(set(order))
    out: dict[str, Any] = {
        "machine": machine(),
        "corpus_texts": len(texts),
        "requests_per_round": args.requests,
        "repeated_share": round(1 - distinct / len(order), 3),
        "zipf_exponent": round(exponent, 3),
        "clients": args.clients,
        "cache_cpu_per_memory_hit": cache_cpu_per_hit(),
        "rounds": [],
    }
    print(json.dumps(out["cache_cpu_per_memory_hit"]), flush=True)
    entry = {"path": MINILM, "dtype": args.dtype}
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        cfg = {
            "server": {"log_level": "warning"},
            "models": [
                {"name": "cached", **entry},
                {"name": "uncached", **entry, "cache": False},
            ],
        }
        proc, url, t0 = start_serve(cfg, tmp, "server")
        try:
            wait_ready(proc, url, t0)
            bodies = {m: [{"input": texts[i], "model": m} for i in order] for m in MODELS}
            # Warm both workers (and the client) on texts outside the measured ones.
            spare = [t for i, t in enumerate(texts) if i not in set(order)][:64]
            for m in MODELS:
                run_clients(url, [{"input": t, "model": m} for t in spare], args.clients)
            for r in range(args.rounds):
                for m in MODELS if r % 2 == 0 else MODELS[::-1]:
                    res = measured(
                        url,
                        proc.pid,
                        bodies[m],
                        args.clients,
                        clear="cached" if m == "cached" else None,
                    )
                    res.update(round=r + 1, cache="on" if m == "cached" else "off")
                    out["rounds"].append(res)
                    print(json.dumps(res), flush=True)
            # Every request a memory hit (texts the last cache-on round cached) vs the same
            # texts on the uncached model: the API process's CPU per request.
            hot = sorted(set(order))[:100] * 4
            for m in MODELS:
                res = measured(
                    url,
                    proc.pid,
                    [{"input": texts[i], "model": m} for i in hot],
                    args.clients,
                    clear=None,
                )
                res.update(
                    phase="every request a memory hit" if m == "cached" else "same texts, no cache"
                )
                out.setdefault("hot", []).append(res)
                print(json.dumps(res), flush=True)
            out["rss_mb"] = tree_rss_mb(proc.pid)
            out["info_cache"] = httpx.get(f"{url}/info", timeout=10).json()["cache"]
        finally:
            stop(proc)
    path = write_json("cache-zipf", out)
    print(f"wrote {path}")
    print("| round | cache | texts/s | p50 ms | p99 ms | hit rate | API CPU ms/request | non-2xx |")
    print("|---|---|---|---|---|---|---|---|")
    for res in out["rounds"]:
        hr = "-" if res["hit_rate"] is None else f"{res['hit_rate']:.0%}"
        print(
            f"| {res['round']} | {res['cache']} | {res['texts_per_s']:.0f} | "
            f"{res['p50_ms']:.1f} | {res['p99_ms']:.1f} | {hr} | "
            f"{res['api_cpu_ms_per_request']:.3f} | {res['non_2xx']} |"
        )
    for res in out["hot"]:
        print(
            f"| {res['phase']} | | {res['texts_per_s']:.0f} | {res['p50_ms']:.1f} | "
            f"{res['p99_ms']:.1f} | {res['hit_rate'] or 0:.0%} | "
            f"{res['api_cpu_ms_per_request']:.3f} | {res['non_2xx']} |"
        )


if __name__ == "__main__":
    main()
