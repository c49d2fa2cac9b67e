"""Checks before a run-time load (admin API, config reload), made before any process
starts: the admin API's fields as a version config, the engine (plugins need permission),
the path (per engine, by :func:`embedhost.modelfiles.path_problem`), and the memory guard.

The memory guard estimates what a version will take (weight file bytes x
``lifecycle.memory_factor`` + ``worker_overhead_mb``, per replica) and refuses the load
(507) when that plus ``memory_headroom_mb`` exceeds the memory available now: the host
keeps serving the current version instead of being taken down by the OOM killer.
"""

from __future__ import annotations

from typing import Any

import psutil
from pydantic import ValidationError

from embedhost import catalog
from embedhost.config import LifecycleConfig, ModelConfig, Settings, validation_problems
from embedhost.errors import InsufficientMemory, InvalidRequest
from embedhost.modelfiles import path_problem, weight_bytes

_MB = 1024 * 1024


def version_config(name: str, fields: dict[str, Any]) -> ModelConfig:
    """A version's config from the admin API's fields, or a 400 naming what is wrong."""
    try:
        return ModelConfig.model_validate({**fields, "name": name})
    except ValidationError as exc:
        where, msg = validation_problems(exc)[0]
        where = where or "body"
        raise InvalidRequest(f"{where}: {msg}", param=where) from None


def check_engine(config: ModelConfig, settings: Settings) -> None:
    """A plugin engine is arbitrary code imported by the worker: over the admin API only
    when allowed, or when the configuration already uses that same engine."""
    if (
        catalog.row(config.engine).plugin
        and not settings.lifecycle.allow_plugin_engines
        and config.engine not in {m.engine for m in settings.models}
    ):
        raise InvalidRequest(
            f"engine {config.engine!r} is a plugin; loading plugins at run time needs "
            "lifecycle.allow_plugin_engines: true",
            param="engine",
        )


def estimate_bytes(config: ModelConfig, lifecycle: LifecycleConfig) -> int:
    """Resident memory a version is expected to take, all replicas together."""
    path = config.resolved_path()
    weights = weight_bytes(path) if path.exists() else 0
    per_replica = int(weights * lifecycle.memory_factor) + lifecycle.worker_overhead_mb * _MB
    return per_replica * config.replicas


def preflight(config: ModelConfig, lifecycle: LifecycleConfig) -> None:
    """Cheap checks before any process starts (blocking: file system; run in a thread)."""
    try:
        _check_path(config)
        need = estimate_bytes(config, lifecycle)
    except (OSError, RuntimeError, ValueError) as exc:  # unreadable, ~nobody, NUL byte...
        raise InvalidRequest(
            f"model {config.ref}: path {config.path!r} is not usable: {exc}", param="path"
        ) from None
    if not lifecycle.memory_guard:
        return
    available = int(psutil.virtual_memory().available)
    headroom = lifecycle.memory_headroom_mb * _MB
    if need + headroom > available:
        raise InsufficientMemory(
            f"model {config.ref} would need about {need / _MB:,.0f} MiB "
            f"({config.replicas} replica(s)) plus {lifecycle.memory_headroom_mb} MiB headroom, "
            f"but only {available / _MB:,.0f} MiB is available; free memory, lower replicas, "
            "or use a smaller quantization. The current version keeps serving."
        )


def _check_path(config: ModelConfig) -> None:
    problem = path_problem(config.engine, config.resolved_path())
    if problem is not None:
        raise InvalidRequest(f"model {config.ref}: {problem}", param="path")
