"""Compact vectors in-process (fake engine, MiniLM's tokenizer): POST /v2/embed through the
Cohere SDK with every embedding type, the same types on /embed and /v1/embeddings, the
definitions against sentence-transformers, the calibration file and /info, Cohere's
input_type/truncate/max_tokens/output_dimension, and bad input answered 4xx naming the field.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import cohere
import httpx
import numpy as np
import openai
import pytest
import pytest_asyncio
from sentence_transformers.util.quantization import quantize_embeddings

from embedhost.calibration import BUNDLED_CORPUS
from embedhost.quantize import postprocess, ranges_of
from tests.support.app import app_client, fake_model, make_settings

ALL_TYPES = ["float", "int8", "uint8", "binary", "ubinary", "base64"]
PROMPTS = {"query": "query: ", "document": "passage: ", "classification": "classify: "}
TEXTS = ["a cat sat on the mat", "compact vectors save space", "hello"]


@pytest.fixture(scope="module")
def quant_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("calibration")


@pytest_asyncio.fixture(scope="module")
async def client(quant_dir: Path) -> AsyncIterator[httpx.AsyncClient]:
    settings = make_settings(
        [
            fake_model("fake", max_input_tokens=16, prompts=PROMPTS, default_prompt=""),
            fake_model("plain", max_input_tokens=16),
        ],
        quantization={"dir": str(quant_dir), "max_texts": 200},
    )
    async with app_client(settings) as (_, c):
        yield c


def _cohere(client: httpx.AsyncClient) -> cohere.AsyncClientV2:
    return cohere.AsyncClientV2(base_url="http://testserver", api_key="unused", httpx_client=client)


def _is_file(path: Path) -> bool:
    return path.is_file()


def _lines(path: Path) -> int:
    return sum(1 for ln in path.read_text().splitlines() if ln.strip())


async def _calibration(client: httpx.AsyncClient, ref: str) -> dict[str, Any]:
    info = (await client.get("/info")).json()
    got: dict[str, Any] = info["quantization"]["calibrations"][ref]
    return got


async def test_cohere_sdk_every_embedding_type(client: httpx.AsyncClient) -> None:
    co = _cohere(client)
    r = await co.embed(
        model="fake",
        texts=TEXTS,
        input_type="search_document",
        embedding_types=ALL_TYPES,  # type: ignore[arg-type]
    )
    assert r.response_type == "embeddings_by_type" and r.id and r.texts == TEXTS
    assert r.meta is not None and r.meta.billed_units is not None
    assert r.meta.billed_units.input_tokens and r.meta.billed_units.input_tokens > 0
    e = r.embeddings
    f = np.array(e.float_, dtype=np.float32)
    assert f.shape == (3, 32)
    assert np.allclose(np.linalg.norm(f, axis=1), 1.0, atol=1e-5)
    decoded = np.stack([np.frombuffer(base64.b64decode(s), "<f4") for s in e.base64 or []])
    assert np.array_equal(decoded, f)
    int8, uint8 = np.array(e.int8), np.array(e.uint8)
    binary, ubinary = np.array(e.binary), np.array(e.ubinary)
    assert int8.shape == uint8.shape == (3, 32) and binary.shape == ubinary.shape == (3, 4)
    assert int8.min() >= -128 and int8.max() <= 127 and uint8.min() >= 0 and uint8.max() <= 255
    assert binary.min() >= -128 and binary.max() <= 127 and ubinary.max() <= 255
    # Bit-exact with sentence-transformers, given the ranges the server lists on /info.
    assert np.array_equal(binary, quantize_embeddings(f, "binary"))
    assert np.array_equal(ubinary, quantize_embeddings(f, "ubinary"))
    cal = await _calibration(client, "fake@1")
    ranges = np.array([cal["ranges"]["min"], cal["ranges"]["max"]], dtype=np.float32)
    assert np.array_equal(uint8, quantize_embeddings(f, "uint8", ranges=ranges))
    assert np.array_equal(int8, quantize_embeddings(f, "int8", ranges=ranges))
    assert np.array_equal(int8, uint8 - 128)


async def test_each_embedding_type_alone_and_default_float(client: httpx.AsyncClient) -> None:
    co = _cohere(client)
    both = await co.embed(
        model="fake", texts=TEXTS, input_type="search_query", embedding_types=ALL_TYPES
    )  # type: ignore[arg-type]
    for t in ALL_TYPES:
        r = await co.embed(
            model="fake", texts=TEXTS, input_type="search_query", embedding_types=[t]
        )  # type: ignore[list-item]
        field = "float_" if t == "float" else t
        others = {k for k in ("float_", *ALL_TYPES[1:]) if getattr(r.embeddings, k) is not None}
        assert others == {field}
        assert getattr(r.embeddings, field) == getattr(both.embeddings, field)
    r = await co.embed(model="fake", texts=TEXTS, input_type="search_query")
    assert r.embeddings.float_ == both.embeddings.float_ and r.embeddings.int8 is None


async def test_calibration_file_and_info(client: httpx.AsyncClient, quant_dir: Path) -> None:
    r = await client.post(
        "/v2/embed",
        json={
            "model": "plain",
            "texts": ["x y"],
            "input_type": "clustering",
            "embedding_types": ["int8"],
        },
    )
    assert r.status_code == 200, r.text
    cal = await _calibration(client, "plain@1")
    path = Path(cal["path"])
    assert _is_file(path) and quant_dir in path.parents
    assert cal["corpus"] == "bundled" and cal["texts"] == 200 and cal["dims"] == 32
    assert _lines(BUNDLED_CORPUS) >= 200
    with np.load(path) as data:
        stored = data["embeddings"]
    assert stored.shape == (200, 32) and stored.dtype == np.float32
    expect = ranges_of(postprocess(stored, None, True))
    assert cal["ranges"]["min"] == expect[0].tolist() and cal["ranges"]["max"] == expect[1].tolist()


async def test_input_type_maps_onto_the_model_prompts(client: httpx.AsyncClient) -> None:
    async def cohere_float(input_type: str) -> list[list[float]]:
        r = await client.post(
            "/v2/embed", json={"model": "fake", "texts": TEXTS, "input_type": input_type}
        )
        assert r.status_code == 200, r.text
        rows: list[list[float]] = r.json()["embeddings"]["float"]
        return rows

    async def native(input_type: str | None) -> list[list[float]]:
        body: dict[str, Any] = {"model": "fake", "texts": TEXTS}
        if input_type:
            body["input_type"] = input_type
        rows: list[list[float]] = (await client.post("/embed", json=body)).json()["embeddings"]
        return rows

    assert await cohere_float("search_query") == await native("query")
    assert await cohere_float("search_document") == await native("document")
    assert await cohere_float("classification") == await native("classification")
    assert await cohere_float("clustering") == await native(None)  # no prompt of its own
    assert await native("query") != await native(None)


async def test_truncate_and_max_tokens(client: httpx.AsyncClient) -> None:
    long = " ".join(f"word{i}" for i in range(40))

    async def post(**kw: Any) -> httpx.Response:
        return await client.post(
            "/v2/embed",
            json={"model": "plain", "texts": [long], "input_type": "search_query", **kw},
        )

    refused = await post(truncate="NONE")
    assert refused.status_code == 413 and refused.json()["error"]["param"] == "input"
    end, start = (await post(truncate="END")).json(), (await post(truncate="START")).json()
    assert end["meta"]["billed_units"]["input_tokens"] == 16
    assert end["embeddings"]["float"] != start["embeddings"]["float"]
    assert (await post()).json()["embeddings"] == end["embeddings"]  # END is the default
    capped = (await post(max_tokens=6)).json()
    assert capped["meta"]["billed_units"]["input_tokens"] == 6
    assert capped["embeddings"] != end["embeddings"]


async def test_output_dimension_applies_before_quantizing(client: httpx.AsyncClient) -> None:
    r = await client.post(
        "/v2/embed",
        json={
            "model": "plain",
            "texts": TEXTS,
            "input_type": "search_document",
            "output_dimension": 12,
            "embedding_types": ["float", "uint8", "ubinary"],
        },
    )
    assert r.status_code == 200, r.text
    e = r.json()["embeddings"]
    f = np.array(e["float"], dtype=np.float32)
    assert f.shape == (3, 12) and np.allclose(np.linalg.norm(f, axis=1), 1.0, atol=1e-5)
    assert np.array(e["ubinary"]).shape == (3, 2)
    assert np.array_equal(np.array(e["ubinary"]), quantize_embeddings(f, "ubinary"))
    cal = await _calibration(client, "plain@1")
    with np.load(cal["path"]) as data:
        ranges = ranges_of(postprocess(data["embeddings"], 12, True))
    assert np.array_equal(np.array(e["uint8"]), quantize_embeddings(f, "uint8", ranges=ranges))


async def test_embedding_types_on_embed(client: httpx.AsyncClient) -> None:
    r = await client.post(
        "/embed",
        json={"model": "plain", "texts": TEXTS, "embedding_types": ["int8", "binary", "int8"]},
    )
    assert r.status_code == 200, r.text
    e = r.json()["embeddings"]
    assert set(e) == {"int8", "binary"}
    assert np.array(e["int8"]).shape == (3, 32) and np.array(e["binary"]).shape == (3, 4)
    v2 = await client.post(
        "/v2/embed",
        json={
            "model": "plain",
            "texts": TEXTS,
            "input_type": "clustering",
            "embedding_types": ["int8", "binary"],
        },
    )
    assert v2.json()["embeddings"] == e
    # Unnormalized vectors are quantized with unnormalized ranges.
    raw = await client.post(
        "/embed",
        json={
            "model": "plain",
            "texts": TEXTS,
            "normalize": False,
            "embedding_types": ["float", "uint8"],
        },
    )
    body = raw.json()["embeddings"]
    f = np.array(body["float"], dtype=np.float32)
    cal = await _calibration(client, "plain@1")
    with np.load(cal["path"]) as data:
        ranges = ranges_of(postprocess(data["embeddings"], None, False))
    assert np.array_equal(np.array(body["uint8"]), quantize_embeddings(f, "uint8", ranges=ranges))
    plain = (await client.post("/embed", json={"model": "plain", "texts": TEXTS})).json()
    assert isinstance(plain["embeddings"], list)  # unchanged without embedding_types


async def test_embedding_types_on_openai_route(client: httpx.AsyncClient) -> None:
    oa = openai.AsyncOpenAI(base_url="http://testserver/v1", api_key="unused", http_client=client)
    r = await oa.embeddings.create(
        model="plain", input=TEXTS, extra_body={"embedding_types": ["float", "int8", "ubinary"]}
    )
    f = np.array([d.embedding for d in r.data], dtype=np.float32)
    assert f.shape == (3, 32)
    extra = [d.model_extra["embeddings"] for d in r.data if d.model_extra]
    assert len(extra) == 3 and set(extra[0]) == {"int8", "ubinary"}
    assert np.array_equal(
        np.array([x["ubinary"] for x in extra]), quantize_embeddings(f, "ubinary")
    )
    native = (
        await client.post(
            "/embed", json={"model": "plain", "texts": TEXTS, "embedding_types": ["int8"]}
        )
    ).json()
    assert [x["int8"] for x in extra] == native["embeddings"]["int8"]
    # Without float: no OpenAI `embedding`, only the asked-for types.
    only = (
        await client.post(
            "/v1/embeddings", json={"model": "plain", "input": "hi", "embedding_types": ["binary"]}
        )
    ).json()
    assert "embedding" not in only["data"][0] and set(only["data"][0]["embeddings"]) == {"binary"}


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        ({"texts": ["a"]}, 422, "input_type"),
        ({"texts": ["a"], "input_type": "search_everything"}, 422, "input_type"),
        (
            {"texts": ["a"], "input_type": "search_query", "embedding_types": ["int4"]},
            422,
            "embedding_types",
        ),
        (
            {"texts": ["a"], "input_type": "search_query", "embedding_types": []},
            422,
            "embedding_types",
        ),
        ({"texts": ["a"], "input_type": "search_query", "truncate": "MIDDLE"}, 422, "truncate"),
        (
            {"texts": ["a"], "input_type": "search_query", "output_dimension": 0},
            422,
            "output_dimension",
        ),
        (
            {"texts": ["a"], "input_type": "search_query", "output_dimension": 33},
            400,
            "output_dimension",
        ),
        ({"texts": ["a"], "input_type": "search_query", "max_tokens": 0}, 422, "max_tokens"),
        ({"input_type": "search_query"}, 400, "texts"),
        ({"texts": [], "input_type": "search_query"}, 400, "texts"),
        ({"texts": [""], "input_type": "search_query"}, 400, "input"),
        ({"images": ["data:image/png;base64,AA=="], "input_type": "search_query"}, 400, "images"),
        ({"texts": ["a"], "input_type": "search_query", "colour": "red"}, 422, "colour"),
        ({"texts": ["a"], "input_type": "search_query", "model": "nope"}, 404, "model"),
    ],
)
async def test_bad_input_is_4xx_naming_the_field(
    client: httpx.AsyncClient, body: dict[str, Any], status: int, param: str
) -> None:
    r = await client.post("/v2/embed", json={"model": "plain", **body})
    assert r.status_code == status, r.text
    assert r.json()["error"]["param"] == param, r.text


async def test_bad_embedding_types_on_the_other_routes(client: httpx.AsyncClient) -> None:
    for path, body in (("/embed", {"text": "a"}), ("/v1/embeddings", {"input": "a"})):
        r = await client.post(path, json={**body, "embedding_types": ["float16"]})
        assert r.status_code == 422 and r.json()["error"]["param"] == "embedding_types", r.text


def _model_dir_with_manifest(minilm_dir: Path, tmp: Path) -> Path:
    """MiniLM's tokenizer files (the fake engine needs no weights) and a sha256sum manifest."""
    model = tmp / "model"
    model.mkdir()
    lines = []
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json", "vocab.txt"):
        shutil.copy(minilm_dir / name, model / name)
        lines.append(f"{hashlib.sha256((model / name).read_bytes()).hexdigest()}  {name}")
    (model / "manifest.sha256").write_text("\n".join(lines) + "\n")
    return model


