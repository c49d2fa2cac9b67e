"""Dependencies: the objects the lifespan put on ``app.state``, typed for the routes."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import Depends, Request

from embedhost.config import Settings
from embedhost.models.registry import ModelRegistry
from embedhost.service import EmbeddingService


def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def get_registry(request: Request) -> ModelRegistry:
    registry: ModelRegistry = request.app.state.registry
    return registry


def get_service(request: Request) -> EmbeddingService:
    service: EmbeddingService = request.app.state.service
    return service


SettingsDep = Annotated[Settings, Depends(get_settings)]
RegistryDep = Annotated[ModelRegistry, Depends(get_registry)]
ServiceDep = Annotated[EmbeddingService, Depends(get_service)]


def require_scope(scope: str) -> Callable[[Request], Awaitable[None]]:
    """A dependency that admits a request only when its API key holds ``scope``.

    Placeholder until API keys land (issue 4): it admits every request.
    """

    async def dependency(request: Request) -> None:
        return None

    return dependency
