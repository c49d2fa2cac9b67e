"""Error responses: every error the API answers with has OpenAI's body
``{"error": {"message", "type", "param", "code"}}``.

The exception handlers turn an :class:`EmbedhostError` into that body with the status from
``errors.STATUS`` (and its headers, Retry-After included); validation errors and unknown
routes or methods get the same shape; anything else is a 500 whose text is logged, never
sent. :func:`send_error` writes the same body from a raw ASGI middleware, before any
route runs.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Coroutine, Iterable, Iterator
from typing import Any

import orjson
from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import BaseRoute, Match
from starlette.types import Send

from embedhost.api.context import context_of
from embedhost.api.record import record_of
from embedhost.errors import (
    EmbedhostError,
    ModelNotReady,
    QueueFull,
    RateLimited,
    WorkerCrashed,
    error_body,
    status_for,
)

log = logging.getLogger(__name__)

PACED = (QueueFull, RateLimited, ModelNotReady, WorkerCrashed)
"""Refusals a client may retry at once, paced by ``api.overload.RefusalPacer``: held only
while refusals come faster than ``limits.refusals_per_s``."""


def json_error(
    status: int,
    message: str,
    type_: str,
    code: str | None,
    param: str | None = None,
    headers: dict[str, str] | None = None,
) -> Response:
    return Response(
        orjson.dumps(error_body(message, type_, code, param)),
        status_code=status,
        media_type="application/json",
        headers=headers,
    )


async def embedhost_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, EmbedhostError)
    record_of(request).error = exc  # for the errors metric and the request log line
    if isinstance(exc, PACED):
        await context_of(request).concurrency.pacer.pace()
    headers = dict(exc.headers)
    if exc.retry_after is not None:
        headers["Retry-After"] = str(max(1, round(exc.retry_after)))
    return json_error(status_for(exc), exc.message, exc.type, exc.code, exc.param, headers)


def _describe_validation(exc: RequestValidationError) -> tuple[str, str | None]:
    errors = exc.errors()
    if not errors:
        return "invalid request", None
    first = errors[0]
    loc = [str(p) for p in first.get("loc", ()) if p != "body"]
    field = loc[0] if loc else None
    if first.get("type") == "json_invalid":
        return "the request body is not valid JSON", None
    if field == "input":
        return (
            "input must be a non-empty string, an array of strings, an array of token ids, "
            "or an array of arrays of token ids",
            "input",
        )
    if not loc and first.get("type") in ("model_attributes_type", "dict_type", "missing"):
        return "the request body must be a JSON object", None
    where = ".".join(loc) if loc else "body"
    return f"{where}: {first.get('msg', 'invalid value')}", field


async def validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    message, param = _describe_validation(exc)
    return json_error(422, message, "invalid_request_error", "invalid_request", param)


async def http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    type_ = "invalid_request_error" if exc.status_code < 500 else "server_error"
    message = str(exc.detail) if exc.status_code != 404 else f"no route {request.url.path}"
    headers = dict(exc.headers) if exc.headers else None
    if exc.status_code == 405:
        headers = {**(headers or {}), "Allow": _allowed_methods(request)}
    return json_error(exc.status_code, message, type_, code, headers=headers)


_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE")
_PARAM = re.compile(r"{[^}]*}")


def _leaf_routes(routes: Iterable[BaseRoute]) -> Iterator[BaseRoute]:
    """The routes themselves: FastAPI keeps an included router as one entry (its
    ``original_router`` holds the routes; ours are included without a prefix)."""
    for route in routes:
        inner = getattr(route, "original_router", None)
        if inner is not None:
            yield from _leaf_routes(inner.routes)
        else:
            yield route


def _allowed_methods(request: Request) -> str:
    """Every method the path's routes take: Starlette names only the first route's, which
    is wrong when several routes (GET and DELETE of one path) share a path. Asked method
    by method, as routing does (a full match), so that routes inside included routers,
    which carry no ``methods`` of their own, count too (an OPTIONS request got an empty
    ``Allow``). Only the most specific templates count: ``GET /admin/models/{name:path}``
    also matches ``/admin/models/m/versions``, which is ``POST .../{name}/versions``'s."""
    found: dict[str, int] = {}
    routes = list(_leaf_routes(request.app.router.routes))
    for method in _METHODS:
        for route in routes:
            if route.matches({**request.scope, "method": method})[0] is Match.FULL:
                specific = len(_PARAM.sub("", str(getattr(route, "path", ""))))
                found[method] = max(found.get(method, -1), specific)
    if not found:
        return ""
    best = max(found.values())
    return ", ".join(sorted(m for m, s in found.items() if s == best))


async def internal_error(request: Request, exc: Exception) -> Response:
    log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return json_error(500, "internal server error", "server_error", "internal_error")


async def send_error(
    send: Send, status: int, message: str, type_: str, code: str, headers: dict[str, str]
) -> None:
    """OpenAI's error body, sent straight from an ASGI middleware (before any route)."""
    body = orjson.dumps(error_body(message, type_, code))
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *((k.encode(), v.encode()) for k, v in headers.items()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


Handler = Callable[[Request, Any], Coroutine[Any, Any, Response]]

EXCEPTION_HANDLERS: dict[int | type[Exception], Handler] = {
    EmbedhostError: embedhost_error,
    RequestValidationError: validation_error,
    StarletteHTTPException: http_error,
    Exception: internal_error,
}
"""For ``FastAPI(exception_handlers=...)``."""
