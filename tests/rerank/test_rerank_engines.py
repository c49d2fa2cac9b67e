"""The cross-encoder fixture on each engine, against sentence-transformers' CrossEncoder on
the same weights: the raw logits in float32 within 1e-4 (the sigmoid is the API
process's, identical for all), bf16 within 1e-2, and the order of a 20-document list."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from embedhost.config import ModelConfig
from embedhost.engines import create_engine
from embedhost.engines.rerank import pair_template
from embedhost.pairs import build, content_ids
from embedhost.tokenization import HFTokenizer
from tests.support.engines import SENTENCES

QUERY = "Where do plants store the energy they take from light?"
DOCS = [
    *SENTENCES,
    *(f"{s} Also: {t}" for s, t in zip(SENTENCES, reversed(SENTENCES), strict=True)),
][:20]


@pytest.fixture(scope="module")
def expected(cross_encoder_dir: Path) -> Any:
    from sentence_transformers import CrossEncoder

    ce = CrossEncoder(str(cross_encoder_dir), device="cpu")
    return ce.predict([(QUERY, d) for d in DOCS], activation_fn=torch.nn.Identity())


def _score(
    engine_name: str, path: Path, dtype: str = "float32", options: dict[str, Any] | None = None
) -> np.ndarray:
    config = ModelConfig(
        name="ce",
        engine=engine_name,
        path=str(path),
        dtype=dtype,
        warmup=False,
        engine_options=options or {},
    )
    engine = create_engine(config)
    info = engine.load()
    try:
        assert info.task == "rerank" and info.dims == 1
        tok = HFTokenizer(path)
        pairs = build(
            pair_template(path / "tokenizer.json"),
            content_ids(tok, [QUERY], "query"),
            content_ids(tok, DOCS, "documents"),
            info.max_tokens,
            "refuse",
        )
        out = engine.embed(pairs.seqs)
    finally:
        engine.close()
    return np.asarray(out)[:, 0]


@pytest.mark.parametrize("packing", [True, False], ids=["packed", "padded"])
def test_transformers_float32(cross_encoder_dir: Path, expected: Any, packing: bool) -> None:
    got = _score("transformers", cross_encoder_dir, options={"packing": packing})
    np.testing.assert_allclose(got, expected, atol=1e-4)
    assert list(np.argsort(-got)) == list(np.argsort(-expected))


def test_transformers_bfloat16(cross_encoder_dir: Path, expected: Any) -> None:
    got = _score("transformers", cross_encoder_dir, "bfloat16")
    sig = lambda x: 1 / (1 + np.exp(-x))  # noqa: E731 - the relevance the API answers
    np.testing.assert_allclose(sig(got), sig(expected), atol=1e-2)


def test_onnx_float32(cross_encoder_onnx_dir: Path, expected: Any) -> None:
    got = _score("onnx", cross_encoder_onnx_dir)
    np.testing.assert_allclose(got, expected, atol=1e-4)
    assert list(np.argsort(-got)) == list(np.argsort(-expected))
