"""The real app in-process (httpx ASGI transport, lifespan running) and the settings it is
built from: model entries for the fake engine (tests/fakes.py) with MiniLM's real
tokenizer."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import httpx
from fastapi import FastAPI

from embedhost.api.app import create_app
from embedhost.config import Settings, load_settings
from tests.support import MINILM
from tests.support.wait import wait_until_async

FAKE_ENGINE = "plugin:tests.fakes:FakeEngine"


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
    """Until /ready answers 200; a model that failed to load fails at once."""

    async def ready() -> bool:
        r = await client.get("/ready")
        if r.status_code == 200:
            return True
        body = r.json()
        if any(m.get("status") == "failed" for m in body.get("models", {}).values()):
            raise AssertionError(f"model failed to load: {body}")
        return False

    await wait_until_async(ready, "the server to be ready", timeout=timeout)


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
