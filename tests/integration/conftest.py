"""Integration fixtures: a real redis-server started (and stopped) by the test run."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.redis_server import RedisServer, start_redis


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A fresh redis-server on a free loopback port, for one test (it may kill it)."""
    server = start_redis(tmp_path)
    try:
        yield server
    finally:
        server.kill()
