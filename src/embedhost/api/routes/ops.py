"""Operational routes: index (or the web console, for a browser), liveness, readiness, info,
model list."""

from __future__ import annotations

import os
import time
from typing import Any

import psutil
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from embedhost import __version__
from embedhost.api import console
from embedhost.api.deps import ContextDep, EmbedAdmission, RegistryDep, SettingsDep
from embedhost.protocol import ErrorResponse, ModelCard, ModelList

router = APIRouter()

_AUTH_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse} for code in (401, 403, 429, 503)
}


@router.get(
    "/",
    tags=["ops"],
    summary="Index (JSON); the web console for browsers",
    responses={200: {"content": {"text/html": {}}}},
)
async def index(request: Request, settings: SettingsDep) -> Response:
    # A browser (Accept prefers text/html) gets the console; every other client the JSON.
    if settings.server.console and console.wants_html(request.headers.get("accept")):
        return console.page()
    body = {
        "name": "embedhost",
        "version": __version__,
        "endpoints": {
            "embeddings": "POST /v1/embeddings",
            "embed": "POST /embed",
            "cohere_embed": "POST /v2/embed",
            "models": "GET /v1/models",
            "info": "GET /info",
            "health": "GET /health",
            "ready": "GET /ready",
            "docs": "GET /docs",
        },
    }
    return JSONResponse(body, headers={"Vary": "Accept"})


@router.get("/health", tags=["ops"], summary="Liveness: the process and its event loop answer")
async def health() -> dict[str, str]:
    return {"status": "ok"}


def _memory() -> dict[str, int]:
    """RSS of the API process and of its worker processes, in bytes."""
    me = psutil.Process(os.getpid())
    workers = 0
    for child in me.children(recursive=True):
        try:
            workers += child.memory_info().rss
        except psutil.Error:
            continue
    api = me.memory_info().rss
    return {"api_rss_bytes": api, "workers_rss_bytes": workers, "total_rss_bytes": api + workers}


@router.get(
    "/ready",
    tags=["ops"],
    summary="Readiness: every model loaded, warm and its worker alive",
    responses={503: {"description": "Not ready; the body says why"}},
)
async def ready(context: ContextDep) -> JSONResponse:
    registry = context.registry
    models = {
        h.name: {"status": h.status, **({"reason": h.reason} if h.status != "ready" else {})}
        for h in registry.handles.values()
    }
    draining = context.draining
    ok = registry.ready and not draining
    body = {
        "status": "ready" if ok else ("draining" if draining else "not_ready"),
        "models": models,
        "uptime_s": round(time.monotonic() - context.started, 3),
        "memory": _memory(),
    }
    return JSONResponse(body, status_code=200 if ok else 503)


@router.get(
    "/info",
    tags=["ops"],
    summary="Instance, version and models (those the key may use)",
    responses=_AUTH_ERRORS,
)
async def info(admission: EmbedAdmission, context: ContextDep) -> dict[str, Any]:
    registry = context.registry
    cache = context.cache.describe()
    if not admission.sees_server_figures:
        # Counters over every tenant's traffic need the metrics or admin scope.
        cache = {k: cache[k] for k in ("enabled", "scope", "charge_hits")}
    default = registry.default.name
    return {
        "instance_id": context.instance_id,
        "version": __version__,
        "environment": context.settings.environment,
        "default_model": default if admission.may_use(default) else None,
        "models": [m for m in registry.describe() if admission.may_use(m["name"])],
        "cache": cache,
        "quantization": context.running.calibrations.describe(admission.may_use),
    }


@router.get(
    "/v1/models",
    tags=["ops"],
    summary="List models (OpenAI-compatible)",
    responses=_AUTH_ERRORS,
)
async def list_models(admission: EmbedAdmission, registry: RegistryDep) -> ModelList:
    # Each name (with the version that serves it), then the other ready versions, pinnable
    # as name@version.
    cards = [
        ModelCard(
            id=h.name,
            created=h.created,
            version=h.version,
            prompts=h.prompts.texts,
            default_prompt=h.prompts.default,
            task=h.info.task if h.info else h.config.task,
        )
        for h in registry.handles.values()
        if admission.may_use(h.name)
    ]
    cards += [
        ModelCard(
            id=h.ref,
            created=h.created,
            version=h.version,
            prompts=h.prompts.texts,
            default_prompt=h.prompts.default,
            task=h.info.task if h.info else h.config.task,
        )
        for g in registry.groups.values()
        for h in g.versions.values()
        if h.status == "ready" and h.version != g.current and admission.may_use(g.name)
    ]
    return ModelList(data=cards)
