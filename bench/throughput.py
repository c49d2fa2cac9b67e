"""Throughput benchmark: offline engine limits and the server under load, in one run.

For each engine configuration:

(a) offline: the engine alone, in this process, on the real-text corpus the package ships
    (src/embedhost/cli/texts: stdlib docstrings), tokenized up front, sorted by length, in
    batches of 32 — the ideal batches a server could ever form;
(b) server: ``embedhost serve`` on that configuration, time-to-ready, then wrk
    (a C load generator, so the client costs little CPU) with
    - 32 concurrent connections sending 1 short text (~12 tokens) per request,
    - 4 concurrent connections sending 16 passages (~100 tokens) per request,
    - 16 concurrent connections sending 1-64 texts of mixed lengths (the whole corpus)
      per request, what real traffic looks like,
    reporting texts/s, p50/p99 latency, non-2xx answers and RSS (API + workers).

Run:  .venv/bin/python bench/throughput.py [--configs NAME,...] [--duration 20]
      .venv/bin/python bench/throughput.py --suite issue10 --llama-server BIN --infinity BIN
        (embedhost's default and float32, its GGUF engine at 1 and 2 threads, llama-server
        at 1 and 2 threads, Infinity bf16 and float32, side by side; prints the issue's
        table with each row's ratio to the peers)
      .venv/bin/python bench/throughput.py --soak 600 [--configs transformers-auto]
        (the mixed load for 10 minutes, RSS sampled every 10 s: the memory curve)
Writes bench/out/throughput-<time>.json and prints a markdown table for RESULTS.md.
Needs wrk (Debian package `wrk`; scripts/system-deps installs it).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from _harness import (
    LOADS,
    MINILM,
    LoadResult,
    corpus,
    free_port,
    machine,
    parse_wrk,
    resolve_entry,
    run_loads,
    spawn,
    start_serve,
    stop,
    tree_rss_mb,
    wait_ready,
    write_json,
    wrk_command,
)

# name -> model entry (as in a config file). Other engines add theirs here.
CONFIGS: dict[str, dict[str, Any]] = {
    # What a new user gets: the default model, `dtype: auto` (bfloat16 on CPUs with AMX or
    # AVX512-BF16, float32 elsewhere), default threads and batching.
    "transformers-auto": {"engine": "transformers", "path": MINILM},
    "transformers-float32": {"engine": "transformers", "path": MINILM, "dtype": "float32"},
    "transformers-bfloat16": {"engine": "transformers", "path": MINILM, "dtype": "bfloat16"},
    # Issue 10's A/B: the engine as before packing (each batch padded to its longest input).
    "transformers-bfloat16-padded": {
        "engine": "transformers",
        "path": MINILM,
        "dtype": "bfloat16",
        "engine_options": {"packing": False},
    },
    # Issue 3. The files are built on first use (and cached under .cache/): the GGUF by
    # llama.cpp's own converter (tests/engines/gguf_build.py), the ONNX by export-onnx.
    # One llama.cpp thread for the engine and its peer alike: on a 2-core machine shared
    # with the API process and wrk, two spinning ggml threads lose more than they gain.
    "llama_cpp-f16": {"engine": "llama_cpp", "path": "gguf:f16", "threads": 1},
    "llama_cpp-f16-t1": {"engine": "llama_cpp", "path": "gguf:f16", "threads": 1},
    "llama_cpp-f16-t2": {"engine": "llama_cpp", "path": "gguf:f16", "threads": 2},
    "onnx-float32": {"engine": "onnx", "path": "onnx:minilm"},
    "onnx-float32-1thread": {"engine": "onnx", "path": "onnx:minilm", "threads": 1},
    # A peer, not an embedhost engine: llama.cpp's own llama-server on the same GGUF.
    # Its binary comes from --llama-server or $LLAMA_SERVER; skipped with a note if absent.
    "llama-server-f16": {"peer": "llama-server", "path": "gguf:f16", "threads": 1},
    # llama-server at its best settings on a quiet machine (issue 10): 8 slots, 1 or 2 threads.
    "llama-server-f16-t1": {
        "peer": "llama-server",
        "path": "gguf:f16",
        "threads": 1,
        "parallel": 8,
    },
    "llama-server-f16-t2": {
        "peer": "llama-server",
        "path": "gguf:f16",
        "threads": 2,
        "parallel": 8,
    },
    # Infinity (infinity-emb[torch,server], its own virtual environment: --infinity or
    # $INFINITY names its `infinity_emb`), same model directory, batch 32, in both dtypes.
    "infinity-bfloat16": {"peer": "infinity", "path": MINILM, "dtype": "bfloat16"},
    "infinity-float32": {"peer": "infinity", "path": MINILM, "dtype": "float32"},
}

# The issue-10 side-by-side run: embedhost's default and float32 and its GGUF engine at the
# peers' thread counts, llama-server at 1 and 2 threads, Infinity in both dtypes.
SUITES = {
    "issue10": [
        "transformers-auto",
        "transformers-float32",
        "llama_cpp-f16-t1",
        "llama_cpp-f16-t2",
        "llama-server-f16-t1",
        "llama-server-f16-t2",
        "infinity-bfloat16",
        "infinity-float32",
        "onnx-float32-1thread",
    ],
}


@dataclass
class ConfigResult:
    name: str
    offline_texts_per_s: dict[str, float] = field(default_factory=dict)
    time_to_ready_s: float | None = None
    rss_mb: dict[str, float] = field(default_factory=dict)
    loads: list[LoadResult] = field(default_factory=list)
    soak: list[dict[str, float]] = field(default_factory=list)


# --- offline ---------------------------------------------------------------------------------


def offline(entry: dict[str, Any], seconds: float = 8.0) -> dict[str, float]:
    from embedhost.config import ModelConfig
    from embedhost.engines import create_engine
    from embedhost.tokenization import load_tokenizer, prepare_texts

    cfg = ModelConfig(name="bench", **entry)
    engine = create_engine(cfg)
    info = engine.load()
    tok = load_tokenizer(cfg)
    out: dict[str, float] = {}
    for load, (_, per_req, file) in LOADS.items():
        if not per_req:
            continue  # mixed: a server-side load only
        ids = prepare_texts(tok, corpus(file), info.max_tokens, "right").ids
        ids.sort(key=len)
        batches = [ids[i : i + 32] for i in range(0, len(ids), 32)]
        for b in batches[:2]:
            engine.embed(b)  # warm
        done = 0
        start = time.perf_counter()
        while time.perf_counter() - start < seconds:
            for b in batches:
                engine.embed(b)
                done += len(b)
        out[load] = done / (time.perf_counter() - start)
    engine.close()
    return out


# --- server ----------------------------------------------------------------------------------


def start_server(
    entry: dict[str, Any], tmp: Path, name: str = "bench"
) -> tuple[subprocess.Popen[bytes], str, float]:
    cfg = {
        "server": {"log_level": "warning"},
        "cache": {"enabled": False},  # the engine path, not the vector cache (issue 11)
        "models": [{"name": name, **entry}],
    }
    return start_serve(cfg, tmp, name)


def soak(name: str, entry: dict[str, Any], seconds: int, every: float = 10.0) -> ConfigResult:
    """The mixed load for ``seconds`` against one embedhost config, RSS sampled ``every`` s."""
    res = ConfigResult(name)
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        proc, url, t0 = start_server(entry, tmp)
        try:
            res.time_to_ready_s = wait_ready(proc, url, t0)
            cmd, per_req = wrk_command(url, "mixed", None, tmp, seconds)
            # On a loaded machine a 64-text request can take longer than the loads' 10 s:
            # wait for it, so the server's work is counted instead of dropped as a timeout.
            cmd[cmd.index("--timeout") + 1] = "60s"
            start = time.monotonic()
            res.soak.append({"t_s": 0.0, **tree_rss_mb(proc.pid)})
            with subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True) as wrk:
                while wrk.poll() is None:
                    time.sleep(every)
                    sample = {"t_s": round(time.monotonic() - start, 1), **tree_rss_mb(proc.pid)}
                    res.soak.append(sample)
                    print(json.dumps(sample), flush=True)
                out = wrk.stdout.read() if wrk.stdout else ""
            res.loads = [parse_wrk(out, "mixed", LOADS["mixed"][0], per_req)]
            res.rss_mb = tree_rss_mb(proc.pid)
        finally:
            stop(proc)
    return res


def bench_server(
    name: str, entry: dict[str, Any], duration: int
) -> tuple[float, dict[str, float], list[LoadResult]]:
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        proc, url, t0 = start_server(entry, tmp)
        try:
            ttr = wait_ready(proc, url, t0)
            results = run_loads(proc.pid, url, None, tmp, duration)
            rss = tree_rss_mb(proc.pid)
        finally:
            stop(proc)
    return ttr, rss, results


def llama_server_binary(given: str | None) -> str | None:
    binary = given or os.environ.get("LLAMA_SERVER")
    if binary and Path(binary).is_file():
        return binary
    return shutil.which("llama-server") if not binary else None


def bench_llama_server(
    entry: dict[str, Any], binary: str, duration: int, threads: int | None
) -> tuple[float, dict[str, float], list[LoadResult]]:
    """llama.cpp's llama-server on the same GGUF, same loads (its defaults, embeddings on)."""
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        cmd = [binary, "-m", entry["path"], "--embeddings", "--host", "127.0.0.1"]
        cmd += ["--port", str(port), "-b", "512", "-ub", "512"]
        if threads:
            cmd += ["-t", str(threads)]
        if entry.get("parallel"):
            cmd += ["-np", str(entry["parallel"])]
        t0 = time.monotonic()
        proc = spawn(cmd, tmp / "llama-server.log")
        try:
            ttr = wait_ready(proc, url, t0, path="/health")
            results = run_loads(proc.pid, url, None, tmp, duration)
            rss = tree_rss_mb(proc.pid)
        finally:
            stop(proc)
    return ttr, rss, results


