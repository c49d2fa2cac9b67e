"""Both engines served through the real app (in-process) with real worker processes, and
the crash path of a llama.cpp worker that segfaults."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import numpy as np
import pytest

from embedhost.engines.transformers import TransformersEngine
from embedhost.tokenization import GGUFTokenizer, HFTokenizer
from tests.engines.crashing import TRIGGER
from tests.support.app import app_client, make_settings
from tests.support.engines import SENTENCES, cosine_rows
from tests.support.wait import wait_until_async


def normalized_reference(reference: TransformersEngine, ids: list[list[int]]) -> np.ndarray:
    v = reference.embed(ids)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


async def test_gguf_and_onnx_served_side_by_side(
    gguf_f16: Path, onnx_dir: Path, minilm_dir: Path, reference: TransformersEngine
) -> None:
    settings = make_settings(
        [
            {
                "name": "minilm-gguf",
                "engine": "llama_cpp",
                "path": str(gguf_f16),
                "quantization": "f16",
            },
            {"name": "minilm-onnx", "engine": "onnx", "path": str(onnx_dir), "threads": 1},
        ]
    )
    gguf_ids = GGUFTokenizer(gguf_f16).encode_batch(SENTENCES)
    hf_ids = HFTokenizer(minilm_dir).encode_batch(SENTENCES)
    async with app_client(settings) as (_, client):
        info = (await client.get("/info")).json()
        models = {m["name"]: m for m in info["models"]}
        g = models["minilm-gguf"]
        assert (g["engine"], g["dimensions"], g["max_input_tokens"], g["status"]) == (
            "llama_cpp",
            384,
            512,
            "ready",
        )
        assert g["details"]["quantization"] == "f16"
        assert g["details"]["architecture"] == "bert"
        assert g["details"]["context_length"] == 512
        o = models["minilm-onnx"]
        assert (o["engine"], o["dimensions"], o["max_input_tokens"], o["pooling"]) == (
            "onnx",
            384,
            256,
            "mean",
        )
        assert o["details"]["providers"] == ["CPUExecutionProvider"]

        for name, ids, floor in (("minilm-gguf", gguf_ids, 0.999), ("minilm-onnx", hf_ids, 0.9999)):
            r = await client.post("/v1/embeddings", json={"model": name, "input": SENTENCES})
            assert r.status_code == 200, r.text
            body = r.json()
            vecs = np.array([d["embedding"] for d in body["data"]], dtype=np.float32)
            np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)
            assert cosine_rows(vecs, normalized_reference(reference, ids)).min() >= floor, name
            # Counted with the model's own tokenizer (llama.cpp's vocabulary for the GGUF).
            assert body["usage"]["prompt_tokens"] == sum(len(s) for s in ids), name
            assert r.headers["X-Embedhost-Model"] == f"{name}@1"

        # Token-id input in the GGUF's own vocabulary, and truncation by the model's limit.
        r = await client.post(
            "/v1/embeddings", json={"model": "minilm-gguf", "input": [gguf_ids[0]]}
        )
        assert r.status_code == 200
        by_ids = np.array(r.json()["data"][0]["embedding"])
        r = await client.post(
            "/v1/embeddings", json={"model": "minilm-gguf", "input": SENTENCES[0]}
        )
        assert float(by_ids @ np.array(r.json()["data"][0]["embedding"])) > 0.99999
        long_text = " ".join(SENTENCES * 20)
        r = await client.post("/embed", json={"model": "minilm-gguf", "texts": [long_text]})
        assert r.status_code == 200, r.text
        assert r.json()["tokens"] == [512]
        assert r.json()["truncated"] == [True]
        r = await client.post(
            "/v1/embeddings", json={"model": "minilm-gguf", "input": long_text, "truncate": False}
        )
        assert r.status_code == 413
        # A batch of concurrent requests is batched by the server and still matches.
        results = await asyncio.gather(
            *(
                client.post("/v1/embeddings", json={"model": "minilm-gguf", "input": t})
                for t in SENTENCES
            )
        )
        vecs = np.array([res.json()["data"][0]["embedding"] for res in results], dtype=np.float32)
        assert cosine_rows(vecs, normalized_reference(reference, gguf_ids)).min() >= 0.999

        # The embedding cache on real engines: a hit is bit-identical to the vectors the
        # engine returned (raw, before normalization), and token ids hit the text's entry.
        for name in ("minilm-gguf", "minilm-onnx"):
            body = {"model": name, "texts": SENTENCES[:3], "normalize": False}
            miss = await client.post("/embed", json=body, headers={"Cache-Control": "no-cache"})
            hit = await client.post("/embed", json=body)
            states = (miss.headers["x-embedhost-cache"], hit.headers["x-embedhost-cache"])
            assert states == ("miss", "hit"), name
            as_bytes = [
                np.array(x.json()["embeddings"], dtype=np.float32).tobytes() for x in (miss, hit)
            ]
            assert as_bytes[0] == as_bytes[1], name
        r = await client.post("/v1/embeddings", json={"model": "minilm-onnx", "input": hf_ids[1]})
        assert r.headers["x-embedhost-cache"] == "hit"


async def ready_status(client: httpx.AsyncClient, name: str) -> dict[str, str]:
    r = await client.get("/ready")
    models: dict[str, dict[str, str]] = r.json()["models"]
    return models[name]


async def wait_status(
    client: httpx.AsyncClient, name: str, want: str, within: float = 120
) -> dict[str, str]:
    st: dict[str, str] = {}

    async def became() -> dict[str, str] | None:
        nonlocal st
        st = await ready_status(client, name)
        return st if st["status"] == want else None

    return await wait_until_async(became, lambda: f"{name} to become {want}: {st}", timeout=within)


@pytest.mark.timeout(400)
async def test_segfault_in_llama_cpp_restarts_then_fails_the_model(
    gguf_f16: Path, minilm_dir: Path
) -> None:
    settings = make_settings(
        [
            {
                "name": "crashy",
                "engine": "plugin:tests.engines.crashing:SegfaultingLlamaCppEngine",
                "path": str(gguf_f16),
                # The API process tokenizes with the HF tokenizer (a plugin engine is not
                # known to be llama_cpp); the worker runs llama.cpp on the real GGUF.
                "engine_options": {"tokenizer": str(minilm_dir)},
            },
            {"name": "healthy", "engine": "llama_cpp", "path": str(gguf_f16)},
        ],
        worker={"max_restarts": 2, "restart_window_s": 300, "restart_backoff_initial_s": 0.2},
    )
    async with app_client(settings) as (_, client):
        ok = await client.post("/v1/embeddings", json={"model": "crashy", "input": "hello"})
        assert ok.status_code == 200
        for crash in range(3):
            r = await client.post(
                "/v1/embeddings", json={"model": "crashy", "input": [[101, TRIGGER, 102]]}
            )
            assert r.status_code == 503, r.text
            assert r.headers["Retry-After"] == "2"
            assert set(r.json()["error"]) == {"message", "type", "param", "code"}
            # Only that worker died: the other model in the same server keeps answering.
            other = await client.post(
                "/v1/embeddings", json={"model": "healthy", "input": "still here"}
            )
            assert other.status_code == 200
            if crash < 2:
                # Restarted with backoff; the model serves again.
                await wait_status(client, "crashy", "ready")
                again = await client.post(
                    "/v1/embeddings", json={"model": "crashy", "input": "hello"}
                )
                assert again.status_code == 200
        failed = await wait_status(client, "crashy", "failed")
        assert "3 crashes" in failed["reason"]
        assert "SIGSEGV" in failed["reason"]
        assert (await client.get("/ready")).status_code == 503
        info = {m["name"]: m for m in (await client.get("/info")).json()["models"]}
        assert info["crashy"]["status"] == "failed"
        assert "SIGSEGV" in info["crashy"]["reason"]
        assert info["crashy"]["replicas"][0]["restarts"] == 2
        r = await client.post("/v1/embeddings", json={"model": "crashy", "input": "hello"})
        assert r.status_code == 503
        assert "Retry-After" not in r.headers  # failed for good: retrying will not help
        assert (
            await client.post("/v1/embeddings", json={"model": "healthy", "input": "x"})
        ).status_code == 200
