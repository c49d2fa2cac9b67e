"""The engine contract, and what several engines share.

An engine loads a model, embeds batches of token ids, describes itself and closes
(:class:`Engine`). Also here: the sentence-transformers directory reader (pooling,
normalize, max length; transformers and ONNX read it), the padding helper of the padded
engines, the ``engine_options`` checker, and the missing-extra import error.

Engines run inside a worker process (see ``worker/process.py``), never in the API process. They
return pooled float32 vectors *before* normalization: the API process normalizes, so that
per-request ``normalize`` and Matryoshka ``dimensions`` work on any engine.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from embedhost.config import ModelConfig
from embedhost.errors import ConfigError

Vectors = npt.NDArray[np.float32]


@dataclass(slots=True)
class EngineInfo:
    engine: str
    dims: int
    max_tokens: int
    pooling: str
    normalize: bool
    dtype: str
    device: str
    packs: bool = False
    """Batches run packed, without padding: the batcher may mix lengths freely."""
    token_states: bool = False
    """:meth:`Engine.token_states` answers (late chunking)."""
    details: dict[str, Any] = field(default_factory=dict)
    """Descriptive facts shown on ``/info``; nothing decides by them."""
    task: str = "embed"
    """``embed`` (vectors of ``dims``) or ``rerank`` (``dims`` raw scores per pair: one per
    label of the model's classifier; see ``engines/rerank.py``)."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EngineInfo:
        return cls(**d)


class Engine(Protocol):
    def __init__(self, config: ModelConfig) -> None: ...

    def load(self) -> EngineInfo:
        """Load weights; blocking, called once in the worker."""
        ...

    def embed(self, batch: list[list[int]]) -> Vectors:
        """Pooled, unnormalized float32 vectors, one row per sequence, in order."""
        ...

    def close(self) -> None: ...


class TokenStates(Protocol):
    """An engine that also returns a sequence's token states (``EngineInfo.token_states``)."""

    def token_states(self, ids: list[int]) -> Vectors:
        """Float32 ``[len(ids), hidden]``: the last hidden state of each token, one pass."""
        ...


def pad_batch(batch: list[list[int]]) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Right-padded token ids and the attention mask, [batch, longest] int64 each."""
    n, width = len(batch), max(len(s) for s in batch)
    ids = np.zeros((n, width), dtype=np.int64)
    mask = np.zeros((n, width), dtype=np.int64)
    for i, s in enumerate(batch):
        ids[i, : len(s)] = s
        mask[i, : len(s)] = 1
    return ids, mask


def read_st_config(path: Path) -> dict[str, Any]:
    """Pooling, normalize and max length from a sentence-transformers directory, if any."""
    out: dict[str, Any] = {}
    modules = path / "modules.json"
    if modules.is_file():
        mods = json.loads(modules.read_text())
        out["normalize"] = any(m.get("type", "").endswith("Normalize") for m in mods)
        for m in mods:
            if m.get("type", "").endswith("Pooling"):
                pconf = path / m.get("path", "") / "config.json"
                if pconf.is_file():
                    p = json.loads(pconf.read_text())
                    if p.get("pooling_mode_cls_token"):
                        out["pooling"] = "cls"
                    elif p.get("pooling_mode_lasttoken"):
                        out["pooling"] = "last"
                    elif p.get("pooling_mode_max_tokens"):
                        out["pooling"] = "max"
                    else:
                        out["pooling"] = "mean"
    sbert = path / "sentence_bert_config.json"
    if sbert.is_file():
        s = json.loads(sbert.read_text())
        if s.get("max_seq_length"):
            out["max_tokens"] = int(s["max_seq_length"])
    return out


class MissingExtra(ImportError):
    """A heavy optional library is not installed."""

    def __init__(self, package: str, extra: str) -> None:
        super().__init__(
            f"{package} is not installed; install it with: pip install 'embedhost[{extra}]'"
        )


_KINDS = {int: "an integer", bool: "true or false", str: "a string", list: "a list"}


def check_options(engine: str, options: dict[str, Any], allowed: dict[str, type]) -> dict[str, Any]:
    """``engine_options`` checked against ``allowed`` (name -> type); the ConfigError names the key."""
    for key, value in options.items():
        kind = allowed.get(key)
        if kind is None:
            raise ConfigError(
                f"engine_options.{key} is not a {engine} option; "
                f"use one of {', '.join(sorted(allowed))}"
            )
        # bool is an int subclass: `n_ctx: true` must not pass as 1.
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            what = _KINDS.get(kind, kind.__name__)
            raise ConfigError(f"engine_options.{key} must be {what}, not {value!r}")
    return dict(options)
