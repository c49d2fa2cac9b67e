"""Integration fixtures: a real redis-server and a real PostgreSQL server started (and
stopped) by the test run."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.postgres_server import PostgresServer, start_postgres
from tests.support.redis_server import RedisServer, start_redis


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A fresh redis-server on a free loopback port, for one test (it may kill it)."""
    server = start_redis(tmp_path)
    try:
        yield server
    finally:
        server.kill()


@pytest.fixture
def postgres() -> Iterator[PostgresServer]:
    """A fresh PostgreSQL cluster on a free loopback port, for one test."""
    server = start_postgres()
    try:
        yield server
    finally:
        server.stop()
