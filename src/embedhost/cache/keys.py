"""What a cached vector is filed under, and what one request lets the cache do.

**What a key is.** ``{key_prefix}:cache:{namespace}:{scope}:{digest}``. A vector is cached
under a hash of everything that decides it: the model's *namespace* (:func:`namespace`:
name, version, weights checksum, engine, dtype, pooling, device, dimensions, quantization
and engine options) and the input's token ids after truncation (:func:`input_digest`; so
truncation settings and token-id inputs are covered). With ``scope: per_key`` the API key
id is part of the key. Because version and checksum are in the key, a swap, promote or
rollback never serves a vector of another version; because the namespace starts with
``name@version:``, one model or one version is cleared by prefix
(:meth:`Keys.prefix_for`).

**The policy.** ``Cache-Control`` (:class:`CachePolicy`): ``no-cache`` computes afresh and
refreshes the entries, ``no-store`` writes nothing.
"""

from __future__ import annotations

import hashlib
import json
from array import array
from dataclasses import dataclass
from typing import Any

from embedhost.config import ModelConfig
from embedhost.engines.base import EngineInfo


@dataclass(frozen=True, slots=True)
class CachePolicy:
    """What one request lets the cache do: read (``no-cache`` forbids) and write
    (``no-store`` forbids)."""

    read: bool = True
    write: bool = True

    @classmethod
    def from_header(cls, value: str | None) -> CachePolicy:
        """From an HTTP ``Cache-Control`` header (other directives are ignored)."""
        if not value:
            return DEFAULT_POLICY
        directives = {d.split("=", 1)[0].strip().lower() for d in value.split(",")}
        return cls(read="no-cache" not in directives, write="no-store" not in directives)


DEFAULT_POLICY = CachePolicy()
BYPASS = CachePolicy(read=False, write=False)


def namespace(config: ModelConfig, info: EngineInfo) -> str:
    """``name@version:fingerprint``: what, besides the token ids, decides a vector."""
    checksum = info.details.get("checksum") or config.checksum
    ident = {
        "checksum": checksum,
        # Without a checksum the weights are only known by where they are.
        "path": None if checksum else config.path,
        "engine": config.engine,
        "engine_impl": info.engine,
        "dtype": info.dtype,
        "pooling": info.pooling,
        "device": info.device,
        "dims": info.dims,
        "quantization": config.quantization,
        "engine_options": config.engine_options,
    }
    blob = json.dumps(ident, sort_keys=True, default=str).encode()
    return f"{config.name}@{config.version}:{hashlib.sha256(blob).hexdigest()[:16]}"


def input_digest(ids: list[int]) -> str:
    """128 bits of BLAKE2b over the token ids (ids are vocabulary indices: 32 bits do)."""
    return hashlib.blake2b(array("i", ids).tobytes(), digest_size=16).hexdigest()


class Keys:
    """The key space of one cache: its prefix, the scope rule and a memo of namespaces."""

    def __init__(self, key_prefix: str, scope: str) -> None:
        self.prefix = f"{key_prefix}:cache:"
        self.scope = scope
        self._namespaces: dict[tuple[Any, ...], str] = {}

    def namespace(self, config: ModelConfig, info: EngineInfo) -> str:
        """:func:`namespace`, remembered per model config and engine info (hashed once, not
        once per request)."""
        memo = (config.ref, id(config), id(info), info.details.get("checksum"))
        ns = self._namespaces.get(memo)
        if ns is None:
            if len(self._namespaces) > 1024:
                self._namespaces.clear()
            ns = self._namespaces[memo] = namespace(config, info)
        return ns

    def scope_for(self, key_id: str | None) -> str:
        """The key part that separates callers: one for all (shared), or the key's id."""
        if self.scope == "shared":
            return "s"
        return f"k.{key_id or '-'}"

    def key(self, ns: str, scope: str, ids: list[int]) -> str:
        return f"{self.prefix}{ns}:{scope}:{input_digest(ids)}"

    def prefix_for(self, model: str | None = None, version: str | None = None) -> str:
        """What every key of one model (or one version of it, or of all models) starts
        with."""
        if model is None:
            return self.prefix
        return self.prefix + f"{model}@" + (f"{version}:" if version is not None else "")
