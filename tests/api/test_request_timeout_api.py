"""``X-Request-Timeout``: a request's own deadline (Infinity#546). Past it the client gets
504, and its sequences still queued are dropped, never sent to the engine; the header is
capped by ``limits.max_request_timeout_s`` and a bad value is a 400 naming it."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from tests.fakes import GATE
from tests.support.app import app_client, fake_model, make_settings
from tests.support.wait import wait_until_async


def _settings(gate: Path, **limits: Any) -> Any:
    model = fake_model(
        "f",
        engine_options={"gate": str(gate)},
        batching={"max_batch_size": 1, "pipeline_depth": 1},
        cache=False,
    )
    return make_settings([model], limits=limits)


async def test_a_queued_request_past_its_deadline_gets_504_and_is_dropped(
    tmp_path: Path,
) -> None:
    gate = tmp_path / "gate"
    async with app_client(_settings(gate)) as (app, client):
        batcher = app.state.context.registry.default.replicas[0].batcher
        held = asyncio.ensure_future(client.post("/v1/embeddings", json={"input": [GATE]}))
        await wait_until_async(lambda: batcher.in_flight == 1, "the engine to be busy")
        r = await asyncio.wait_for(
            client.post(
                "/v1/embeddings",
                json={"input": [101, 4242, 102]},
                headers={"X-Request-Timeout": "0.3"},
            ),
            30,
        )
        assert r.status_code == 504, r.text
        err = r.json()["error"]
        assert err["code"] == "request_deadline_exceeded"
        assert "0.3 s" in err["message"]
        gate.touch()
        assert (await held).status_code == 200
        # The next batch formed skips it: the engine never sees its sequence.
        r = await client.post("/v1/embeddings", json={"input": [101, 7, 102]})
        assert r.status_code == 200
        assert batcher.stats.sequences == 2  # the held one and the last one


async def test_the_deadline_is_capped_by_config(tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    async with app_client(_settings(gate, max_request_timeout_s=0.3)) as (app, client):
        batcher = app.state.context.registry.default.replicas[0].batcher
        held = asyncio.ensure_future(client.post("/v1/embeddings", json={"input": [GATE]}))
        await wait_until_async(lambda: batcher.in_flight == 1, "the engine to be busy")
        # Asks for an hour; the server's cap (0.3 s) applies, long before the gate opens.
        r = await asyncio.wait_for(
            client.post("/embed", json={"text": "x"}, headers={"X-Request-Timeout": "3600"}),
            30,
        )
        assert r.status_code == 504, r.text
        assert "0.3 s" in r.json()["error"]["message"]
        gate.touch()
        assert (await held).status_code == 200


async def test_a_request_answered_in_time_is_unaffected(tmp_path: Path) -> None:
    async with app_client(_settings(tmp_path / "gate")) as (_, client):
        r = await client.post(
            "/v1/embeddings", json={"input": "hello"}, headers={"X-Request-Timeout": "60"}
        )
        assert r.status_code == 200, r.text


@pytest.mark.parametrize("value", ["abc", "0", "-1", "nan", "inf", ""])
async def test_a_bad_timeout_is_400_naming_the_header(tmp_path: Path, value: str) -> None:
    async with app_client(_settings(tmp_path / "gate")) as (_, client):
        r = await client.post(
            "/v1/embeddings", json={"input": "hello"}, headers={"X-Request-Timeout": value}
        )
        assert r.status_code == 400, r.text
        assert r.json()["error"]["param"] == "X-Request-Timeout"
