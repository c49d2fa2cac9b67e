"""A fake engine for fast API tests and for fault injection (crash, raise, hang).

Vectors are a deterministic function of the token ids, so batching equivalence and
routing can be asserted exactly. Special token ids trigger faults inside the worker:
``CRASH`` segfaults the process, ``RAISE`` raises, ``HANG`` sleeps forever, ``SLOW`` sleeps
``engine_options["slow_s"]`` (default 0.2 s), ``GATE`` waits until the file
``engine_options["gate"]`` exists (a test opens the gate when it has seen what it waits for); with
``engine_options["load_gate"]``, loading waits the same way.
``engine_options["delay_s"]`` slows every batch; ``engine_options["salt"]`` gives other vectors
(a distinguishable second version).

:data:`ROW` is its catalog row (engine ``fake``), registered by tests/conftest.py: what adding
an engine takes. Most tests name it ``plugin:tests.fakes:FakeEngine`` instead, as a plugin.

The real engines have their own tests (tests/engines); this never stands in for them.
"""

from __future__ import annotations

import ctypes
import hashlib
import time
from pathlib import Path

import numpy as np

from embedhost.catalog import EngineRow, PathKind
from embedhost.config import ModelConfig
from embedhost.engines.base import EngineInfo, Vectors

CRASH, RAISE, HANG, SLOW = 29001, 29002, 29003, 29004
GATE = 29005
DIMS = 32

# A model directory with a tokenizer.json (the tests use MiniLM's); no extra to install.
ROW = EngineRow(name="fake", target="tests.fakes:FakeEngine", path=PathKind.DIRECTORY)


class FakeEngine:
    def __init__(self, config: ModelConfig) -> None:
        self.config = config
        self.opts = config.engine_options

    def load(self) -> EngineInfo:
        if self.opts.get("fail_load"):
            raise RuntimeError("fake load failure")
        if self.opts.get("load_gate"):  # loading lasts until a test opens this gate
            _wait_for(Path(str(self.opts["load_gate"])))
        return EngineInfo(
            engine="fake",
            dims=int(self.opts.get("dims", DIMS)),
            max_tokens=self.config.max_input_tokens or 64,
            pooling="mean",
            normalize=self.config.normalize if self.config.normalize is not None else True,
            dtype="float32",
            device="cpu",
        )

    def embed(self, batch: list[list[int]]) -> Vectors:
        delay = float(self.opts.get("delay_s", 0.0))
        if delay:
            time.sleep(delay)
        flat = {t for s in batch for t in s}
        if CRASH in flat:
            ctypes.string_at(0)  # SIGSEGV, as a native engine bug would
        if RAISE in flat:
            raise RuntimeError("fake engine failure")
        if HANG in flat:
            time.sleep(3600)
        if SLOW in flat:
            time.sleep(float(self.opts.get("slow_s", 0.2)))
        if GATE in flat:
            _wait_for(Path(str(self.opts["gate"])))
        dims = int(self.opts.get("dims", DIMS))
        salt = int(self.opts.get("salt", 0))
        return np.stack([vector_for(s, dims, salt) for s in batch])

    def close(self) -> None:
        pass


def _wait_for(gate: Path, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout  # a test that never opens the gate still ends
    while not gate.exists() and time.monotonic() < deadline:
        time.sleep(0.01)


def vector_for(ids: list[int], dims: int = DIMS, salt: int = 0) -> Vectors:
    """``salt`` (``engine_options["salt"]``) makes another "version" of the fake model."""
    text = str(ids) if not salt else f"{salt}:{ids}"
    seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")
    return np.random.default_rng(seed).standard_normal(dims).astype(np.float32)
