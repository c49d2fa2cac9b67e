"""Applying a changed config to a running server (SIGHUP, ``POST /admin/reload``).

Reads the config file the server was started with and makes the loaded versions match
it: load what it adds, promote each name's first version, set splits and shadows, drain
what it no longer names. Every change goes through the registry's own checked methods;
this module decides which, and reports what it did. Two reloads never interleave (the
registry's ``reload_lock``).
"""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
from collections.abc import Callable
from pathlib import Path

from embedhost.config import ModelConfig, Settings, load_settings
from embedhost.errors import ConfigError, EmbedhostError, InvalidRequest
from embedhost.models.registry import ModelRegistry
from embedhost.models.version import DEAD, GONE, VersionState

log = logging.getLogger(__name__)


def _same_version(a: ModelConfig, b: ModelConfig) -> bool:
    """Same weights and serving options (traffic and shadow are routing, not the version)."""
    skip = {"traffic", "shadow"}
    return a.model_dump(exclude=skip) == b.model_dump(exclude=skip)


async def apply_settings(registry: ModelRegistry, new: Settings) -> dict[str, list[str]]:
    """Make the loaded versions match a new configuration; one reload at a time."""
    async with registry.reload_lock:
        return await _apply(registry, new)


async def _apply(registry: ModelRegistry, new: Settings) -> dict[str, list[str]]:
    """Load what the new config adds, promote each name's first version, set splits and
    shadows, drain what it no longer names. A version whose load fails leaves the one
    it would replace serving. Versions are immutable: a changed entry under the same
    version is reported, not reloaded (give it a new version)."""
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
    registry.adopt_config(new)

    wanted: dict[str, list[ModelConfig]] = {}
    for m in new.models:
        wanted.setdefault(m.name, []).append(m)
    refs = {m.ref for m in new.models}

    to_load: list[ModelConfig] = []
    for m in new.models:
        group = registry.groups.get(m.name)
        have = group.versions.get(m.version) if group else None
        if have is None or have.state in DEAD:
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
        # Only ready versions take traffic or shadow it; the current one is never its own
        # shadow. The shadow goes first: the split may not name a (new) shadow.
        ready = {v for v, h in group.versions.items() if h.state is VersionState.READY}
        shadow = next((m.version for m in cfgs if m.shadow and m.version in ready), None)
        registry.set_shadow(name, shadow if shadow != group.current else None, group.shadow_rate)
        weights = {
            m.version: m.traffic for m in cfgs if m.traffic is not None and m.version in ready
        }
        registry.set_split(name, weights, as_configured=True)

    if new.models[0].name in registry.groups:
        registry.set_default(new.models[0].name)

    for name, group in list(registry.groups.items()):
        dropping = name not in wanted and name != registry.default_name
        for version, handle in list(group.versions.items()):
            if handle.ref in refs or handle.state in GONE:
                continue
            if version == group.current and not dropping:
                why = "its replacement is not ready" if name in wanted else "it is the default"
                report["warnings"].append(f"{handle.ref} stays current: {why}")
                continue
            registry.retire(handle)
            report["unloaded"].append(handle.ref)
        if dropping:
            registry.forget(name)
    log.info("config applied: %s", {k: v for k, v in report.items() if v})
    return report


async def reload_config(registry: ModelRegistry, path: Path | None) -> dict[str, list[str]]:
    """Read the config file the server was started with (``path``), and apply it."""
    if path is None:
        raise InvalidRequest("the server was started without --config; there is nothing to reload")
    try:
        settings = await asyncio.to_thread(load_settings, path)
    except ConfigError as exc:
        raise InvalidRequest(f"config reload refused: {exc.message}") from None
    return await apply_settings(registry, settings)


def install_sighup(registry: ModelRegistry, path: Path | None) -> Callable[[], None]:
    """SIGHUP reloads the config file (when the server has one); returns the remover."""
    if path is None:
        return lambda: None
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    loop = asyncio.get_running_loop()

    def on_hup() -> None:
        log.info("SIGHUP: reloading %s", path)
        registry.spawn(reload_config(registry, path), name="sighup-reload")

    loop.add_signal_handler(signal.SIGHUP, on_hup)

    def remove() -> None:
        loop.remove_signal_handler(signal.SIGHUP)

    return remove
