"""The HTTP API in-process, on the fake engine: every path and every error."""

from __future__ import annotations

import base64

import httpx
import numpy as np
import pytest

from tests.fakes import DIMS, vector_for


async def test_single_string(fake_client: httpx.AsyncClient) -> None:
    r = await fake_client.post("/v1/embeddings", json={"input": "hello world", "model": "fake"})
    assert r.status_code == 200
    body = r.json()
    assert body["object"] == "list"
    assert body["model"] == "fake"
    assert len(body["data"]) == 1
    item = body["data"][0]
    assert item["object"] == "embedding" and item["index"] == 0
    vec = np.array(item["embedding"])
    assert vec.shape == (DIMS,)
    assert np.linalg.norm(vec) == pytest.approx(1.0, abs=1e-5)
    # [CLS] hello world [SEP]
    assert body["usage"] == {"prompt_tokens": 4, "total_tokens": 4}
    assert r.headers["x-embedhost-model"] == "fake@1"


async def test_default_model_is_first(fake_client: httpx.AsyncClient) -> None:
    r = await fake_client.post("/v1/embeddings", json={"input": "x"})
    assert r.status_code == 200
    assert r.json()["model"] == "fake"


async def test_array_of_strings_keeps_order(fake_client: httpx.AsyncClient) -> None:
    texts = ["one", "two two", "three three three", "four"]
    r = await fake_client.post("/v1/embeddings", json={"input": texts, "model": "fake"})
    assert r.status_code == 200
    data = r.json()["data"]
    assert [d["index"] for d in data] == [0, 1, 2, 3]
    singles = []
    for t in texts:
        one = await fake_client.post("/v1/embeddings", json={"input": t, "model": "fake"})
        singles.append(one.json()["data"][0]["embedding"])
    np.testing.assert_allclose([d["embedding"] for d in data], singles, atol=1e-6)


async def test_token_id_inputs(fake_client: httpx.AsyncClient) -> None:
    r = await fake_client.post("/v1/embeddings", json={"input": [101, 7592, 102], "model": "fake"})
    assert r.status_code == 200
    assert r.json()["usage"]["prompt_tokens"] == 3
    expected = vector_for([101, 7592, 102])
    expected /= np.linalg.norm(expected)
    np.testing.assert_allclose(r.json()["data"][0]["embedding"], expected, atol=1e-6)
    r2 = await fake_client.post(
        "/v1/embeddings", json={"input": [[101, 102], [101, 7592, 102]], "model": "fake"}
    )
    assert r2.status_code == 200
    assert len(r2.json()["data"]) == 2
    assert r2.json()["usage"]["prompt_tokens"] == 5


async def test_token_id_out_of_vocab(fake_client: httpx.AsyncClient) -> None:
    r = await fake_client.post("/v1/embeddings", json={"input": [10**7], "model": "fake"})
    assert r.status_code == 400
    assert "vocabulary" in r.json()["error"]["message"]


async def test_base64_is_little_endian_float32(fake_client: httpx.AsyncClient) -> None:
    f = await fake_client.post("/v1/embeddings", json={"input": "abc", "model": "fake"})
    b = await fake_client.post(
        "/v1/embeddings", json={"input": "abc", "model": "fake", "encoding_format": "base64"}
    )
    assert b.status_code == 200
    decoded = np.frombuffer(base64.b64decode(b.json()["data"][0]["embedding"]), dtype="<f4")
    np.testing.assert_allclose(decoded, f.json()["data"][0]["embedding"], atol=1e-7)


async def test_dimensions_cut_and_renormalize(fake_client: httpx.AsyncClient) -> None:
    full = await fake_client.post("/v1/embeddings", json={"input": "abc", "model": "fake"})
    cut = await fake_client.post(
        "/v1/embeddings", json={"input": "abc", "model": "fake", "dimensions": 8}
    )
    assert cut.status_code == 200
    v = np.array(cut.json()["data"][0]["embedding"])
    assert v.shape == (8,)
    assert np.linalg.norm(v) == pytest.approx(1.0, abs=1e-5)
    head = np.array(full.json()["data"][0]["embedding"][:8])
    np.testing.assert_allclose(v, head / np.linalg.norm(head), atol=1e-5)


async def test_dimensions_too_large(fake_client: httpx.AsyncClient) -> None:
    r = await fake_client.post(
        "/v1/embeddings", json={"input": "abc", "model": "fake", "dimensions": DIMS + 1}
    )
    assert r.status_code == 400
    err = r.json()["error"]
    assert err["param"] == "dimensions" and str(DIMS) in err["message"]


