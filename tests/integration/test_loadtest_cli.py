"""``embedhost loadtest`` against a live embedhost (fake engine: the client is under test).

--requests N gives N results; --json's shape; errors counted by status (404 for an unknown
model, 401 for a bad key, 429 past a key's budget); --compare runs the same load against a
second server; --rate sends on an open-loop schedule.
"""

from __future__ import annotations

import http.server
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from embedhost.cli import cli
from embedhost.security.keys import new_key_entry
from tests.support.app import fake_model
from tests.support.servers import LiveServer, start_server, stop_server

KEY, KEY_E = new_key_entry("load", ["embed"])
LIMITED, LIMITED_E = new_key_entry("limited", ["embed"])

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    live = start_server(
        tmp_path_factory.mktemp("loadtest"),
        {
            "models": [fake_model("fake", max_input_tokens=64)],
            "auth": {
                "keys": [
                    KEY_E.model_dump(),
                    {**LIMITED_E.model_dump(), "rate_limits": {"requests_per_minute": 10}},
                ]
            },
        },
    )
    yield live
    stop_server(live)


def loadtest(*args: str, code: int = 0) -> dict[str, Any]:
    result = CliRunner().invoke(cli, ["loadtest", *args, "--json"])
    assert result.exit_code == code, result.output
    report: dict[str, Any] = json.loads(result.stdout)
    return report


def test_requests_gives_that_many_results(server: LiveServer) -> None:
    report = loadtest(
        "--url",
        server.url,
        "--api-key",
        KEY,
        "--requests",
        "57",
        "--concurrency",
        "4",
        "--texts-per-request",
        "3",
    )
    assert report["load"] == {
        "concurrency": 4,
        "requests": 57,
        "duration_s": None,
        "texts_per_request": 3,
        "rate": None,
        "timeout_s": 60.0,
        "corpus": "queries",
        "input_type": None,
    }
    (run,) = report["runs"]
    assert run["label"] == "server"
    assert run["url"] == f"{server.url}/v1/embeddings"
    r = run["results"]
    assert set(r) == {
        "requests",
        "ok",
        "errors",
        "texts",
        "elapsed_s",
        "requests_per_s",
        "ok_per_s",
        "texts_per_s",
        "latency_ms",
        "behind_schedule",
    }
    assert (r["requests"], r["ok"], r["errors"], r["texts"]) == (57, 57, {}, 171)
    lat = r["latency_ms"]
    assert set(lat) == {"p50", "p95", "p99", "mean", "min", "max"}
    assert 0 < lat["min"] <= lat["p50"] <= lat["p95"] <= lat["p99"] <= lat["max"]
    assert r["requests_per_s"] == pytest.approx(57 / r["elapsed_s"], rel=0.01)


def test_errors_are_counted_by_status(server: LiveServer) -> None:
    # Every request refused: exit status 1, each counted under its status.
    r = loadtest(
        "--url", server.url, "--api-key", KEY, "--model", "nope", "--requests", "6", code=1
    )["runs"][0]["results"]
    assert (r["requests"], r["ok"], r["errors"]) == (6, 0, {"404": 6})
    assert r["latency_ms"]["p50"] is None
    r = loadtest("--url", server.url, "--api-key", "wrong", "--requests", "3", code=1)
    assert r["runs"][0]["results"]["errors"] == {"401": 3}
    # A key with 10 requests a minute: 10 answered, the rest 429.
    r = loadtest(
        "--url", server.url, "--api-key", LIMITED, "--requests", "14", "--concurrency", "2"
    )["runs"][0]["results"]
    assert (r["requests"], r["ok"], r["errors"]) == (14, 10, {"429": 4})


def test_connection_errors(tmp_path: Path) -> None:
    from tests.support.servers import free_port

    r = loadtest("--url", f"http://127.0.0.1:{free_port()}", "--requests", "3", code=1)
    assert r["runs"][0]["results"]["errors"] == {"connect_error": 3}


