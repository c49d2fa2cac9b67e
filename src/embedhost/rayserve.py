"""Ray Serve: embedhost as a Serve deployment whose every replica is one embedhost app.

A replica is :func:`~embedhost.api.app.create_app` with its lifespan run by Ray inside the
replica actor: its own batcher and its own supervised engine worker process, its metrics
and errors. Ray routes requests between replicas, queues them, scales the replica count
(``ray.*`` settings, Ray's ``autoscaling_config``) and replaces replicas that fail their
health check (:meth:`EmbedhostReplica.check_health`: embedhost's readiness, less the
transient states it recovers from by itself).

Entry points: ``embedhost serve --ray`` (:func:`serve_forever`) and the Serve config file
``deploy/ray/serve.yaml`` (``import_path: embedhost.rayserve:app_builder``) for
``serve run`` / ``serve deploy``. Ray's own proxy answers some errors itself (queue full,
no replica, a replica that died mid-request) in plain text; :func:`proxy_middlewares`,
named by ``RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH``, rewrites those into embedhost's
OpenAI error body with ``Retry-After``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import orjson
from fastapi import FastAPI
from starlette.middleware import Middleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from embedhost.api.app import create_app
from embedhost.api.context import AppContext, context_of_app
from embedhost.config import Settings, load_settings
from embedhost.errors import ConfigError, error_body
from embedhost.logs import setup_logging
from embedhost.metrics import Metrics
from embedhost.models.version import VersionState

try:
    from ray.serve.config import AutoscalingConfig, BackpressureConfig
    from ray.serve.deployment import Application

    import ray
    from ray import serve
except ImportError as exc:  # pragma: no cover - the extra is not installed
    raise ImportError(
        "Ray Serve is not installed: pip install 'embedhost[ray]' (ray[serve])"
    ) from exc

log = logging.getLogger(__name__)

PROXY_CALLBACK_ENV = "RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH"
PROXY_CALLBACK = "embedhost.rayserve:proxy_middlewares"
"""Set ``RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH`` to this where the Ray nodes start."""

DEPLOYMENT_NAME = "embedhost"
RETRY_AFTER_S = 2
"""Retry-After on Ray's own 5xx answers that carry none (the proxy has no embedhost
settings; 2 s is ``worker.retry_after_s``'s default)."""


def deployment_options(settings: Settings) -> dict[str, Any]:
    """Ray Serve deployment options from ``settings.ray`` (and ``server``, ``worker``)."""
    r = settings.ray
    return {
        "name": DEPLOYMENT_NAME,
        "autoscaling_config": AutoscalingConfig(
            min_replicas=r.min_replicas,
            max_replicas=r.max_replicas,
            target_ongoing_requests=r.target_ongoing_requests,
            upscale_delay_s=r.upscale_delay_s,
            downscale_delay_s=r.downscale_delay_s,
            metrics_interval_s=r.metrics_interval_s,
            look_back_period_s=r.look_back_period_s,
        ),
        "max_ongoing_requests": r.max_ongoing_requests,
        "max_queued_requests": r.max_queued_requests,
        "backpressure_config": BackpressureConfig(
            status_code=503, retry_after_s=settings.worker.retry_after_s
        ),
        "health_check_period_s": r.health_check_period_s,
        "health_check_timeout_s": r.health_check_timeout_s,
        "graceful_shutdown_timeout_s": settings.server.graceful_shutdown_s,
        "ray_actor_options": {"num_cpus": r.num_cpus},
    }


def unhealthy_reason(context: AppContext) -> str | None:
    """Why this replica should be replaced, or None. Embedhost's readiness, except for what
    it recovers from by itself: a worker restarting after a crash (its requests get 503 +
    Retry-After meanwhile) or still loading is healthy; a model whose worker has given up
    (``failed``), a stopped one, or a replica that is draining is not."""
    if context.core is None:
        return "the app has not started"
    if context.draining:
        return "draining"
    for name, handle in context.core.registry.handles.items():
        if handle.state in (VersionState.FAILED, VersionState.STOPPED):
            return f"model {name} is {handle.status}: {handle.reason or 'no reason given'}"
    return None


