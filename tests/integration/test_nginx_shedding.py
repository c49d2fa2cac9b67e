"""Two replicas shedding load behind nginx (deploy/nginx/embedhost.conf, Debian's nginx):
clients get the replicas' own 503 or 429 with their Retry-After, never nginx's 502; and
with no replica reachable at all, nginx answers 503 with a Retry-After too (issue 24,
item 4). The replicas serve the fake engine, slowed, with a small
``limits.max_concurrent_requests`` and a small queue, so a burst overloads both.
"""

from __future__ import annotations

import re
import threading
from collections import Counter
from pathlib import Path

import httpx
import pytest
import yaml

from tests.support.app import fake_model
from tests.support.nginx import run_nginx
from tests.support.servers import (
    free_port,
    repo_env,
    serve_command,
    spawn,
    stop_process,
    wait_answering,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

BURST = 40


def _burst(url: str) -> list[httpx.Response]:
    out: list[httpx.Response] = []
    lock = threading.Lock()
    gate = threading.Barrier(BURST)

    def one(i: int) -> None:
        with httpx.Client(timeout=60) as c:
            gate.wait()
            r = c.post(f"{url}/v1/embeddings", json={"input": f"burst {i}", "model": "fake"})
            with lock:
                out.append(r)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(BURST)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    return out


def test_shedding_replicas_give_retry_after_not_502(tmp_path: Path) -> None:
    procs = []
    addrs = []
    for i in range(2):
        d = tmp_path / f"replica-{i}"
        d.mkdir()
        port = free_port()
        config = {
            "server": {"host": "127.0.0.1", "port": port},
            "limits": {"max_concurrent_requests": 3},
            "models": [
                fake_model(
                    engine_options={"delay_s": 0.3},
                    batching={"max_batch_size": 1, "max_queue_items": 2},
                )
            ],
        }
        (d / "config.yaml").write_text(yaml.safe_dump(config))
        procs.append(spawn(serve_command(d / "config.yaml"), d / "server.log", env=repo_env()))
        addrs.append(f"127.0.0.1:{port}")
    try:
        for p, a, i in zip(procs, addrs, range(2), strict=True):
            wait_answering(p, f"http://{a}/ready", log=tmp_path / f"replica-{i}" / "server.log")
        nginx_dir = tmp_path / "nginx"
        nginx_dir.mkdir()
        with run_nginx(nginx_dir, addrs) as url:
            rs = [r for _ in range(3) for r in _burst(url)]
            codes = Counter(r.status_code for r in rs)
            print(f"\nshedding through nginx: {dict(codes)}")
            assert set(codes) <= {200, 429, 503}, codes
            shed = [r for r in rs if r.status_code != 200]
            assert shed and codes[200], codes  # both shedding and serving happened
            for r in shed:
                assert int(r.headers["retry-after"]) >= 1, r.headers
                assert r.json()["error"]["code"], r.text
                # The replica's own answer, passed through: one upstream, not retried.
                assert "," not in r.headers["x-upstream-addr"], r.headers
            # Both replicas answered: a shedding replica stays in the pool.
            answered = {r.headers["x-upstream-addr"] for r in rs}
            assert answered == set(addrs), answered
            # No replica reachable: nginx's own 503 with a Retry-After, not a bare 502.
            for p in procs:
                assert stop_process(p) == 0
            r = httpx.post(f"{url}/v1/embeddings", json={"input": "x"}, timeout=30)
            assert r.status_code == 503 and int(r.headers["retry-after"]) >= 1, r.text
            assert r.json()["error"]["code"] == "no_upstream"
        # nginx's access log went to stdout (the container's log), one line per request.
        out = (nginx_dir / "nginx.out").read_text()
        access = re.findall(r'^\S+ \[[^]]+\] "POST /v1/embeddings HTTP/1.1" \d+ ', out, flags=re.M)
        assert len(access) == len(rs) + 1, out[-2000:]
    finally:
        for p in procs:
            stop_process(p)
