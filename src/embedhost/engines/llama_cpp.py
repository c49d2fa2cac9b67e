"""The llama.cpp engine: GGUF models through llama-cpp-python's low-level API (``engines/gguf.py``).

:class:`LlamaCppEngine` runs in the worker. It packs several sequences into one
``llama_batch`` (one seq_id each) per decode and reads one pooled vector per sequence, so a
batch of short texts costs one graph evaluation instead of one per text. The tokens packed
per decode (``batch_tokens``) stay few by default: attention spans the whole ubatch, so very
large ubatches of many short sequences are slower per text than several small ones.
``n_batch``/``n_ubatch`` are the context's capacity: at least the longest input.

Encoder models (BERT-class, non-causal) need a whole decode in one ubatch, so for them
``n_ubatch`` = ``n_batch``. Decoder embedding models (Qwen-class, causal, last-token
pooling) use a unified KV cache that is cleared before every decode.

The GGUF metadata (architecture, dimensions, context length, pooling, ``general.file_type``)
is shown on ``/info`` through ``EngineInfo.details``; a configured quantization or a file
name that disagrees with ``general.file_type`` is logged as a warning and shown there too.
"""

from __future__ import annotations

import ctypes
import logging
import os
from typing import Any

import numpy as np

from embedhost.config import ModelConfig
from embedhost.engines.base import EngineInfo, Vectors, check_options
from embedhost.engines.gguf import GGUFModel, library
from embedhost.engines.gguf_rerank import RANK_POOLING, gguf_task
from embedhost.engines.rerank import EMBED, POOLING, RERANK, resolve_task
from embedhost.errors import ConfigError
from embedhost.modelfiles import quantization_mismatches, quantization_of

log = logging.getLogger(__name__)

# Measured on a 2-core x86 CPU with MiniLM f16 (bench/RESULTS.md, issue 3): short texts
# (~17 tokens) ran about 1.3-1.6x faster per text at 64-128 tokens per decode than one per
# decode, and 512-1024 tokens per decode were no better than 128: attention spans the whole
# ubatch, so packing more short sequences adds quadratic work. Passages (~120 tokens) go
# one per decode either way.
DEFAULT_BATCH_TOKENS = 128
"""Tokens packed into one decode (``engine_options.batch_tokens``); a longer sequence goes alone."""
DEFAULT_SEQ_MAX = 64
# llama.cpp's LLAMA_MAX_SEQ.
_MAX_SEQ = 256

_POOLING_TO_LLAMA = {"none": 0, "mean": 1, "cls": 2, "last": 3, "rank": 4}
_LLAMA_TO_POOLING = {v: k for k, v in _POOLING_TO_LLAMA.items()}

# engine_options understood by this engine (anything else is a config error, not a silent no-op).
OPTIONS = {
    "n_gpu_layers": int,
    "n_ctx": int,
    "batch_tokens": int,
    "n_batch": int,
    "n_ubatch": int,
    "n_seq_max": int,
    "n_threads": int,
    "n_threads_batch": int,
    "use_mmap": bool,
    "use_mlock": bool,
    "flash_attn": bool,
    "verbose": bool,
    "tokenizer": str,  # read by the API process (tokenization.load_tokenizer)
}


