"""Side by side in alternating rounds: embedhost and its peers, the same loads, one run.

These machines are shared and noisy (one server's figure moved 1.6x between runs), so a
single pass per server proves little. Each round starts every server in turn (odd rounds
in reverse order, so no server always runs first or last), runs wrk's short and passage
loads (``_harness.LOADS``) on it and stops it. The summary gives, per server and load,
the median texts/s, p50/p99 and its spread (max/min over rounds), and embedhost's ratio
to each peer **per round** (ours over the peer's in the same round), as a median with its
range: the figure a claim rests on.

Columns beside throughput:
- CPU ms per request: CPU seconds of the server's whole process tree (model included)
  over the requests it answered in the measured window; for embedhost also the API
  process alone (the request path's own cost, issue 26's "<= 0.5 ms per one-text
  request");
- RSS of the tree after the loads; time to ready.

The header records the CPU's model and its SIMD flags (avx2, avx512f, avx512_bf16,
amx), and ``--avx2`` emulates an AVX2-only CPU on a bigger one (torch's
ATEN_CPU_CAPABILITY=avx2, oneDNN's ONEDNN_MAX_CPU_ISA=AVX2 and MKL's
MKL_ENABLE_INSTRUCTIONS=AVX2 for embedhost and Infinity; give an AVX2-only llama-server
build, ``-DGGML_NATIVE=OFF`` with AVX-512 off): its figures are marked emulated.

Run:  .venv/bin/python bench/rounds.py --servers eh,llama-t1,llama-t2,inf-f32 \
          --llama-server BIN --infinity BIN [--rounds 4] [--duration 15] [--avx2]
Servers: eh (the default config), eh-f32 (dtype float32), eh-t1/-t2 (the default at 1/2
engine threads), eh-onnx (the ONNX engine on export-onnx's file), eh-gguf-t1/-t2 (the GGUF
engine at 1/2 threads); any of them as NAME@VAR=VALUE,... runs with those environment
variables (an experiment beside the plain form, in the same rounds); llama-t1/-t2 (llama-server f16, -np 8), inf-bf16/inf-f32
(Infinity, torch engine), inf-onnx (Infinity --engine optimum, if it installs).
Writes bench/out/rounds-<time>.json and prints the summary as markdown.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import (
    LOADS,
    MINILM,
    free_port,
    machine,
    parse_wrk,
    resolve_entry,
    spawn,
    start_serve,
    stop,
    tree_rss_mb,
    wait_ready,
    write_json,
    wrk_command,
)

# torch's own kernels, oneDNN's, and MKL's (torch's float32 GEMMs go to MKL, which would
# otherwise still pick its AVX-512 code paths).
AVX2_ENV = {
    "ATEN_CPU_CAPABILITY": "avx2",
    "ONEDNN_MAX_CPU_ISA": "AVX2",
    "MKL_ENABLE_INSTRUCTIONS": "AVX2",
}
FLAGS = ("avx2", "fma", "f16c", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16")


@dataclass
class Row:
    round: int
    server: str
    load: str
    texts_per_s: float
    p50_ms: float
    p99_ms: float
    non_2xx: int
    errors: str
    cpu_ms_per_request: float
    """The whole process tree (model included)."""
    api_cpu_ms_per_request: float | None
    """embedhost's API process alone (None for peers: one process)."""
    rss_mb: float
    ready_s: float


