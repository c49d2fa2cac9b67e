"""The llama.cpp engine on a decoder (causal, last-token pooling) GGUF: a tiny random Qwen2.

No reference implementation is compared here (the weights are random); what is checked is
what the causal path can get wrong: several sequences in one decode sharing a KV cache must
give each sequence exactly what it gets alone, and last-token pooling must pool the last
token of each sequence.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from embedhost.config import ModelConfig
from embedhost.engines.llama_cpp import LlamaCppEngine
from embedhost.tokenization import GGUFTokenizer
from tests.engines.gguf_build import tiny_decoder_gguf
from tests.support.engines import SENTENCES, cosine_rows


@pytest.fixture(scope="module")
def decoder_gguf() -> Path:
    return tiny_decoder_gguf()


def test_decoder_batches_like_one_at_a_time(decoder_gguf: Path) -> None:
    tok = GGUFTokenizer(decoder_gguf)
    assert (tok.prefix_specials, tok.suffix_specials) == (0, 0)
    # One token per byte: cut to fit the toy model's 128-token context.
    ids = [s[:100] for s in tok.encode_batch(SENTENCES)]
    assert len(ids[0]) == len(SENTENCES[0].encode())
    engine = LlamaCppEngine(ModelConfig(name="dec", engine="llama_cpp", path=str(decoder_gguf)))
    info = engine.load()
    try:
        assert (info.pooling, info.dims, info.max_tokens) == ("last", 64, 128)
        assert info.details["causal"] is True
        assert info.details["architecture"] == "qwen2"
        batched = engine.embed(ids * 3)  # several decodes, up to 64 sequences each
        single = np.concatenate([engine.embed([s]) for s in ids])
        for k in range(3):
            assert cosine_rows(batched[k * len(ids) : (k + 1) * len(ids)], single).min() >= 0.9999
        # Causal + last token: a sequence's vector is its last position's state, so a
        # prefix gives a different vector and appending tokens changes it.
        seq = ids[1]
        prefix = engine.embed([seq[:-1]])
        assert cosine_rows(prefix, single[1:2])[0] < 0.999
    finally:
        engine.close()
