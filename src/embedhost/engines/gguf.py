"""The llama.cpp binding: llama-cpp-python's low-level (ctypes) API, imported lazily.

:func:`library` imports ``llama_cpp`` on first use (a clear "install embedhost[gguf]" error
when it is missing), initializes the backend once per process and quiets llama.cpp's log
chatter. :class:`GGUFModel` is one loaded ``llama_model`` (weights, or only the
vocabulary), its GGUF metadata and its tokenizer. The engine (worker side,
``engines/llama_cpp.py``) and the GGUF tokenizer (API side, ``tokenization.py``) share it.
"""

from __future__ import annotations

import ctypes
import logging
import threading
from pathlib import Path
from typing import Any

from embedhost.engines.base import MissingExtra
from embedhost.errors import ConfigError

_lib_lock = threading.Lock()
_backend_ready = False


def library() -> Any:
    """llama_cpp's ctypes module, imported lazily, with llama.cpp's log chatter quieted."""
    global _backend_ready
    try:
        import llama_cpp
    except ImportError:
        raise MissingExtra("llama-cpp-python", "gguf") from None
    with _lib_lock:
        if not _backend_ready:
            # llama-cpp-python prints every llama.cpp log line unless its logger says otherwise.
            logging.getLogger("llama-cpp-python").setLevel(logging.ERROR)
            llama_cpp.llama_backend_init()
            _backend_ready = True
    return llama_cpp


class GGUFModel:
    """A loaded llama_model (weights, or only the vocabulary) and its metadata."""

    def __init__(
        self, path: Path, *, vocab_only: bool, params: dict[str, Any] | None = None
    ) -> None:
        llama = library()
        self._llama = llama
        if not path.is_file():
            raise ConfigError(f"{path} is not a file; llama_cpp needs a .gguf file")
        mparams = llama.llama_model_default_params()
        mparams.vocab_only = vocab_only
        for key, value in (params or {}).items():
            setattr(mparams, key, value)
        model = llama.llama_model_load_from_file(str(path).encode(), mparams)
        if not model:
            raise ConfigError(
                f"{path}: llama.cpp could not load this GGUF file (see the worker log)"
            )
        self.ptr = model
        self.vocab = llama.llama_model_get_vocab(model)
        self.metadata = self._read_metadata()
        self.n_vocab = int(llama.llama_vocab_n_tokens(self.vocab))
        self._buf = (llama.llama_token * 1024)()

    def _read_metadata(self) -> dict[str, str]:
        llama = self._llama
        out: dict[str, str] = {}
        buf = ctypes.create_string_buffer(4096)
        for i in range(int(llama.llama_model_meta_count(self.ptr))):
            n = llama.llama_model_meta_key_by_index(self.ptr, i, buf, len(buf))
            if n < 0:
                continue
            key = buf.value.decode("utf-8", "replace")
            n = llama.llama_model_meta_val_str_by_index(self.ptr, i, buf, len(buf))
            if n < 0:
                continue
            out[key] = buf.value.decode("utf-8", "replace")
        return out

    def meta_int(self, key: str) -> int | None:
        value = self.metadata.get(key)
        try:
            return int(value) if value is not None else None
        except ValueError:
            return None

    @property
    def architecture(self) -> str:
        return self.metadata.get("general.architecture", "?")

    def tokenize(self, text: str, *, add_special: bool = True) -> list[int]:
        data = text.encode("utf-8")
        # parse_special=False: text that looks like a special token ("[SEP]", "<|im_end|>")
        # from a client stays text; only the model's own BOS/EOS/SEP are added.
        n = self._llama.llama_tokenize(
            self.vocab, data, len(data), self._buf, len(self._buf), add_special, False
        )
        if n < 0:
            self._buf = (self._llama.llama_token * (-n + 16))()
            n = self._llama.llama_tokenize(
                self.vocab, data, len(data), self._buf, len(self._buf), add_special, False
            )
        return list(self._buf[:n])

    # -- token texts (the API's /tokenize, /decode and chunk offsets) --------------------

    def piece(self, token: int, *, special: bool = True) -> str:
        """The text of one token as llama.cpp prints it (a word start has a leading space)."""
        buf = ctypes.create_string_buffer(256)
        n = self._llama.llama_token_to_piece(self.vocab, token, buf, len(buf), 0, special)
        if n < 0:
            buf = ctypes.create_string_buffer(-n)
            n = self._llama.llama_token_to_piece(self.vocab, token, buf, len(buf), 0, special)
        return buf.raw[: max(n, 0)].decode("utf-8", "replace")

    @property
    def space_prefix(self) -> bool:
        """Word starts print with a leading space (SentencePiece, WordPiece, Unigram)."""
        return int(self._llama.llama_vocab_type(self.vocab)) in (1, 3, 4)

    def detokenize(self, tokens: list[int], *, remove_special: bool) -> str:
        arr = (self._llama.llama_token * max(len(tokens), 1))(*tokens)
        size = 8 * len(tokens) + 16
        for _ in range(2):
            buf = ctypes.create_string_buffer(size)
            n = self._llama.llama_detokenize(
                self.vocab, arr, len(tokens), buf, size, remove_special, False
            )
            if n >= 0:
                return buf.raw[:n].decode("utf-8", "replace")
            size = -n + 16
        raise RuntimeError("llama.cpp could not detokenize these tokens")

    def free(self) -> None:
        if self.ptr:
            self._llama.llama_model_free(self.ptr)
            self.ptr = None
