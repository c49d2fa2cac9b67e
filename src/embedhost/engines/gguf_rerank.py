"""GGUF rerankers, as llama.cpp computes them.

A GGUF is a reranker when its metadata has ``{arch}.classifier.output_labels`` (what the
converter writes with the ``cls_out`` tensors of a ``*ForSequenceClassification`` model)
or rank pooling (``{arch}.pooling_type`` = 4). llama.cpp scores it its own way: the
converter drops BERT's pooler (``bert.pooler.dense``) and every token gets token type 0,
so the scores are llama.cpp's (``llama-server --reranking`` answers the same), not the
Hugging Face model's.

The pair layout is llama-server's (``format_prompt_rerank``): ``[BOS] q [EOS] [SEP] d
[EOS]`` by the vocabulary's add-BOS/EOS/SEP flags (``[CLS] q [SEP] d [SEP]`` for BERT);
a GGUF that carries a ``rerank`` chat template is not supported yet.
"""

from __future__ import annotations

import struct
from pathlib import Path

from embedhost.engines.gguf import GGUFModel, library
from embedhost.engines.rerank import EMBED, RERANK, PairTemplate
from embedhost.errors import ConfigError

RANK_POOLING = 4  # LLAMA_POOLING_TYPE_RANK


# GGUF value types (gguf spec): fixed sizes, 8 = string, 9 = array.
_SIZES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
_STRING, _ARRAY = 8, 9


def _header(path: Path) -> tuple[set[str], set[str]]:
    """The metadata keys and tensor names in a GGUF file's header. llama.cpp's metadata
    API leaves out array values (``classifier.output_labels`` is one), so this reads the
    header itself (a few kB; the tensor data is not touched)."""
    with path.open("rb") as f:

        def u32() -> int:
            return int(struct.unpack("<I", f.read(4))[0])

        def u64() -> int:
            return int(struct.unpack("<Q", f.read(8))[0])

        def string() -> str:
            return f.read(u64()).decode("utf-8", "replace")

        def skip(kind: int) -> None:
            if kind == _STRING:
                f.seek(u64(), 1)
            elif kind == _ARRAY:
                inner, count = u32(), u64()
                if inner in _SIZES:
                    f.seek(_SIZES[inner] * count, 1)
                else:
                    for _ in range(count):
                        skip(inner)
            else:
                f.seek(_SIZES[kind], 1)

        if f.read(4) != b"GGUF":
            return set(), set()
        u32()  # version
        n_tensors, n_kv = u64(), u64()
        keys = set()
        for _ in range(n_kv):
            keys.add(string())
            skip(u32())
        tensors = set()
        for _ in range(n_tensors):
            tensors.add(string())
            f.seek(8 * u32() + 4 + 8, 1)  # dims, type, offset
    return keys, tensors


def gguf_task(model: GGUFModel, path: Path) -> str:
    arch = model.architecture
    if model.meta_int(f"{arch}.pooling_type") == RANK_POOLING:
        return RERANK
    keys, tensors = _header(path)
    if f"{arch}.classifier.output_labels" in keys or "cls.output.weight" in tensors:
        return RERANK
    return EMBED


def gguf_pair_template(model: GGUFModel) -> PairTemplate:
    llama = library()
    if llama.llama_model_chat_template(model.ptr, b"rerank"):
        raise ConfigError("a GGUF with a rerank prompt template is not supported yet")
    vocab = model.vocab
    eos = int(llama.llama_vocab_eos(vocab))
    sep = int(llama.llama_vocab_sep(vocab))
    if eos < 0:
        eos = sep
    add_bos = bool(llama.llama_vocab_get_add_bos(vocab))
    add_eos = bool(llama.llama_vocab_get_add_eos(vocab))
    add_sep = bool(llama.llama_vocab_get_add_sep(vocab))
    prefix = (int(llama.llama_vocab_bos(vocab)),) if add_bos else ()
    middle = ((eos,) if add_eos else ()) + ((sep,) if add_sep else ())
    suffix = (eos,) if add_eos else ()
    # llama.cpp gives every token type 0: no second segment type.
    return PairTemplate(prefix, middle, suffix, 0)
