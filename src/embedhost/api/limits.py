"""Limits applied before a request reaches a route: body size, JSON nesting and body-read
time (:class:`BodyLimitMiddleware`), requests in flight (:class:`ConcurrencyLimit`), a full
queue (:class:`QueueGate`: refused before the body is read), the pace of refusals
(:class:`RefusalPacer`), and
the ``X-RateLimit-*`` headers that tell an admitted client what is left of its budget
(:class:`RateLimitHeadersMiddleware`; the budgets themselves are spent by
``security/admission.py`` when ``require_scope`` admits the request).

All are pure ASGI middleware: they answer with :func:`~embedhost.api.errors.send_error`
before any route or exception handler runs.
"""

from __future__ import annotations

import asyncio
import math
import re
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from embedhost.api.errors import send_error
from embedhost.api.record import record_in
from embedhost.errors import Overloaded
from embedhost.models.version import GONE, VersionState
from embedhost.worker.supervisor import WorkerState

if TYPE_CHECKING:
    from embedhost.models.registry import ModelRegistry

PROBE_PATHS = frozenset({"/health", "/ready", "/metrics", "/console/stats"})
"""Probes and scrapes (the web console polls its stats every 2 s): never refused for
concurrency (they must answer while the server is saturated), and logged at debug level
(they arrive every few seconds)."""


# A JSON string (skipped whole, so brackets inside it do not count) or a bracket.
_JSON_NESTING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{}]')


def json_too_deep(body: bytes, max_depth: int) -> bool:
    """Whether a JSON document nests arrays/objects deeper than ``max_depth``.

    Checked on the raw bytes before parsing: a parser recursing 10,000 levels deep costs
    far more than this scan, and most bodies have too few brackets to need it at all.
    """
    if body.count(b"[") + body.count(b"{") <= max_depth:
        return False
    depth = 0
    for m in _JSON_NESTING.finditer(body):
        c = m.group()[0]
        if c in b"[{":
            depth += 1
            if depth > max_depth:
                return True
        elif c in b"]}":
            depth -= 1
    return False


class BodyLimitMiddleware:
    """413 before parsing when a body is larger than ``max_body_bytes``; 400 when its JSON
    nests deeper than ``max_json_depth``; 408 when it is not received within
    ``timeout_body_read_s`` (a slow client holding a connection and a concurrency slot).

    Checks Content-Length up front, and counts bodies (also chunked ones) as they arrive.
    """

    def __init__(
        self,
        app: ASGIApp,
        max_bytes: int,
        max_depth: int | None = None,
        timeout_s: float | None = None,
    ) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.max_depth = max_depth
        self.timeout_s = timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    too_big = int(value) > self.max_bytes
                except ValueError:
                    too_big = False
                if too_big:
                    await self._reject(send)
                    return
                break
        if scope.get("method") not in ("POST", "PUT", "PATCH"):
            await self.app(scope, receive, send)
            return
        # Read the whole body here, within the limits, and replay it.
        chunks: list[bytes] = []
        size = 0
        more = True
        try:
            async with asyncio.timeout(self.timeout_s):
                while more:
                    message = await receive()
                    if message["type"] == "http.disconnect":
                        return
                    chunk = message.get("body", b"")
                    size += len(chunk)
                    if size > self.max_bytes:
                        await self._reject(send)
                        return
                    chunks.append(chunk)
                    more = message.get("more_body", False)
        except TimeoutError:
            await self._send(
                send,
                408,
                f"the request body was not received within {self.timeout_s:g} s",
                "request_timeout",
            )
            return
        body = b"".join(chunks)
        if self.max_depth is not None and json_too_deep(body, self.max_depth):
            await self._send(
                send,
                400,
                f"the JSON body nests deeper than the limit of {self.max_depth} levels",
                "json_too_deep",
            )
            return
        await self.app(scope, _replay(body, receive), send)

    async def _reject(self, send: Send) -> None:
        await self._send(
            send,
            413,
            f"request body is larger than the limit of {self.max_bytes} bytes",
            "payload_too_large",
        )

    async def _send(self, send: Send, status: int, message: str, code: str) -> None:
        await send_error(
            send, status, message, "invalid_request_error", code, {"connection": "close"}
        )


def _replay(body: bytes, receive: Receive) -> Receive:
    """A receive that yields an already-read body once, then defers to the server's."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


class RefusalPacer:
    """Bounds how fast the server answers refusals (429/503 for overload): at most
    ``per_s`` a second; beyond, each refusal is held (an asyncio timer, no CPU) until its
    turn, at most ``max_hold_s``.

    Clients that retry a refusal at once would otherwise turn the API process into a
    refusal loop that takes the CPU the engine needs: however cheap one refusal is, their
    number grows until a core is spent on them. Held, a naive client retries no faster
    than a polite one; a client that honours Retry-After never waits here.
    """

    def __init__(self, per_s: float | None, max_hold_s: float = 2.0) -> None:
        self.per_s = per_s
        self.max_hold_s = max_hold_s
        self._next = 0.0
        self.held = 0
        """Refusals held since start."""

    def hold_s(self) -> float:
        """Claim the next refusal's turn; how long to hold it (0: answer now)."""
        if self.per_s is None:
            return 0.0
        now = time.monotonic()
        start = min(max(now, self._next), now + self.max_hold_s)
        self._next = start + 1.0 / self.per_s
        return start - now

    async def pace(self) -> None:
        wait = self.hold_s()
        if wait > 0:
            self.held += 1
            await asyncio.sleep(wait)


