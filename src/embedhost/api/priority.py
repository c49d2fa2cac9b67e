"""A request's priority lane: ``X-Embedhost-Priority`` (``online`` or ``batch``), else the
API key's configured ``priority``, else ``online`` (see :mod:`embedhost.lanes` for what the
batcher does with it)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import get_args

from embedhost.config import Priority
from embedhost.errors import InvalidRequest
from embedhost.security.admission import Admission

HEADER = "x-embedhost-priority"
_VALUES: tuple[str, ...] = get_args(Priority)


def request_priority(headers: Mapping[str, str], admission: Admission) -> Priority:
    raw = headers.get(HEADER)
    if raw is None:
        return admission.key.priority if admission.key is not None else "online"
    value = raw.strip().lower()
    if value == "online":
        return "online"
    if value == "batch":
        return "batch"
    raise InvalidRequest(
        f"X-Embedhost-Priority must be one of {', '.join(_VALUES)}, not {raw!r}",
        param="X-Embedhost-Priority",
    )
