"""Run-time model changes that are not routing: the checks before a load (path, memory
guard), applying a changed config file (SIGHUP or ``POST /admin/reload``), and the SIGHUP
handler itself.

The memory guard estimates what a version will take (weight file bytes x
``lifecycle.memory_factor`` + ``worker_overhead_mb``, per replica) and refuses the load
(507) when that plus ``memory_headroom_mb`` exceeds the memory available now: the host
keeps serving the current version instead of being taken down by the OOM killer.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psutil
from pydantic import ValidationError

from embedhost.config import (
    LifecycleConfig,
    ModelConfig,
    Settings,
    load_settings,
)
from embedhost.errors import ConfigError, EmbedhostError, InsufficientMemory, InvalidRequest

if TYPE_CHECKING:
    from embedhost.models.registry import ModelRegistry

log = logging.getLogger(__name__)

_MB = 1024 * 1024


_WEIGHT_EXTS = (".safetensors", ".bin", ".onnx", ".gguf", ".pt", ".onnx_data")


def _weight_bytes(path: Path, depth: int = 3) -> int:
    """Bytes of weight files in a model file or directory. The walk is shallow: a path
    given to the admin API by mistake (``/``) must not start a crawl of the disk."""
    if path.is_file():
        return path.stat().st_size
    total = 0
    for d in range(depth):
        for ext in _WEIGHT_EXTS:
            total += sum(p.stat().st_size for p in path.glob("*/" * d + "*" + ext) if p.is_file())
    return total


def version_config(name: str, fields: dict[str, Any]) -> ModelConfig:
    """A version's config from the admin API's fields, or a 400 naming what is wrong."""
    try:
        return ModelConfig.model_validate({**fields, "name": name})
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "body"
        raise InvalidRequest(f"{where}: {first['msg']}", param=where) from None


def estimate_bytes(config: ModelConfig, lifecycle: LifecycleConfig) -> int:
    """Resident memory a version is expected to take, all replicas together."""
    path = config.resolved_path()
    weights = _weight_bytes(path) if path.exists() else 0
    per_replica = int(weights * lifecycle.memory_factor) + lifecycle.worker_overhead_mb * _MB
    return per_replica * config.replicas


def preflight(config: ModelConfig, lifecycle: LifecycleConfig) -> None:
    """Cheap checks before any process starts (blocking: file system; run in a thread)."""
    try:
        need = _check_path(config) and estimate_bytes(config, lifecycle)
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


def _check_path(config: ModelConfig) -> bool:
    path = config.resolved_path()
    if not path.exists():
        raise InvalidRequest(f"model {config.ref}: {path} does not exist", param="path")
    if config.engine == "llama_cpp" and not path.is_file():
        raise InvalidRequest(f"model {config.ref}: {path} is not a .gguf file", param="path")
    if config.engine in ("transformers", "onnx") and not path.is_dir():
        raise InvalidRequest(
            f"model {config.ref}: {path} is not a directory; {config.engine} needs one",
            param="path",
        )
    return True


def _same_version(a: ModelConfig, b: ModelConfig) -> bool:
    """Same weights and serving options (traffic and shadow are routing, not the version)."""
    skip = {"traffic", "shadow"}
    return a.model_dump(exclude=skip) == b.model_dump(exclude=skip)


async def apply_settings(registry: ModelRegistry, new: Settings) -> dict[str, list[str]]:
    """Load what the new config adds, promote each name's first version, set splits and
    shadows, drain what it no longer names. A version whose load fails leaves the one
    it would replace serving. Versions are immutable: a changed entry under the same
    version is reported, not reloaded (give it a new version)."""
    from embedhost.models.version import VersionState

    report: dict[str, list[str]] = {
        "loaded": [],
        "promoted": [],
        "unloaded": [],
        "failed": [],
        "warnings": [],
    }
    old = registry.settings
    for section in ("environment", "limits", "worker"):
        if getattr(old, section) != getattr(new, section):
            report["warnings"].append(f"{section} changed; it takes effect on restart")
    registry.settings = old.model_copy(update={"lifecycle": new.lifecycle, "models": new.models})

    wanted: dict[str, list[ModelConfig]] = {}
    for m in new.models:
        wanted.setdefault(m.name, []).append(m)
    refs = {m.ref for m in new.models}

    to_load: list[ModelConfig] = []
    for m in new.models:
        group = registry.groups.get(m.name)
        have = group.versions.get(m.version) if group else None
        if have is None or have.state in (VersionState.FAILED, VersionState.STOPPED):
            to_load.append(m)
        elif not _same_version(have.config, m):
            report["warnings"].append(
                f"{m.ref} changed in the config but is loaded already; give it a new version"
            )

    async def load_one(m: ModelConfig) -> None:
        try:
            await registry.wait_loaded(await registry.load(m))
            report["loaded"].append(m.ref)
        except EmbedhostError as exc:
            report["failed"].append(f"{m.ref}: {exc.message}")

    await asyncio.gather(*(load_one(m) for m in to_load))

    for name, cfgs in wanted.items():
        group = registry.groups.get(name)
        if group is None:
            continue
        first = group.versions.get(cfgs[0].version)
        if (
            first is not None
            and first.state is VersionState.READY
            and group.current != first.version
        ):
            registry.promote(name, first.version, keep_previous=True)
            report["promoted"].append(first.ref)
        ready = {v for v, h in group.versions.items() if h.state is VersionState.READY}
        group.weights = {
            m.version: m.traffic for m in cfgs if m.traffic is not None and m.version in ready
        }
        shadow = next((m.version for m in cfgs if m.shadow and m.version in ready), None)
        group.shadow = shadow if shadow != group.current else None

    if new.models[0].name in registry.groups:
        registry.default_name = new.models[0].name

    for name, group in list(registry.groups.items()):
        dropping = name not in wanted and name != registry.default_name
        for version, handle in list(group.versions.items()):
            if handle.ref in refs or handle.state in (VersionState.DRAINING, VersionState.STOPPED):
                continue
            if version == group.current and not dropping:
                why = "its replacement is not ready" if name in wanted else "it is the default"
                report["warnings"].append(f"{handle.ref} stays current: {why}")
                continue
            registry.retire(handle)
            report["unloaded"].append(handle.ref)
        if dropping:
            registry.groups.pop(name, None)
    log.info("config applied: %s", {k: v for k, v in report.items() if v})
    return report


async def reload_config(app: Any) -> dict[str, list[str]]:
    """Read the config file the server was started with, and apply it."""
    path: Path | None = getattr(app.state, "config_path", None)
    if path is None:
        raise InvalidRequest("the server was started without --config; there is nothing to reload")
    try:
        settings = await asyncio.to_thread(load_settings, path)
    except ConfigError as exc:
        raise InvalidRequest(f"config reload refused: {exc.message}") from None
    registry: ModelRegistry = app.state.registry
    return await registry.apply(settings)


def install_sighup(app: Any) -> Callable[[], None]:
    """SIGHUP reloads the config file (when the server has one); returns the remover."""
    if getattr(app.state, "config_path", None) is None:
        return lambda: None
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    loop = asyncio.get_running_loop()

    def on_hup() -> None:
        log.info("SIGHUP: reloading %s", app.state.config_path)
        registry: ModelRegistry = app.state.registry
        registry.spawn(reload_config(app), name="sighup-reload")

    loop.add_signal_handler(signal.SIGHUP, on_hup)

    def remove() -> None:
        loop.remove_signal_handler(signal.SIGHUP)

    return remove
