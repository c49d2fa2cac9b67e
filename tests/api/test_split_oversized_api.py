"""``split_oversized`` (TEI#378): a request over ``limits.max_inputs_per_request`` is split
into parts of the batch size and answered in order, instead of refused; the request's
limits still count the whole."""

from __future__ import annotations

import numpy as np

from tests.fakes import vector_for
from tests.support.app import app_client, fake_model, make_settings

# More inputs than the limit (4) and than the queue holds (4): only parts can pass.
_BATCHING = {"max_batch_size": 3, "max_queue_items": 4, "pipeline_depth": 1}
_LIMITS = {"max_inputs_per_request": 4}
_INPUTS = [[101, 1000 + i, 102] for i in range(10)]


def _expected(seqs: list[list[int]]) -> np.ndarray:
    v = np.stack([vector_for(s) for s in seqs])
    return v / np.linalg.norm(v, axis=1, keepdims=True)


async def test_an_oversized_request_is_split_and_joined_in_order() -> None:
    model = fake_model("f", split_oversized=True, batching=_BATCHING, cache=False)
    async with app_client(make_settings([model], limits=_LIMITS)) as (app, client):
        batcher = app.state.context.registry.default.replicas[0].batcher
        r = await client.post("/v1/embeddings", json={"input": _INPUTS})
        assert r.status_code == 200, r.text
        data = r.json()["data"]
        assert [d["index"] for d in data] == list(range(10))
        got = np.array([d["embedding"] for d in data], dtype=np.float32)
        np.testing.assert_allclose(got, _expected(_INPUTS), rtol=1e-5, atol=1e-6)
        assert r.json()["usage"]["prompt_tokens"] == 30
        assert batcher.stats.sequences == 10
        assert batcher.stats.batches >= 4  # parts of at most 3


async def test_limits_count_the_whole_request() -> None:
    model = fake_model("f", split_oversized=True, batching=_BATCHING, cache=False)
    limits = {**_LIMITS, "max_request_tokens": 20}  # each part fits (9 tokens), not the whole
    async with app_client(make_settings([model], limits=limits)) as (app, client):
        r = await client.post("/v1/embeddings", json={"input": _INPUTS})
        assert r.status_code == 413, r.text
        assert "30 tokens" in r.json()["error"]["message"]
        assert app.state.context.registry.default.replicas[0].batcher.stats.sequences == 0


async def test_without_it_an_oversized_request_is_refused() -> None:
    model = fake_model("f", batching=_BATCHING, cache=False)
    async with app_client(make_settings([model], limits=_LIMITS)) as (_, client):
        r = await client.post("/v1/embeddings", json={"input": _INPUTS})
        assert r.status_code == 413, r.text
        assert r.json()["error"]["param"] == "input"