def bench_infinity(
    entry: dict[str, Any], binary: str, duration: int
) -> tuple[float, dict[str, float], list[LoadResult]]:
    """Infinity on the same model directory, same loads, its OpenAI route under /v1."""
    from embedhost.modelfiles import resolve_model_path

    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        cmd = [binary, "v2", "--model-id", str(resolve_model_path(entry["path"]))]
        cmd += ["--served-model-name", "bench", "--engine", "torch", "--device", "cpu"]
        cmd += ["--dtype", entry["dtype"], "--batch-size", "32"]
        cmd += ["--host", "127.0.0.1", "--port", str(port), "--url-prefix", "/v1"]
        t0 = time.monotonic()
        proc = spawn(cmd, tmp / "infinity.log", env={**os.environ, "PYTHONPATH": ""})
        try:
            ttr = wait_ready(proc, url, t0, path="/v1/models")
            results = run_loads(proc.pid, url, "bench", tmp, duration)
            rss = tree_rss_mb(proc.pid)
        finally:
            stop(proc)
    return ttr, rss, results


def table(results: list[ConfigResult]) -> str:
    rows = [
        "| config | load | offline texts/s | server texts/s | server/offline | p50 ms | p99 ms | non-2xx | RSS MB (API+workers) | ready s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        for lr in r.loads:
            off = r.offline_texts_per_s.get(lr.load)
            ratio = f"{lr.texts_per_s / off:.0%}" if off else "-"
            rows.append(
                f"| {r.name} | {lr.load} ({lr.connections}c x {lr.texts_per_request}) | "
                f"{off:.0f} | {lr.texts_per_s:.0f} | {ratio} | {lr.p50_ms:.1f} | {lr.p99_ms:.1f} | "
                f"{lr.non_2xx} | {r.rss_mb.get('total', 0):.0f} | {r.time_to_ready_s or 0:.1f} |"
                if off
                else f"| {r.name} | {lr.load} | - | {lr.texts_per_s:.0f} | - | {lr.p50_ms:.1f} | "
                f"{lr.p99_ms:.1f} | {lr.non_2xx} | {r.rss_mb.get('total', 0):.0f} | {r.time_to_ready_s or 0:.1f} |"
            )
    return "\n".join(rows)


def _load(r: ConfigResult, load: str) -> LoadResult | None:
    return next((lr for lr in r.loads if lr.load == load), None)


def issue_table(results: list[ConfigResult]) -> str:
    """The issue-10 table: one row per server, every load, with each row's ratio to the peers.

    Ratios: short texts against llama-server's best thread setting in this run, passages and
    mixed against Infinity in the same dtype (bfloat16 for embedhost's default).
    """
    by = {r.name: r for r in results}

    def tps(name: str, load: str) -> float | None:
        r = by.get(name)
        lr = _load(r, load) if r else None
        return lr.texts_per_s if lr else None

    ls_best = max(
        (
            v
            for v in (tps("llama-server-f16-t1", "short"), tps("llama-server-f16-t2", "short"))
            if v
        ),
        default=None,
    )

    def infinity_for(name: str) -> str:
        return "infinity-float32" if "float32" in name else "infinity-bfloat16"

    rows = [
        "| server | short texts/s (32c x 1) | p50 / p99 ms | passages/s (4c x 16) | p99 ms "
        "| mixed texts/s (16c x 1-64) | p99 ms | non-2xx | RSS MB after loads | ready s "
        "| short / llama-server best | passages / Infinity | mixed / Infinity |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        sh, pa, mx = _load(r, "short"), _load(r, "passages"), _load(r, "mixed")

        def cell(lr: LoadResult | None, lat: bool = False) -> str:
            if lr is None:
                return "-"
            if lat:
                return f"{lr.p99_ms:.0f}"
            return f"{lr.texts_per_s:.0f}"

        def ratio(ours: LoadResult | None, peer: float | None) -> str:
            return f"{ours.texts_per_s / peer:.2f}x" if ours and peer else "-"

        inf = infinity_for(r.name)
        non2xx = sum(lr.non_2xx for lr in r.loads)
        p50p99 = f"{sh.p50_ms:.0f} / {sh.p99_ms:.0f}" if sh else "-"
        rss = max((lr.rss_mb for lr in r.loads), default=r.rss_mb.get("total", 0.0))
        rows.append(
            f"| {r.name} | {cell(sh)} | {p50p99} | {cell(pa)} | {cell(pa, True)} | {cell(mx)} "
            f"| {cell(mx, True)} | {non2xx} | {rss:.0f} | {r.time_to_ready_s or 0:.1f} "
            f"| {ratio(sh, ls_best)} | {ratio(pa, tps(inf, 'passages'))} "
            f"| {ratio(mx, tps(inf, 'mixed'))} |"
        )
    offline = [r for r in results if r.offline_texts_per_s]
    for r in offline:
        o = r.offline_texts_per_s
        rows.append(
            f"| offline limit: {r.name}, sorted batches of 32 | {o.get('short', 0):.0f} | - "
            f"| {o.get('passages', 0):.0f} | - | - | - | - | - | - | - | - | - |"
        )
    return "\n".join(rows)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--configs", default=",".join(CONFIGS), help="comma-separated: " + ", ".join(CONFIGS)
    )
    ap.add_argument("--duration", type=int, default=20, help="seconds per measured load")
    ap.add_argument(
        "--suite", choices=sorted(SUITES), default=None, help="a named set of configs (issue10)"
    )
    ap.add_argument(
        "--soak",
        type=int,
        default=0,
        metavar="SECONDS",
        help="instead of the loads: the mixed load for SECONDS, RSS sampled every 10 s",
    )
    ap.add_argument("--skip-offline", action="store_true")
    ap.add_argument("--skip-server", action="store_true")
    ap.add_argument(
        "--llama-server",
        default=None,
        help="llama.cpp's llama-server binary for the llama-server-f16 peer (or $LLAMA_SERVER)",
    )
    ap.add_argument(
        "--infinity",
        default=os.environ.get("INFINITY"),
        help="Infinity's infinity_emb executable for the infinity-* peers (or $INFINITY)",
    )
    args = ap.parse_args()
    if not shutil.which("wrk") and not args.skip_server:
        sys.exit("wrk is not installed (apt-get install wrk, or scripts/system-deps)")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    results: list[ConfigResult] = []
    notes: list[str] = []
    names = SUITES[args.suite] if args.suite else args.configs.split(",")
    if args.soak:
        for name in names:
            res = soak(name, resolve_entry(CONFIGS[name]), args.soak)
            results.append(res)
            curve = ", ".join(f"{s['t_s']:.0f}s {s['total']:.0f}" for s in res.soak)
            print(f"{name} soak RSS MB (API + workers): {curve}", flush=True)
            for lr in res.loads:
                print(f"{name} soak mixed: {lr.texts_per_s:.0f} texts/s p99 {lr.p99_ms:.0f} ms")
        write_out(results)
        return
    for name in names:
        entry = resolve_entry(CONFIGS[name])
        res = ConfigResult(name)
        if entry.get("peer") == "infinity":
            if not args.infinity or not Path(args.infinity).is_file():
                notes.append(f"{name}: skipped, no infinity_emb (--infinity or $INFINITY)")
                print(notes[-1], flush=True)
                continue
            if not args.skip_server:
                res.time_to_ready_s, res.rss_mb, res.loads = bench_infinity(
                    entry, args.infinity, args.duration
                )
                for lr in res.loads:
                    print(f"{name} server {lr.load}: {lr.texts_per_s:.0f} texts/s", flush=True)
            results.append(res)
            continue
        if entry.get("peer") == "llama-server":
            binary = llama_server_binary(args.llama_server)
            if binary is None:
                notes.append(f"{name}: skipped, no llama-server (--llama-server or $LLAMA_SERVER)")
                print(notes[-1], flush=True)
                continue
            if not args.skip_server:
                res.time_to_ready_s, res.rss_mb, res.loads = bench_llama_server(
                    entry, binary, args.duration, entry.get("threads")
                )
                for lr in res.loads:
                    print(f"{name} server {lr.load}: {lr.texts_per_s:.0f} texts/s", flush=True)
            results.append(res)
            continue
        if not args.skip_offline:
            res.offline_texts_per_s = offline(entry)
            print(f"{name} offline: {res.offline_texts_per_s}", flush=True)
        if not args.skip_server:
            res.time_to_ready_s, res.rss_mb, res.loads = bench_server(name, entry, args.duration)
            for lr in res.loads:
                print(
                    f"{name} server {lr.load}: {lr.texts_per_s:.0f} texts/s p99 {lr.p99_ms:.1f} ms",
                    flush=True,
                )
        results.append(res)
    write_out(results)
    print(json.dumps(machine()))
    print(table(results))
    print()
    print(issue_table(results))
    for note in notes + peer_ratios(results):
        print(f"- {note}")


def write_out(results: list[ConfigResult]) -> None:
    write_json("throughput", {"machine": machine(), "results": [asdict(r) for r in results]})


def peer_ratios(results: list[ConfigResult]) -> list[str]:
    """The llama.cpp engine's server throughput as a share of llama-server's, per load."""
    by_name = {r.name: {lr.load: lr.texts_per_s for lr in r.loads} for r in results}
    out = []
    for a, b in (
        ("llama_cpp-f16", "llama-server-f16"),
        ("llama_cpp-f16-t1", "llama-server-f16-t1"),
        ("llama_cpp-f16-t2", "llama-server-f16-t2"),
    ):
        ours, peer = by_name.get(a), by_name.get(b)
        if ours and peer:
            out += [
                f"{a} / {b}, {load}: {ours[load] / peer[load]:.0%}"
                for load in ours
                if peer.get(load)
            ]
    return out


if __name__ == "__main__":
    main()
