"""A real `embedhost serve` process: SIGTERM under load, readiness while draining, JSON logs."""

from __future__ import annotations

import json
import signal
import threading
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.fakes import GATE
from tests.support.app import fake_model
from tests.support.servers import start_server, stop_server
from tests.support.wait import wait_until

pytestmark = pytest.mark.slow

SECRET_KEY = "sk-SECRET-KEY-do-not-log-0123456789"
SECRET_TEXT = "SECRET-INPUT-do-not-log"


def in_flight(url: str) -> float:
    text = httpx.get(f"{url}/metrics", timeout=10).text
    for family in text_string_to_metric_families(text):
        if family.name == "embedhost_requests_in_flight":
            return family.samples[0].value - 1  # minus this scrape
    raise AssertionError("no embedhost_requests_in_flight")


def post_in_thread(
    url: str, i: int, results: dict[int, Any], inputs: Any = None
) -> threading.Thread:
    def run() -> None:
        try:
            with httpx.Client(timeout=60) as c:
                r = c.post(
                    f"{url}/v1/embeddings",
                    json={"input": inputs or [f"{SECRET_TEXT} number {i}", "second input"]},
                    headers={"Authorization": f"Bearer {SECRET_KEY}", "X-Request-Id": f"load-{i}"},
                )
                results[i] = r
        except Exception as exc:  # recorded, asserted by the test
            results[i] = exc

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def json_lines(path: Path) -> list[dict[str, Any]]:
    lines = [ln for ln in path.read_text().splitlines() if ln.strip()]
    out = []
    for ln in lines:
        try:
            out.append(json.loads(ln))
        except json.JSONDecodeError:
            raise AssertionError(f"not a JSON log line: {ln!r}") from None
    return out


def test_sigterm_under_load_finishes_every_accepted_request(tmp_path: Path) -> None:
    n = 16
    gate = tmp_path / "gate"
    server = start_server(
        tmp_path,
        {
            "models": [
                fake_model(
                    "fake",
                    engine_options={"gate": str(gate)},
                    batching={"max_batch_size": 4, "max_wait_ms": 0},
                )
            ],
            "server": {"log_format": "json", "access_log": True, "graceful_shutdown_s": 60},
            "worker": {"restart_backoff_initial_s": 0.2},
        },
    )
    try:
        results: dict[int, Any] = {}
        # A batch that waits at the gate holds the engine, so that the others queue up
        # behind it and none can finish before the gate opens.
        threads = [post_in_thread(server.url, -1, results, [101, GATE, 102])]
        wait_until(lambda: in_flight(server.url) >= 1, "the gated batch", every=0.02)
        threads += [post_in_thread(server.url, i, results) for i in range(n)]
        pending = 0

        def all_arrived() -> bool:
            nonlocal pending
            pending = in_flight(server.url)
            return pending + len(results) >= n + 1

        wait_until(all_arrived, "the requests to all arrive", timeout=60, every=0.02)
        # Every request is accepted and none has been answered: SIGTERM now, and open
        # the gate once the server has begun its shutdown.
        assert pending == n + 1 and not results
        server.proc.send_signal(signal.SIGTERM)
        wait_until(
            lambda: "shutdown requested" in server.log(), "the shutdown log line", every=0.02
        )
        gate.touch()
        for t in threads:
            t.join(60)
        assert server.proc.wait(60) == 0
    finally:
        stop_server(server)
    statuses = {
        i: (r.status_code if isinstance(r, httpx.Response) else repr(r)) for i, r in results.items()
    }
    assert statuses == dict.fromkeys(range(-1, n), 200)
    for i, r in results.items():
        assert r.headers["x-request-id"] == f"load-{i}"
        assert len(r.json()["data"]) == (1 if i < 0 else 2)
    # Stopped listening.
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{server.url}/health", timeout=5)

    # Logs: every line is JSON, uvicorn's included; no key, no input text.
    text = server.log_path.read_text()
    assert SECRET_KEY not in text
    assert SECRET_TEXT not in text
    lines = json_lines(server.log_path)
    requests = [
        ln for ln in lines if ln.get("event") == "request" and ln.get("route") == "/v1/embeddings"
    ]
    assert {ln["request_id"] for ln in requests} == {f"load-{i}" for i in range(-1, n)}
    for ln in requests:
        assert ln["logger"] == "embedhost.access"
        assert ln["level"] == "info"
        assert ln["status"] == 200
        assert ln["model"] == "fake"
        assert ln["key_id"] == "anonymous"
        assert ln["tokens"] > 0
        assert ln["inputs"] == (1 if ln["request_id"] == "load--1" else 2)
        assert ln["duration_ms"] >= ln["queue_ms"] + ln["inference_ms"]
        assert "timestamp" in ln
    access = [ln for ln in lines if ln.get("logger") == "uvicorn.access"]
    assert any(a.get("path") == "/v1/embeddings" and a.get("status") == 200 for a in access)
    assert any(ln.get("process") == "worker" for ln in lines)  # the workers log JSON too
    assert any("shutdown requested" in str(ln.get("event")) for ln in lines)


def test_ready_turns_503_at_once_and_exit_is_clean(tmp_path: Path) -> None:
    server = start_server(
        tmp_path,
        {
            "models": [fake_model("fake")],
            "server": {"shutdown_delay_s": 5, "log_format": "json"},
        },
    )
    try:
        assert httpx.get(f"{server.url}/ready", timeout=10).status_code == 200
        server.proc.send_signal(signal.SIGTERM)
        r = httpx.get(f"{server.url}/ready", timeout=10)
        assert r.status_code == 503
        assert r.json()["status"] == "draining"
        # During shutdown_delay_s requests are still served (the balancer is catching up).
        r = httpx.post(f"{server.url}/v1/embeddings", json={"input": "late"}, timeout=30)
        assert r.status_code == 200
        assert server.proc.wait(60) == 0
    finally:
        stop_server(server)
