"""Loaded models: names, their versions, and the router between them.

A *model* (:class:`~embedhost.models.group.ModelGroup`) is a name clients send. It holds one or more versions
(:class:`~embedhost.models.version.ModelVersion`), one of which is *current*. A request
names ``name`` (the router picks: the current version, or a sticky A/B slice when a split
is set) or pins ``name@version``. An unknown name or version is a 404, never a silent
fallback.

The registry owns every change to that picture, each through a method that checks it:
load (after :func:`~embedhost.models.preflight.preflight`), promote, rollback, unload,
split, shadow, and the few steps a config reload (:mod:`embedhost.models.reload`) takes.
It also owns the background tasks those start, and cancels them on stop, and it answers
whether an embedding request can be taken at all before its body is read
(:meth:`ModelRegistry.refusal`).

A swap (:meth:`ModelRegistry.promote`) changes ``current`` in one step of the event loop,
so every request is routed either before or after it; the old version then drains (see
:meth:`~embedhost.models.version.ModelVersion.retire`).
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any

from embedhost.config import ModelConfig, Settings
from embedhost.errors import (
    ConfigError,
    Conflict,
    EmbedhostError,
    InvalidRequest,
    ModelNotFound,
    ModelNotReady,
    QueueFull,
    VersionLoadFailed,
)
from embedhost.models.group import ModelGroup
from embedhost.models.preflight import check_engine, preflight
from embedhost.models.replica import ReplicaLoad
from embedhost.models.version import DEAD, GONE, NEVER_UP, TRANSIENT, ModelVersion, VersionState
from embedhost.tokenization import load_prompts, load_tokenizer
from embedhost.worker import budget

if TYPE_CHECKING:
    from embedhost.metrics import Metrics

log = logging.getLogger(__name__)


class ModelRegistry:
    """Every served model name, the default one, and the background tasks of changes."""

    def __init__(self, settings: Settings, metrics: Metrics | None = None) -> None:
        self.settings = settings
        cpu = budget.thread_budget(settings.models)
        if (line := budget.describe(settings.models, cpu)) is not None:
            log.info("%s", line)
        if (warning := cpu.oversubscribed(settings.models)) is not None:
            log.warning("%s", warning)
        self.groups: dict[str, ModelGroup] = {}
        for m in settings.models:
            self._add_configured(m, ModelVersion(m, settings, metrics=metrics))
        self.default_name = settings.models[0].name
        self.metrics = metrics
        self._start_task: asyncio.Task[Any] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        # Held by a config reload (embedhost.models.reload) for its whole run: two reloads
        # (SIGHUP and POST /admin/reload) never interleave their loads and promotes.
        self.reload_lock = asyncio.Lock()

    def _add_configured(self, m: ModelConfig, handle: ModelVersion) -> ModelGroup:
        """The first configured version of a name is its current one."""
        group = self.groups.get(m.name)
        if group is None:
            group = self.groups[m.name] = ModelGroup(m.name, current=m.version)
        group.versions[m.version] = handle
        if m.traffic is not None:
            group.weights[m.version] = m.traffic
        if m.shadow:
            group.shadow = m.version
        return group

    # -- views ------------------------------------------------------------------------------

    @property
    def handles(self) -> dict[str, ModelVersion]:
        """Each model name's current version."""
        return {name: g.current_handle for name, g in self.groups.items()}

    @property
    def default(self) -> ModelVersion:
        return self.groups[self.default_name].current_handle

    @property
    def ready(self) -> bool:
        """Every model's current version serves. Candidates loading, warming or failed
        beside it do not make the instance unready, nor does a model name first loaded
        through the admin API that has not come up (yet): the instance serves what it did."""
        return all(
            g.current_handle.state is VersionState.READY
            or (g.current_handle.runtime and g.current_handle.state in NEVER_UP)
            for g in self.groups.values()
        )

    def group(self, name: str) -> ModelGroup:
        group = self.groups.get(name)
        if group is None:
            raise ModelNotFound(f"model {name!r} is not served here; available: {self._known()}")
        return group

    def version(self, name: str, version: str) -> ModelVersion:
        handle = self.group(name).versions.get(version)
        if handle is None:
            raise ModelNotFound(
                f"model {name}@{version} is not loaded; available: {self._known()}",
                param="model",
            )
        return handle

    def _known(self) -> str:
        return ", ".join(
            sorted(
                h.ref
                for g in self.groups.values()
                for h in g.versions.values()
                if h.state not in GONE
            )
        )

    def describe(self) -> list[dict[str, Any]]:
        """Per model: the current version's description, plus every version and the split."""
        out = []
        for g in self.groups.values():
            entry = g.current_handle.describe()
            group = g.describe()
            entry.update(
                current=group["current"],
                traffic=group["traffic"],
                shadow=group["shadow"],
                versions=[
                    {k: v[k] for k in ("version", "status", "reason", "dtype", "checksum")}
                    for v in group["versions"]
                ],
            )
            out.append(entry)
        return out

    def replica_loads(self) -> list[tuple[ModelVersion, ReplicaLoad]]:
        """Each current version's replicas, as the metrics read them at scrape time."""
        return [(h, r.snapshot()) for h in self.handles.values() for r in h.replicas]

    # -- admission ----------------------------------------------------------------------------

    def refusal(self) -> EmbedhostError | None:
        """Whether an embedding request can be taken before its body is read (the model it
        names is not known yet), and if not, why and for how long: the error to answer
        with, its ``retry_after`` set; None when some served version could take it.

        :class:`~embedhost.errors.QueueFull` when every ready replica's queue is full (with
        the Retry-After of the one that drains first); :class:`~embedhost.errors.ModelNotReady`
        when no replica is ready at all and every version is loading or restarting (a
        failed version passes, so that the answer can say why). The replica and the
        service check again once the model is known.
        """
        retry: float | None = None
        transient, seen = True, False
        for group in self.groups.values():
            for handle in group.versions.values():
                state = handle.state
                if state in GONE:
                    continue
                seen = True
                if state not in TRANSIENT and state is not VersionState.READY:
                    transient = False
                for r in handle.replicas:
                    if not r.ready:
                        continue
                    if r.refuses(1) is None:
                        return None
                    ra = r.retry_after()
                    retry = ra if retry is None else min(retry, ra)
        if retry is not None:
            return QueueFull(
                "every queue that could serve this request is full; "
                "retry after the indicated delay",
                retry_after=retry,
            )
        if transient and seen:
            return ModelNotReady(
                "no model is ready yet (loading or restarting); retry shortly",
                retry_after=self.settings.worker.retry_after_s,
            )
        return None

    def retry_after(self) -> float:
        """Retry-After for an overload refusal: the soonest drain estimate of a ready
        replica (the configured constant when none is ready)."""
        waits = [r.retry_after() for h in self.handles.values() for r in h.replicas if r.ready]
        return min(waits, default=self.settings.worker.retry_after_s)

    # -- routing ----------------------------------------------------------------------------

    def route(self, ref: str | None, key: str | None = None) -> ModelVersion:
        """The version that serves a request for ``ref`` from caller ``key``."""
        if not ref:
            return self.groups[self.default_name].choose(key)
        name, _, version = ref.partition("@")
        group = self.groups.get(name)
        if group is None:
            raise ModelNotFound(
                f"model {ref!r} is not served here; available: {self._known()}", param="model"
            )
        if not version:
            return group.choose(key)
        handle = group.versions.get(version)
        if handle is None or handle.state in GONE:
            raise ModelNotFound(
                f"model {ref!r} is not served here"
                + (" (retired)" if handle is not None else "")
                + f"; available: {self._known()}",
                param="model",
            )
        return handle

    def shadow_for(self, served: ModelVersion) -> ModelVersion | None:
        """The ready shadow version that should get a copy of this request, if any."""
        group = self.groups.get(served.name)
        if group is None or group.shadow is None or group.shadow == served.version:
            return None
        target = group.versions.get(group.shadow)
        if target is None or target.state is not VersionState.READY:
            return None
        if group.shadow_rate < 1.0 and random.random() >= group.shadow_rate:  # noqa: S311
            return None
        return target

    # -- lifecycle --------------------------------------------------------------------------

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        """A background task the registry keeps a reference to, and cancels on stop."""
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        task.add_done_callback(_log_failure)
        return task

    def start(self) -> None:
        """Start every configured version in the background; /ready tells when they are up."""
        self._start_task = asyncio.get_running_loop().create_task(
            self._start_all(), name="model-start"
        )

    async def _start_all(self) -> None:
        await asyncio.gather(
            *(h.start() for g in self.groups.values() for h in g.versions.values())
        )

    async def wait_started(self) -> None:
        if self._start_task is not None:
            await asyncio.shield(self._start_task)

    async def load(self, config: ModelConfig, *, promote: bool = False) -> ModelVersion:
        """Start loading a version (new name or new version of a name) in the background.

        Refuses at once, before any process starts, when the version is already loaded,
        its path is missing, its tokenizer unreadable or it would not fit in memory.
        """
        self._check_loadable(config)
        check_engine(config, self.settings)
        await asyncio.to_thread(preflight, config, self.settings.lifecycle)
        try:
            tokenizer = await asyncio.to_thread(load_tokenizer, config)
        except Exception as exc:
            raise VersionLoadFailed(
                f"model {config.ref}: cannot read its tokenizer: {type(exc).__name__}: {exc}",
                param="path",
            ) from None
        try:
            prompts = await asyncio.to_thread(load_prompts, config)
        except ConfigError as exc:
            raise VersionLoadFailed(exc.message, param="prompts") from None
        self._check_loadable(config)  # again: another load may have won the race
        group = self.groups.get(config.name)
        if group is None:
            group = self.groups[config.name] = ModelGroup(config.name, current=config.version)
        old = group.versions.get(config.version)
        if old is not None:  # a failed or stopped entry of the same version: replace it
            self.spawn(old.stop(0), name=f"stop-{old.ref}")
        handle = ModelVersion(
            config,
            self.settings,
            tokenizer=tokenizer,
            prompts=prompts,
            runtime=True,
            metrics=self.metrics,
        )
        group.versions[config.version] = handle
        log.info("model %s: loading from %s", config.ref, config.path)
        handle.start_task = self.spawn(
            self._start_version(handle, promote), name=f"load-{config.ref}"
        )
        return handle

    def _check_loadable(self, config: ModelConfig) -> None:
        group = self.groups.get(config.name)
        existing = group.versions.get(config.version) if group else None
        if existing is not None and existing.state not in DEAD:
            raise Conflict(
                f"model {config.ref} is already loaded ({existing.status}); unload it first "
                "or give the new one another version",
                param="version",
            )

    async def _start_version(self, handle: ModelVersion, promote: bool) -> None:
        await handle.start()
        if handle.state is VersionState.READY:
            log.info("model %s: ready", handle.ref)
            group = self.groups.get(handle.name)
            if promote and group is not None and group.versions.get(handle.version) is handle:
                self.promote(handle.name, handle.version)
        else:
            log.error("model %s: load failed: %s", handle.ref, handle.reason)

    async def wait_loaded(self, handle: ModelVersion) -> ModelVersion:
        """Wait for a version started by :meth:`load`; raise if it did not become ready."""
        if handle.start_task is not None:
            await asyncio.shield(handle.start_task)
        state = handle.state
        if state is VersionState.FAILED:
            raise VersionLoadFailed(f"model {handle.ref} failed to load: {handle.reason}")
        if state in GONE:
            raise Conflict(f"model {handle.ref} was unloaded while it loaded")
        return handle

    def promote(
        self, name: str, version: str, *, keep_previous: bool | None = None
    ) -> asyncio.Task[Any] | None:
        """Make ``version`` the current one, in one step. The previous current version is
        drained and stopped (returned: the task that does it) unless kept for rollback.
        A/B weights are cleared: the split they described no longer exists."""
        group = self.group(name)
        handle = self.version(name, version)
        if handle.state is not VersionState.READY:
            raise Conflict(
                f"model {handle.ref} is {handle.status}; only a ready version can be promoted",
                param="version",
            )
        if group.current == version:
            return None
        previous = group.current_handle
        group.history.append(group.current)
        group.current = version
        group.weights.clear()
        if group.shadow == version:
            group.shadow = None
        log.info("model %s: promoted %s (was %s)", name, version, previous.version)
        keep = self.settings.lifecycle.keep_previous if keep_previous is None else keep_previous
        if keep:
            return None
        return self.retire(previous)

    def retire(self, handle: ModelVersion) -> asyncio.Task[Any]:
        group = self.groups.get(handle.name)
        if group is not None:
            group.weights.pop(handle.version, None)
            if group.shadow == handle.version:
                group.shadow = None
        return self.spawn(
            handle.retire(self.settings.lifecycle.drain_timeout_s), name=f"retire-{handle.ref}"
        )

    async def rollback(self, name: str) -> ModelVersion:
        """Back to the version that was current before: at once when it is still loaded,
        else it is loaded again from its config (checksum verified again) and promoted
        when ready."""
        group = self.group(name)
        while group.history and group.history[-1] not in group.versions:
            group.history.pop()
        if not group.history:
            raise Conflict(f"model {name} has no previous version to roll back to")
        previous = group.versions[group.history[-1]]
        if previous.state is VersionState.READY:
            group.history.pop()
            self.promote(name, previous.version)
            # promote() pushed the version we left; a second rollback returns to it.
            return previous
        if previous.state in DEAD:
            group.history.pop()
            return await self.load(previous.config, promote=True)
        raise Conflict(f"model {previous.ref} is {previous.status}; retry when it settles")

    def unload(self, name: str, version: str) -> asyncio.Task[Any] | None:
        """Drain and stop a version that is not current; forget one already stopped."""
        group = self.group(name)
        handle = self.version(name, version)
        if group.current == version and (len(group.versions) > 1 or name == self.default_name):
            raise Conflict(
                f"model {handle.ref} is the current version; promote another one first",
                param="version",
            )
        if group.current == version:
            # The only version of a name loaded at run time: the name goes with it.
            self.groups.pop(name, None)
        if handle.state in DEAD:
            group.versions.pop(version, None)
            self.spawn(handle.stop(0), name=f"stop-{handle.ref}")
            return None
        return self.retire(handle)

    def set_split(
        self, name: str, weights: dict[str, float], *, as_configured: bool = False
    ) -> ModelGroup:
        """A/B weights between loaded versions of ``name``; empty clears the split.

        ``as_configured``: the weights of a config file (reload), where every weight may be
        0 (no split) and the shadow's may be 0: the schema takes both at start, and so does
        a reload.
        """
        group = self.group(name)
        for version, w in weights.items():
            handle = self.version(name, version)
            if handle.state in GONE or handle.state is VersionState.FAILED:
                raise Conflict(f"model {handle.ref} is {handle.status}; it cannot take traffic")
            if not w >= 0:
                raise InvalidRequest(f"weight of {version} must be >= 0", param="weights")
            if version == group.shadow and not (as_configured and w == 0):
                raise Conflict(f"model {handle.ref} is the shadow; it never answers")
        if weights and sum(weights.values()) <= 0 and not as_configured:
            raise InvalidRequest("at least one weight must be positive", param="weights")
        group.weights = dict(weights)
        log.info("model %s: traffic split %s", name, group.weights or "cleared")
        return group

    def set_shadow(self, name: str, version: str | None, sample_rate: float = 1.0) -> ModelGroup:
        group = self.group(name)
        if version is not None:
            handle = self.version(name, version)
            if version == group.current:
                raise Conflict(f"model {handle.ref} is current; a shadow must be another version")
            if handle.state in GONE or handle.state is VersionState.FAILED:
                raise Conflict(f"model {handle.ref} is {handle.status}; it cannot be a shadow")
            group.weights.pop(version, None)
        if not 0 < sample_rate <= 1:
            raise InvalidRequest("sample_rate must be in (0, 1]", param="sample_rate")
        group.shadow = version
        group.shadow_rate = sample_rate
        log.info("model %s: shadow %s (rate %.2f)", name, version or "off", sample_rate)
        return group

    # -- config reload (embedhost.models.reload) ----------------------------------------------

    def adopt_config(self, new: Settings) -> None:
        """Take a reloaded config's ``lifecycle`` section and models list (what later loads,
        promotes and plugin checks read); every other section takes effect on restart."""
        self.settings = self.settings.model_copy(
            update={"lifecycle": new.lifecycle, "models": new.models}
        )

    def set_default(self, name: str) -> None:
        """The model that requests naming none get; it must be served here."""
        self.group(name)
        self.default_name = name

    def forget(self, name: str) -> None:
        """Serve a name no longer: it leaves the views and the router at once. Its versions
        are retired by the caller (they drain on their own); the default name stays."""
        if name == self.default_name:
            raise Conflict(f"model {name} is the default model; it stays served")
        self.groups.pop(name, None)

    async def stop(self, drain_timeout: float) -> None:
        if self._start_task is not None and not self._start_task.done():
            self._start_task.cancel()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(
            *(h.stop(drain_timeout) for g in self.groups.values() for h in g.versions.values())
        )


def _log_failure(task: asyncio.Task[Any]) -> None:
    if task.cancelled():
        return
    exc = task.exception()
    if exc is None:
        return
    if isinstance(exc, EmbedhostError):
        log.error("%s: %s", task.get_name(), exc.message)
    else:
        log.error("%s failed", task.get_name(), exc_info=exc)
