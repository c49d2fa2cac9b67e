"""Replica identity (``server.instance_id``) and the autoscaling signal (``embedhost_load_ratio``)."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import socket
from collections.abc import Iterator

import numpy as np
import pytest
import structlog
from prometheus_client import generate_latest

from embedhost.batching import Batcher, Ticket
from embedhost.config import BatchingConfig, Settings, load_settings
from embedhost.errors import ConfigError
from embedhost.logs import setup_logging, worker_log_config
from embedhost.metrics import Metrics, StateSnapshot, WorkerSnapshot
from tests.support.app import app_client, fake_model, make_settings
from tests.support.wait import wait_until_async


def test_instance_id_defaults_to_the_host_name() -> None:
    s = load_settings(None, check_paths=False)
    assert s.server.instance_id is None
    assert s.server.resolved_instance_id == socket.gethostname()


def test_instance_id_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    # As the Kubernetes downward API sets it (fieldRef: metadata.name).
    monkeypatch.setenv("EMBEDHOST_SERVER__INSTANCE_ID", "embedhost-7d9f-abcde")
    s = load_settings(None, check_paths=False)
    assert s.server.resolved_instance_id == "embedhost-7d9f-abcde"


@pytest.mark.parametrize("bad", ["", "has space", "-leading", "x" * 129, "a/b"])
def test_instance_id_rejects_what_a_label_cannot_carry(bad: str) -> None:
    with pytest.raises(ConfigError, match=r"server\.instance_id"):
        load_settings(None, {"server": {"instance_id": bad}}, check_paths=False)


async def test_info_and_build_info_name_the_instance() -> None:
    settings: Settings = make_settings([fake_model()], server={"instance_id": "replica-a"})
    async with app_client(settings) as (_, client):
        info = (await client.get("/info")).json()
        assert info["instance_id"] == "replica-a"
        text = (await client.get("/metrics")).text
        build = next(line for line in text.splitlines() if line.startswith("embedhost_build_info"))
        assert 'instance_id="replica-a"' in build
        # The load signal is exported per model replica, 0 when idle.
        assert 'embedhost_load_ratio{model="fake",replica="0",version="1"} 0.0' in text


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for h in list(root.handlers):
        root.removeHandler(h)
    for h in handlers:
        root.addHandler(h)
    root.setLevel(level)
    structlog.reset_defaults()
    logging.captureWarnings(False)


@pytest.mark.usefixtures("restore_logging")
def test_every_log_line_names_the_instance() -> None:
    buf = io.StringIO()
    setup_logging("info", "json", stream=buf, instance="replica-b")
    logging.getLogger("uvicorn.error").info("a stdlib line")
    structlog.get_logger("embedhost.test").info("a structlog line")
    lines = [json.loads(line) for line in buf.getvalue().splitlines()]
    assert len(lines) == 2
    assert all(line["instance"] == "replica-b" for line in lines)
    # The worker processes are set up with the same instance.
    assert worker_log_config() == {
        "level": "info",
        "format": "json",
        "instance": "replica-b",
        "destination": "stderr",
    }


async def test_load_ratio_counts_queued_and_in_engine_sequences() -> None:
    release = asyncio.Event()

    async def embed(seqs: list[list[int]], timeout: float) -> np.ndarray:
        await release.wait()
        return np.zeros((len(seqs), 4), dtype=np.float32)

    cfg = BatchingConfig(max_batch_size=4, max_queue_items=64, max_wait_ms=0)
    b = Batcher(embed, cfg, depth=2)
    b.start()
    try:
        assert b.load_ratio == 0.0
        futures = b.submit([[1, 2, 3]] * 12, Ticket())
        # Two batches of 4 go to the engine (pipeline depth 2), 4 wait: 12 / (4 x 2).
        await wait_until_async(lambda: b.in_flight_sequences >= 8, timeout=5, every=0.01)
        assert b.in_flight_sequences == 8
        assert b.queued == 4
        assert b.load_ratio == 1.5
        release.set()
        await asyncio.gather(*futures)
        assert b.load_ratio == 0.0
    finally:
        await b.close(drain=False)


def test_load_ratio_family_is_exported_per_replica() -> None:
    m = Metrics(version="t", instance="pod-x")
    m.add_state(
        lambda: StateSnapshot(
            ready=True,
            draining=False,
            workers=[
                WorkerSnapshot("m", "1", 0, True, None, 0.25),
                WorkerSnapshot("m", "1", 1, True, None, 1.5),
            ],
        )
    )
    text = generate_latest(m.registry).decode()
    assert 'embedhost_load_ratio{model="m",replica="0",version="1"} 0.25' in text
    assert 'embedhost_load_ratio{model="m",replica="1",version="1"} 1.5' in text
