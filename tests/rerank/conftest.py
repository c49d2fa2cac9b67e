"""Fixtures of the rerank tests: the cross-encoder built from the packaged MiniLM
(tests/support/crossencoder.py, cached under .cache/crossencoder/)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.crossencoder import cross_encoder_onnx, minilm_cross_encoder


@pytest.fixture(scope="session")
def cross_encoder_dir() -> Path:
    return minilm_cross_encoder()


@pytest.fixture(scope="session")
def cross_encoder_onnx_dir() -> Path:
    """The fixture through `embedhost export-onnx` (cached under .cache/crossencoder/)."""
    return cross_encoder_onnx()
