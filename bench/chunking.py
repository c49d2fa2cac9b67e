"""Chunk-and-pool's cost (issue 22): one chunked 1500-token document against the same
windows sent as separate inputs, in one run.

One ``embedhost serve`` with MiniLM (``truncation: chunk``, the cache off so that every
round computes). The document is passages of the bundled corpus joined until it has about
``--tokens`` (1500) tokens. Its windows are asked once (``/embed`` with ``chunking``), and
their texts, ``doc[start:end]``, make the second form. Rounds alternate the order of the
two forms; each form sends ``--requests`` requests one after another through one
keep-alive client. Per form: median and p90 latency, documents per second, tokens counted
(``usage``), and the API process's CPU time per request (psutil: the API process only).
The two forms must count the same tokens: the check that the same work is compared.

Run:  .venv/bin/python bench/chunking.py [--rounds 4] [--requests 20] [--tokens 1500]
Writes bench/out/chunking-<time>.json and prints a markdown table for RESULTS.md.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import MINILM, corpus, machine, start_serve, stop, wait_ready, write_json


def make_document(client: httpx.Client, tokens: int) -> str:
    """Passages joined until the document has about ``tokens`` tokens (/tokenize says)."""
    doc = ""
    for passage in corpus("passages.txt"):
        doc = f"{doc} {passage}".strip()
        n = len(client.post("/tokenize", json={"inputs": doc}).json()[0])
        if n >= tokens:
            break
    return doc


def run_form(
    client: httpx.Client, api: psutil.Process, inputs: list[str], requests: int
) -> dict[str, Any]:
    times: list[float] = []
    tokens = 0
    cpu0 = api.cpu_times()
    for _ in range(requests):
        t = time.perf_counter()
        r = client.post("/v1/embeddings", json={"input": inputs})
        times.append(time.perf_counter() - t)
        r.raise_for_status()
        tokens = r.json()["usage"]["prompt_tokens"]
    cpu1 = api.cpu_times()
    cpu = (cpu1.user + cpu1.system) - (cpu0.user + cpu0.system)
    times.sort()
    return {
        "median_ms": statistics.median(times) * 1000,
        "p90_ms": times[int(0.9 * (len(times) - 1))] * 1000,
        "docs_per_s": len(times) / sum(times),
        "tokens": tokens,
        "api_cpu_ms_per_request": cpu / len(times) * 1000,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--requests", type=int, default=20)
    ap.add_argument("--tokens", type=int, default=1500)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()

    model: dict[str, Any] = {
        "name": "minilm",
        "path": MINILM,
        "truncation": "chunk",
        "cache": False,
    }
    if args.threads:
        model["threads"] = args.threads
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        proc, url, t0 = start_serve({"models": [model]}, tmp, "chunking")
        try:
            wait_ready(proc, url, t0)
            api = psutil.Process(proc.pid)
            with httpx.Client(base_url=url, timeout=120) as client:
                doc = make_document(client, args.tokens)
                r = client.post("/embed", json={"text": doc, "chunking": {}})
                r.raise_for_status()
                windows = r.json()["chunk_embeddings"][0]
                texts = [doc[w["start"] : w["end"]] for w in windows]
                forms = {"chunked": [doc], "windows": texts}
                for inputs in forms.values():  # warm both shapes once
                    client.post("/v1/embeddings", json={"input": inputs}).raise_for_status()
                rounds: list[dict[str, Any]] = []
                for k in range(args.rounds):
                    order = list(forms) if k % 2 == 0 else list(forms)[::-1]
                    rounds.append(
                        {name: run_form(client, api, forms[name], args.requests) for name in order}
                    )
        finally:
            stop(proc)

    summary = {
        name: {
            key: statistics.median(r[name][key] for r in rounds)
            for key in ("median_ms", "p90_ms", "docs_per_s", "api_cpu_ms_per_request")
        }
        for name in ("chunked", "windows")
    }
    tokens = {name: rounds[0][name]["tokens"] for name in ("chunked", "windows")}
    result = {
        "machine": machine(),
        "document_tokens": args.tokens,
        "windows": len(windows),
        "tokens_counted": tokens,
        "rounds": rounds,
        "summary": summary,
    }
    path = write_json("chunking", result)
    print(f"windows per document: {len(windows)}; tokens counted: {tokens}")
    print("| form | median ms | p90 ms | docs/s | API CPU ms/request |")
    print("|---|---|---|---|---|")
    for name, s in summary.items():
        print(
            f"| {name} | {s['median_ms']:.1f} | {s['p90_ms']:.1f} | {s['docs_per_s']:.2f} "
            f"| {s['api_cpu_ms_per_request']:.2f} |"
        )
    ratio = summary["chunked"]["median_ms"] / summary["windows"]["median_ms"]
    print(f"chunked / windows median latency: {ratio:.3f}")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
