"""One line of a batch: parse and check it, and write its output or error line.

Input lines are ``{custom_id, method, url, body}``; ``body`` is a ``/v1/embeddings``
request. Output and error lines are OpenAI's: ``{id, custom_id, response: {status_code,
request_id, body}, error}``. A line that is not a request at all (not JSON, no
``custom_id``, another method or URL) gets ``response: null`` and ``error: {code,
message}``; a request the server answers with an error gets that answer (status code and
OpenAI error body), as ``/v1/embeddings`` would. Both go to the error file; the job goes on.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
from pydantic import ValidationError

from embedhost.errors import EmbedhostError, error_body, status_for
from embedhost.jobs.store import new_id
from embedhost.protocol import EmbeddingRequest

ENDPOINT = "/v1/embeddings"


@dataclass(slots=True)
class Parsed:
    custom_id: str
    request: EmbeddingRequest


@dataclass(slots=True)
class Answer:
    """What one line produced: a 200 body's parts, or an error line."""

    custom_id: str | None
    ok: bool
    vectors: np.ndarray[Any, Any] | None = None
    model: str = ""
    tokens: int = 0
    base64: bool = False
    status: int = 200
    error: dict[str, Any] | None = None
    """The OpenAI error body (with a status) or, with ``status`` 0, the line error."""


class LineError(Exception):
    """A line that is not a valid request: ``code`` and message go to the error file."""

    def __init__(self, custom_id: str | None, code: str, message: str) -> None:
        super().__init__(message)
        self.custom_id = custom_id
        self.code = code
        self.message = message


def parse(raw: bytes) -> Parsed:
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise LineError(None, "invalid_json", f"the line is not valid JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise LineError(None, "invalid_request", "the line is not a JSON object")
    cid = obj.get("custom_id")
    if not isinstance(cid, str) or not cid:
        raise LineError(None, "missing_custom_id", "the line has no custom_id (a string)")
    if obj.get("method") != "POST":
        raise LineError(cid, "invalid_method", "method must be POST")
    if obj.get("url") != ENDPOINT:
        raise LineError(cid, "invalid_url", f"url must be {ENDPOINT} (this batch's endpoint)")
    body = obj.get("body")
    if not isinstance(body, dict):
        raise LineError(cid, "invalid_body", "body must be a JSON object")
    try:
        request = EmbeddingRequest.model_validate(body)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "body"
        raise LineError(cid, "invalid_body", f"body.{where}: {first['msg']}") from None
    return Parsed(cid, request)


def failed(custom_id: str | None, exc: EmbedhostError) -> Answer:
    return Answer(
        custom_id,
        False,
        status=status_for(exc),
        error=error_body(exc.message, exc.type, exc.code, exc.param),
    )


def line_error(exc: LineError) -> Answer:
    return Answer(exc.custom_id, False, status=0, error={"code": exc.code, "message": exc.message})


def render(answers: list[Answer]) -> tuple[bytes, bytes]:
    """The output and error lines of a chunk (run in a thread: proportional to its size)."""
    out: list[bytes] = []
    err: list[bytes] = []
    for a in answers:
        line: dict[str, Any] = {"id": new_id("batch_req"), "custom_id": a.custom_id}
        if a.ok:
            assert a.vectors is not None
            line["response"] = {
                "status_code": 200,
                "request_id": new_id("req"),
                "body": _embeddings_body(a),
            }
            line["error"] = None
            out.append(orjson.dumps(line, option=orjson.OPT_SERIALIZE_NUMPY))
        elif a.status == 0:
            line["response"] = None
            line["error"] = a.error
            err.append(orjson.dumps(line))
        else:
            line["response"] = {
                "status_code": a.status,
                "request_id": new_id("req"),
                "body": a.error,
            }
            line["error"] = None
            err.append(orjson.dumps(line))
    return (b"\n".join(out) + b"\n" if out else b""), (b"\n".join(err) + b"\n" if err else b"")


def _embeddings_body(a: Answer) -> dict[str, Any]:
    """The body ``POST /v1/embeddings`` answers with for the same request."""
    vecs = a.vectors
    assert vecs is not None
    data: list[dict[str, Any]]
    if a.base64:
        le = vecs.astype("<f4", copy=False)
        data = [
            {
                "object": "embedding",
                "index": i,
                "embedding": base64.b64encode(le[i].tobytes()).decode(),
            }
            for i in range(len(le))
        ]
    else:
        data = [{"object": "embedding", "index": i, "embedding": vecs[i]} for i in range(len(vecs))]
    return {
        "object": "list",
        "data": data,
        "model": a.model,
        "usage": {"prompt_tokens": a.tokens, "total_tokens": a.tokens},
    }
