"""Calibration of int8/uint8 outputs: per model version, the embeddings of a calibration
corpus, from which the per-dimension ranges of :mod:`embedhost.quantize` are taken.

Why they are computed once and stored: int8 of a vector depends on the ranges, so two
processes that computed their own (from other texts, or in other batches) could answer the
same text with other bytes. Here a version's calibration is computed the first time a
request asks for int8 or uint8, written to a file, and from then on every process serving
that version (replicas behind a balancer, a restarted server, Ray replicas) reads the same
file instead of computing again. Two processes that compute at once both write a temporary
file and hard-link it into place: the first link wins, and both then read the winner's
file, so even a race gives one answer.

Where the file is: beside the version's manifest when its checksum is ``manifest:FILE``
(and that directory is writable), otherwise under ``quantization.dir`` in a directory
named by the weights' sha256. Its name carries a key: a digest of everything that decides
the calibration vectors (weights, engine and its options, pooling, dtype, the prompt, the
corpus), so changing any of them computes a new one.

The corpus: the model's ``calibration_corpus`` (one text a line), else the one bundled
with embedhost (``embedhost/data/calibration.txt``, Python standard-library docstrings
that the benchmark corpus does not use), at most ``quantization.max_texts`` lines. The
texts are embedded through the service with the model's ``document`` prompt (if it has
one), truncated to the model's window, unnormalized and at full width; the ranges of a
request's shape (``dimensions``, normalization) are derived from those rows exactly as the
service shapes a request's vectors (:func:`embedhost.quantize.postprocess`).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import tempfile
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from embedhost.cache import BYPASS
from embedhost.config import ModelConfig, QuantizationConfig
from embedhost.errors import ConfigError
from embedhost.modelfiles import sha256_of
from embedhost.models.version import ModelVersion
from embedhost.quantize import Floats, Ranges, postprocess, ranges_of
from embedhost.service import EmbeddingService, EmbedOptions

log = logging.getLogger(__name__)

BUNDLED_CORPUS = Path(__file__).resolve().parent / "data" / "calibration.txt"
_BATCH = 32
_FORMAT = 1


@dataclass(slots=True)
class Calibration:
    """One version's calibration: the raw rows and where they are stored."""

    ref: str
    path: Path
    key: str
    meta: dict[str, Any]
    embeddings: Floats
    _ranges: dict[tuple[int, bool], Ranges] = field(default_factory=dict)

    def ranges(self, dims: int, normalize: bool) -> Ranges:
        """The ranges of vectors shaped as ``dims`` columns, normalized or not."""
        got = self._ranges.get((dims, normalize))
        if got is None:
            got = ranges_of(postprocess(self.embeddings, dims, normalize))
            self._ranges[(dims, normalize)] = got
        return got

    def describe(self) -> dict[str, Any]:
        full = self.ranges(int(self.embeddings.shape[1]), bool(self.meta["normalize"]))
        return {
            **self.meta,
            "path": str(self.path),
            "key": self.key,
            "ranges": {"min": full[0].tolist(), "max": full[1].tolist()},
        }