class LlamaCppEngine:
    def __init__(self, config: ModelConfig) -> None:
        self.config = config
        self._model: GGUFModel | None = None
        self._ctx: Any = None
        self._llama: Any = None
        self._dims = 0
        self._pool_max = False
        self._has_memory = False
        self._n_batch = DEFAULT_BATCH_TOKENS
        self._budget = DEFAULT_BATCH_TOKENS
        self._n_seq_max = DEFAULT_SEQ_MAX
        self._states_ctx: Any = None
        self._states_params: dict[str, Any] = {}

    def load(self) -> EngineInfo:
        cfg = self.config
        opts = check_options("llama_cpp", cfg.engine_options, OPTIONS)
        llama = library()
        self._llama = llama
        if opts.get("verbose"):
            logging.getLogger("llama-cpp-python").setLevel(logging.DEBUG)
        path = cfg.resolved_path()
        on_gpu = cfg.device != "cpu"
        model = GGUFModel(
            path,
            vocab_only=False,
            params={
                "n_gpu_layers": int(opts.get("n_gpu_layers", -1 if on_gpu else 0)),
                "use_mmap": bool(opts.get("use_mmap", True)),
                "use_mlock": bool(opts.get("use_mlock", False)),
            },
        )
        self._model = model
        arch = model.architecture
        n_ctx_train = int(llama.llama_model_n_ctx_train(model.ptr))
        self._dims = int(
            llama.llama_model_n_embd_out(model.ptr) or llama.llama_model_n_embd(model.ptr)
        )
        file_pooling = model.meta_int(f"{arch}.pooling_type")
        causal = model.metadata.get(f"{arch}.attention.causal", "true").lower() != "false"
        if arch in (
            "bert",
            "nomic-bert",
            "nomic-bert-moe",
            "jina-bert-v2",
            "modern-bert",
            "neo-bert",
            "t5encoder",
        ):
            causal = False
        if cfg.pooling == "auto":
            pooling = _LLAMA_TO_POOLING.get(file_pooling or -1, "last" if causal else "mean")
        else:
            pooling = cfg.pooling
        rerank = resolve_task(cfg, gguf_task(model, path)) == RERANK
        if rerank:
            # Rank pooling: n_cls_out scores per sequence (engines/gguf_rerank.py).
            pooling = "rank"
            self._dims = int(llama.llama_model_n_cls_out(model.ptr))
        elif pooling in ("none", "rank"):
            raise ConfigError(
                f"{path.name} has pooling {pooling!r}, not an embedding pooling; "
                "set pooling: mean, cls or last"
            )
        self._pool_max = pooling == "max"

        self._budget = max(1, int(opts.get("batch_tokens", DEFAULT_BATCH_TOKENS)))
        self._n_batch = int(opts.get("n_batch", self._budget))
        # llama.cpp 0.3.36 aborts (GGML_ASSERT in build_pooling) while reserving the graph
        # when n_seq_max is not a power of two: round down instead of crashing the worker.
        seq_max = max(1, min(int(opts.get("n_seq_max", DEFAULT_SEQ_MAX)), _MAX_SEQ))
        self._n_seq_max = 1 << (seq_max.bit_length() - 1)
        max_tokens = min(
            cfg.max_input_tokens or n_ctx_train, n_ctx_train, opts.get("n_ctx", n_ctx_train)
        )
        # One sequence must fit in one decode: the capacity is at least the longest input.
        self._n_batch = max(self._n_batch, max_tokens)
        self._budget = min(self._budget, self._n_batch)
        n_ubatch = int(opts.get("n_ubatch", min(self._n_batch, 512)))
        if not causal:
            # Non-causal attention needs every token of a decode in one ubatch.
            n_ubatch = self._n_batch
        n_ctx = int(opts.get("n_ctx", max(self._n_batch, max_tokens)))
        if n_ctx < self._n_batch:
            raise ConfigError(
                f"engine_options.n_ctx ({n_ctx}) is smaller than n_batch ({self._n_batch}); "
                "raise n_ctx"
            )
        threads = int(opts.get("n_threads", cfg.threads or _cpu_count()))

        cparams = llama.llama_context_default_params()
        cparams.embeddings = True
        cparams.n_ctx = n_ctx
        cparams.n_batch = self._n_batch
        cparams.n_ubatch = n_ubatch
        cparams.n_seq_max = self._n_seq_max
        cparams.n_threads = threads
        cparams.n_threads_batch = int(opts.get("n_threads_batch", threads))
        # Every sequence of a decode shares one KV cache (instead of n_ctx / n_seq_max each).
        cparams.kv_unified = True
        cparams.pooling_type = (
            RANK_POOLING if rerank else 0 if self._pool_max else _POOLING_TO_LLAMA[pooling]
        )
        if "flash_attn" in opts:
            cparams.flash_attn_type = 1 if opts["flash_attn"] else 0
        elif rerank:
            # CPU flash attention runs in f16: a pair's score then moves with its batch
            # neighbours (7e-4 on the test fixture); off, within 1e-4 of llama-server's.
            cparams.flash_attn_type = 0
        ctx = llama.llama_init_from_model(model.ptr, cparams)
        if not ctx:
            raise RuntimeError(f"{path.name}: llama.cpp could not create a context (n_ctx={n_ctx})")
        self._ctx = ctx
        self._has_memory = bool(llama.llama_get_memory(ctx))
        # The token-states context (pooling none) is made on first use only.
        self._states_params = {
            "n_ctx": max_tokens,
            "threads": threads,
            "threads_batch": int(opts.get("n_threads_batch", threads)),
            "flash_attn": opts.get("flash_attn"),
        }

        file_type = model.meta_int("general.file_type")
        warnings = quantization_mismatches(path, cfg.quantization, file_type)
        for w in warnings:
            log.warning("model %s: %s", cfg.ref, w)
        details: dict[str, Any] = {
            "architecture": arch,
            "gguf_name": model.metadata.get("general.name"),
            "quantization": quantization_of(file_type),
            "file_type": file_type,
            "context_length": n_ctx_train,
            "embedding_length": self._dims,
            "pooling_in_file": _LLAMA_TO_POOLING.get(file_pooling)
            if file_pooling is not None
            else None,
            "causal": causal,
            "n_ctx": int(llama.llama_n_ctx(ctx)),
            # Sequences share a decode without padding: the batcher need not sort by length.
            "packing": True,
            "batch_tokens": self._budget,
            "n_batch": self._n_batch,
            "n_ubatch": n_ubatch,
            "n_seq_max": self._n_seq_max,
            "n_threads": threads,
            "n_gpu_layers": int(opts.get("n_gpu_layers", -1 if on_gpu else 0)),
            "vocab_size": model.n_vocab,
        }
        if warnings:
            details["warnings"] = warnings
        dtype = quantization_of(file_type) or "?"
        return EngineInfo(
            engine="llama_cpp",
            dims=self._dims,
            max_tokens=max_tokens,
            pooling=POOLING if rerank else pooling,
            task=RERANK if rerank else EMBED,
            normalize=not rerank if cfg.normalize is None else cfg.normalize,
            dtype=dtype,
            device=cfg.device,
            packs=True,  # sequences share a decode without padding
            token_states=True,
            details=details,
        )

    def embed(self, batch: list[list[int]]) -> Vectors:
        out = np.empty((len(batch), self._dims), dtype=np.float32)
        start = 0
        while start < len(batch):
            end, tokens = start, 0
            while (
                end < len(batch)
                and end - start < self._n_seq_max
                and (end == start or tokens + len(batch[end]) <= self._budget)
            ):
                tokens += len(batch[end])
                end += 1
            out[start:end] = self._decode(batch[start:end])
            start = end
        return out

    def _decode(self, seqs: list[list[int]]) -> Vectors:
        """One llama_decode over several sequences; one pooled vector per sequence."""
        llama, ctx = self._llama, self._ctx
        lengths = np.fromiter((len(s) for s in seqs), dtype=np.int64, count=len(seqs))
        n = int(lengths.sum())
        if n > self._n_batch:
            raise ValueError(f"a sequence of {n} tokens exceeds n_batch={self._n_batch}")
        tokens = np.fromiter((t for s in seqs for t in s), dtype=np.int32, count=n)
        seq_ids = np.repeat(np.arange(len(seqs), dtype=np.int32), lengths)
        starts = np.cumsum(lengths) - lengths
        pos = (np.arange(n, dtype=np.int64) - np.repeat(starts, lengths)).astype(np.int32)
        n_seq_id = np.ones(n, dtype=np.int32)
        logits = np.ones(n, dtype=np.int8)  # embedding mode outputs every token
        seq_ptrs = (seq_ids.ctypes.data + 4 * np.arange(n, dtype=np.uintp)).astype(np.uintp)

        b = llama.llama_batch()
        b.n_tokens = n
        b.token = tokens.ctypes.data_as(ctypes.POINTER(llama.llama_token))
        b.embd = ctypes.POINTER(ctypes.c_float)()
        b.pos = pos.ctypes.data_as(ctypes.POINTER(llama.llama_pos))
        b.n_seq_id = n_seq_id.ctypes.data_as(ctypes.POINTER(ctypes.c_int32))
        b.seq_id = seq_ptrs.ctypes.data_as(ctypes.POINTER(ctypes.POINTER(llama.llama_seq_id)))
        b.logits = logits.ctypes.data_as(ctypes.POINTER(ctypes.c_int8))

        if self._has_memory:
            llama.llama_memory_clear(llama.llama_get_memory(ctx), True)
            rc = llama.llama_decode(ctx, b)
        else:
            rc = llama.llama_encode(ctx, b)
        if rc != 0:
            raise RuntimeError(f"llama.cpp decode failed with code {rc}")

        dims = self._dims
        if self._pool_max:
            ptr = llama.llama_get_embeddings(ctx)
            flat = np.ctypeslib.as_array(ptr, shape=(n * dims,)).reshape(n, dims)
            return np.stack([seg.max(axis=0) for seg in np.split(flat, np.cumsum(lengths)[:-1])])
        out = np.empty((len(seqs), dims), dtype=np.float32)
        for i in range(len(seqs)):
            ptr = llama.llama_get_embeddings_seq(ctx, i)
            if not ptr:
                raise RuntimeError(f"llama.cpp returned no embedding for sequence {i}")
            out[i] = np.ctypeslib.as_array(ptr, shape=(dims,))
        return out

    def token_states(self, ids: list[int]) -> Vectors:
        """One sequence's token states from a second context with pooling none, made on
        first use, so that the pooled context (and its path) stays as it is."""
        llama = self._llama
        if self._states_ctx is None:
            p = self._states_params
            cparams = llama.llama_context_default_params()
            cparams.embeddings = True
            cparams.n_ctx = cparams.n_batch = cparams.n_ubatch = int(p["n_ctx"])
            cparams.n_seq_max = 1
            cparams.n_threads = int(p["threads"])
            cparams.n_threads_batch = int(p["threads_batch"])
            cparams.pooling_type = 0
            if p.get("flash_attn") is not None:
                cparams.flash_attn_type = 1 if p["flash_attn"] else 0
            assert self._model is not None
            ctx = llama.llama_init_from_model(self._model.ptr, cparams)
            if not ctx:
                raise RuntimeError("llama.cpp could not create a token-states context")
            self._states_ctx = ctx
        ctx = self._states_ctx
        n = len(ids)
        if n > int(self._states_params["n_ctx"]):
            raise ValueError(f"a sequence of {n} tokens exceeds the model's window")
        tokens = np.asarray(ids, dtype=np.int32)
        pos = np.arange(n, dtype=np.int32)
        n_seq_id = np.ones(n, dtype=np.int32)
        seq_ids = np.zeros(n, dtype=np.int32)
        logits = np.ones(n, dtype=np.int8)
        seq_ptrs = (seq_ids.ctypes.data + 4 * np.arange(n, dtype=np.uintp)).astype(np.uintp)
        b = llama.llama_batch()
        b.n_tokens = n
        b.token = tokens.ctypes.data_as(ctypes.POINTER(llama.llama_token))
        b.embd = ctypes.POINTER(ctypes.c_float)()
        b.pos = pos.ctypes.data_as(ctypes.POINTER(llama.llama_pos))
        b.n_seq_id = n_seq_id.ctypes.data_as(ctypes.POINTER(ctypes.c_int32))
        b.seq_id = seq_ptrs.ctypes.data_as(ctypes.POINTER(ctypes.POINTER(llama.llama_seq_id)))
        b.logits = logits.ctypes.data_as(ctypes.POINTER(ctypes.c_int8))
        memory = llama.llama_get_memory(ctx)
        if memory:
            llama.llama_memory_clear(memory, True)
            rc = llama.llama_decode(ctx, b)
        else:
            rc = llama.llama_encode(ctx, b)
        if rc != 0:
            raise RuntimeError(f"llama.cpp decode failed with code {rc}")
        ptr = llama.llama_get_embeddings(ctx)
        flat = np.ctypeslib.as_array(ptr, shape=(n * self._dims,)).reshape(n, self._dims)
        return flat.astype(np.float32, copy=True)

    def close(self) -> None:
        if self._states_ctx is not None:
            self._llama.llama_free(self._states_ctx)
            self._states_ctx = None
        if self._ctx is not None:
            self._llama.llama_free(self._ctx)
            self._ctx = None
        if self._model is not None:
            self._model.free()
            self._model = None


def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1
