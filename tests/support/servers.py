"""Servers as child processes, for tests and bench alike: a free loopback port,
``embedhost serve`` started on a config file, waited on until it answers, and stopped with
SIGTERM (then SIGKILL if it hangs). bench/_harness.py imports this module, so it imports
nothing from pytest or from the test modules.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import yaml

from tests.support import ROOT
from tests.support.wait import wait_until


def free_port() -> int:
    """A loopback port nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def serve_command(config: Path, *extra: str) -> list[str]:
    """``embedhost serve`` on ``config`` with this interpreter."""
    return [sys.executable, "-m", "embedhost", "serve", "--config", str(config), *extra]


def repo_env(env: dict[str, str] | None = None) -> dict[str, str]:
    """This environment, plus ``env``, with this checkout first on the child's path (so the
    child runs the code under test and can load ``plugin:tests.fakes:...`` engines)."""
    return {**os.environ, **(env or {}), "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'src'}"}


def spawn(
    cmd: list[str],
    log_path: Path,
    *,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    append: bool = False,
) -> subprocess.Popen[bytes]:
    """``cmd`` as a child process, stdout and stderr to ``log_path``."""
    with log_path.open("ab" if append else "wb") as log:  # the child keeps its own copy
        return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=cwd)


def log_tail(path: Path | None, chars: int = 4000) -> str:
    return path.read_text(errors="replace")[-chars:] if path and path.exists() else ""


def wait_answering(
    proc: subprocess.Popen[bytes],
    url: str,
    *,
    timeout: float = 120,
    every: float = 0.1,
    log: Path | None = None,
    verify: Any = True,
    what: str = "server",
) -> None:
    """Poll ``url`` until it answers 200; ``AssertionError`` with the log's tail if the
    process exits first or ``timeout`` passes."""

    def answered() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"{what} exited with {proc.returncode}:\n{log_tail(log)}")
        return httpx.get(url, timeout=2, verify=verify).status_code == 200

    wait_until(
        answered,
        lambda: f"{what} to answer {url}:\n{log_tail(log)}",
        timeout=timeout,
        every=every,
        ignore=(httpx.HTTPError,),
    )


def stop_process(
    proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout: float = 30
) -> int:
    """``sig`` (SIGTERM: a graceful shutdown), then SIGKILL after ``timeout`` seconds; the
    exit status."""
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


def write_config(path: Path, config: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(config))
    return path


# -- the live server the tests use --------------------------------------------------------


@dataclass
class LiveServer:
    url: str
    proc: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def worker_pids(self) -> list[int]:
        info = httpx.get(f"{self.url}/info", timeout=10).json()
        return [r["pid"] for m in info["models"] for r in m["replicas"] if r["pid"]]


def start_server(
    tmp_path: Path, config: dict[str, Any], env: dict[str, str] | None = None, timeout: float = 120
) -> LiveServer:
    """``embedhost serve`` on ``config`` (its port set to a free one), ready."""
    port = free_port()
    config = {**config, "server": {**config.get("server", {}), "port": port}}
    cfg = write_config(tmp_path / "config.yaml", config)
    log_path = tmp_path / "server.log"
    proc = spawn(serve_command(cfg), log_path, env=repo_env(env), cwd=ROOT)
    server = LiveServer(f"http://127.0.0.1:{port}", proc, log_path)
    try:
        wait_answering(proc, f"{server.url}/ready", timeout=timeout, log=log_path)
    except AssertionError:
        stop_server(server)
        raise
    return server


def stop_server(server: LiveServer, timeout: float = 30) -> int:
    return stop_process(server.proc, timeout=timeout)
