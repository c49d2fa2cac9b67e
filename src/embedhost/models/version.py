"""One version of one model: its tokenizer, its replicas (worker process + batcher each),
its state, the leases requests hold on it, and how it drains and stops.

Version states: ``loading`` (checksum, weights), ``warming``, ``ready``, ``restarting``
(its worker crashed and is coming back), ``draining`` (retired: the router sends it
nothing new, it finishes what it holds), ``failed`` and ``stopped``. A version's state is
its replicas' states combined, until it is retired.

A retiring version drains: the requests that hold a lease on it finish on its own
batcher and worker (no batch ever mixes versions), and only then are its batchers closed
and its workers stopped. Which version is current, and routing between versions, belong
to :mod:`embedhost.models.registry`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterator
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from embedhost.config import ModelConfig, Settings
from embedhost.engines.base import EngineInfo
from embedhost.errors import ModelNotReady
from embedhost.models.replica import Replica, WorkerState
from embedhost.models.stats import VersionStats
from embedhost.tokenization import Prompts, Tokenizer, load_prompts, load_tokenizer
from embedhost.worker.budget import thread_budget

if TYPE_CHECKING:
    from embedhost.metrics import Metrics

log = logging.getLogger(__name__)

# Requests routed just before a switch take their lease within a step or two of the loop;
# a retiring version waits this long before it counts its leases down to zero.
_SWITCH_GRACE_S = 0.05


class VersionState(StrEnum):
    LOADING = "loading"
    WARMING = "warming"
    READY = "ready"
    RESTARTING = "restarting"
    DRAINING = "draining"
    FAILED = "failed"
    STOPPED = "stopped"


GONE = (VersionState.DRAINING, VersionState.STOPPED)
"""Retired: routed nothing new, not listed as available."""
DEAD = (VersionState.FAILED, VersionState.STOPPED)
"""Holds no process: the same version may be loaded again in its place."""
NEVER_UP = (VersionState.LOADING, VersionState.WARMING, VersionState.FAILED)
"""Has not served (yet)."""
TRANSIENT = (VersionState.LOADING, VersionState.WARMING, VersionState.RESTARTING)
"""On its way to serving, without anyone's help."""


def _budgeted(config: ModelConfig, settings: Settings) -> ModelConfig:
    """``config`` with its share of the CPU budget as ``threads`` (unchanged when it sets
    its own, or when it is the only model with one replica). A version loaded at run time
    shares with the configured models."""
    models = list(settings.models)
    if all(m.ref != config.ref for m in models):
        models.append(config)
    threads = thread_budget(models).threads.get(config.ref)
    if threads is None or config.threads is not None:
        return config
    return config.model_copy(update={"threads": threads})


class ModelVersion:
    """One version of one model: its tokenizer, replicas, state and counters."""

    def __init__(
        self,
        config: ModelConfig,
        settings: Settings,
        *,
        tokenizer: Tokenizer | None = None,
        prompts: Prompts | None = None,
        runtime: bool = False,
        metrics: Metrics | None = None,
    ) -> None:
        self.config = config
        self.settings = settings
        self.runtime = runtime
        self.tokenizer: Tokenizer = tokenizer or load_tokenizer(config)
        self.prompts: Prompts = load_prompts(config) if prompts is None else prompts
        self.created = int(time.time())
        self.stats = VersionStats()
        self.active = 0
        self.shadow_in_flight = 0
        self._retired: VersionState | None = None
        self._idle = asyncio.Event()
        self._idle.set()
        self.start_task: asyncio.Task[None] | None = None
        worker_config = _budgeted(config, settings)
        self.replicas: list[Replica] = [
            Replica(
                config,
                settings,
                i,
                worker_config=worker_config,
                runtime=runtime,
                metrics=metrics,
            )
            for i in range(config.replicas)
        ]

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def version(self) -> str:
        return self.config.version

    @property
    def ref(self) -> str:
        return self.config.ref

    @property
    def info(self) -> EngineInfo | None:
        for r in self.replicas:
            if r.info is not None:
                return r.info
        return None

    @property
    def state(self) -> VersionState:
        if self._retired is not None:
            return self._retired
        states = {r.state for r in self.replicas}
        if WorkerState.READY in states:
            return VersionState.READY
        if states == {WorkerState.FAILED}:
            return VersionState.FAILED
        if WorkerState.RESTARTING in states:
            return VersionState.RESTARTING
        if states == {WorkerState.STOPPED}:
            return VersionState.STOPPED
        if any(r.warming for r in self.replicas):
            return VersionState.WARMING
        return VersionState.LOADING

    @property
    def status(self) -> str:
        return self.state.value

    @property
    def reason(self) -> str | None:
        for r in self.replicas:
            if r.reason:
                return r.reason
        return None

    @property
    def max_tokens(self) -> int:
        info = self.info
        if info is not None:
            return info.max_tokens
        return self.config.max_input_tokens or 512

    async def start(self) -> None:
        await asyncio.gather(*(r.start() for r in self.replicas))

    def pick(self) -> Replica:
        """The ready replica with the least queued work."""
        ready = [r for r in self.replicas if r.ready]
        if not ready or self._retired is VersionState.STOPPED:
            self.replicas[0].check_ready()  # raises the precise reason
            raise ModelNotReady(f"model {self.config.ref} is not ready")
        return min(ready, key=lambda r: r.load)

    @contextlib.contextmanager
    def lease(self) -> Iterator[None]:
        """Held by every request on this version from routing to answer; drain waits for 0."""
        self.active += 1
        self._idle.clear()
        try:
            yield
        finally:
            self.active -= 1
            if self.active == 0:
                self._idle.set()

    async def retire(self, drain_timeout: float) -> None:
        """Drain (no new work is routed here; finish what is held), then stop."""
        if self._retired is VersionState.STOPPED:
            return
        self._retired = VersionState.DRAINING
        log.info("model %s: draining (%d requests in flight)", self.ref, self.active)
        await asyncio.sleep(_SWITCH_GRACE_S)
        try:
            await asyncio.wait_for(self._idle.wait(), drain_timeout)
        except TimeoutError:
            log.warning(
                "model %s: %d requests still running after drain_timeout_s=%.0f; stopping",
                self.ref,
                self.active,
                drain_timeout,
            )
        await self.stop(drain_timeout)
        log.info("model %s: stopped", self.ref)

    async def stop(self, drain_timeout: float) -> None:
        await asyncio.gather(*(r.close_batcher(drain_timeout) for r in self.replicas))
        await asyncio.gather(*(r.stop_worker() for r in self.replicas))
        self._retired = VersionState.STOPPED

    def describe(self) -> dict[str, Any]:
        info = self.info
        state = self.state
        return {
            "name": self.name,
            "version": self.version,
            "ref": self.ref,
            "engine": self.config.engine,
            "path": self.config.path,
            "status": state.value,
            "reason": self.reason if state is not VersionState.READY else None,
            "task": info.task if info else self.config.task,
            "dimensions": info.dims if info else None,
            "max_input_tokens": self.max_tokens if info else self.config.max_input_tokens,
            "truncation": self.config.truncation,
            "pooling": info.pooling if info else self.config.pooling,
            "normalize": info.normalize if info else self.config.normalize,
            "dtype": info.dtype if info else self.config.dtype,
            "device": self.config.device,
            "quantization": self.config.quantization,
            "checksum": self.config.checksum,
            **self.prompts.describe(),
            "loaded_at": self.created,
            "active_requests": self.active,
            "replicas": [r.describe() for r in self.replicas],
            "stats": self.stats.snapshot(),
            "details": info.details if info else {},
        }