def test_compare_runs_the_same_load_against_both(server: LiveServer) -> None:
    report = loadtest(
        "--url",
        server.url,
        "--api-key",
        KEY,
        "--requests",
        "20",
        "--concurrency",
        "2",
        "--compare",
        server.url + "/v1",
        "--compare-model",
        "nope",
    )
    a, b = report["runs"]
    assert (a["label"], b["label"]) == (server.url, server.url + "/v1")
    assert a["url"] == b["url"] == f"{server.url}/v1/embeddings"
    assert (a["model"], b["model"]) == (None, "nope")
    assert (a["results"]["ok"], a["results"]["errors"]) == (20, {})
    assert (b["results"]["ok"], b["results"]["errors"]) == (0, {"404": 20})


def test_compare_prints_side_by_side(server: LiveServer) -> None:
    result = CliRunner().invoke(
        cli,
        [
            "loadtest",
            "--url",
            server.url,
            "--api-key",
            KEY,
            "--requests",
            "5",
            "--compare",
            server.url,
        ],
    )
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert f"{server.url} (A)" in out and f"{server.url} (B)" in out
    for row in ("requests/s", "texts/s", "p50", "p95", "p99", "errors"):
        assert row in out


class Stub:
    """A stand-in server on a thread: records the texts each request carries, and with
    ``hold`` answers none until ``hold`` requests are waiting at once (or 10 s passed)."""

    def __init__(self, hold: int = 0) -> None:
        self.hold = hold
        self.texts: list[str] = []
        self.waiting = 0
        self.most_waiting = 0
        self.cond = threading.Condition()
        stub = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["content-length"])))
                with stub.cond:
                    stub.texts.extend(body["input"])
                    stub.waiting += 1
                    stub.most_waiting = max(stub.most_waiting, stub.waiting)
                    stub.cond.notify_all()
                    if not stub.cond.wait_for(lambda: stub.most_waiting >= stub.hold, 10):
                        stub.hold = 0  # never reached: answer everything from now on
                    stub.waiting -= 1
                data = [
                    {"object": "embedding", "index": i, "embedding": [0.0]}
                    for i in range(len(body["input"]))
                ]
                out = json.dumps({"object": "list", "data": data, "model": "stub"}).encode()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def test_rate_is_an_open_loop_schedule() -> None:
    """Open loop: requests leave on schedule whether or not earlier ones were answered. The
    stub answers none until all 20 are waiting at once, which a closed-loop sender (the
    next request after an answer) never reaches."""
    stub = Stub(hold=20)
    try:
        report = loadtest("--url", stub.url, "--requests", "20", "--rate", "40")
    finally:
        stub.close()
    assert report["load"]["rate"] == 40 and report["load"]["concurrency"] == 256
    r = report["runs"][0]["results"]
    assert (r["requests"], r["ok"]) == (20, 20)
    assert stub.most_waiting == 20


def test_duration_and_corpus_file(tmp_path: Path) -> None:
    corpus = tmp_path / "texts.txt"
    corpus.write_text("first text\n\nsecond text\nthird text\n")
    stub = Stub()
    try:
        r = loadtest(
            "--url",
            stub.url,
            "--duration",
            "0.5",
            "--concurrency",
            "2",
            "--corpus",
            str(corpus),
            "--texts-per-request",
            "2",
        )["runs"][0]["results"]
    finally:
        stub.close()
    assert r["requests"] > 0 and r["ok"] == r["requests"]
    assert r["texts"] == 2 * r["ok"]
    assert r["elapsed_s"] >= 0.5
    # What was sent is the file's texts (the blank line skipped), all of them in turn.
    assert stub.texts and set(stub.texts) <= {"first text", "second text", "third text"}
    if r["requests"] >= 2:
        assert set(stub.texts) == {"first text", "second text", "third text"}
    assert len(stub.texts) == r["texts"]


def test_bad_arguments() -> None:
    runner = CliRunner(env={"COLUMNS": "300"})  # the error box unwrapped
    r = runner.invoke(cli, ["loadtest", "--requests", "3", "--duration", "1"])
    assert r.exit_code == 2 and "not both" in r.output
    r = runner.invoke(cli, ["loadtest", "--requests", "3", "--corpus", "/nonexistent.txt"])
    assert r.exit_code == 2 and "neither a file nor a bundled corpus" in r.output