EMBED_PATHS = ("/v1/embeddings", "/embed")


_TRANSIENT = (VersionState.LOADING, VersionState.WARMING, VersionState.RESTARTING)


@dataclass(frozen=True, slots=True)
class Refusal:
    status: int
    type: str
    code: str
    message: str
    retry_after_s: float


def refusal_before_body(registry: ModelRegistry, retry_after_s: float) -> Refusal | None:
    """Why an embedding request must be refused before its body is read, or None.

    The model the request names is not known yet: it is refused here only when no
    served version could take it. 429 when every ready replica's queue is full (with the
    Retry-After of the one that drains first); 503 when no replica is ready at all and
    every version is loading or restarting (a failed version passes, so that the answer
    can say why). The batcher and the service check again once the model is known.
    """
    retry: float | None = None
    transient, seen = True, False
    for group in registry.groups.values():
        for handle in group.versions.values():
            state = handle.state
            if state in GONE:
                continue
            seen = True
            if state not in _TRANSIENT and state is not VersionState.READY:
                transient = False
            for r in handle.replicas:
                if r.worker.state is not WorkerState.READY:
                    continue
                if r.batcher.refuses(1) is None:
                    return None
                ra = r.batcher.retry_after()
                retry = ra if retry is None else min(retry, ra)
    if retry is not None:
        return Refusal(
            429,
            "rate_limit_error",
            "queue_full",
            "every queue that could serve this request is full; retry after the indicated delay",
            retry,
        )
    if transient and seen:
        return Refusal(
            503,
            "server_error",
            "model_not_ready",
            "no model is ready yet (loading or restarting); retry shortly",
            retry_after_s,
        )
    return None


class QueueGate:
    """429 + Retry-After (the queue's estimated drain time) for an embedding request when
    every queue that could take it is full, and 503 + Retry-After while no model is ready
    yet (:func:`refusal_before_body`), answered before its body is read or parsed.

    A refusal here costs the HTTP parse of the request line and headers and one small
    write; the same refusal from the batcher costs reading and parsing the body,
    validation, admission and tokenization first. Refusals are paced
    (:class:`RefusalPacer`).
    """

    def __init__(self, app: ASGIApp, pacer: RefusalPacer) -> None:
        self.app = app
        self.pacer = pacer
        self.refused = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] == "http"
            and scope.get("method") == "POST"
            and str(scope.get("path", "")).endswith(EMBED_PATHS)
        ):
            state = scope["app"].state
            registry: ModelRegistry | None = getattr(state, "registry", None)
            refusal = (
                refusal_before_body(registry, state.settings.worker.retry_after_s)
                if registry is not None
                else None
            )
            if refusal is not None:
                self.refused += 1
                record_in(scope).error_code = refusal.code  # the errors metric, the log line
                await self.pacer.pace()
                await send_error(
                    send,
                    refusal.status,
                    refusal.message,
                    refusal.type,
                    refusal.code,
                    {"retry-after": str(max(1, math.ceil(refusal.retry_after_s)))},
                )
                return
        await self.app(scope, receive, send)


class ConcurrencyLimit:
    """At most ``max_concurrent`` requests in flight (None: no limit), and the counters
    the metrics read. Built by ``create_app`` (``app.state.concurrency``) and enforced by
    :class:`ConcurrencyLimitMiddleware`."""

    def __init__(
        self, max_concurrent: int | None, retry_after_s: int, pacer: RefusalPacer | None = None
    ) -> None:
        self.max_concurrent = max_concurrent
        self.retry_after_s = retry_after_s
        self.pacer = pacer or RefusalPacer(None)
        self.in_flight = 0
        """Requests in flight under the limit (probes are not counted)."""
        self.overloaded = 0
        """Requests refused with 503 since start."""


class ConcurrencyLimitMiddleware:
    """An immediate 503 + Retry-After beyond the limit's ``max_concurrent`` requests in
    flight, rather than a queue that grows until clients time out. Probes
    (:data:`PROBE_PATHS`) are never refused."""

    def __init__(self, app: ASGIApp, limit: ConcurrencyLimit) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        limit = self.limit
        if (
            scope["type"] != "http"
            or limit.max_concurrent is None
            or scope.get("path") in PROBE_PATHS
        ):
            await self.app(scope, receive, send)
            return
        if limit.in_flight >= limit.max_concurrent:
            limit.overloaded += 1
            err = Overloaded(
                f"the server is at its limit of {limit.max_concurrent} concurrent requests; "
                "retry shortly",
            )
            retry = {"retry-after": str(limit.retry_after_s)}
            await limit.pacer.pace()
            await send_error(send, 503, err.message, err.type, err.code, retry)
            return
        limit.in_flight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            limit.in_flight -= 1


class RateLimitHeadersMiddleware:
    """Adds the ``X-RateLimit-*`` headers of an admitted request's request budget to its
    response, whatever answers it (the route or an error handler), unless the response
    already has them (a 429 carries the spent budget's own)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                admission = record_in(scope).admission
                rl = admission.ratelimit if admission is not None else None
                if rl is not None:
                    present = {n.lower() for n, _ in message.get("headers", ())}
                    extra = [
                        (k.lower().encode(), v.encode())
                        for k, v in rl.headers().items()
                        if k.lower().encode() not in present
                    ]
                    message = {**message, "headers": [*message.get("headers", ()), *extra]}
            await send(message)

        await self.app(scope, receive, send_with_headers)