@pytest.mark.parametrize(
    ("payload", "status", "param"),
    [
        ({"input": ""}, 400, "input"),
        ({"input": []}, 400, "input"),
        ({"input": ["ok", ""]}, 400, "input"),
        ({"input": [[]]}, 422, "input"),
        ({"input": 5}, 422, "input"),
        ({"input": [1, "a"]}, 422, "input"),
        ({"input": None}, 422, "input"),
        ({"input": [-1]}, 422, "input"),
        ({}, 422, "input"),
        ({"input": "x", "encoding_format": "int8"}, 422, "encoding_format"),
        ({"input": "x", "dimensions": 0}, 422, "dimensions"),
        ({"input": "x", "model": "nope"}, 404, "model"),
        ({"input": "x", "model": "fake@2"}, 404, "model"),
    ],
)
async def test_bad_requests_get_openai_errors(
    fake_client: httpx.AsyncClient, payload: dict[str, object], status: int, param: str
) -> None:
    r = await fake_client.post("/v1/embeddings", json=payload)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["param"] == param
    assert err["type"] == "invalid_request_error"
    assert err["message"]


async def test_not_json_and_not_object(fake_client: httpx.AsyncClient) -> None:
    r = await fake_client.post(
        "/v1/embeddings", content=b"{nope", headers={"content-type": "application/json"}
    )
    assert r.status_code == 422
    assert r.json()["error"]["message"] == "the request body is not valid JSON"
    r = await fake_client.post("/v1/embeddings", json=["a"])
    assert r.status_code == 422
    assert "error" in r.json()


async def test_pinned_version(fake_client: httpx.AsyncClient) -> None:
    r = await fake_client.post("/v1/embeddings", json={"input": "x", "model": "fake@1"})
    assert r.status_code == 200


async def test_truncation_right_is_default(fake_client: httpx.AsyncClient) -> None:
    long = " ".join(["word"] * 40)
    r = await fake_client.post("/v1/embeddings", json={"input": long, "model": "fake"})
    assert r.status_code == 200
    assert r.json()["usage"]["prompt_tokens"] == 16


async def test_truncation_refuse_per_model_and_request(fake_client: httpx.AsyncClient) -> None:
    long = " ".join(["word"] * 40)
    r = await fake_client.post("/v1/embeddings", json={"input": long, "model": "fake-refuse"})
    assert r.status_code == 413
    err = r.json()["error"]
    assert err["code"] == "context_length_exceeded"
    assert "42 tokens" in err["message"] and "16" in err["message"]
    ok = await fake_client.post(
        "/v1/embeddings", json={"input": long, "model": "fake-refuse", "truncate": True}
    )
    assert ok.status_code == 200
    refused = await fake_client.post(
        "/v1/embeddings", json={"input": long, "model": "fake", "truncate": False}
    )
    assert refused.status_code == 413


async def test_truncation_left_and_right_differ(fake_client: httpx.AsyncClient) -> None:
    text = "alpha " * 10 + "omega " * 10
    right = await fake_client.post(
        "/embed", json={"text": text, "model": "fake", "truncate": "right"}
    )
    left = await fake_client.post(
        "/embed", json={"text": text, "model": "fake", "truncate": "left"}
    )
    assert right.status_code == left.status_code == 200
    assert right.json()["truncated"] == [True]
    assert right.json()["tokens"] == [16]
    assert right.json()["embeddings"] != left.json()["embeddings"]


async def test_too_many_inputs(fake_client: httpx.AsyncClient) -> None:
    r = await fake_client.post("/v1/embeddings", json={"input": ["a"] * 65, "model": "fake"})
    assert r.status_code == 413
    assert "64" in r.json()["error"]["message"]


async def test_body_too_large(fake_client: httpx.AsyncClient) -> None:
    r = await fake_client.post("/v1/embeddings", json={"input": "a" * 70000, "model": "fake"})
    assert r.status_code == 413
    assert r.json()["error"]["code"] == "payload_too_large"


async def test_native_embed(fake_client: httpx.AsyncClient) -> None:
    r = await fake_client.post("/embed", json={"texts": ["a b", "c"], "model": "fake"})
    assert r.status_code == 200
    body = r.json()
    assert body["model"] == "fake" and body["version"] == "1"
    assert body["dimensions"] == DIMS
    assert body["tokens"] == [4, 3]
    assert body["truncated"] == [False, False]
    assert len(body["embeddings"]) == 2
    raw = await fake_client.post(
        "/embed", json={"text": "a b", "model": "fake", "normalize": False}
    )
    v = np.array(raw.json()["embeddings"][0])
    np.testing.assert_allclose(v, vector_for([101, 1037, 1038, 102]), atol=1e-6)
    assert abs(np.linalg.norm(v) - 1) > 1e-3


@pytest.mark.parametrize(
    "payload",
    [{}, {"text": "a", "texts": ["b"]}, {"texts": []}, {"text": ""}, {"text": "a", "bogus": 1}],
)
async def test_native_embed_errors(
    fake_client: httpx.AsyncClient, payload: dict[str, object]
) -> None:
    r = await fake_client.post("/embed", json=payload)
    assert r.status_code in (400, 422), r.text
    assert r.json()["error"]["message"]


async def test_unknown_route_and_method(fake_client: httpx.AsyncClient) -> None:
    r = await fake_client.get("/nope")
    assert r.status_code == 404
    assert r.json()["error"]["code"] == "not_found"
    r = await fake_client.get("/v1/embeddings")
    assert r.status_code == 405
    assert r.json()["error"]["code"] == "method_not_allowed"
