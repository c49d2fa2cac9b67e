"""The transformers engine against sentence-transformers on the same weights."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sentence_transformers import SentenceTransformer

from embedhost.config import ModelConfig
from embedhost.engines.base import Vectors, read_st_config
from embedhost.engines.transformers import TransformersEngine, resolve_dtype
from embedhost.tokenization import HFTokenizer, prepare_texts

SENTENCES = [
    "A man is eating food.",
    "A man is eating a piece of bread.",
    "The girl is carrying a baby.",
    "A man is riding a horse.",
    "A woman is playing violin.",
    "Two men pushed carts through the woods.",
    "A man is riding a white horse on an enclosed ground.",
    "A monkey is playing drums.",
    "Someone in a gorilla costume is playing a set of drums.",
    "Vector databases index embeddings for approximate nearest-neighbour search, which makes "
    "retrieval-augmented generation practical at scale; chunk sizes, overlap and the choice of "
    "embedding model all change recall.",
    "short",
]


@pytest.fixture(scope="module")
def reference(minilm_dir: Path) -> Vectors:
    st = SentenceTransformer(str(minilm_dir), device="cpu")
    out: Vectors = st.encode(SENTENCES, convert_to_numpy=True, normalize_embeddings=False)
    return out


def embed_all(
    engine: TransformersEngine, tok: HFTokenizer, texts: list[str], max_tokens: int
) -> Vectors:
    ids = prepare_texts(tok, texts, max_tokens, "right").ids
    v = engine.embed(ids)
    normed: Vectors = v / np.linalg.norm(v, axis=1, keepdims=True)
    return normed


def cosines(a: Vectors, b: Vectors) -> Vectors:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    out: Vectors = (a * b).sum(axis=1)
    return out


def test_reads_sentence_transformers_config(minilm_dir: Path) -> None:
    assert read_st_config(minilm_dir) == {"normalize": True, "pooling": "mean", "max_tokens": 256}


@pytest.mark.parametrize(("dtype", "floor"), [("float32", 0.9999), ("bfloat16", 0.999)])
def test_parity_with_sentence_transformers(
    minilm_dir: Path, reference: Vectors, dtype: str, floor: float
) -> None:
    cfg = ModelConfig(name="m", path=str(minilm_dir), dtype=dtype)  # type: ignore[arg-type]
    engine = TransformersEngine(cfg)
    info = engine.load()
    assert info.dims == 384
    assert info.max_tokens == 256
    assert info.normalize is True
    assert info.pooling == "mean"
    assert info.dtype == dtype
    ours = embed_all(engine, HFTokenizer(minilm_dir), SENTENCES, info.max_tokens)
    cos = cosines(ours, reference)
    assert cos.min() >= floor, cos


def test_batching_does_not_change_vectors(minilm_dir: Path) -> None:
    engine = TransformersEngine(ModelConfig(name="m", path=str(minilm_dir), dtype="float32"))
    info = engine.load()
    tok = HFTokenizer(minilm_dir)
    ids = prepare_texts(tok, SENTENCES, info.max_tokens, "right").ids
    batched = engine.embed(ids)
    singles = np.stack([engine.embed([s])[0] for s in ids])
    np.testing.assert_allclose(batched, singles, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("pooling", ["cls", "max", "last"])
def test_other_poolings_match_definitions(minilm_dir: Path, pooling: str) -> None:
    import torch
    from transformers import AutoModel

    engine = TransformersEngine(
        ModelConfig(name="m", path=str(minilm_dir), dtype="float32", pooling=pooling)  # type: ignore[arg-type]
    )
    assert engine.load().pooling == pooling
    tok = HFTokenizer(minilm_dir)
    ids = prepare_texts(tok, SENTENCES[:3], 256, "right").ids
    ours = engine.embed(ids)
    model = AutoModel.from_pretrained(str(minilm_dir)).eval()
    for i, seq in enumerate(ids):
        with torch.inference_mode():
            h = model(input_ids=torch.tensor([seq])).last_hidden_state[0].numpy()
        want = {"cls": h[0], "max": h.max(axis=0), "last": h[-1]}[pooling]
        np.testing.assert_allclose(ours[i], want, rtol=1e-4, atol=1e-4)


def test_dtype_auto_follows_the_cpu() -> None:
    from embedhost.engines.transformers import cpu_has_native_bf16

    assert resolve_dtype("auto", "cpu") == ("bfloat16" if cpu_has_native_bf16() else "float32")
    assert resolve_dtype("float32", "cpu") == "float32"
    assert resolve_dtype("auto", "mps") == "float32"


@pytest.mark.parametrize(
    ("var", "value", "native"),
    [
        ("ATEN_CPU_CAPABILITY", "avx2", False),
        ("ATEN_CPU_CAPABILITY", "default", False),
        ("ONEDNN_MAX_CPU_ISA", "AVX2", False),
        ("ONEDNN_MAX_CPU_ISA", "AVX512_CORE", False),
        ("ONEDNN_MAX_CPU_ISA", "AVX512_CORE_BF16", None),
        ("ONEDNN_MAX_CPU_ISA", "ALL", None),
    ],
)
def test_an_isa_cap_below_bf16_means_float32(
    monkeypatch: pytest.MonkeyPatch, var: str, value: str, native: bool | None
) -> None:
    # A process capped below bfloat16 (an AVX2-only machine emulated, or an operator's
    # cap) would emulate it slowly: dtype auto picks float32. None: the CPU decides.
    from embedhost.engines.transformers import cpu_has_native_bf16

    monkeypatch.delenv("ATEN_CPU_CAPABILITY", raising=False)
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    uncapped = cpu_has_native_bf16()
    monkeypatch.setenv(var, value)
    assert cpu_has_native_bf16() is (uncapped if native is None else native)


@pytest.mark.parametrize("pooling", ["mean", "cls", "max", "last"])
def test_packed_rows_match_padded_batches(minilm_dir: Path, pooling: str) -> None:
    """Packing (the default for BERT-class models) computes each sequence as if it were alone."""
    tok = HFTokenizer(minilm_dir)
    long_text = " ".join(SENTENCES * 3)  # truncated at 256 tokens: a row of its own
    # Over FORWARD_TOKENS (2048) in all: the packed engine runs it as two forward passes.
    texts = [*SENTENCES, *[long_text] * 8, SENTENCES[0]]
    out = {}
    for packing in (True, False):
        engine = TransformersEngine(
            ModelConfig(
                name="m",
                path=str(minilm_dir),
                dtype="float32",
                pooling=pooling,  # type: ignore[arg-type]
                engine_options={"packing": packing},
            )
        )
        info = engine.load()
        assert info.packs is info.details["packing"] is packing
        out[packing] = engine.embed(prepare_texts(tok, texts, info.max_tokens, "right").ids)
    np.testing.assert_allclose(out[True], out[False], rtol=1e-4, atol=2e-5)


def test_packing_option_is_checked(minilm_dir: Path) -> None:
    from embedhost.errors import ConfigError

    engine = TransformersEngine(
        ModelConfig(name="m", path=str(minilm_dir), engine_options={"packing": "yes"})
    )
    with pytest.raises(ConfigError, match="packing must be true, false or auto"):
        engine.load()
