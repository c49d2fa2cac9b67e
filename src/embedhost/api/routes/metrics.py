"""``GET /metrics``: the Prometheus exposition of the app's registry.

Guarded by the ``metrics`` API-key scope unless ``auth.metrics_open`` is set (``create_app``
adds the scope dependency when it includes this router). Rendering runs in a thread: it walks every series
and, for worker memory, reads /proc.
"""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request
from fastapi.responses import Response

from embedhost.api.deps import MetricsDep

router = APIRouter()


@router.get(
    "/metrics",
    tags=["ops"],
    summary="Prometheus metrics",
    response_class=Response,
    responses={200: {"content": {"text/plain": {}}, "description": "Prometheus exposition"}},
)
async def metrics(request: Request, m: MetricsDep) -> Response:
    assert m is not None  # create_app includes this route only with metrics enabled
    body, content_type = await asyncio.to_thread(m.render, request.headers.get("accept"))
    return Response(body, media_type=content_type)
