"""Rerank throughput: embedhost on each engine against Infinity's ``/rerank`` and
``llama-server --reranking``, on the same cross-encoder, in one run.

Every request is a query and 20 passages (the bundled ``passages`` corpus); 4 clients in a
closed loop for ``--duration`` seconds after a short warm-up. Reported per config: pairs/s
(documents scored per second), request latency p50/p99, non-2xx. The cross-encoder is the
test fixture (the packaged MiniLM's encoder with a seeded head, tests/support/crossencoder.py),
exported to ONNX and converted to GGUF f16 as the tests do, so all configs read the same
weights. Goal (issue 21): embedhost >= 1.3x the best peer in pairs/s.

    .venv/bin/python bench/rerank.py [--duration 30] [--infinity /tmp/infvenv/bin/infinity_emb]
        [--only embedhost-transformers,llama-server-t2]
(peers at each setting: Infinity bfloat16 and float32, llama-server at 1 and 2 threads)

Infinity comes from its own virtual environment (``--infinity`` or ``$INFINITY``);
llama-server is found or built as the tests do (tests/support/llama_server.py). A peer
that is missing is skipped with a note. Results: bench/out/rerank-<time>.json and a
Markdown table on stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from _harness import corpus, machine, start_serve, stop_process, wait_ready, write_json
from tests.engines.gguf_build import convert
from tests.support.crossencoder import NAME, cross_encoder_onnx, minilm_cross_encoder
from tests.support.servers import free_port, spawn, wait_answering

DOCS_PER_REQUEST = 20
CLIENTS = 4
CONFIGS = (
    "embedhost-transformers",
    "embedhost-transformers-float32",
    "embedhost-onnx",
    "embedhost-llama_cpp",
    "infinity-bfloat16",
    "infinity-float32",
    "llama-server-t1",
    "llama-server-t2",
)


def _bodies(texts: list[str], shape: str, model: str | None) -> list[dict[str, Any]]:
    """Request bodies: query i with the 20 passages that follow it."""
    out = []
    n = len(texts)
    for i in range(64):
        docs = [texts[(i * DOCS_PER_REQUEST + j + 1) % n] for j in range(DOCS_PER_REQUEST)]
        body: dict[str, Any] = {"query": texts[(i * DOCS_PER_REQUEST) % n][:200], "documents": docs}
        if shape == "tei":
            body = {"query": body["query"], "texts": docs}
        if model:
            body["model"] = model
        out.append(body)
    return out


async def _drive(url: str, bodies: list[dict[str, Any]], duration: float) -> dict[str, Any]:
    import httpx
    import numpy as np

    lat: list[float] = []
    bad = 0
    async with httpx.AsyncClient(timeout=120) as client:
        for b in bodies[:4]:  # warm-up, not counted
            (await client.post(url, json=b)).raise_for_status()
        deadline = time.monotonic() + duration
        t0 = time.monotonic()

        async def one(k: int) -> None:
            nonlocal bad
            i = k
            while time.monotonic() < deadline:
                i += CLIENTS
                s = time.perf_counter()
                r = await client.post(url, json=bodies[i % len(bodies)])
                if r.is_success:
                    lat.append(time.perf_counter() - s)
                else:
                    bad += 1

        await asyncio.gather(*(one(k) for k in range(CLIENTS)))
        elapsed = time.monotonic() - t0
    ms = np.asarray(lat) * 1000
    return {
        "pairs_per_s": round(len(lat) * DOCS_PER_REQUEST / elapsed, 1),
        "requests": len(lat),
        "p50_ms": round(float(np.percentile(ms, 50)), 1) if lat else None,
        "p99_ms": round(float(np.percentile(ms, 99)), 1) if lat else None,
        "non_2xx": bad,
    }


def _embedhost(name: str, tmp: Path, duration: float, texts: list[str]) -> dict[str, Any]:
    engine = name.removeprefix("embedhost-").removesuffix("-float32")
    path = {
        "transformers": minilm_cross_encoder,
        "onnx": cross_encoder_onnx,
        "llama_cpp": lambda: convert(minilm_cross_encoder(), "f16", f"{NAME}-f16.gguf"),
    }[engine]()
    model: dict[str, Any] = {"name": "ce", "engine": engine, "path": str(path), "task": "rerank"}
    if name.endswith("-float32"):
        model["dtype"] = "float32"
    # The vector cache off: the 64 bodies repeat, and a cached pair is not a scored one.
    proc, url, t0 = start_serve({"models": [model], "cache": {"enabled": False}}, tmp, name)
    try:
        ready = wait_ready(proc, url, t0)
        result = asyncio.run(_drive(f"{url}/v1/rerank", _bodies(texts, "jina", "ce"), duration))
    finally:
        stop_process(proc)
    return {**result, "ready_s": round(ready, 1)}


def _infinity(
    binary: str, tmp: Path, duration: float, texts: list[str], dtype: str
) -> dict[str, Any]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [binary, "v2", "--model-id", str(minilm_cross_encoder()), "--served-model-name", "ce"]
    cmd += ["--engine", "torch", "--device", "cpu", "--batch-size", "32", "--dtype", dtype]
    cmd += ["--host", "127.0.0.1", "--port", str(port)]
    proc = spawn(cmd, tmp / "infinity.log", env={**os.environ, "PYTHONPATH": ""})
    try:
        wait_answering(proc, f"{url}/models", timeout=300, log=tmp / "infinity.log")
        return asyncio.run(_drive(f"{url}/rerank", _bodies(texts, "jina", "ce"), duration))
    finally:
        stop_process(proc)


def _llama_server(tmp: Path, duration: float, texts: list[str], threads: int) -> dict[str, Any]:
    from tests.support.llama_server import llama_server_binary

    gguf = convert(minilm_cross_encoder(), "f16", f"{NAME}-f16.gguf")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [str(llama_server_binary()), "-m", str(gguf), "--reranking", "-t", str(threads)]
    cmd += ["-c", "8192", "-b", "2048", "-ub", "2048", "-np", str(CLIENTS)]
    cmd += ["--host", "127.0.0.1", "--port", str(port)]
    proc = spawn(cmd, tmp / "llama-server.log")
    try:
        wait_answering(proc, f"{url}/health", timeout=120, log=tmp / "llama-server.log")
        return asyncio.run(_drive(f"{url}/v1/rerank", _bodies(texts, "jina", None), duration))
    finally:
        stop_process(proc)


def _one(name: str, args: argparse.Namespace, tmp: Path, texts: list[str]) -> dict[str, Any]:
    if name.startswith("embedhost-"):
        return _embedhost(name, tmp, args.duration, texts)
    if name.startswith("infinity-"):
        dtype = name.removeprefix("infinity-")
        return _infinity(args.infinity, tmp, args.duration, texts, dtype)
    threads = int(name.removeprefix("llama-server-t"))
    return _llama_server(tmp, args.duration, texts, threads)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=30.0)
    parser.add_argument("--rounds", type=int, default=1, help="alternating rounds (odd: reversed)")
    parser.add_argument("--infinity", default=os.environ.get("INFINITY"))
    parser.add_argument("--only", default=",".join(CONFIGS), help="comma-separated configs")
    args = parser.parse_args()
    texts = corpus("passages.txt")
    names = args.only.split(",")
    notes: list[str] = []
    if not args.infinity or not Path(args.infinity).is_file():
        notes.append("infinity: skipped, no infinity_emb (--infinity or $INFINITY)")
        names = [n for n in names if not n.startswith("infinity-")]
    runs: dict[str, list[dict[str, Any]]] = {n: [] for n in names}
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        for rnd in range(args.rounds):
            for name in names if rnd % 2 == 0 else list(reversed(names)):
                runs[name].append(_one(name, args, tmp, texts))
                print(rnd, name, runs[name][-1], flush=True)

    def med(n: str, key: str) -> float:
        return float(statistics.median(r[key] or 0 for r in runs[n]))

    peers = [med(n, "pairs_per_s") for n in names if not n.startswith("embedhost")]
    rows = [
        "| config | pairs/s median (rounds) | p50 ms | p99 ms | non-2xx | vs best peer |",
        "|---|---|---|---|---|---|",
    ]
    for n in names:
        tps = med(n, "pairs_per_s")
        vs = f"{tps / max(peers):.2f}x" if peers and max(peers) > 0 else "-"
        each = ", ".join(f"{r['pairs_per_s']:.0f}" for r in runs[n])
        bad = sum(r["non_2xx"] for r in runs[n])
        rows.append(
            f"| {n} | {tps:.0f} ({each}) | {med(n, 'p50_ms'):.0f} | {med(n, 'p99_ms'):.0f} "
            f"| {bad} | {vs} |"
        )
    print("\n".join(rows))
    for note in notes:
        print(f"note: {note}")
    path = write_json("rerank", {"machine": machine(), "runs": runs, "notes": notes})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
