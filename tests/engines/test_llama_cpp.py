"""The llama.cpp engine on a real GGUF (MiniLM converted by llama.cpp's own converter)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from embedhost.config import ModelConfig
from embedhost.engines.llama_cpp import LlamaCppEngine
from embedhost.engines.transformers import TransformersEngine
from embedhost.errors import ConfigError
from embedhost.modelfiles import quantization_mismatches
from embedhost.tokenization import GGUFTokenizer, HFTokenizer, prepare_texts
from tests.support.engines import SENTENCES, cosine_rows


def gguf_config(path: Path, **kw: object) -> ModelConfig:
    return ModelConfig.model_validate(
        {"name": "minilm-gguf", "engine": "llama_cpp", "path": str(path), **kw}
    )


@pytest.fixture(scope="module")
def engine(gguf_f16: Path) -> Iterator[LlamaCppEngine]:
    e = LlamaCppEngine(gguf_config(gguf_f16))
    e.load()
    yield e
    e.close()


@pytest.fixture(scope="module")
def gguf_tok(gguf_f16: Path) -> GGUFTokenizer:
    return GGUFTokenizer(gguf_f16)


@pytest.fixture(scope="module")
def hf_tok(minilm_dir: Path) -> HFTokenizer:
    return HFTokenizer(minilm_dir)


def test_info_from_gguf_metadata(gguf_f16: Path) -> None:
    e = LlamaCppEngine(gguf_config(gguf_f16))
    info = e.load()
    e.close()
    assert (info.engine, info.dims, info.max_tokens, info.pooling) == (
        "llama_cpp",
        384,
        512,
        "mean",
    )
    assert info.dtype == "f16"
    assert info.packs  # llama.cpp decodes sequences without padding
    d = info.details
    assert d["architecture"] == "bert"
    assert d["quantization"] == "f16"
    assert d["file_type"] == 1
    assert d["context_length"] == 512
    assert d["pooling_in_file"] == "mean"
    assert d["causal"] is False
    assert d["vocab_size"] == 30522
    assert "warnings" not in d


def test_parity_with_transformers(
    engine: LlamaCppEngine, reference: TransformersEngine, gguf_tok: GGUFTokenizer
) -> None:
    ids = gguf_tok.encode_batch(SENTENCES)
    ours = engine.embed(ids)
    ref = reference.embed(ids)
    assert ours.dtype == np.float32
    assert ours.shape == (len(SENTENCES), 384)
    cos = cosine_rows(ours, ref)
    assert cos.min() >= 0.999, cos
    # Unnormalized, as the engine contract says (MiniLM's pooled vectors are not unit length).
    assert not np.allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-3)


def test_token_counting_matches_hf_tokenizer(gguf_tok: GGUFTokenizer, hf_tok: HFTokenizer) -> None:
    assert gguf_tok.vocab_size == hf_tok.vocab_size
    assert (gguf_tok.prefix_specials, gguf_tok.suffix_specials) == (1, 1)
    ours = gguf_tok.encode_batch(SENTENCES)
    theirs = hf_tok.encode_batch(SENTENCES)
    for text, a, b in zip(SENTENCES, ours, theirs, strict=True):
        assert (a[0], a[-1]) == (101, 102), text  # [CLS] ... [SEP]
        # llama.cpp's WordPiece and HF's agree on plain English; accents and emoji may
        # split differently by a token or two.
        assert abs(len(a) - len(b)) <= 2, (text, a, b)
    plain = [i for i, t in enumerate(SENTENCES) if t.isascii()]
    assert all(ours[i] == theirs[i] for i in plain)


def test_truncation_keeps_specials(
    engine: LlamaCppEngine, reference: TransformersEngine, gguf_tok: GGUFTokenizer
) -> None:
    long_text = " ".join(SENTENCES * 10)
    assert len(gguf_tok.encode_batch([long_text])[0]) > 512
    right = prepare_texts(gguf_tok, [long_text], 16, "right")
    left = prepare_texts(gguf_tok, [long_text], 16, "left")
    full = gguf_tok.encode_batch([long_text])[0]
    assert right.counts == [16]
    assert right.truncated == [True]
    assert right.ids[0] == [*full[:15], 102]
    assert left.ids[0] == [101, *full[-15:]]
    # The model's own limit (512) also holds for the engine.
    limit = prepare_texts(gguf_tok, [long_text], engine_info_max(engine), "right")
    vec = engine.embed(limit.ids)
    assert cosine_rows(vec, reference.embed(limit.ids))[0] >= 0.999


def engine_info_max(engine: LlamaCppEngine) -> int:
    return engine._n_batch


def test_batched_equals_one_at_a_time(engine: LlamaCppEngine, gguf_tok: GGUFTokenizer) -> None:
    ids = gguf_tok.encode_batch(SENTENCES * 8)  # 96 sequences: several decodes, n_seq_max=64
    batched = engine.embed(ids)
    single = np.concatenate([engine.embed([s]) for s in ids[: len(SENTENCES)]])
    assert batched.shape == (len(ids), 384)
    for k in range(8):
        block = batched[k * len(SENTENCES) : (k + 1) * len(SENTENCES)]
        np.testing.assert_allclose(block, single, rtol=0, atol=2e-3)
        assert cosine_rows(block, single).min() >= 0.99999


def test_small_token_budget_splits_decodes(
    gguf_f16: Path, gguf_tok: GGUFTokenizer, engine: LlamaCppEngine
) -> None:
    ids = gguf_tok.encode_batch(SENTENCES)
    small = LlamaCppEngine(
        gguf_config(gguf_f16, max_input_tokens=64, engine_options={"n_batch": 64, "n_seq_max": 3})
    )
    info = small.load()
    assert info.max_tokens == 64
    assert info.details["n_batch"] == 64
    # n_seq_max is rounded down to a power of two (llama.cpp aborts on others).
    assert info.details["n_seq_max"] == 2
    try:
        vecs = small.embed(ids)
    finally:
        small.close()
    assert cosine_rows(vecs, engine.embed(ids)).min() >= 0.99999


def test_quantization_mismatch_is_reported(gguf_f16: Path, tmp_path: Path) -> None:
    misnamed = tmp_path / "all-MiniLM-L6-v2-q8_0.gguf"
    shutil.copyfile(gguf_f16, misnamed)
    e = LlamaCppEngine(gguf_config(misnamed, quantization="q4_0"))
    info = e.load()
    e.close()
    warnings = info.details["warnings"]
    assert any("configured as 'q4_0'" in w and "'f16'" in w for w in warnings), warnings
    assert any("file name says 'q8_0'" in w for w in warnings), warnings
    assert quantization_mismatches(gguf_f16, "F16", 1) == []


def test_unknown_engine_option_is_a_config_error(gguf_f16: Path) -> None:
    with pytest.raises(ConfigError, match="n_batchh"):
        LlamaCppEngine(gguf_config(gguf_f16, engine_options={"n_batchh": 8})).load()
    with pytest.raises(ConfigError, match="n_ctx"):
        LlamaCppEngine(gguf_config(gguf_f16, engine_options={"n_ctx": "big"})).load()


def test_max_pooling_matches_transformers(
    gguf_f16: Path, gguf_tok: GGUFTokenizer, minilm_dir: Path
) -> None:
    ids = gguf_tok.encode_batch(SENTENCES[:4])
    e = LlamaCppEngine(gguf_config(gguf_f16, pooling="max"))
    e.load()
    ref = TransformersEngine(
        ModelConfig(name="r", path=str(minilm_dir), dtype="float32", pooling="max")
    )
    ref.load()
    try:
        assert cosine_rows(e.embed(ids), ref.embed(ids)).min() >= 0.999
    finally:
        e.close()
        ref.close()
