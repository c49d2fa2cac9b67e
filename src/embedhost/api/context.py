"""The app's context: one typed object that holds everything the HTTP layer shares,
built once by :func:`~embedhost.api.app.create_app` and kept as ``app.state.context``
(the app's only state attribute).

It holds the settings, the HTTP-only parts (key checks and rate limits, the concurrency
limit and refusal pacer, the metrics), what the process was started with (its config
file, the orchestrator that runs it, its instance id and start time), whether it is
draining, and the serving :class:`~embedhost.core.Core` once the lifespan has built it.
Routes read it through ``api/deps.py``; middleware through :func:`context_in`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from starlette.applications import Starlette
from starlette.requests import HTTPConnection
from starlette.types import Scope

from embedhost.api.overload import ConcurrencyLimit
from embedhost.cache import EmbeddingCache
from embedhost.config import Settings
from embedhost.core import Core
from embedhost.errors import ModelNotReady
from embedhost.jobs.runner import Jobs
from embedhost.metrics import Metrics
from embedhost.models.registry import ModelRegistry
from embedhost.scoring import ScoringService
from embedhost.security.admission import Security
from embedhost.service import EmbeddingService
from embedhost.tracing import Tracing


@dataclass(eq=False, slots=True)
class AppContext:
    settings: Settings
    security: Security
    concurrency: ConcurrencyLimit
    metrics: Metrics | None
    instance_id: str
    config_path: Path | None = None
    """The config file the server was started with: SIGHUP and ``POST /admin/reload``
    re-read it (None: nothing to reload)."""
    orchestrator: str | None = None
    """What runs many identical copies of this app (``ray-serve``): the admin API then
    refuses changes that would reach one copy only."""
    started: float = field(default_factory=time.monotonic)
    draining: bool = False
    """Set on SIGTERM (``/ready`` answers 503 from then on) and by the lifespan's end."""
    core: Core | None = None
    """The serving parts, from the lifespan's start to its end."""
    jobs: Jobs | None = None
    """The Batch API's jobs and files (None: ``jobs.enabled`` is false)."""

    @property
    def running(self) -> Core:
        """The core; a 503 before the lifespan has built it."""
        if self.core is None:
            raise ModelNotReady("the server is starting; retry shortly", retry_after=1)
        return self.core

    @property
    def registry(self) -> ModelRegistry:
        return self.running.registry

    @property
    def service(self) -> EmbeddingService:
        return self.running.service

    @property
    def scoring(self) -> ScoringService:
        return self.running.scoring

    @property
    def cache(self) -> EmbeddingCache:
        return self.running.cache

    @property
    def tracing(self) -> Tracing | None:
        return self.core.tracing if self.core is not None else None


def context_of_app(app: Starlette) -> AppContext:
    """The context :func:`~embedhost.api.app.create_app` built for ``app``."""
    context: AppContext = app.state.context
    return context


def context_of(conn: HTTPConnection) -> AppContext:
    """The context of the app serving a request."""
    context: AppContext = conn.app.state.context
    return context


def context_in(scope: Scope) -> AppContext:
    """The context of the app serving an ASGI scope (for pure ASGI middleware)."""
    context: AppContext = scope["app"].state.context
    return context
