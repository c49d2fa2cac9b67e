"""Admin routes (scope ``admin``): model versions, swaps, A/B splits, shadow, config reload,
clearing the embedding cache.

Every change goes through :class:`~embedhost.models.registry.ModelRegistry`; this module
only parses, waits when asked (``wait``), and shapes answers. A load answers 202 at once
(the worker loads in the background; poll the version) or, with ``wait: true``, 201 once
the version is ready, or the reason it failed.
"""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Depends, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from embedhost.api.body import BodyRoute
from embedhost.api.context import context_of
from embedhost.api.deps import CacheDep, ContextDep, RegistryDep, require_scope
from embedhost.config import ModelConfig
from embedhost.errors import Conflict, InvalidRequest, MethodNotAllowed
from embedhost.models.preflight import version_config
from embedhost.models.reload import reload_config
from embedhost.protocol import ErrorResponse
from embedhost.security.modelroots import ModelRoots

_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse} for code in (400, 401, 403, 404, 409, 422, 429, 503, 507)
}


async def _one_of_many(request: Request) -> None:
    """Under an orchestrator that runs many identical replicas (Ray Serve), a change made
    here would reach the one replica that took the request: refuse it, say what to do."""
    orchestrator = context_of(request).orchestrator
    if orchestrator is None or request.method in ("GET", "HEAD"):
        return
    raise Conflict(
        f"this server is one replica of a {orchestrator} application: {request.method} "
        f"{request.url.path} would change this replica only. Change the model in the config "
        "and redeploy it (serve deploy): Ray Serve rolls every replica to the new version"
    )


router = APIRouter(
    route_class=BodyRoute,
    prefix="/admin",
    tags=["admin"],
    dependencies=[Depends(require_scope("admin")), Depends(_one_of_many)],
    responses=_ERRORS,
)


class LoadVersion(ModelConfig):
    """A new version: every field of a configured model; ``name`` comes from the path."""

    name: str | None = None  # type: ignore[assignment]
    version: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._-]+$")
    promote: bool = Field(default=False, description="Make it current once it is ready.")
    wait: bool = Field(default=False, description="Answer when it is ready (or failed).")


class Promote(BaseModel):
    model_config = ConfigDict(extra="forbid")
    version: str
    keep_previous: bool | None = Field(
        default=None, description="Keep the old version loaded. Default: lifecycle.keep_previous."
    )
    wait: bool = Field(default=False, description="Answer once the old version has drained.")


class Rollback(BaseModel):
    model_config = ConfigDict(extra="forbid")
    wait: bool = False


class Split(BaseModel):
    model_config = ConfigDict(extra="forbid")
    weights: dict[str, float] = Field(
        description="version -> relative weight, e.g. {'1': 90, '2': 10}; {} clears the split."
    )


class Shadow(BaseModel):
    model_config = ConfigDict(extra="forbid")
    version: str | None = Field(description="The candidate version; null turns shadowing off.")
    sample_rate: float = Field(default=1.0, gt=0, le=1)


@router.get("/models", summary="Every model, its versions, states, split, shadow and stats")
async def list_models(registry: RegistryDep) -> dict[str, Any]:
    return {
        "default_model": registry.default_name,
        "models": [g.describe() for g in registry.groups.values()],
    }


@router.post("/reload", summary="Re-read the config file and apply the difference (as SIGHUP)")
async def reload(context: ContextDep) -> dict[str, Any]:
    return await reload_config(context.registry, context.config_path)


@router.post("/models/{name:path}/versions", status_code=202, summary="Load a new version")
async def load_version(
    name: str, body: LoadVersion, context: ContextDep, registry: RegistryDep, response: Response
) -> dict[str, Any]:
    if body.name not in (None, name):
        raise InvalidRequest(f"name {body.name!r} differs from the path's {name!r}", param="name")
    if body.traffic is not None or body.shadow:
        raise InvalidRequest(
            "set traffic and shadow with PUT .../split and .../shadow once the version is loaded",
            param="traffic" if body.traffic is not None else "shadow",
        )
    config = version_config(name, body.model_dump(exclude={"promote", "wait", "name"}))
    # Only files under the configured roots (issue 20), before anything probes the path.
    ModelRoots.for_settings(context.settings, context.config_path).check(config)
    handle = await registry.load(config, promote=body.promote)
    if body.wait:
        await registry.wait_loaded(handle)  # includes the promote, when asked
        response.status_code = 201
    return handle.describe()


@router.get("/models/{name:path}/versions/{version}", summary="One version")
async def get_version(name: str, version: str, registry: RegistryDep) -> dict[str, Any]:
    return registry.version(name, version).describe()


@router.delete("/models/{name:path}/versions/{version}", summary="Drain and unload a version")
async def unload_version(
    name: str, version: str, registry: RegistryDep, wait: bool = False
) -> dict[str, Any]:
    handle = registry.version(name, version)
    task = registry.unload(name, version)
    if wait and task is not None:
        await asyncio.shield(task)
    return handle.describe()


@router.post("/models/{name:path}/promote", summary="Make a ready version current (the swap)")
async def promote(name: str, body: Promote, registry: RegistryDep) -> dict[str, Any]:
    task = registry.promote(name, body.version, keep_previous=body.keep_previous)
    if body.wait and task is not None:
        await asyncio.shield(task)
    return registry.group(name).describe()


@router.post("/models/{name:path}/rollback", summary="Back to the previous current version")
async def rollback(name: str, body: Rollback, registry: RegistryDep) -> dict[str, Any]:
    handle = await registry.rollback(name)
    if body.wait:
        await registry.wait_loaded(handle)
    return registry.group(name).describe()


@router.put("/models/{name:path}/split", summary="A/B weights between versions (sticky)")
async def split(name: str, body: Split, registry: RegistryDep) -> dict[str, Any]:
    return registry.set_split(name, body.weights).describe()


@router.put("/models/{name:path}/shadow", summary="Mirror traffic to a candidate version")
async def shadow(name: str, body: Shadow, registry: RegistryDep) -> dict[str, Any]:
    return registry.set_shadow(name, body.version, body.sample_rate).describe()


# Model names may contain "/", so GET /models/{name:path} also matches an action's path.
_ACTIONS = {
    "versions": "POST",
    "promote": "POST",
    "rollback": "POST",
    "split": "PUT",
    "shadow": "PUT",
}


@router.get("/models/{name:path}", summary="One model, its versions and split")
async def get_model(name: str, registry: RegistryDep) -> dict[str, Any]:
    base, _, action = name.rpartition("/")
    if name not in registry.groups and base in registry.groups and action in _ACTIONS:
        raise MethodNotAllowed(
            f"GET is not allowed on {action}", headers={"Allow": _ACTIONS[action]}
        )
    return registry.group(name).describe()


@router.delete("/cache", summary="Clear the embedding cache: all, one model, or one version")
async def clear_cache(
    cache: CacheDep, model: str | None = None, version: str | None = None
) -> dict[str, Any]:
    """Both tiers (this instance's memory and the shared Redis). Other replicas keep their
    in-process entries until they are evicted or cleared on each replica."""
    if version is not None and model is None:
        raise InvalidRequest("version needs model", param="version")
    removed = await cache.clear(model, version)
    return {"model": model, "version": version, **removed}
