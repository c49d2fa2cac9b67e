"""Dependencies: the objects the lifespan put on ``app.state``, typed for the routes."""

from __future__ import annotations

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