class Calibrations:
    """The calibrations of the versions this process serves, computed or read on first use."""

    def __init__(self, service: EmbeddingService, config: QuantizationConfig) -> None:
        self.service = service
        self.config = config
        self._tasks: weakref.WeakKeyDictionary[ModelVersion, asyncio.Task[Calibration]] = (
            weakref.WeakKeyDictionary()
        )

    async def ranges(self, handle: ModelVersion, dims: int, normalize: bool) -> Ranges:
        calibration = await self.get(handle)
        if dims == calibration.embeddings.shape[1] and normalize == calibration.meta["normalize"]:
            return calibration.ranges(dims, normalize)
        return await asyncio.to_thread(calibration.ranges, dims, normalize)

    async def get(self, handle: ModelVersion) -> Calibration:
        """``handle``'s calibration; computed once, concurrent callers share the work."""
        task = self._tasks.get(handle)
        if task is None or (task.done() and (task.cancelled() or task.exception() is not None)):
            task = asyncio.get_running_loop().create_task(
                self._load_or_compute(handle), name=f"calibrate-{handle.ref}"
            )
            self._tasks[handle] = task
        # shield: one caller going away must not cancel the others' calibration.
        return await asyncio.shield(task)

    def describe(self, may_use: Callable[[str], bool] | None = None) -> dict[str, Any]:
        """For /info: each calibration this process holds, by version ref (only the models
        ``may_use`` lets the asking key see)."""
        out: dict[str, Any] = {}
        for handle, task in list(self._tasks.items()):
            if may_use is not None and not may_use(handle.name):
                continue
            if task.done() and not task.cancelled() and task.exception() is None:
                out[handle.ref] = task.result().describe()
            else:
                out[handle.ref] = {"status": "computing" if not task.done() else "failed"}
        return {"int8_uint8": "calibrated per version on first use", "calibrations": out}

    async def _load_or_compute(self, handle: ModelVersion) -> Calibration:
        config = handle.config
        info = handle.pick().info
        assert info is not None
        corpus = Path(config.calibration_corpus) if config.calibration_corpus else BUNDLED_CORPUS
        try:
            texts = await asyncio.to_thread(_read_corpus, corpus, self.config.max_texts)
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            log.error("model %s: calibration corpus %s: %s", handle.ref, corpus, exc)
            # The client learns which setting to fix, not the server's paths.
            raise ConfigError(
                f"model {handle.ref}: its calibration_corpus cannot be used (see the server "
                "log), so int8/uint8 are unavailable; float, binary and ubinary are not affected"
            ) from None
        weights = await asyncio.to_thread(_weights_digest, config, info.details.get("checksum"))
        prompt = handle.prompts.resolve("document", None)
        meta: dict[str, Any] = {
            "format": _FORMAT,
            "model": config.ref,
            "weights": weights,
            "engine": config.engine,
            "engine_options": config.engine_options,
            "pooling": info.pooling,
            "dtype": info.dtype,
            "quantization": config.quantization,
            "max_tokens": info.max_tokens,
            "prompt": prompt.text if prompt is not None else None,
            "corpus": "bundled" if corpus == BUNDLED_CORPUS else str(corpus),
            "corpus_sha256": hashlib.sha256("\n".join(texts).encode()).hexdigest(),
        }
        key = hashlib.sha256(json.dumps(meta, sort_keys=True, default=str).encode()).hexdigest()
        key = key[:16]
        path = self._path(config, weights, key)
        meta |= {"texts": len(texts), "dims": info.dims, "normalize": info.normalize}
        if not await asyncio.to_thread(path.is_file):
            start = time.monotonic()
            rows = await self._embed(handle, texts)
            meta["computed_at"] = int(time.time())
            meta["compute_s"] = round(time.monotonic() - start, 3)
            await asyncio.to_thread(_publish, path, rows, meta)
            log.info(
                "model %s: calibrated int8/uint8 ranges on %d texts: %s",
                handle.ref,
                len(texts),
                path,
            )
        # Always read back the file: if another process published first, its rows win.
        stored_meta, rows = await asyncio.to_thread(_read, path)
        if rows.shape[1] != info.dims:
            raise RuntimeError(f"calibration file {path} has {rows.shape[1]} dimensions")
        return Calibration(handle.ref, path, key, stored_meta, rows)

    async def _embed(self, handle: ModelVersion, texts: list[str]) -> Floats:
        options = EmbedOptions(truncate=True, normalize=False, input_type="document", cache=BYPASS)
        step = min(_BATCH, self.service.limits.max_inputs_per_request)
        parts = []
        for i in range(0, len(texts), step):
            result = await self.service.embed(handle, texts[i : i + step], options)
            parts.append(result.vectors)
        return np.ascontiguousarray(np.concatenate(parts), dtype=np.float32)

    def _path(self, config: ModelConfig, weights: str, key: str) -> Path:
        checksum = config.checksum or ""
        if checksum.startswith("manifest:"):
            base = config.resolved_path()
            base = base if base.is_dir() else base.parent
            manifest = Path(checksum.removeprefix("manifest:"))
            manifest = manifest if manifest.is_absolute() else base / manifest
            if os.access(manifest.parent, os.W_OK):
                return manifest.parent / f"{manifest.name}.calibration-{key}.npz"
        root = Path(self.config.dir) if self.config.dir else _default_dir()
        return root / weights.removeprefix("sha256:") / f"calibration-{key}.npz"


def _default_dir() -> Path:
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg else Path.home() / ".cache"
    return base / "embedhost" / "calibration"


def _read_corpus(path: Path, limit: int) -> list[str]:
    lines = [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines()]
    texts = [ln for ln in lines if ln][:limit]
    if len(texts) < 2:
        raise ValueError("it has fewer than 2 texts")
    return texts


def _weights_digest(config: ModelConfig, verified: object) -> str:
    """The version's checksum: as verified by its worker, as configured, or hashed now."""
    if isinstance(verified, str) and verified.startswith("sha256:"):
        return verified
    if config.checksum and config.checksum.startswith("sha256:"):
        return config.checksum
    return "sha256:" + sha256_of(config.resolved_path())


def _publish(path: Path, rows: Floats, meta: dict[str, Any]) -> None:
    """Write the file under a temporary name, then hard-link it into place: the first
    process to link wins and a later one keeps the winner's file (and so its bytes)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".calibration-", suffix=".npz")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, embeddings=rows, meta=np.array(json.dumps(meta, default=str)))
        with contextlib.suppress(FileExistsError):
            os.link(tmp, path)
    finally:
        os.unlink(tmp)


def _read(path: Path) -> tuple[dict[str, Any], Floats]:
    with np.load(path, allow_pickle=False) as data:
        meta: dict[str, Any] = json.loads(str(data["meta"]))
        rows = np.ascontiguousarray(data["embeddings"], dtype=np.float32)
    return meta, rows
