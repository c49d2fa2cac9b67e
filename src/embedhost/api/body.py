"""Request bodies parsed off the event loop: :class:`BodyRoute`, the route class of the
routers whose bodies can be large (embeddings, admin).

FastAPI parses a JSON body with ``json.loads`` on the event loop before it solves any
dependency; a body of many megabytes (within ``limits.max_body_bytes``) would hold every
other request up for as long as that takes. Here a body larger than
:data:`INLINE_BYTES` is parsed in a thread (the parse itself is unchanged, so its errors
are FastAPI's usual 422). The body arrives here already read, limited and checked by
:class:`~embedhost.api.middleware.BodyLimitMiddleware`.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi.routing import APIRoute
from starlette.requests import Request
from starlette.responses import Response

INLINE_BYTES = 64 * 1024
"""Below this, parsing inline costs less than the hop to a thread."""


class OffLoopJSONRequest(Request):
    """A request whose ``json()`` parses a large body in a thread."""

    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            body = await self.body()
            if len(body) > INLINE_BYTES:
                self._json = await asyncio.to_thread(json.loads, body)
            else:
                self._json = json.loads(body)
        return self._json


class BodyRoute(APIRoute):
    """An ``APIRoute`` that hands its handler an :class:`OffLoopJSONRequest`."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def route_handler(request: Request) -> Response:
            return await handler(OffLoopJSONRequest(request.scope, request.receive, request._send))

        return route_handler
