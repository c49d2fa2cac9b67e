"""The per-request record: what the API learns about one request while serving it.

:class:`~embedhost.api.observability.ObservabilityMiddleware` creates one record per HTTP
request and keeps it in the ASGI scope's state (``scope["state"]["record"]``); the code
that learns something writes it there (``require_scope`` the admission, the embedding
routes the model, inputs and result, the error handler the error), and the middleware
turns it into metrics, the request's log line and its span once the response is sent.

A module of its own because both sides of the API use it: the error handlers
(``api/errors.py``) write it, and the observability middleware, which sends errors
through ``api/errors.py``, reads it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from starlette.requests import Request

from embedhost.errors import EmbedhostError
from embedhost.security.admission import Admission

if TYPE_CHECKING:
    from starlette.types import Scope

    from embedhost.service import EmbedResult


@dataclass(slots=True)
class RequestRecord:
    request_id: str
    start: float
    """``time.monotonic()`` when the request arrived."""
    admission: Admission | None = None
    """Set by ``require_scope`` once the request is admitted."""
    authenticated: Admission | None = None
    """Set by ``AuthGate`` (api/gate.py) when it authenticated the request before its body
    was read; ``require_scope`` then checks only the scope and the key's budget."""
    model: str | None = None
    inputs: int | None = None
    """How many inputs (texts or token sequences); None when not an embedding request."""
    input_chars: int | None = None
    """Their total length, for texts (None for token ids)."""
    input_texts: list[str] | None = None
    """The texts themselves, only with ``logs.log_inputs``."""
    embed_result: EmbedResult | None = None
    error: EmbedhostError | None = None
    """The error the handler answered with, for the errors metric and the log line."""
    error_code: str | None = None
    """An error code where there is no :class:`EmbedhostError` (an unhandled exception)."""

    @property
    def key_id(self) -> str | None:
        """The admitted API key's id; None before admission or without keys."""
        return self.admission.key_id if self.admission is not None else None


def record_in(scope: Scope) -> RequestRecord:
    """The request's record. ``create_app`` always installs the observability middleware,
    which creates it first; it is created here only for an app assembled without it."""
    state: dict[str, Any] = scope.setdefault("state", {})
    record = state.get("record")
    if record is None:
        record = state["record"] = RequestRecord(request_id="", start=time.monotonic())
    assert isinstance(record, RequestRecord)
    return record


def record_of(request: Request) -> RequestRecord:
    """The record of the request a route or dependency is serving."""
    return record_in(request.scope)
