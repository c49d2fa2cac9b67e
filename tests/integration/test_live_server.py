"""A real `embedhost serve` process on the real MiniLM model: the clients people use, the
README's own examples, batching equivalence over HTTP, and SIGKILL of the worker under load."""

from __future__ import annotations

import base64
import concurrent.futures
import os
import re
import signal
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from sentence_transformers import SentenceTransformer

from tests.support import ROOT
from tests.support.servers import LiveServer
from tests.support.wait import wait_until

TEXTS = [
    "How do I reset my password?",
    "Embeddings map text to vectors that capture meaning.",
    "The cat sat on the mat.",
    "Vector search finds the nearest neighbours of a query among millions of documents, "
    "which is what retrieval-augmented generation relies on.",
]


@pytest.fixture(scope="module")
def reference(minilm_dir: Path) -> np.ndarray:
    st = SentenceTransformer(str(minilm_dir), device="cpu")
    return st.encode(TEXTS, normalize_embeddings=True)


def test_openai_sdk_default_base64(live_minilm: LiveServer, reference: np.ndarray) -> None:
    from openai import OpenAI

    client = OpenAI(base_url=f"{live_minilm.url}/v1", api_key="unused")
    res = client.embeddings.create(model="all-MiniLM-L6-v2", input=TEXTS)
    got = np.array([d.embedding for d in res.data])
    assert got.shape == (4, 384)
    assert (got * reference).sum(axis=1).min() >= 0.9999
    assert res.usage.prompt_tokens > 0
    one = client.embeddings.create(model="all-MiniLM-L6-v2", input="hi", dimensions=64)
    assert len(one.data[0].embedding) == 64
    floats = client.embeddings.create(
        model="all-MiniLM-L6-v2", input=TEXTS[0], encoding_format="float"
    )
    np.testing.assert_allclose(floats.data[0].embedding, got[0], atol=1e-6)


def test_openai_sdk_errors(live_minilm: LiveServer) -> None:
    import openai

    client = openai.OpenAI(base_url=f"{live_minilm.url}/v1", api_key="unused", max_retries=0)
    with pytest.raises(openai.NotFoundError) as info:
        client.embeddings.create(model="gpt-nope", input="x")
    assert info.value.body["code"] == "model_not_found"  # type: ignore[index]
    with pytest.raises(openai.BadRequestError):
        client.embeddings.create(model="all-MiniLM-L6-v2", input="")


def test_langchain(live_minilm: LiveServer, reference: np.ndarray) -> None:
    from langchain_openai import OpenAIEmbeddings

    emb = OpenAIEmbeddings(
        model="all-MiniLM-L6-v2",
        base_url=f"{live_minilm.url}/v1",
        api_key="unused",  # type: ignore[arg-type]
        check_embedding_ctx_length=False,
    )
    docs = np.array(emb.embed_documents(TEXTS))
    assert (docs * reference).sum(axis=1).min() >= 0.9999
    q = np.array(emb.embed_query(TEXTS[0]))
    assert float(q @ reference[0]) >= 0.9999


def test_readme_python_examples_run(live_minilm: LiveServer) -> None:
    readme = (ROOT / "README.md").read_text()
    quick = readme.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", quick, re.S)
    assert len(blocks) >= 2
    for code in blocks:
        # Each print's trailing comment says what it prints (``print(...)  # 384``).
        expected = re.findall(r"^print\(.*\)\s+#\s*(.+?)\s*$", code, re.M)
        assert expected, code
        printed: list[str] = []

        def capture(*args: object) -> None:
            printed.append(" ".join(map(str, args)))

        code = code.replace("http://127.0.0.1:8008", live_minilm.url)
        exec(compile(code, "README.md", "exec"), {"print": capture})
        assert printed == expected, code


def test_concurrent_requests_match_sequential(live_minilm: LiveServer) -> None:
    """Batching (many concurrent clients) gives the vectors one request at a time gives."""
    texts = [f"{t} (variant {i})" for i in range(12) for t in TEXTS]
    url = f"{live_minilm.url}/v1/embeddings"
    sequential = [
        httpx.post(url, json={"input": t}, timeout=30).json()["data"][0]["embedding"] for t in texts
    ]
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        concurrent_ = list(
            pool.map(
                lambda t: httpx.post(url, json={"input": t}, timeout=30).json()["data"][0][
                    "embedding"
                ],
                texts,
            )
        )
    np.testing.assert_allclose(np.array(concurrent_), np.array(sequential), atol=2e-5)


def test_base64_over_http(live_minilm: LiveServer) -> None:
    r = httpx.post(
        f"{live_minilm.url}/v1/embeddings",
        json={"input": TEXTS[0], "encoding_format": "base64"},
        timeout=30,
    )
    v = np.frombuffer(base64.b64decode(r.json()["data"][0]["embedding"]), dtype="<f4")
    assert v.shape == (384,)
    assert abs(float(np.linalg.norm(v)) - 1) < 1e-5


def test_sigkill_worker_mid_load(live_minilm: LiveServer) -> None:
    """No request hangs; each gets 200 or 503 + Retry-After; the server recovers."""
    url = f"{live_minilm.url}/v1/embeddings"
    [pid] = live_minilm.worker_pids()
    stop_at = time.monotonic() + 6

    def client(i: int) -> list[tuple[int, str | None]]:
        out = []
        with httpx.Client(timeout=30) as c:
            while time.monotonic() < stop_at:
                r = c.post(url, json={"input": [f"{TEXTS[i % 4]} {i}"] * 4})
                out.append((r.status_code, r.headers.get("retry-after")))
        return out

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        futs = [pool.submit(client, i) for i in range(8)]
        time.sleep(1.5)
        os.kill(pid, signal.SIGKILL)
        results = [x for f in futs for x in f.result(timeout=60)]
    statuses = {s for s, _ in results}
    assert statuses <= {200, 503}, statuses
    assert 503 in statuses
    assert all(ra is not None for s, ra in results if s == 503)
    wait_until(
        lambda: httpx.get(f"{live_minilm.url}/ready", timeout=5).status_code == 200,
        "the server to recover",
        timeout=60,
        every=0.2,
    )
    assert live_minilm.worker_pids() != [pid]
    assert httpx.post(url, json={"input": "back"}, timeout=30).status_code == 200
    # results after recovery are still 200 from here on
    assert live_minilm.proc.poll() is None