def cpu_flags() -> list[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                have = set(line.split(":", 1)[1].split())
                return [f for f in FLAGS if f in have]
    except OSError:
        pass
    return []


def cpu_seconds(pid: int) -> tuple[float, float]:
    """(the process's own CPU seconds, its tree's), children that exit meanwhile aside."""
    proc = psutil.Process(pid)
    t = proc.cpu_times()
    own = t.user + t.system
    total = own
    for child in proc.children(recursive=True):
        try:
            c = child.cpu_times()
        except psutil.Error:
            continue
        total += c.user + c.system
    return own, total


def measure_load(
    pid: int, url: str, load: str, model: str | None, tmp: Path, duration: int
) -> tuple[Any, float, float]:
    """wrk's warm-up, then the measured run with the tree's CPU noted around it:
    (result, tree CPU ms per request, own CPU ms per request)."""
    cmd, per_req = wrk_command(url, load, model, tmp, duration)
    warm = [a if not a.startswith("-d") else "-d3s" for a in cmd]
    subprocess.run(warm, capture_output=True, check=True)
    own0, tree0 = cpu_seconds(pid)
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    own1, tree1 = cpu_seconds(pid)
    res = parse_wrk(out, load, LOADS[load][0], per_req)
    n = max(1.0, res.requests_per_s * duration)
    return res, 1e3 * (tree1 - tree0) / n, 1e3 * (own1 - own0) / n


def gguf_path() -> str:
    """The default model converted by llama.cpp's own converter, f16 (cached)."""
    return str(resolve_entry({"path": "gguf:f16"})["path"])


def start(
    name: str, args: argparse.Namespace, tmp: Path, env: dict[str, str]
) -> tuple[subprocess.Popen[bytes], str, float, str | None, str]:
    """(process, url, t0, model name for requests, readiness path)."""
    # NAME@VAR=VALUE,VAR=VALUE: the same server with those environment variables (an
    # experiment beside its plain form in the same rounds, e.g. eh@OMP_WAIT_POLICY=PASSIVE).
    base, _, extra = name.partition("@")
    env = {**env, **dict(kv.split("=", 1) for kv in extra.split(",") if kv)}
    if base.startswith("eh"):
        entry: dict[str, Any] = {"name": "bench", "path": MINILM}
        if base == "eh-f32":
            entry["dtype"] = "float32"
        elif base in ("eh-t1", "eh-t2"):
            entry["threads"] = int(base[-1])
        elif base == "eh-onnx":
            entry = {"name": "bench", **resolve_entry({"engine": "onnx", "path": "onnx:"})}
        elif base.startswith("eh-gguf"):
            entry = {
                "name": "bench",
                "engine": "llama_cpp",
                "path": gguf_path(),
                "threads": int(base[-1]),
            }
        cfg = {
            "server": {"log_level": "warning"},
            "cache": {"enabled": False},
            "models": [entry],
        }
        proc, url, t0 = start_serve(cfg, tmp, name, env=env)
        return proc, url, t0, None, "/ready"
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    if name.startswith("llama"):
        if not args.llama_server:
            sys.exit("--llama-server BIN is needed for " + name)
        cmd = [args.llama_server, "-m", gguf_path(), "--embeddings", "--host", "127.0.0.1"]
        cmd += ["--port", str(port), "-b", "512", "-ub", "512", "-np", "8"]
        cmd += ["-t", name[-1], "-tb", name[-1]]
        t0 = time.monotonic()
        return spawn(cmd, tmp / f"{name}.log", env=env), url, t0, None, "/health"
    if not args.infinity:
        sys.exit("--infinity BIN is needed for " + name)
    from embedhost.modelfiles import resolve_model_path

    engine = "optimum" if name == "inf-onnx" else "torch"
    dtype = {"inf-bf16": "bfloat16", "inf-f32": "float32"}.get(name, "float32")
    cmd = [args.infinity, "v2", "--model-id", str(resolve_model_path(MINILM))]
    cmd += ["--served-model-name", "bench", "--engine", engine, "--device", "cpu"]
    cmd += ["--dtype", dtype, "--batch-size", "32"]
    cmd += ["--host", "127.0.0.1", "--port", str(port), "--url-prefix", "/v1"]
    t0 = time.monotonic()
    proc = spawn(cmd, tmp / f"{name}.log", env={**env, "PYTHONPATH": ""})
    return proc, url, t0, "bench", "/v1/models"


def run_server(
    name: str, rnd: int, loads: list[str], args: argparse.Namespace, tmp: Path
) -> list[Row]:
    env = {**os.environ, **(AVX2_ENV if args.avx2 else {})}
    proc, url, t0, model, ready_path = start(name, args, tmp, env)
    rows = []
    try:
        ready_s = wait_ready(proc, url, t0, path=ready_path)
        for load in loads:
            res, tree_ms, own_ms = measure_load(proc.pid, url, load, model, tmp, args.duration)
            rows.append(
                Row(
                    round=rnd,
                    server=name,
                    load=load,
                    texts_per_s=round(res.texts_per_s, 1),
                    p50_ms=res.p50_ms,
                    p99_ms=res.p99_ms,
                    non_2xx=res.non_2xx,
                    errors=res.errors,
                    cpu_ms_per_request=round(tree_ms, 2),
                    api_cpu_ms_per_request=round(own_ms, 3) if name.startswith("eh") else None,
                    rss_mb=round(tree_rss_mb(proc.pid)["total"]),
                    ready_s=round(ready_s, 2),
                )
            )
    finally:
        stop(proc)
    return rows


def summary(rows: list[Row], servers: list[str], loads: list[str]) -> str:
    def sel(server: str, load: str) -> list[Row]:
        return [r for r in rows if r.server == server and r.load == load]

    out = [
        "| server | load | texts/s median (rounds) | spread | p50 ms | p99 ms | CPU ms/req (API) | RSS MB | ready s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for s in servers:
        for load in loads:
            rs = sel(s, load)
            if not rs:
                continue
            tps = [r.texts_per_s for r in rs]
            api = [r.api_cpu_ms_per_request for r in rs if r.api_cpu_ms_per_request is not None]
            api_cell = f" ({statistics.median(api):.2f})" if api else ""
            out.append(
                f"| {s} | {load} | {statistics.median(tps):.0f} ({', '.join(f'{t:.0f}' for t in tps)}) "
                f"| {max(tps) / max(min(tps), 1e-9):.2f}x "
                f"| {statistics.median(r.p50_ms for r in rs):.0f} "
                f"| {statistics.median(r.p99_ms for r in rs):.0f} ({', '.join(f'{r.p99_ms:.0f}' for r in rs)}) "
                f"| {statistics.median(r.cpu_ms_per_request for r in rs):.2f}{api_cell} "
                f"| {statistics.median(r.rss_mb for r in rs):.0f} "
                f"| {statistics.median(r.ready_s for r in rs):.1f} |"
            )
    ours = [s for s in servers if s.startswith("eh")]
    peers = [s for s in servers if not s.startswith("eh")]
    lines = ["", "| ours / peer, per round | load | median | range |", "|---|---|---|---|"]
    for o in ours:
        for p in peers:
            for load in loads:
                ratios = []
                for rnd in sorted({r.round for r in rows}):
                    a = [r for r in sel(o, load) if r.round == rnd]
                    b = [r for r in sel(p, load) if r.round == rnd]
                    if a and b and b[0].texts_per_s:
                        ratios.append(a[0].texts_per_s / b[0].texts_per_s)
                if ratios:
                    lines.append(
                        f"| {o} / {p} | {load} | {statistics.median(ratios):.2f}x "
                        f"| {min(ratios):.2f}-{max(ratios):.2f} |"
                    )
    return "\n".join(out + lines)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--servers", default="eh,llama-t1,llama-t2,inf-bf16,inf-f32")
    ap.add_argument("--loads", default="short,passages")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--duration", type=int, default=15, help="seconds per measured load")
    ap.add_argument("--llama-server", default=os.environ.get("LLAMA_SERVER"))
    ap.add_argument("--infinity", default=os.environ.get("INFINITY"))
    ap.add_argument("--avx2", action="store_true", help="emulate an AVX2-only CPU (see above)")
    args = ap.parse_args()
    servers, loads = args.servers.split(","), args.loads.split(",")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    header = {
        **machine(),
        "flags": cpu_flags(),
        "emulated_avx2": args.avx2,
        "llama_server": args.llama_server,
    }
    print(json.dumps(header), flush=True)
    rows: list[Row] = []
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        for rnd in range(args.rounds):
            for name in servers if rnd % 2 == 0 else list(reversed(servers)):
                for row in run_server(name, rnd, loads, args, tmp):
                    rows.append(row)
                    print(json.dumps(asdict(row)), flush=True)
    table = summary(rows, servers, loads)
    print(table)
    path = write_json(
        "rounds", {"machine": header, "rows": [asdict(r) for r in rows], "table": table}
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
