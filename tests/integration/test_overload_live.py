"""A real ``embedhost serve`` under the faults of overload and of its own death:

* 200 clients posting 4 passages each in a loop, with no backoff, against
  ``max_queue_items: 32`` and ``max_concurrent_requests: 150``, a few of them stalling
  once for 6 s between two requests: every request gets an HTTP answer (200, 429 or
  503), none a connection reset or a closed connection;
* the API process SIGKILLed while a batch is in its worker: the worker notices when it
  answers, and exits without a traceback.

The clients are raw HTTP/1.1 keep-alive connections on asyncio streams, so that the load
costs the test process little and every transport fault is seen as it is, not retried by
a client library.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import os
import signal
from collections import Counter
from pathlib import Path

import httpx
import psutil

from tests.fakes import GATE
from tests.support.app import fake_model
from tests.support.servers import LiveServer, start_server, stop_server
from tests.support.wait import wait_until, wait_until_async

PASSAGES = [
    "Embeddings map text to vectors that capture meaning.",
    "Vector search finds the nearest neighbours of a query among many documents.",
    "The batcher groups requests by length so that padding stays small.",
    "A full queue is refused with 429 and a Retry-After header.",
]
CLIENTS = 200
ANSWERS_EACH = 3  # every client has had this many answers: the overload was held
# Every 20th client idles this long once: longer than the 5 s for which uvicorn's default
# keeps an idle connection (and than httpx's pool), shorter than aiohttp's pool (15 s).
STALLED_EVERY, STALL_S = 20, 6.0


class Tally:
    def __init__(self) -> None:
        self.status: Counter[int] = Counter()
        self.errors: list[str] = []
        self.answered = [0] * CLIENTS
        self.stop = False

    def held(self) -> bool:
        return min(self.answered) >= ANSWERS_EACH


def _request(port: int, i: int) -> bytes:
    body = json.dumps({"input": [f"{p} {i}" for p in PASSAGES]}).encode()
    head = (
        f"POST /v1/embeddings HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bool]:
    """One response: its status and whether the server keeps the connection."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = dict(line.split(": ", 1) for line in lines[1:] if ": " in line)
    headers = {k.lower(): v for k, v in headers.items()}
    await reader.readexactly(int(headers.get("content-length", "0")))
    return status, headers.get("connection", "").lower() != "close"


async def _client(port: int, i: int, tally: Tally) -> None:
    request = _request(port, i)
    writer: asyncio.StreamWriter | None = None
    reader: asyncio.StreamReader | None = None
    while not tally.stop:
        try:
            if writer is None:
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
            assert reader is not None
            writer.write(request)
            await writer.drain()
            status, keep = await _read_response(reader)
        except (OSError, asyncio.IncompleteReadError, ValueError, IndexError) as exc:
            tally.errors.append(f"client {i}: {type(exc).__name__}: {exc}")
            keep = False
            status = 0
        if status:
            tally.status[status] += 1
            tally.answered[i] += 1
        if not keep and writer is not None:
            writer.close()
            writer = None
        if i % STALLED_EVERY == 0 and tally.answered[i] == 1:
            # A client stalled after its first answer (a starved thread on a busy
            # machine, a pool's idle connection), then reusing its kept-alive connection.
            await asyncio.sleep(STALL_S)
    if writer is not None:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def _storm(port: int, timeout: float) -> Tally:
    tally = Tally()
    tasks = [asyncio.create_task(_client(port, i, tally)) for i in range(CLIENTS)]
    try:
        # Held until every client has had its answers: a condition, not a duration.
        await wait_until_async(tally.held, "every client answered", timeout=timeout, every=0.1)
    finally:
        tally.stop = True
        await asyncio.wait_for(asyncio.gather(*tasks), 120)
    return tally


def test_every_request_of_an_overload_gets_an_http_answer(tmp_path: Path) -> None:
    config = {
        "models": [
            fake_model(
                "f",
                cache=False,  # every request reaches the queue
                engine_options={"delay_s": 0.005},
                batching={"max_queue_items": 32},
            )
        ],
        "limits": {"max_concurrent_requests": 150},
        "server": {"log_level": "warning"},
    }
    server = start_server(tmp_path, config)
    try:
        port = int(server.url.rsplit(":", 1)[1])
        tally = asyncio.run(_storm(port, timeout=180))
    finally:
        stop_server(server)
    print(f"answers: {dict(tally.status)}, transport errors: {len(tally.errors)}")
    assert tally.held(), f"the overload was not held: {min(tally.answered)} answers at least"
    assert not tally.errors, f"{len(tally.errors)} transport errors: {tally.errors[:5]}"
    assert set(tally.status) <= {200, 429, 503}, tally.status
    assert tally.status[200] > 0
    assert tally.status[429] + tally.status[503] > 0, f"no overload at all: {tally.status}"


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_worker_exits_quietly_when_its_api_process_is_killed(tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    config = {"models": [fake_model("f", cache=False, engine_options={"gate": str(gate)})]}
    server: LiveServer = start_server(tmp_path, config)
    try:
        [pid] = server.worker_pids()
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            pending = pool.submit(
                httpx.post, f"{server.url}/v1/embeddings", json={"input": [GATE]}, timeout=60
            )

            def in_engine() -> bool:
                info = httpx.get(f"{server.url}/info", timeout=10).json()
                return any(r["in_flight"] for m in info["models"] for r in m["replicas"])

            wait_until(in_engine, "the batch to be in the worker", timeout=60)
            os.kill(server.proc.pid, signal.SIGKILL)
            server.proc.wait(30)
            gate.touch()  # the worker answers into a pipe nobody reads any more
            wait_until(lambda: _gone(pid), "the worker to exit", timeout=60)
            pending.exception(timeout=60)  # the client's connection was reset
    finally:
        stop_server(server)
    log = server.log()
    assert "the API process has gone" in log, log[-3000:]
    assert "Traceback" not in log, log[-3000:]
