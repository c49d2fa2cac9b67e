"""A llama.cpp engine that segfaults inside llama.cpp on demand, for the crash-path test.

Fault injection, said plainly: no GGUF that crashes llama-cpp-python 0.3.36 on this CPU
could be produced cheaply (the q8_0 conversion that segfaults on AMX CPUs works here, and
corrupted metadata is refused at load). So when a batch holds ``TRIGGER``, this engine
hands ``llama_encode`` a batch whose per-token seq_id pointers are NULL: the worker dies
of a real SIGSEGV inside llama.cpp's native code, exactly as a buggy kernel would kill it.
Everything else (the GGUF, the model, the worker, the supervisor) is the real thing.
"""

from __future__ import annotations

import ctypes

import numpy as np

from embedhost.engines.base import Vectors
from embedhost.engines.llama_cpp import LlamaCppEngine

TRIGGER = 29001


class SegfaultingLlamaCppEngine(LlamaCppEngine):
    def embed(self, batch: list[list[int]]) -> Vectors:
        if any(TRIGGER in s for s in batch):
            self._segfault_in_llama_cpp(len(batch[0]))
        return super().embed(batch)

    def _segfault_in_llama_cpp(self, n: int) -> None:
        llama = self._llama
        tokens = np.full(n, 101, dtype=np.int32)
        pos = np.arange(n, dtype=np.int32)
        n_seq_id = np.ones(n, dtype=np.int32)
        null_seq_ids = np.zeros(n, dtype=np.uintp)  # seq_id[i] == NULL
        logits = np.ones(n, dtype=np.int8)
        b = llama.llama_batch()
        b.n_tokens = n
        b.token = tokens.ctypes.data_as(ctypes.POINTER(llama.llama_token))
        b.pos = pos.ctypes.data_as(ctypes.POINTER(llama.llama_pos))
        b.n_seq_id = n_seq_id.ctypes.data_as(ctypes.POINTER(ctypes.c_int32))
        b.seq_id = null_seq_ids.ctypes.data_as(ctypes.POINTER(ctypes.POINTER(llama.llama_seq_id)))
        b.logits = logits.ctypes.data_as(ctypes.POINTER(ctypes.c_int8))
        llama.llama_encode(self._ctx, b)
        raise AssertionError("llama.cpp survived a NULL seq_id; the crash test proves nothing")
