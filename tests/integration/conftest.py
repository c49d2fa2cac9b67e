"""Integration fixtures: a real redis-server started (and stopped) by the test run."""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import free_port


@dataclass
class RedisServer:
    port: int
    proc: subprocess.Popen[bytes]
    log_path: Path

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL, as a crash or an OOM kill would end it."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def start_redis(tmp: Path, port: int | None = None, timeout: float = 20) -> RedisServer:
    exe = shutil.which("redis-server")
    if exe is None:
        raise RuntimeError("redis-server is not installed; run scripts/system-deps")
    port = port or free_port()
    log_path = tmp / f"redis-{port}.log"
    proc = subprocess.Popen(
        [
            exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
            "--dir", str(tmp), "--protected-mode", "yes", "--logfile", str(log_path),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    server = RedisServer(port, proc, log_path)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"redis-server exited with {proc.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1) as s:
            s.sendall(b"PING\r\n")
            if s.recv(16).startswith(b"+PONG"):
                return server
        time.sleep(0.05)
    server.kill()
    raise RuntimeError(f"redis-server did not answer on port {port} within {timeout}s")


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A fresh redis-server on a free loopback port, for one test (it may kill it)."""
    server = start_redis(tmp_path)
    try:
        yield server
    finally:
        server.kill()
