"""Goodput under a retry storm (issue 15, part 3), on one server, in alternating rounds.

One ``embedhost serve`` with ``max_queue_items: 32`` and ``max_concurrent_requests: 150``
(MiniLM, transformers, short texts, one per request), then rounds of:

* ``unloaded``: 32 connections (the queue holds them all; nothing is refused): the
  server's capacity in answers/s;
* ``storm``: 200 connections that send again the moment an answer arrives, whatever it
  is (a naive client retrying a 429/503 at once);
* ``polite``: 200 connections that, after a 429/503, wait the ``Retry-After`` they were
  given before sending again.

The load generator is wrk (C, one thread per connection for the storms so that a
connection's Retry-After delays only that connection) with a Lua script that counts
answers by status. For each round: goodput (2xx/s), refusals/s, and the API process's
own CPU time (``psutil``, user+system, the worker processes excluded) divided by the
answers, giving the API's CPU cost per accepted request (unloaded rounds) and per refusal
(storm rounds, after taking out the accepted requests at the unloaded rounds' cost).
Goodput is reported as a ratio to the mean of the unloaded rounds of the same run.

Run:  .venv/bin/python bench/storm.py [--rounds 3] [--duration 10] [--model-json '{...}']
Writes bench/out/storm-<time>.json and prints a markdown table for RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _harness import (
    MINILM,
    STORM_LUA,
    bodies_file,
    machine,
    start_serve,
    stop,
    wait_ready,
    write_json,
)

ROUNDS = {
    # name: (connections, wrk threads, mode)
    "unloaded": (32, 2, "naive"),
    "storm": (200, 200, "naive"),
    "polite": (200, 200, "polite"),
}


def start(entry: dict[str, Any], tmp: Path, log_level: str) -> tuple[subprocess.Popen[bytes], str]:
    cfg = {
        "server": {"log_level": log_level},
        "limits": {"max_concurrent_requests": 150},
        "cache": {"enabled": False},  # the engine path, not the vector cache (issue 11)
        "models": [
            {"name": "bench", **entry, "batching": {"max_queue_items": 32}},
        ],
    }
    proc, url, t0 = start_serve(cfg, tmp, "storm")
    wait_ready(proc, url, t0)
    return proc, url


def api_cpu(pid: int) -> float:
    t = psutil.Process(pid).cpu_times()
    return t.user + t.system


def run_round(
    url: str, pid: int, name: str, bodies: Path, script: Path, duration: int
) -> dict[str, Any]:
    conns, threads, mode = ROUNDS[name]
    cmd = [
        "wrk",
        f"-t{threads}",
        f"-c{conns}",
        f"-d{duration}s",
        "--timeout",
        "30s",
        "-s",
        str(script),
        url,
        "--",
        str(bodies),
        mode,
    ]
    cpu0, t0 = api_cpu(pid), time.monotonic()
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    cpu1, t1 = api_cpu(pid), time.monotonic()
    m = re.search(r"^COUNTS (\{.*\})$", out, re.M)
    counts = {int(k): v for k, v in json.loads(m.group(1)).items()} if m else {}
    ok = sum(v for k, v in counts.items() if 200 <= k < 300)
    refused = sum(v for k, v in counts.items() if k in (429, 503))
    other = sum(counts.values()) - ok - refused
    errs = re.search(r"Socket errors: (.*)", out)
    seconds = t1 - t0
    return {
        "round": name,
        "connections": conns,
        "seconds": seconds,
        "ok": ok,
        "refused": refused,
        "other": other,
        "by_status": counts,
        "goodput": ok / seconds,
        "refusals_per_s": refused / seconds,
        "api_cpu_s": cpu1 - cpu0,
        "socket_errors": errs.group(1) if errs else "",
    }


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    unloaded = [r for r in rows if r["round"] == "unloaded"]
    capacity = sum(r["goodput"] for r in unloaded) / len(unloaded)
    cpu_ok = sum(r["api_cpu_s"] for r in unloaded) / max(sum(r["ok"] for r in unloaded), 1)
    out: dict[str, Any] = {"capacity": capacity, "api_cpu_ms_per_accepted": cpu_ok * 1000}
    for name in ("storm", "polite"):
        rs = [r for r in rows if r["round"] == name]
        if not rs:
            continue
        good = sum(r["goodput"] for r in rs) / len(rs)
        refused = sum(r["refused"] for r in rs)
        rest = sum(r["api_cpu_s"] for r in rs) - cpu_ok * sum(r["ok"] for r in rs)
        out[name] = {
            "goodput": good,
            "ratio": good / capacity if capacity else 0.0,
            "refusals_per_s": sum(r["refusals_per_s"] for r in rs) / len(rs),
            "api_cpu_ms_per_refusal": rest / refused * 1000 if refused else None,
            "api_cpu_share": sum(r["api_cpu_s"] for r in rs) / sum(r["seconds"] for r in rs),
        }
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--order", default="unloaded,storm,polite")
    ap.add_argument("--log-level", default="warning")
    ap.add_argument("--pause", type=float, default=3.0, help="seconds between rounds")
    ap.add_argument(
        "--model-json",
        default=json.dumps({"engine": "transformers", "path": MINILM, "dtype": "float32"}),
        help="the model entry (engine, path, ...) as JSON",
    )
    args = ap.parse_args()
    entry = json.loads(args.model_json)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        proc, url = start(entry, tmp, args.log_level)
        try:
            script = tmp / "storm.lua"
            script.write_text(STORM_LUA)
            bodies, _ = bodies_file("short", None, tmp)
            # warm-up
            subprocess.run(
                ["wrk", "-t2", "-c32", "-d3s", "-s", str(script), url, "--", str(bodies), "naive"],
                capture_output=True,
                check=True,
            )
            names = args.order.split(",")
            for i in range(args.rounds):
                for name in names if i % 2 == 0 else list(reversed(names)):
                    time.sleep(args.pause)  # the previous round's queue drains
                    row = run_round(url, proc.pid, name, bodies, script, args.duration)
                    row["index"] = i
                    rows.append(row)
                    print(
                        f"round {i} {name}: {row['goodput']:.0f} ok/s, "
                        f"{row['refusals_per_s']:.0f} refused/s, other {row['other']}, "
                        f"API CPU {row['api_cpu_s'] / row['seconds']:.0%} {row['socket_errors']}",
                        flush=True,
                    )
        finally:
            stop(proc)
    summary = summarize(rows)
    print(json.dumps(summary, indent=2))
    path = write_json(
        "storm", {"machine": machine(), "entry": entry, "rows": rows, "summary": summary}
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
