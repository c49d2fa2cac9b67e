"""Loaded models: name → handle (tokenizer, replicas of worker + batcher, status).

A request names a model as ``name`` or ``name@version``. An unknown name or version is a
404, never a silent fallback to another model.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from embedhost.batching import Batcher
from embedhost.config import ModelConfig, Settings
from embedhost.engines.base import EngineInfo
from embedhost.errors import ModelNotFound, ModelNotReady
from embedhost.tokenization import Tokenizer, load_tokenizer
from embedhost.worker import EngineWorker, WorkerState

if TYPE_CHECKING:
    from embedhost.metrics import Metrics

log = logging.getLogger(__name__)


@dataclass(slots=True)
class Replica:
    worker: EngineWorker
    batcher: Batcher

    @property
    def load(self) -> int:
        return self.batcher.queued + self.batcher.in_flight


class ModelHandle:
    def __init__(
        self, config: ModelConfig, settings: Settings, metrics: Metrics | None = None
    ) -> None:
        self.config = config
        self.settings = settings
        self.tokenizer: Tokenizer = load_tokenizer(config)
        self.created = int(time.time())
        self.replicas: list[Replica] = []
        for i in range(config.replicas):
            worker = EngineWorker(
                config,
                settings.worker,
                replica=i,
                observer=metrics.worker_observer(config.name, i) if metrics else None,
            )
            batcher = Batcher(
                worker.embed,
                config.batching,
                retry_after_s=settings.worker.retry_after_s,
                observer=(
                    metrics.batch_observer(config.name, i, config.batching.max_queue_items)
                    if metrics
                    else None
                ),
            )
            self.replicas.append(Replica(worker, batcher))

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def version(self) -> str:
        return self.config.version

    @property
    def info(self) -> EngineInfo | None:
        for r in self.replicas:
            if r.worker.info is not None:
                return r.worker.info
        return None

    @property
    def status(self) -> str:
        states = {r.worker.state for r in self.replicas}
        if WorkerState.READY in states:
            return "ready"
        if states == {WorkerState.FAILED}:
            return "failed"
        if WorkerState.RESTARTING in states:
            return "restarting"
        if states == {WorkerState.STOPPED}:
            return "stopped"
        return "loading"

    @property
    def reason(self) -> str | None:
        for r in self.replicas:
            if r.worker.reason:
                return r.worker.reason
        return None

    @property
    def max_tokens(self) -> int:
        info = self.info
        if info is not None:
            return info.max_tokens
        return self.config.max_input_tokens or 512

    async def start(self) -> None:
        for r in self.replicas:
            r.batcher.start()
        await asyncio.gather(*(r.worker.start() for r in self.replicas))

    def pick(self) -> Replica:
        """The ready replica with the least queued work."""
        ready = [r for r in self.replicas if r.worker.state is WorkerState.READY]
        if not ready:
            self.replicas[0].worker.check_ready()  # raises the precise reason
            raise ModelNotReady(f"model {self.config.ref} is not ready")
        return min(ready, key=lambda r: r.load)

    async def stop(self, drain_timeout: float) -> None:
        await asyncio.gather(*(r.batcher.close(True, drain_timeout) for r in self.replicas))
        await asyncio.gather(*(r.worker.stop() for r in self.replicas))

    def describe(self) -> dict[str, Any]:
        info = self.info
        return {
            "name": self.name,
            "version": self.version,
            "engine": self.config.engine,
            "status": self.status,
            "reason": self.reason if self.status != "ready" else None,
            "dimensions": info.dims if info else None,
            "max_input_tokens": self.max_tokens if info else self.config.max_input_tokens,
            "truncation": self.config.truncation,
            "pooling": info.pooling if info else self.config.pooling,
            "normalize": info.normalize if info else self.config.normalize,
            "dtype": info.dtype if info else self.config.dtype,
            "device": self.config.device,
            "checksum": self.config.checksum,
            "replicas": [
                {
                    "replica": r.worker.replica,
                    "state": r.worker.state.value,
                    "pid": r.worker.pid,
                    "restarts": r.worker.restarts,
                    "queued": r.batcher.queued,
                    "in_flight": r.batcher.in_flight,
                }
                for r in self.replicas
            ],
            "details": info.details if info else {},
        }


class ModelRegistry:
    def __init__(self, settings: Settings, metrics: Metrics | None = None) -> None:
        self.settings = settings
        self.handles: dict[str, ModelHandle] = {}
        for m in settings.models:
            # Only one version per name is configured in this release; name@version pins it.
            self.handles.setdefault(m.name, ModelHandle(m, settings, metrics))
        self.default = self.handles[settings.models[0].name]
        self._start_task: asyncio.Task[Any] | None = None

    def start(self) -> None:
        """Start every model's workers in the background; /ready tells when they are up."""
        self._start_task = asyncio.get_running_loop().create_task(
            self._start_all(), name="model-start"
        )

    async def _start_all(self) -> None:
        await asyncio.gather(*(h.start() for h in self.handles.values()))

    async def wait_started(self) -> None:
        if self._start_task is not None:
            await asyncio.shield(self._start_task)

    def get(self, ref: str | None) -> ModelHandle:
        if not ref:
            return self.default
        name, _, version = ref.partition("@")
        handle = self.handles.get(name)
        if handle is None or (version and version != handle.version):
            known = ", ".join(sorted(f"{h.name}@{h.version}" for h in self.handles.values()))
            raise ModelNotFound(
                f"model {ref!r} is not served here; available: {known}", param="model"
            )
        return handle

    @property
    def ready(self) -> bool:
        return all(h.status == "ready" for h in self.handles.values())

    async def stop(self, drain_timeout: float) -> None:
        if self._start_task is not None and not self._start_task.done():
            self._start_task.cancel()
        await asyncio.gather(*(h.stop(drain_timeout) for h in self.handles.values()))
