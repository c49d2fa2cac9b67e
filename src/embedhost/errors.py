"""The exception tree, and the one table that maps it to an HTTP status and OpenAI's error body.

Every error a client can see is an :class:`EmbedhostError`. Routes never catch; the single
handler in ``api/errors.py`` turns an error into ``{"error": {"message", "type", "param", "code"}}``
with the status from :data:`STATUS`. Anything else that escapes is an internal fault and
is answered with a generic 500 body: its text is logged, never sent.

This module imports nothing from the package.
"""

from __future__ import annotations


class EmbedhostError(Exception):
    """Base of every error that has a client-facing meaning."""

    type: str = "server_error"
    code: str = "internal_error"

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        retry_after: float | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.retry_after = retry_after
        self.headers = dict(headers or {})


# --- configuration (raised at start, never reaches a client) -------------------------------


class ConfigError(EmbedhostError):
    """The configuration is invalid; the message names the field and the fix."""

    type = "config_error"
    code = "invalid_config"


class ChecksumMismatch(ConfigError):
    code = "checksum_mismatch"


# --- client errors ------------------------------------------------------------------------


class InvalidRequest(EmbedhostError):
    type = "invalid_request_error"
    code = "invalid_request"


class InputTooLong(InvalidRequest):
    """An input exceeds the model's token limit and the policy is to refuse."""

    code = "context_length_exceeded"


class PayloadTooLarge(InvalidRequest):
    code = "payload_too_large"


class ModelNotFound(InvalidRequest):
    code = "model_not_found"


class MethodNotAllowed(InvalidRequest):
    code = "method_not_allowed"


class NotFound(InvalidRequest):
    """No such file or batch (the Batch API's ids), or not one of this key's."""

    code = "not_found"


class Unauthorized(EmbedhostError):
    """No API key, a malformed one, an unknown one or a revoked one: 401 + WWW-Authenticate."""

    type = "invalid_request_error"
    code = "invalid_api_key"


class Forbidden(EmbedhostError):
    """A valid key that lacks the scope, or may not use the model."""

    type = "permission_error"
    code = "insufficient_permissions"


class ClientGone(EmbedhostError):
    """The client disconnected before its request was served; nobody reads the answer."""

    type = "invalid_request_error"
    code = "client_closed_request"


# --- overload and availability --------------------------------------------------------------


class QueueFull(EmbedhostError):
    type = "rate_limit_error"
    code = "queue_full"


class RateLimited(EmbedhostError):
    """A key's or an address's budget is spent; Retry-After and X-RateLimit-* say until when."""

    type = "rate_limit_error"
    code = "rate_limit_exceeded"
    # For the rate-limited metric: which budget (key-requests, key-tokens, addr-requests,
    # addr-tokens) and, for a key's budget, the key's id.
    limit: str = "requests"
    key_id: str | None = None


class Overloaded(EmbedhostError):
    """More requests in flight than ``limits.max_concurrent_requests``."""

    type = "server_error"
    code = "server_overloaded"


class RateLimiterUnavailable(EmbedhostError):
    """The rate-limit store (Redis) is unreachable and the policy is to deny."""

    type = "server_error"
    code = "rate_limiter_unavailable"


class CacheUnavailable(EmbedhostError):
    """An admin operation on the cache's Redis tier failed (requests never see this: they
    fail open)."""

    type = "server_error"
    code = "cache_unavailable"


class ModelNotReady(EmbedhostError):
    type = "server_error"
    code = "model_not_ready"


class WorkerCrashed(EmbedhostError):
    type = "server_error"
    code = "worker_crashed"


class WorkerTimeout(EmbedhostError):
    type = "server_error"
    code = "worker_timeout"


class DeadlineExceeded(EmbedhostError):
    """The request's own deadline (``X-Request-Timeout``) passed before it was answered."""

    type = "server_error"
    code = "request_deadline_exceeded"


class ShuttingDown(EmbedhostError):
    type = "server_error"
    code = "shutting_down"


# --- engine faults ---------------------------------------------------------------------------


class EngineError(EmbedhostError):
    """The engine raised while embedding a batch. The message sent is generic."""

    type = "server_error"
    code = "engine_error"


# --- model lifecycle (admin API) ------------------------------------------------------------


class Conflict(InvalidRequest):
    """The operation does not fit the version's state (promote a version still loading,
    unload the current version, load a version that is already loaded)."""

    code = "conflict"


class VersionLoadFailed(InvalidRequest):
    """A version given to the admin API could not be loaded (checksum mismatch, corrupt or
    unreadable files); the current version keeps serving."""

    code = "model_load_failed"


class InsufficientMemory(EmbedhostError):
    """Loading this version would not fit in the host's available memory."""

    type = "server_error"
    code = "insufficient_memory"


STATUS: dict[type[EmbedhostError], int] = {
    ConfigError: 500,
    InvalidRequest: 400,
    InputTooLong: 413,
    PayloadTooLarge: 413,
    ModelNotFound: 404,
    NotFound: 404,
    MethodNotAllowed: 405,
    ClientGone: 499,
    QueueFull: 429,
    Unauthorized: 401,
    Forbidden: 403,
    RateLimited: 429,
    Overloaded: 503,
    RateLimiterUnavailable: 503,
    CacheUnavailable: 503,
    ModelNotReady: 503,
    WorkerCrashed: 503,
    ShuttingDown: 503,
    WorkerTimeout: 504,
    DeadlineExceeded: 504,
    EngineError: 500,
    Conflict: 409,
    VersionLoadFailed: 422,
    InsufficientMemory: 507,
}


def status_for(exc: EmbedhostError) -> int:
    """The HTTP status of an error: the entry of its nearest class in :data:`STATUS`."""
    for cls in type(exc).__mro__:
        if cls in STATUS:
            return STATUS[cls]
    return 500


def error_body(
    message: str, type_: str, code: str | None, param: str | None = None
) -> dict[str, dict[str, str | None]]:
    """OpenAI's error shape."""
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}
