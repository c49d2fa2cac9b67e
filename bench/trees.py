"""Before and after: the same loads against ``embedhost serve`` from two (or more) source
trees, in alternating rounds, so that a change is compared with its base in one run on
one machine (these machines are noisy: compare ratios within a run, never across runs).

Each round starts one server per tree in turn (its ``src`` first on PYTHONPATH, the vector
cache off: the engine path), runs wrk's short and passage loads (``_harness.LOADS``),
notes the process tree's RSS and stops it; odd rounds take the trees in reverse order.

Run:  git worktree add /tmp/base <commit>
      .venv/bin/python bench/trees.py --trees before=/tmp/base/src,after=src [--rounds 4]
Writes bench/out/trees-<time>.json and prints one line per (round, tree, load) and the
medians per tree.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import (
    MINILM,
    ROOT,
    machine,
    run_wrk,
    start_serve,
    stop,
    tree_rss_mb,
    wait_ready,
    write_json,
)


def measure(
    tag: str, src: Path, loads: list[str], tmp: Path, duration: int
) -> list[dict[str, Any]]:
    cfg = {
        "server": {"log_level": "warning"},
        "cache": {"enabled": False},
        "models": [{"name": "bench", "path": MINILM}],
    }
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{src}"}
    proc, url, t0 = start_serve(cfg, tmp, tag, env=env)
    rows = []
    try:
        ready_s = wait_ready(proc, url, t0)
        for load in loads:
            res = run_wrk(url, load, None, tmp, duration)
            rows.append(
                {
                    "tree": tag,
                    "load": load,
                    "texts_per_s": round(res.texts_per_s, 1),
                    "p50_ms": res.p50_ms,
                    "p99_ms": res.p99_ms,
                    "non_2xx": res.non_2xx,
                    "rss_mb": round(tree_rss_mb(proc.pid)["total"]),
                    "ready_s": round(ready_s, 2),
                }
            )
    finally:
        stop(proc)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--trees", required=True, help="name=SRC,name=SRC (SRC: a tree's src/)")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--duration", type=int, default=15, help="seconds per measured load")
    ap.add_argument("--loads", default="short,passages")
    args = ap.parse_args()
    trees = [
        (t.split("=", 1)[0], Path(t.split("=", 1)[1]).resolve()) for t in args.trees.split(",")
    ]
    loads = args.loads.split(",")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        for i in range(args.rounds):
            for tag, src in trees if i % 2 == 0 else list(reversed(trees)):
                for row in measure(tag, src, loads, tmp, args.duration):
                    row["round"] = i
                    rows.append(row)
                    print(json.dumps(row), flush=True)
    summary = {
        f"{tag} {load}": {
            "texts_per_s": [
                r["texts_per_s"] for r in rows if r["tree"] == tag and r["load"] == load
            ],
            "median": statistics.median(
                r["texts_per_s"] for r in rows if r["tree"] == tag and r["load"] == load
            ),
        }
        for tag, _ in trees
        for load in loads
    }
    for key, v in summary.items():
        print(f"{key}: median {v['median']:.1f} texts/s of {v['texts_per_s']}")
    path = write_json(
        "trees",
        {
            "machine": machine(),
            "trees": [[t, str(s)] for t, s in trees],
            "rows": rows,
            "summary": summary,
        },
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