async def test_calibration_is_stored_beside_the_manifest(
    minilm_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    tmp = tmp_path_factory.mktemp("manifest")
    model = await asyncio.to_thread(_model_dir_with_manifest, minilm_dir, tmp)
    entry = fake_model("pinned", checksum="manifest:manifest.sha256", max_input_tokens=16)
    entry["path"] = str(model)
    settings = make_settings([entry], quantization={"dir": str(tmp / "cache"), "max_texts": 16})
    async with app_client(settings) as (_, c):
        r = await c.post("/embed", json={"texts": TEXTS, "embedding_types": ["uint8"]})
        assert r.status_code == 200, r.text
        cal = await _calibration(c, "pinned@1")
    path = Path(cal["path"])
    assert path.parent == model and path.name.startswith("manifest.sha256.calibration-")
    assert _is_file(path) and not _is_file(tmp / "cache")
    assert cal["weights"].startswith("sha256:") and cal["texts"] == 16


async def test_an_unreadable_calibration_corpus_is_a_clear_error(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    tmp = tmp_path_factory.mktemp("nocorpus")
    entry = fake_model("nocorpus", calibration_corpus=str(tmp / "missing.txt"))
    settings = make_settings([entry], quantization={"dir": str(tmp)})
    async with app_client(settings) as (_, c):
        bad = await c.post("/embed", json={"texts": TEXTS, "embedding_types": ["int8"]})
        assert bad.status_code == 500
        message = bad.json()["error"]["message"]
        assert "calibration_corpus" in message and str(tmp) not in message
        ok = await c.post("/embed", json={"texts": TEXTS, "embedding_types": ["binary"]})
        assert ok.status_code == 200
