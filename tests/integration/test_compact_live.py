"""Compact vectors on real `embedhost serve` processes with the real MiniLM: the Cohere SDK
unchanged (``ClientV2(base_url=...)``), and int8 bytes identical across two server
processes that calibrate at the same moment, and after a restart (one calibration file,
computed once, read by every process)."""

from __future__ import annotations

import concurrent.futures
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cohere
import httpx
import numpy as np
import pytest
from sentence_transformers import SentenceTransformer
from sentence_transformers.util.quantization import quantize_embeddings

from embedhost.calibration import BUNDLED_CORPUS
from tests.support import MINILM, ROOT
from tests.support.servers import LiveServer, start_server, stop_server

pytestmark = pytest.mark.slow

TEXTS = [
    "How do I reset my password?",
    "Int8 vectors take a quarter of the space of float32 ones.",
    "The cat sat on the mat.",
]
TYPES = ["float", "int8", "uint8", "binary", "ubinary", "base64"]


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The config both servers share: one calibration directory, a 64-text corpus."""
    tmp = tmp_path_factory.mktemp("compact")
    corpus = tmp / "corpus.txt"
    corpus.write_text("\n".join(BUNDLED_CORPUS.read_text().splitlines()[:64]) + "\n")
    return {
        "models": [
            {
                "name": "all-MiniLM-L6-v2",
                "path": MINILM,
                "dtype": "float32",
                "calibration_corpus": str(corpus),
            }
        ],
        "quantization": {"dir": str(tmp / "calibration")},
    }


@pytest.fixture(scope="module")
def servers(
    shared: dict[str, Any], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[list[LiveServer]]:
    started: list[LiveServer] = []
    try:
        for name in ("a", "b"):
            started.append(start_server(tmp_path_factory.mktemp(name), shared))
        yield started
    finally:
        for s in started:
            stop_server(s)


def _int8(url: str) -> dict[str, Any]:
    r = httpx.post(
        f"{url}/v2/embed",
        json={
            "texts": TEXTS,
            "input_type": "search_document",
            "embedding_types": ["int8", "uint8", "binary"],
        },
        timeout=300,
    )
    assert r.status_code == 200, r.text
    embeddings: dict[str, Any] = r.json()["embeddings"]
    return embeddings


def _calibration(url: str) -> dict[str, Any]:
    info = httpx.get(f"{url}/info", timeout=10).json()
    (got,) = info["quantization"]["calibrations"].values()
    assert isinstance(got, dict)
    return got


def test_int8_same_bytes_across_processes_and_after_restart(
    servers: list[LiveServer], shared: dict[str, Any], tmp_path_factory: pytest.TempPathFactory
) -> None:
    a, b = servers
    # Both calibrate at once (neither has a calibration yet): one file wins, both use it.
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        got_a, got_b = pool.map(_int8, [a.url, b.url])
    assert got_a == got_b
    cal_a, cal_b = _calibration(a.url), _calibration(b.url)
    assert cal_a == cal_b and cal_a["texts"] == 64 and cal_a["corpus"].endswith("corpus.txt")
    directory = Path(shared["quantization"]["dir"])
    files = sorted(p.name for p in directory.rglob("*") if p.is_file())
    assert files == [Path(cal_a["path"]).name], files  # one file, no temporary left
    assert Path(cal_a["path"]).parent.name == cal_a["weights"].removeprefix("sha256:")
    # A restarted process reads the file: same ranges, same bytes, nothing recomputed.
    stop_server(a)
    again = start_server(tmp_path_factory.mktemp("a2"), shared)
    servers[0] = again  # the fixture stops it
    assert _int8(again.url) == got_a
    assert _calibration(again.url) == cal_a


def test_cohere_sdk_unchanged(servers: list[LiveServer], minilm_dir: Path) -> None:
    with cohere.ClientV2(base_url=servers[0].url, api_key="unused") as co:
        r = co.embed(
            model="all-MiniLM-L6-v2",
            texts=TEXTS,
            input_type="search_query",
            embedding_types=TYPES,  # type: ignore[arg-type]
        )
    f = np.array(r.embeddings.float_, dtype=np.float32)
    ref = SentenceTransformer(str(minilm_dir), device="cpu").encode(
        TEXTS, normalize_embeddings=True
    )
    assert f.shape == (3, 384)
    assert (np.sum(f * ref, axis=1) >= 0.999).all()
    assert np.array_equal(np.array(r.embeddings.binary), quantize_embeddings(f, "binary"))
    assert np.array_equal(np.array(r.embeddings.ubinary), quantize_embeddings(f, "ubinary"))
    int8 = np.array(r.embeddings.int8)
    assert int8.shape == (3, 384) and int8.min() >= -128 and int8.max() <= 127
    assert np.array_equal(int8 + 128, np.array(r.embeddings.uint8))
    assert len(r.embeddings.base64 or []) == 3
    assert r.meta is not None and r.meta.billed_units is not None
    assert r.meta.billed_units.input_tokens and r.meta.billed_units.input_tokens > 3


def test_readme_compact_vectors_examples_run(servers: list[LiveServer]) -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Compact vectors", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, re.S)
    assert blocks
    for code in blocks:
        # Each print's trailing comment says what it prints (``print(...)  # 384``).
        expected = re.findall(r"^print\(.*\)\s+#\s*(.+?)\s*$", code, re.M)
        assert expected, code
        printed: list[str] = []

        def capture(*args: object) -> None:
            printed.append(" ".join(map(str, args)))

        code = code.replace("http://127.0.0.1:8008", servers[0].url)
        exec(compile(code, "README.md", "exec"), {"print": capture})
        assert printed == expected, code
