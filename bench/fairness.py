"""Fairness between models in one server (issue 15, part 4).

One ``embedhost serve`` with three models (transformers MiniLM, the same model exported to
ONNX, and its f16 GGUF on llama.cpp), the same number of senders for each (wrk, one
process per model, short texts), for ``--duration`` seconds. Reports each model's share
of the answers against its share of the senders (1/3 each).

Rounds alternate between source trees (``--trees before=/path/to/src,after=/path/to/src``,
each put first on the server's PYTHONPATH), so that the code before and after a change is
measured in the same run.

Run:  .venv/bin/python bench/fairness.py [--rounds 2] [--duration 20] [--senders 4]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _harness import (
    MINILM,
    ROOT,
    WRK_LUA,
    bodies_file,
    machine,
    resolve_entry,
    start_serve,
    stop,
    wait_ready,
    write_json,
)

MODELS = {
    "mini-torch": {"engine": "transformers", "path": MINILM, "dtype": "float32"},
    "mini-onnx": {"engine": "onnx", "path": "onnx:minilm"},
    "mini-gguf": {"engine": "llama_cpp", "path": "gguf:f16"},
}


def start(src: str, tmp: Path, tag: str) -> tuple[subprocess.Popen[bytes], str]:
    cfg = {
        "server": {"log_level": "info"},
        "logs": {"requests": False},
        "cache": {"enabled": False},  # the engine path, not the vector cache (issue 11)
        "models": [{"name": n, **resolve_entry(e)} for n, e in MODELS.items()],
    }
    env = {**os.environ, "PYTHONPATH": f"{src}:{ROOT}"}
    proc, url, t0 = start_serve(cfg, tmp, f"fair-{tag}", env=env)
    wait_ready(proc, url, t0, timeout=600)
    return proc, url


def load(url: str, tmp: Path, senders: int, duration: int) -> dict[str, int]:
    script = tmp / "fair.lua"
    script.write_text(WRK_LUA)
    procs = {}
    for name in MODELS:
        bodies, _ = bodies_file("short", name, tmp)
        target = tmp / f"bodies-{name}.jsonl"
        bodies.replace(target)
        procs[name] = subprocess.Popen(
            [
                *("wrk", "-t1", f"-c{senders}", f"-d{duration}s", "--timeout", "30s"),
                *("-s", str(script), url, "--", str(target)),
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
    answers = {}
    for name, p in procs.items():
        out, _ = p.communicate()
        total = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
        non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
        answers[name] = total - (int(non2xx.group(1)) if non2xx else 0)
    return answers


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--duration", type=int, default=20)
    ap.add_argument("--senders", type=int, default=4, help="wrk connections per model")
    ap.add_argument("--trees", default=f"after={ROOT / 'src'}", help="name=src,name=src")
    args = ap.parse_args()
    trees = [t.split("=", 1) for t in args.trees.split(",")]
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        for i in range(args.rounds):
            for tag, src in trees if i % 2 == 0 else list(reversed(trees)):
                proc, url = start(src, tmp, tag)
                try:
                    load(url, tmp, args.senders, 3)  # warm-up
                    answers = load(url, tmp, args.senders, args.duration)
                finally:
                    stop(proc)
                budget = re.findall(r"CPU budget[^\n]*", (tmp / f"fair-{tag}.log").read_text())
                total = sum(answers.values()) or 1
                row = {
                    "round": i,
                    "tree": tag,
                    "answers": answers,
                    "share": {k: v / total for k, v in answers.items()},
                    "budget": budget[:1],
                }
                rows.append(row)
                print(json.dumps(row), flush=True)
    path = write_json("fairness", {"machine": machine(), "rows": rows})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
