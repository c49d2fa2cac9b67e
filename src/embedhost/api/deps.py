"""Dependencies: the parts of the app's context (:mod:`embedhost.api.context`) and the
admitted request, typed for the routes."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import Depends, Request, Security
from fastapi.security import APIKeyHeader, HTTPBearer

from embedhost.api.context import AppContext, context_of
from embedhost.api.record import record_of
from embedhost.cache import EmbeddingCache
from embedhost.calibration import Calibrations
from embedhost.config import SCOPES, Scope, Settings
from embedhost.metrics import Metrics
from embedhost.models.registry import ModelRegistry
from embedhost.scoring import ScoringService
from embedhost.security.admission import Admission
from embedhost.security.admission import Security as SecurityLayer
from embedhost.service import EmbeddingService

# Dependencies are ``async def`` on purpose: FastAPI runs a plain ``def`` dependency in a
# thread pool, a thread hop per dependency per request on the hot path.


async def get_context(request: Request) -> AppContext:
    return context_of(request)


async def get_registry(request: Request) -> ModelRegistry:
    return context_of(request).registry


async def get_service(request: Request) -> EmbeddingService:
    return context_of(request).service


async def get_cache(request: Request) -> EmbeddingCache:
    return context_of(request).cache


async def get_settings(request: Request) -> Settings:
    return context_of(request).settings


async def get_metrics(request: Request) -> Metrics | None:
    return context_of(request).metrics


ContextDep = Annotated[AppContext, Depends(get_context)]
RegistryDep = Annotated[ModelRegistry, Depends(get_registry)]
ServiceDep = Annotated[EmbeddingService, Depends(get_service)]
CacheDep = Annotated[EmbeddingCache, Depends(get_cache)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
MetricsDep = Annotated[Metrics | None, Depends(get_metrics)]


async def get_calibrations(request: Request) -> Calibrations:
    return context_of(request).running.calibrations


CalibrationsDep = Annotated[Calibrations, Depends(get_calibrations)]


async def get_scoring(request: Request) -> ScoringService:
    return context_of(request).scoring


ScoringDep = Annotated[ScoringService, Depends(get_scoring)]


# Declared for the OpenAPI schema (so /docs and generated clients know how to send a key);
# the header parsing itself is ``security.keys.presented_key``, which also refuses other
# schemes.
_bearer = HTTPBearer(auto_error=False, description="Authorization: Bearer <key>")
_api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="X-API-Key: <key>")


def get_security(request: Request) -> SecurityLayer:
    return context_of(request).security


def require_scope(scope: str) -> Callable[..., Awaitable[Admission]]:
    """A dependency that admits a request only when its API key holds ``scope``.

    401 without a valid key, 403 without the scope, 429 over the key's or the address's
    request budget. Its value is the :class:`Admission` (key None when the server runs
    without keys), also noted on the request's record for the metrics and the log line.
    """
    if scope not in SCOPES:
        raise ValueError(f"unknown scope {scope!r}; one of {', '.join(SCOPES)}")
    required: Scope = scope

    async def dependency(
        request: Request,
        _bearer_doc: Annotated[object, Security(_bearer)] = None,
        _key_doc: Annotated[object, Security(_api_key_header)] = None,
    ) -> Admission:
        security = get_security(request)
        record = record_of(request)
        # AuthGate authenticated a request with a body before reading it: use its answer.
        admission = await security.admit(
            request.scope, request.headers, required, authenticated=record.authenticated
        )
        record.admission = admission
        return admission

    return dependency


EmbedAdmission = Annotated[Admission, Depends(require_scope("embed"))]
"""The admitted request of a route that needs the ``embed`` scope. Take it as a parameter
instead of listing ``require_scope("embed")`` in the route's ``dependencies`` (both would
be two dependencies, admitting, and charging, the request twice)."""
