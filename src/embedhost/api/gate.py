""":class:`AuthGate`: who is calling, decided before a request's body is read.

FastAPI reads and parses a route's body before it solves the route's dependencies, so
``require_scope`` alone would let an anonymous client make the server read and parse up
to ``limits.max_body_bytes`` (invalid JSON answered 422, deep JSON 400, before any 401).
The gate sits outside :class:`~embedhost.api.middleware.BodyLimitMiddleware`: for a
request that carries a body it authenticates (the key, the address's request budget)
with :meth:`~embedhost.security.admission.Security.authenticate` and leaves the answer on
the request's record, where ``require_scope`` picks it up to check the scope.

It also refuses, on every route (the open probes and docs included), a URL whose query
names a credential: such URLs end up in proxy and access logs.
"""

from __future__ import annotations

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from embedhost.api.errors import PACED, send_error
from embedhost.api.overload import RefusalPacer
from embedhost.api.record import record_in
from embedhost.errors import EmbedhostError, status_for
from embedhost.security.admission import Security
from embedhost.security.keys import credential_in_query, key_in_url

BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})


class AuthGate:
    """401 for a key in the URL on any route; 401/429 before the body for a request that
    has one (every such route needs a key)."""

    def __init__(self, app: ASGIApp, security: Security, pacer: RefusalPacer) -> None:
        self.app = app
        self.security = security
        self.pacer = pacer

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        try:
            if scope.get("method") in BODY_METHODS:
                authenticated = await self.security.authenticate(scope, Headers(scope=scope))
                record_in(scope).authenticated = authenticated
            elif credential_in_query(scope.get("query_string", b"")):
                raise key_in_url()
        except EmbedhostError as exc:
            if isinstance(exc, PACED):
                await self.pacer.pace()
            await _refuse(scope, send, exc)
            return
        await self.app(scope, receive, send)


async def _refuse(scope: Scope, send: Send, exc: EmbedhostError) -> None:
    record_in(scope).error = exc  # the errors and rate-limit metrics, the log line
    headers = dict(exc.headers)
    if exc.retry_after is not None:
        headers["Retry-After"] = str(max(1, round(exc.retry_after)))
    await send_error(send, status_for(exc), exc.message, exc.type, exc.code, headers)
