"""A real redis-server on a free loopback port, started and stopped by the test run (the
integration fixture, the nginx replicas test and the Ray Serve test use it)."""

from __future__ import annotations

import shutil
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path

from tests.support.servers import free_port
from tests.support.wait import wait_until


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

    def pong() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"redis-server exited with {proc.returncode}")
        with socket.create_connection(("127.0.0.1", port), 1) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")

    try:
        wait_until(pong, f"redis-server on port {port}", timeout=timeout, ignore=(OSError,))
    except AssertionError:
        server.kill()
        raise
    return server
