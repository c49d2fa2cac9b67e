"""One 10 MB request against /health (issue 20): how long a liveness probe sent one second
after a 10,000,012-byte single-string ``POST /v1/embeddings`` takes to answer.

A real ``embedhost serve`` (fake engine, MiniLM's tokenizer: the stall is the API
process's, not the engine's). Two runs: the default ``max_input_chars`` (the big input is
refused with 413 before any work) and a limit above the input (the request runs the
whole way: body, JSON parse, bounded tokenization). Run from the repository root:

    python bench/big_request_stall.py [--runs 3]

Prints one JSON line per run: the probe's latency and the big request's status and time.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.support.app import fake_model  # noqa: E402
from tests.support.servers import start_server, stop_server  # noqa: E402

BODY = json.dumps({"input": "a " * 4_999_997 + "a"}).encode()


def one(url: str) -> dict[str, Any]:
    big: dict[str, Any] = {}

    def post() -> None:
        t = time.monotonic()
        r = httpx.post(
            f"{url}/v1/embeddings",
            content=BODY,
            headers={"Content-Type": "application/json"},
            timeout=300,
        )
        big.update(status=r.status_code, seconds=round(time.monotonic() - t, 3))

    th = threading.Thread(target=post)
    th.start()
    time.sleep(1.0)
    t = time.monotonic()
    httpx.get(f"{url}/health", timeout=300).raise_for_status()
    health = time.monotonic() - t
    th.join()
    return {"health_s": round(health, 3), "big": big}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--runs", type=int, default=1)
    args = ap.parse_args()
    for label, extra in (
        ("default max_input_chars (413)", {}),
        ("max_input_chars above the input (runs)", {"max_input_chars": 20_000_000}),
    ):
        with tempfile.TemporaryDirectory() as tmp:
            models = [fake_model("fake", **extra)]
            try:
                server = start_server(Path(tmp), {"models": models})
            except Exception as exc:  # a tree without max_input_chars (before issue 20)
                print(json.dumps({"case": label, "skipped": str(exc)[:200]}))
                continue
            try:
                for _ in range(args.runs):
                    print(json.dumps({"case": label, **one(server.url)}), flush=True)
            finally:
                stop_server(server)


if __name__ == "__main__":
    main()