async def _wait_ready(context: AppContext, timeout_s: float) -> None:
    """Until every model serves; raises (failing the replica's start, which Ray retries)
    when a model fails or the time is up."""
    registry = context.registry
    deadline = time.monotonic() + timeout_s
    while not registry.ready:
        reason = unhealthy_reason(context)
        if reason is not None:
            raise RuntimeError(f"embedhost replica did not start: {reason}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"embedhost replica not ready after {timeout_s:.0f}s")
        await asyncio.sleep(0.1)


class _MetricsServer:
    """This replica's ``/metrics`` on a port of its own (``ray.metrics_port``): Ray's proxy
    sends ``GET /metrics`` to any one replica; a scraper needs each."""

    def __init__(self, metrics: Metrics, host: str, first_port: int) -> None:

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path.split("?")[0] != "/metrics":
                    self.send_error(404)
                    return
                body, content_type = metrics.render(self.headers.get("Accept"))
                self.send_response(200)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                return

        last: OSError | None = None
        for port in range(first_port, min(first_port + 64, 65536)):
            try:
                self.httpd = ThreadingHTTPServer((host, port), Handler)
                break
            except OSError as exc:
                last = exc
        else:
            raise RuntimeError(f"no free metrics port in {first_port}-{first_port + 63}: {last}")
        self.port: int = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, name="metrics", daemon=True).start()
        log.info("replica metrics on http://%s:%d/metrics", host, self.port)

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class EmbedhostReplica:
    """One Serve replica: settings loaded here (the replica's YAML file and environment),
    the app built by ``create_app`` at replica start (``__serve_build_asgi_app__``)."""

    def __init__(self, config_path: str | None, overrides: dict[str, Any] | None) -> None:
        self.config_path = Path(config_path) if config_path else None
        self.settings = load_settings(self.config_path, overrides)
        setup_logging(self.settings.server.log_level, self.settings.server.log_format)
        self.embedhost_app: FastAPI | None = None

    def __serve_build_asgi_app__(self) -> FastAPI:
        # The replica's instance id (on /info, every log line and embedhost_build_info) is
        # Ray's replica id: one config serves every replica, so a configured id would repeat.
        replica_id = serve.get_replica_context().replica_id.unique_id
        server = self.settings.server.model_copy(update={"instance_id": replica_id})
        self.settings = self.settings.model_copy(update={"server": server})
        setup_logging(
            self.settings.server.log_level, self.settings.server.log_format, instance=replica_id
        )
        # The admin API refuses model changes on one replica (api/routes/admin.py).
        app = create_app(self.settings, orchestrator="ray-serve")
        context = context_of_app(app)
        inner = app.router.lifespan_context
        # The supervisor gives a worker start_timeout_s to load and warm, then fails it.
        timeout = self.settings.worker.start_timeout_s + 30

        @asynccontextmanager
        async def lifespan(a: FastAPI) -> AsyncIterator[Any]:
            # Ray sends traffic once the lifespan has started and the first health check
            # passed: hold the start until the models serve.
            async with inner(a) as state:
                await _wait_ready(context, timeout)
                r = self.settings.ray
                side = None
                if r.metrics_port is not None and context.metrics is not None:
                    side = _MetricsServer(context.metrics, r.metrics_host, r.metrics_port)
                try:
                    yield state
                finally:
                    if side is not None:
                        side.close()

        app.router.lifespan_context = lifespan
        self.embedhost_app = app
        return app

    async def check_health(self) -> None:
        """Ray's replica health check (``health_check_period_s``): raising makes Ray replace
        this replica."""
        app = self.embedhost_app
        reason = (
            "the app has not been built" if app is None else unhealthy_reason(context_of_app(app))
        )
        if reason is not None:
            raise RuntimeError(reason)


EmbedhostDeployment = serve.deployment(name=DEPLOYMENT_NAME)(serve.ingress()(EmbedhostReplica))


def build(
    config_path: str | Path | None = None, overrides: dict[str, Any] | None = None
) -> Application:
    """The Serve application: settings validated here first (a bad file fails the deploy,
    not every replica), then read again by each replica from the same file and its own
    environment."""
    settings = load_settings(config_path, overrides, check_paths=False)
    path = str(Path(config_path).resolve()) if config_path else None
    return EmbedhostDeployment.options(**deployment_options(settings)).bind(path, overrides)


def app_builder(args: dict[str, Any]) -> Application:
    """``import_path: embedhost.rayserve:app_builder`` in a Serve config; ``args``:
    ``config`` (an embedhost YAML file, on every node) and ``overrides`` (settings, as in
    the YAML). Deployment options in the Serve config's ``deployments:`` override
    ``ray.*``."""
    unknown = set(args) - {"config", "overrides"}
    if unknown:
        raise ConfigError(f"unknown embedhost args {sorted(unknown)}; expected config, overrides")
    config = args.get("config") or os.environ.get("EMBEDHOST_CONFIG")
    return build(config, args.get("overrides"))


# --- the proxy's own errors in embedhost's shape ------------------------------------------


