"""Shared fixtures: a fake-engine app shared by a module, MiniLM's files, a live server
process. The plain helpers they are built from live in tests/support/."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
import pytest_asyncio

from embedhost import catalog
from embedhost.modelfiles import resolve_model_path
from tests import fakes
from tests.support import MINILM
from tests.support.app import app_client, fake_model, make_settings
from tests.support.servers import LiveServer, start_server, stop_server

catalog.register(fakes.ROW)  # engine: fake, as a new engine is added (a module and a row)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    return resolve_model_path(MINILM)


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
