"""A worker killed idle vs under load: how long until its replica is ready again (issue 15,
part 5).

One ``embedhost serve`` per source tree (``--trees before=SRC,after=SRC``, each put first
on the server's PYTHONPATH) with the f16 GGUF of MiniLM on llama.cpp, its checksum pinned
(so that a start verifies it), ``max_queue_items: 32``, ``max_concurrent_requests: 150``.
Rounds alternate: ``idle`` (SIGKILL the worker, nothing else running) and ``load`` (the
same while 200 wrk connections send requests back to back, as in bench/storm.py). The time
is the supervisor's own, from the restart's spawn to ready, read from the log line that
says the replica is ready again (with the phase timings where the tree logs them), plus
the wall time from the kill to that line.

Run:  .venv/bin/python bench/restart.py [--rounds 3] [--trees before=...,after=...]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _harness import (
    ROOT,
    STORM_LUA,
    bodies_file,
    machine,
    resolve_entry,
    start_serve,
    stop,
    wait_ready,
    write_json,
)

READY = re.compile(
    r"replica 0 ready \(pid (\d+), ([\d.]+)s(?:: (.*?))?\)(?:\s+\[[\w.]+\])?\s*$", re.M
)


def start(src: str, tmp: Path, tag: str) -> tuple[subprocess.Popen[bytes], str, Path]:
    entry = resolve_entry({"engine": "llama_cpp", "path": "gguf:f16"})
    digest = hashlib.sha256(Path(entry["path"]).read_bytes()).hexdigest()
    cfg = {
        "server": {"log_level": "info"},
        "logs": {"requests": False},
        "limits": {"max_concurrent_requests": 150},
        "cache": {"enabled": False},  # the engine path, not the vector cache (issue 11)
        "models": [
            {
                "name": "bench",
                **entry,
                "checksum": f"sha256:{digest}",
                "batching": {"max_queue_items": 32},
            }
        ],
    }
    env = {**os.environ, "PYTHONPATH": f"{src}:{ROOT}"}
    proc, url, t0 = start_serve(cfg, tmp, f"restart-{tag}", env=env)
    wait_ready(proc, url, t0, timeout=600)
    return proc, url, tmp / f"restart-{tag}.log"


def worker_pid(server: int) -> int:
    for c in psutil.Process(server).children():
        if "spawn_main" in " ".join(c.cmdline()):
            return c.pid
    raise RuntimeError("no worker process")


def restart_once(
    proc: subprocess.Popen[bytes], log_path: Path, timeout: float = 300
) -> dict[str, Any]:
    seen = len(READY.findall(log_path.read_text()))
    pid = worker_pid(proc.pid)
    t0 = time.monotonic()
    os.kill(pid, signal.SIGKILL)
    while time.monotonic() - t0 < timeout:
        found = READY.findall(log_path.read_text())
        if len(found) > seen:
            _, seconds, phases = found[-1]
            return {
                "wall_s": time.monotonic() - t0,
                "spawn_to_ready_s": float(seconds),
                "phases": phases,
            }
        time.sleep(0.05)
    raise RuntimeError("the worker did not come back")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--trees", default=f"after={ROOT / 'src'}", help="name=src,name=src")
    ap.add_argument("--connections", type=int, default=200)
    args = ap.parse_args()
    trees = [t.split("=", 1) for t in args.trees.split(",")]
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        script = tmp / "storm.lua"
        script.write_text(STORM_LUA)
        bodies, _ = bodies_file("short", None, tmp)
        for tag, src in trees:
            proc, url, log_path = start(src, tmp, tag)
            try:
                for i in range(args.rounds):
                    for mode in ("idle", "load") if i % 2 == 0 else ("load", "idle"):
                        wrk = None
                        if mode == "load":
                            c = args.connections
                            wrk = subprocess.Popen(
                                [
                                    *("wrk", f"-t{min(c, 200)}", f"-c{c}", "-d600s"),
                                    *("--timeout", "30s", "-s", str(script), url),
                                    *("--", str(bodies), "naive"),
                                ],
                                stdout=subprocess.DEVNULL,
                            )
                            time.sleep(5)  # the storm is under way
                        try:
                            row = restart_once(proc, log_path)
                        finally:
                            if wrk is not None:
                                wrk.terminate()
                                wrk.wait()
                        row.update(tree=tag, round=i, mode=mode)
                        rows.append(row)
                        print(json.dumps(row), flush=True)
                        time.sleep(3)
            finally:
                stop(proc)
    path = write_json("restart", {"machine": machine(), "rows": rows})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