class RayErrorShapeMiddleware:
    """In Ray's HTTP proxy: the answers Ray writes itself (plain text) become embedhost's
    OpenAI error body. A full queue (503 or 429) keeps its status and gets ``Retry-After``;
    no replica available is 503; a replica that died under a request (Ray's 500) is 503 +
    ``Retry-After``, as embedhost answers for a crashed engine worker: retry, another
    replica (or the replacement) answers. Embedhost's own answers are JSON and pass as
    they are."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start: Message | None = None
        started = False
        chunks: list[bytes] = []

        async def wrapped(message: Message) -> None:
            nonlocal start, started
            if message["type"] == "http.response.start":
                started = True
                headers = dict(message.get("headers", []))
                plain = headers.get(b"content-type", b"").startswith(b"text/plain")
                if plain and message["status"] in _REWRITTEN:
                    start = message
                    return
            elif message["type"] == "http.response.body" and start is not None:
                chunks.append(message.get("body", b""))
                if message.get("more_body", False):
                    return
                for m in _rewrite(start, b"".join(chunks)):
                    await send(m)
                return
            await send(message)

        try:
            await self.app(scope, receive, wrapped)
        except Exception:
            if started:
                raise
            log.warning("request failed in Ray's proxy", exc_info=True)
        if not started:
            # When the replica's actor died under the request, the proxy returns without
            # an answer (uvicorn would send a bare 500): a lost replica, retryable.
            for m in _rewrite({"status": 500, "headers": []}, b""):
                await send(m)


_REWRITTEN = {404, 408, 429, 500, 503}


def _rewrite(start: Message, text_bytes: bytes) -> list[Message]:
    status: int = start["status"]
    text = text_bytes.decode("utf-8", "replace").strip()
    headers = [(k, v) for k, v in start.get("headers", []) if k.lower() != b"content-type"]
    retry = any(k.lower() == b"retry-after" for k, _ in headers)
    if status == 404:
        body = error_body(text or "not found", "invalid_request_error", "not_found")
    elif status == 408:
        body = error_body(text or "request timed out", "server_error", "timeout")
    elif "backpressure" in text:
        body = error_body(
            "server overloaded: the queue in front of the replicas is full; retry later",
            "server_error",
            "overloaded",
        )
    elif status == 500:
        # Ray's text is the actor's traceback: logged by the proxy, not sent to clients.
        status = 503
        body = error_body(
            "the replica serving this request stopped; retry", "server_error", "replica_lost"
        )
    else:
        body = error_body(text or "no replica available; retry", "server_error", "unavailable")
    if status in (429, 503) and not retry:
        headers.append((b"retry-after", str(RETRY_AFTER_S).encode()))
    payload = orjson.dumps(body)
    headers = [(k, v) for k, v in headers if k.lower() != b"content-length"]
    headers += [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(payload)).encode()),
    ]
    return [
        {"type": "http.response.start", "status": status, "headers": headers},
        {"type": "http.response.body", "body": payload},
    ]


def proxy_middlewares() -> list[Middleware]:
    """``RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH=embedhost.rayserve:proxy_middlewares``."""
    return [Middleware(RayErrorShapeMiddleware)]


# --- embedhost serve --ray ----------------------------------------------------------------


def serve_forever(
    settings: Settings, config_path: Path | None, overrides: dict[str, Any] | None = None
) -> None:
    """``embedhost serve --ray``: join (``ray.address`` / ``$RAY_ADDRESS``) or start a Ray
    cluster, run the application behind Ray's proxy on ``server.host:port`` and keep it
    until SIGINT/SIGTERM; then delete the application (and stop a cluster started here)."""
    address = settings.ray.address or os.environ.get("RAY_ADDRESS")
    if address is None:
        # A local cluster inherits this environment: the proxy's error shaping included.
        os.environ.setdefault(PROXY_CALLBACK_ENV, PROXY_CALLBACK)
    ray.init(address=address, include_dashboard=False, configure_logging=False)
    stop = threading.Event()
    previous: dict[signal.Signals, Any] = {}

    def on_signal(sig: int, _frame: Any) -> None:
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        previous[sig] = signal.signal(sig, on_signal)
    try:
        serve.start(http_options={"host": settings.server.host, "port": settings.server.port})
        serve.run(build(config_path, overrides), name=settings.ray.app_name, route_prefix="/")
        log.info(
            "embedhost on Ray Serve: application %r on http://%s:%d (%d-%d replicas)",
            settings.ray.app_name,
            settings.server.host,
            settings.server.port,
            settings.ray.min_replicas,
            settings.ray.max_replicas,
        )
        while not stop.wait(1.0):
            pass
    finally:
        log.info("stopping: deleting Serve application %r", settings.ray.app_name)
        try:
            serve.delete(settings.ray.app_name)
            if address is None:
                serve.shutdown()  # type: ignore[no-untyped-call]
        finally:
            ray.shutdown()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
