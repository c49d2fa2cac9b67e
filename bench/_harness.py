"""What the bench scripts share: the corpus, ``embedhost serve`` (and peers) as a child
process, the wrk loads and their parsing, process-tree RSS, the machine's description and
the results file.

The server process itself (a free port, spawn, wait until it answers, SIGTERM then
SIGKILL) is tests/support/servers.py, the one copy the tests use too: it imports nothing
from pytest, and a bench script run from the repository root reaches it once the root is
on ``sys.path`` (done here). The corpus is the one the package ships for ``embedhost
loadtest`` (src/embedhost/cli/texts/), read from this checkout.
"""

from __future__ import annotations

import json
import os
import platform
import random
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import yaml

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.support import MINILM  # noqa: E402
from tests.support.servers import (  # noqa: E402
    free_port,
    serve_command,
    spawn,
    stop_process,
    wait_answering,
)

stop = stop_process
"""SIGTERM, then SIGKILL if it hangs."""

TEXTS = ROOT / "src" / "embedhost" / "cli" / "texts"
"""queries.txt (short texts, about 12 tokens) and passages.txt (about 100 tokens): Python
standard-library docstrings, written by bench/make_corpus.py."""


LOADS = {
    # name: (connections, texts per request (0: 1-64 at random), corpus file (None: all))
    "short": (32, 1, "queries.txt"),
    "passages": (4, 16, "passages.txt"),
    "mixed": (16, 0, None),
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
    texts_per_request: float
    requests_per_s: float
    texts_per_s: float
    p50_ms: float
    p99_ms: float
    non_2xx: int
    errors: str
    rss_mb: float = 0.0
    """API + workers (or the peer's process tree) right after this load."""


def corpus(name: str | None) -> list[str]:
    if name is None:
        return corpus("queries.txt") + corpus("passages.txt")
    return [ln for ln in (TEXTS / name).read_text().splitlines() if ln.strip()]


# --- the server ------------------------------------------------------------------------------


def start_serve(
    config: dict[str, Any],
    tmp: Path,
    name: str,
    *,
    env: dict[str, str] | None = None,
    extra: tuple[str, ...] = (),
    append: bool = False,
) -> tuple[subprocess.Popen[bytes], str, float]:
    """``embedhost serve`` on ``config`` with a free port (config at tmp/NAME.yaml, its log
    at tmp/NAME.log): the process, its URL and the monotonic time it was started at."""
    port = free_port()
    config = {**config, "server": {**config.get("server", {}), "port": port}}
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    t0 = time.monotonic()
    proc = spawn(serve_command(path, *extra), tmp / f"{name}.log", env=env, append=append)
    return proc, f"http://127.0.0.1:{port}", t0


def wait_ready(
    proc: subprocess.Popen[bytes], url: str, t0: float, path: str = "/ready", timeout: float = 300
) -> float:
    """Seconds from ``t0`` until ``url + path`` answers 200 (time to ready)."""
    left = timeout - (time.monotonic() - t0)
    wait_answering(proc, url + path, timeout=left, every=0.05)
    return time.monotonic() - t0


def tree_rss_mb(pid: int) -> dict[str, float]:
    """RSS of a process and its children (a child that exits meanwhile counts as 0)."""
    proc = psutil.Process(pid)
    api = proc.memory_info().rss
    workers = 0
    for child in proc.children(recursive=True):
        try:
            workers += child.memory_info().rss
        except psutil.Error:
            continue
    return {"api": api / 2**20, "workers": workers / 2**20, "total": (api + workers) / 2**20}


def resolve_entry(entry: dict[str, Any]) -> dict[str, Any]:
    """Build (or reuse) the model files named by the gguf:/onnx: placeholders."""
    path = str(entry.get("path", ""))
    if path.startswith("gguf:"):
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


# --- wrk -------------------------------------------------------------------------------------


def bodies_file(load: str, model: str | None, tmp: Path) -> tuple[Path, float]:
    """The request bodies of one load, and the mean texts per request."""
    _, per_req, file = LOADS[load]
    texts = corpus(file)
    rng = random.Random(0)
    lines = []
    n_texts = 0
    for _ in range(2000 if per_req == 1 else 400):
        k = per_req or rng.randint(1, 64)
        chosen = rng.sample(texts, k)
        n_texts += k
        body: dict[str, Any] = {"input": chosen[0] if per_req == 1 else chosen}
        if model:
            body["model"] = model
        lines.append(json.dumps(body))
    path = tmp / f"bodies-{load}.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path, n_texts / len(lines)


def parse_ms(text: str) -> float:
    m = re.match(r"([\d.]+)(us|ms|s)", text)
    if not m:
        return float("nan")
    v, unit = float(m.group(1)), m.group(2)
    return v / 1000 if unit == "us" else v * 1000 if unit == "s" else v


def wrk_command(
    url: str, load: str, model: str | None, tmp: Path, duration: int
) -> tuple[list[str], float]:
    conns, _, _ = LOADS[load]
    script = tmp / "bench.lua"
    script.write_text(WRK_LUA)
    bodies, per_req = bodies_file(load, model, tmp)
    threads = 2 if conns >= 8 else 1
    base = ["wrk", f"-t{threads}", f"-c{conns}", "--latency", "-s", str(script)]
    return [*base, f"-d{duration}s", "--timeout", "10s", url, "--", str(bodies)], per_req


def parse_wrk(out: str, load: str, conns: int, per_req: float) -> LoadResult:
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    lat = dict(re.findall(r"^\s+(50|99)%\s+(\S+)", out, re.M))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errs = re.search(r"Socket errors: (.*)", out)
    return LoadResult(
        load=load,
        connections=conns,
        texts_per_request=round(per_req, 1),
        requests_per_s=rps,
        texts_per_s=rps * per_req,
        p50_ms=parse_ms(lat.get("50", "")),
        p99_ms=parse_ms(lat.get("99", "")),
        non_2xx=int(non2xx.group(1)) if non2xx else 0,
        errors=errs.group(1) if errs else "",
    )


def run_wrk(url: str, load: str, model: str | None, tmp: Path, duration: int) -> LoadResult:
    conns = LOADS[load][0]
    cmd, per_req = wrk_command(url, load, model, tmp, duration)
    # warm-up, then the measured run
    warm = [a if not a.startswith("-d") else "-d3s" for a in cmd]
    subprocess.run(warm, capture_output=True, check=True)
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return parse_wrk(out, load, conns, per_req)


def run_loads(pid: int, url: str, model: str | None, tmp: Path, duration: int) -> list[LoadResult]:
    """Every load in turn, the process tree's RSS noted after each."""
    out = []
    for load in LOADS:
        res = run_wrk(url, load, model, tmp, duration)
        res.rss_mb = tree_rss_mb(pid)["total"]
        out.append(res)
    return out


# --- the record ------------------------------------------------------------------------------


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


def write_json(stem: str, data: Any) -> Path:
    """bench/out/STEM-<time>.json."""
    out = ROOT / "bench" / "out"
    out.mkdir(exist_ok=True)
    path = out / f"{stem}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(data, indent=2))
    return path


# The retry storm (storm.py) and the restart under it (restart.py): wrk with many
# connections that retry a refusal at once, or honour Retry-After ("polite").
STORM_LUA = r"""
local bodies = {}
local i = 0
local wait_ms = 0
polite = false
counts = {}
setup = function(thread)
  table.insert(threads_list, thread)
end
init = function(args)
  for line in io.lines(args[1]) do bodies[#bodies + 1] = line end
  i = math.random(#bodies)
  polite = args[2] == "polite"
  counts = {}
end
request = function()
  i = i % #bodies + 1
  return wrk.format("POST", "/v1/embeddings", {["Content-Type"] = "application/json"}, bodies[i])
end
delay = function()
  local d = wait_ms
  wait_ms = 0
  return d
end
response = function(status, headers, body)
  local k = tostring(status)
  counts[k] = (counts[k] or 0) + 1
  if polite and (status == 429 or status == 503) then
    local ra = tonumber(headers["Retry-After"] or headers["retry-after"] or "1") or 1
    wait_ms = ra * 1000
  end
end
done = function(summary, latency, requests)
  local total = {}
  for _, t in ipairs(threads_list) do
    local c = t:get("counts")
    for k, v in pairs(c) do total[k] = (total[k] or 0) + v end
  end
  local parts = {}
  for k, v in pairs(total) do parts[#parts + 1] = string.format('"%s": %d', k, v) end
  io.write("COUNTS {" .. table.concat(parts, ", ") .. "}\n")
end
threads_list = {}
"""
