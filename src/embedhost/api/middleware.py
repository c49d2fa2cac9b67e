"""The middleware that applies limits before a request reaches a route: body size, JSON
nesting, UTF-8 only and body-read time (:class:`BodyLimitMiddleware`), requests in flight
(:class:`ConcurrencyLimitMiddleware`, counting on :mod:`embedhost.api.overload`'s
:class:`~embedhost.api.overload.ConcurrencyLimit`), a full queue or no model ready
(:class:`QueueGate`: refused before the body is read, on the registry's answer), and
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
from collections.abc import Callable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from embedhost.api.errors import send_error
from embedhost.api.overload import ConcurrencyLimit, RefusalPacer
from embedhost.api.record import record_in
from embedhost.errors import EmbedhostError, Overloaded, PayloadTooLarge, status_for

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


# A JSON string (skipped whole: commas inside it are text) or a comma.
_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')


def json_elements_over(body: bytes, limit: int) -> bool:
    """Whether a JSON document holds more than about ``limit`` array items and object
    members (its commas outside strings), on the raw bytes before parsing: parsing and
    validating a body of millions of small elements (token ids) takes seconds of CPU
    that no request needs. ``bytes.count`` settles most bodies; the strings are blanked
    out (in C) only when the commas alone could be over."""
    if body.count(b",") <= limit:
        return False
    return _JSON_STRING.sub(b'""', body).count(b",") > limit


def not_utf8_json(body: bytes) -> bool:
    """Whether ``body`` is JSON in UTF-16 or UTF-32 (which ``json.loads`` would accept,
    and in which the depth scan, reading bytes, loses track of strings). Their ASCII
    characters hold NUL bytes; valid UTF-8 JSON never has one (a control character in a
    string must be escaped). ``bytes.find`` is a memchr: fast even on a large body."""
    return b"\x00" in body


def _json_body(scope: Scope) -> bool:
    """Whether the body is (or, without a Content-Type, is taken as) JSON; an upload of
    another type may hold NUL bytes."""
    for name, value in scope.get("headers", ()):
        if name == b"content-type":
            return b"json" in value.lower()
    return True


# Above this size the depth scan (proportional to the body) runs in a thread.
_INLINE_SCAN_BYTES = 64 * 1024


async def _too_deep(body: bytes, max_depth: int) -> bool:
    if len(body) <= _INLINE_SCAN_BYTES:
        return json_too_deep(body, max_depth)
    return await asyncio.to_thread(json_too_deep, body, max_depth)


async def _too_many(body: bytes, limit: int) -> bool:
    if len(body) <= _INLINE_SCAN_BYTES:
        return json_elements_over(body, limit)
    return await asyncio.to_thread(json_elements_over, body, limit)


class BodyLimitMiddleware:
    """413 before parsing when a body is larger than ``max_body_bytes``; 400 when it is not
    UTF-8 (RFC 8259) or its JSON nests deeper than ``max_json_depth``; 408 when it is not
    received within ``timeout_body_read_s`` (a slow client holding a connection and a concurrency slot).

    Checks Content-Length up front, and counts bodies (also chunked ones) as they arrive.
    """

    def __init__(
        self,
        app: ASGIApp,
        max_bytes: int,
        max_depth: int | None = None,
        timeout_s: float | None = None,
        uploads: dict[str, int] | None = None,
        max_elements: int | None = None,
    ) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.max_depth = max_depth
        self.max_elements = max_elements
        self.timeout_s = timeout_s
        # Paths that take files (the Batch API's /v1/files) and their own limit: counted as
        # they stream to the route, never held here whole (see _counted).
        self.uploads = uploads or {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        upload_limit = self.uploads.get(scope["path"])
        if upload_limit is not None:
            length = dict(scope.get("headers", ())).get(b"content-length", b"0")
            if length.isdigit() and int(length) > upload_limit:
                await self._send(
                    send,
                    413,
                    f"the file is larger than the limit of {upload_limit} bytes",
                    "payload_too_large",
                )
                return
            await self.app(scope, _counted(receive, upload_limit), send)
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
        if _json_body(scope) and not_utf8_json(body):
            await self._send(
                send,
                400,
                "the body is not UTF-8; JSON exchanged between systems must be UTF-8 (RFC 8259)",
                "invalid_encoding",
            )
            return
        if self.max_depth is not None and await _too_deep(body, self.max_depth):
            await self._send(
                send,
                400,
                f"the JSON body nests deeper than the limit of {self.max_depth} levels",
                "json_too_deep",
            )
            return
        if (
            self.max_elements is not None
            and _json_body(scope)
            and await _too_many(body, self.max_elements)
        ):
            await self._send(
                send,
                413,
                f"the JSON body holds more than {self.max_elements} elements "
                "(limits.max_json_elements); send fewer inputs or token ids per request",
                "payload_too_large",
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


def _counted(receive: Receive, limit: int) -> Receive:
    """A receive that raises 413 once more than ``limit`` bytes of body have arrived."""
    size = 0

    async def counted() -> Message:
        nonlocal size
        message = await receive()
        size += len(message.get("body", b""))
        if size > limit:
            raise PayloadTooLarge(f"request body is larger than the limit of {limit} bytes")
        return message

    return counted


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


EMBED_PATHS = ("/v1/embeddings", "/embed")


class QueueGate:
    """429 + Retry-After (the queue's estimated drain time) for an embedding request when
    every queue that could take it is full, and 503 + Retry-After while no model is ready
    yet, answered before its body is read or parsed. Whether to refuse is the model
    registry's answer (:meth:`~embedhost.models.registry.ModelRegistry.refusal`), asked
    through ``refusal`` (None before the models exist).

    A refusal here costs the HTTP parse of the request line and headers and one small
    write; the same refusal from the batcher costs reading and parsing the body,
    validation, admission and tokenization first. Refusals are paced
    (:class:`~embedhost.api.overload.RefusalPacer`).
    """

    def __init__(
        self,
        app: ASGIApp,
        refusal: Callable[[], EmbedhostError | None],
        pacer: RefusalPacer,
    ) -> None:
        self.app = app
        self.refusal = refusal
        self.pacer = pacer
        self.refused = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] == "http"
            and scope.get("method") == "POST"
            and str(scope.get("path", "")).endswith(EMBED_PATHS)
        ):
            refusal = self.refusal()
            if refusal is not None:
                self.refused += 1
                record_in(scope).error_code = refusal.code  # the errors metric, the log line
                await self.pacer.pace()
                retry_after = refusal.retry_after or 1
                await send_error(
                    send,
                    status_for(refusal),
                    refusal.message,
                    refusal.type,
                    refusal.code,
                    {"retry-after": str(max(1, math.ceil(retry_after)))},
                )
                return
        await self.app(scope, receive, send)


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
            retry = {"retry-after": str(limit.retry_after())}
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
