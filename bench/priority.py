"""The priority lane (issue 23, part 1): online latency under a saturating batch load.

One ``embedhost serve`` (MiniLM on transformers, the vector cache off), three phases in
one run, each ``--duration`` seconds after a short warm-up:

1. batch alone: ``--batch-conns`` wrk connections sending 16 passages per request with
   ``X-Embedhost-Priority: batch`` (saturating: the engine is never idle);
2. online alone: ``--online-conns`` connections sending one short query per request;
3. both at once.

Reports online p50/p99 alone and under the batch load (goal: p99 within 1.3x), batch
texts/s alone and beside online work, and total texts/s under both against batch alone
(goal: within 10%). The batch lane's floor share is ``batching.batch_floor_share``
(``--floor``).

Run:  .venv/bin/python bench/priority.py [--duration 20] [--floor 0.1]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _harness import (
    MINILM,
    LoadResult,
    bodies_file,
    machine,
    parse_wrk,
    start_serve,
    stop,
    wait_ready,
    write_json,
)

# _harness.WRK_LUA with the priority header (wrk.format drops -H headers when given its own).
PRIORITY_LUA = r"""
local bodies = {}
local i = 0
local headers = {["Content-Type"] = "application/json"}
init = function(args)
  for line in io.lines(args[1]) do bodies[#bodies + 1] = line end
  if args[2] then headers["X-Embedhost-Priority"] = args[2] end
  i = math.random(#bodies)
end
request = function()
  i = i % #bodies + 1
  return wrk.format("POST", "/v1/embeddings", headers, bodies[i])
end
"""


def wrk(
    url: str, tmp: Path, load: str, conns: int, duration: int, batch: bool
) -> tuple[subprocess.Popen[str], float]:
    """wrk on ``load``'s bodies (``short``: 1 query, ``passages``: 16 passages)."""
    script = tmp / "priority.lua"
    script.write_text(PRIORITY_LUA)
    bodies, per_req = bodies_file(load, None, tmp)
    cmd = [
        *("wrk", "-t1", f"-c{conns}", "--latency", "-s", str(script)),
        *(f"-d{duration}s", "--timeout", "30s", url, "--", str(bodies)),
        *(["batch"] if batch else []),
    ]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True), per_req


def finish(p: subprocess.Popen[str], name: str, conns: int, per_req: float) -> LoadResult:
    out, _ = p.communicate()
    return parse_wrk(out, name, conns, per_req)


def phase(
    url: str, tmp: Path, args: argparse.Namespace, online: bool, batch: bool
) -> dict[str, Any]:
    runs = {}
    if batch:
        runs["batch"] = (
            *wrk(url, tmp, "passages", args.batch_conns, args.duration, True),
            args.batch_conns,
        )
    if online:
        runs["online"] = (
            *wrk(url, tmp, "short", args.online_conns, args.duration, False),
            args.online_conns,
        )
    return {name: asdict(finish(p, name, c, per)) for name, (p, per, c) in runs.items()}


def _ratio(a: float, b: float) -> float:
    return a / b if b else float("nan")  # nothing answered in the phase: too short a run


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--duration", type=int, default=20)
    ap.add_argument("--online-conns", type=int, default=4)
    ap.add_argument("--batch-conns", type=int, default=8)
    ap.add_argument("--floor", type=float, default=0.1)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        cfg = {
            "server": {"log_level": "warning"},
            "logs": {"requests": False},
            "cache": {"enabled": False},
            "models": [
                {
                    "name": "minilm",
                    "path": MINILM,
                    "batching": {"batch_floor_share": args.floor},
                }
            ],
        }
        proc, url, t0 = start_serve(cfg, tmp, "priority")
        try:
            wait_ready(proc, url, t0)
            # Warm-up: both loads for a few seconds.
            phase(url, tmp, argparse.Namespace(**{**vars(args), "duration": 3}), True, True)
            batch_alone = phase(url, tmp, args, online=False, batch=True)["batch"]
            online_alone = phase(url, tmp, args, online=True, batch=False)["online"]
            both = phase(url, tmp, args, online=True, batch=True)
        finally:
            stop(proc)
    total_both = both["batch"]["texts_per_s"] + both["online"]["texts_per_s"]
    result = {
        "machine": machine(),
        "args": vars(args),
        "batch_alone": batch_alone,
        "online_alone": online_alone,
        "both": both,
        "online_p99_ratio": _ratio(both["online"]["p99_ms"], online_alone["p99_ms"]),
        "total_texts_per_s_ratio": _ratio(total_both, batch_alone["texts_per_s"]),
    }
    path = write_json("priority", result)
    print(
        f"online p99: alone {online_alone['p99_ms']:.1f} ms, under batch load "
        f"{both['online']['p99_ms']:.1f} ms (x{result['online_p99_ratio']:.2f}; goal <= 1.3)\n"
        f"batch texts/s: alone {batch_alone['texts_per_s']:.0f}, beside online "
        f"{both['batch']['texts_per_s']:.0f}; total under both {total_both:.0f} "
        f"(x{result['total_texts_per_s_ratio']:.2f} of batch alone; goal >= 0.9)\n"
        f"non-2xx: batch {both['batch']['non_2xx']}, online {both['online']['non_2xx']}\n"
        f"-> {path}"
    )


if __name__ == "__main__":
    main()
