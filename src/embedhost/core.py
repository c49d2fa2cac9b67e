"""The serving core, whatever carries the requests: settings, the model registry (which
spawns the engine workers), the embedding cache, tracing and the embedding service.

:meth:`Core.build` is the one place these parts are assembled. The HTTP app's lifespan
(:func:`~embedhost.api.app.create_app`, hence every Ray Serve replica too) and the
in-process ``embedhost embed --local`` both build their core here, so each gets the same
parts, the cache included. HTTP-only parts (keys, limits, middleware) belong to the app's
context (:mod:`embedhost.api.context`).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from embedhost.cache import EmbeddingCache
from embedhost.calibration import Calibrations
from embedhost.config import Settings
from embedhost.metrics import Metrics
from embedhost.models.registry import ModelRegistry
from embedhost.scoring import ScoringService
from embedhost.service import EmbeddingService
from embedhost.tracing import Tracing


@dataclass(eq=False, slots=True)
class Core:
    settings: Settings
    registry: ModelRegistry
    service: EmbeddingService
    cache: EmbeddingCache
    metrics: Metrics | None
    tracing: Tracing | None
    calibrations: Calibrations
    """int8/uint8 ranges per version (embedhost.calibration)."""
    scoring: ScoringService
    """Rerank and score (issue 21), on the embedding service's parts."""

    @classmethod
    def build(cls, settings: Settings, metrics: Metrics | None = None) -> Core:
        """Every part, not started yet (:meth:`start`). ``metrics``: the app's registry of
        metrics (None: none kept, as for ``embed --local``)."""
        tracing = Tracing(settings.tracing.service_name) if settings.tracing.enabled else None
        cache = EmbeddingCache(settings.cache, metrics.cache_observer() if metrics else None)
        registry = ModelRegistry(settings, metrics)
        service = EmbeddingService(registry, settings.limits, tracing=tracing, cache=cache)
        calibrations = Calibrations(service, settings.quantization)
        return cls(
            settings,
            registry,
            service,
            cache,
            metrics,
            tracing,
            calibrations,
            ScoringService(service),
        )

    def start(self) -> None:
        """Start every configured model in the background (the registry tells when they
        are ready)."""
        self.registry.start()

    async def stop(self, drain_timeout: float) -> None:
        """Drain the batch queues and stop the workers, then close the cache and tracing."""
        await self.registry.stop(drain_timeout)
        await self.cache.close()
        if self.tracing is not None:
            await asyncio.to_thread(self.tracing.shutdown)
