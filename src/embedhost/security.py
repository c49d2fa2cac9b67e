"""API keys, scopes, rate limits, client addresses and the server's safe defaults.

This layer owns who may call the server and how much: keys (stored as hashes, compared in
constant time), their scopes and allowed models, budgets per key and per client address in
requests and tokens per minute (the ``limits`` library, in memory or in Redis so that
replicas share one budget), the client address behind trusted proxies, the header-read
timeout for slow clients, and the start-time rule that nothing reachable from the network
runs without keys.

The HTTP side is thin: ``api/deps.py``'s ``require_scope`` calls :meth:`Security.admit`,
and the embedding service charges tokens through the :class:`Admission` it is handed,
after it has counted them (no second tokenization).
"""

from __future__ import annotations

import hashlib
import importlib.util
import ipaddress
import logging
import math
import secrets
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from pydantic import TypeAdapter, ValidationError

from embedhost.config import ApiKeyConfig, RateLimit, RateLimitsConfig, Scope, Settings
from embedhost.errors import (
    ConfigError,
    Forbidden,
    PayloadTooLarge,
    RateLimited,
    RateLimiterUnavailable,
    Unauthorized,
)

if TYPE_CHECKING:
    import asyncio

    from limits import RateLimitItem
    from limits.aio.strategies import RateLimiter as _LimitsStrategy
    from starlette.types import Scope as AsgiScope

log = logging.getLogger(__name__)

KEY_PREFIX = "eh_"
WWW_AUTHENTICATE = 'Bearer realm="embedhost"'
# Query parameters that look like a credential. A key in a URL ends up in access logs,
# proxy logs and browser history, so such requests are refused even with a valid header.
QUERY_KEY_PARAMS = frozenset({"api_key", "apikey", "api-key", "key", "token", "access_token"})
# Probes must answer while the server is saturated.
UNLIMITED_PATHS = frozenset({"/health", "/ready", "/metrics"})

RATE_LIMIT_HEADERS = ("X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset")

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


# --- keys ------------------------------------------------------------------------------------


def generate_key() -> str:
    """A new random key: 256 bits, URL-safe."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_key(key: str) -> str:
    """The stored form of a key.

    sha256 rather than a slow KDF: keys are 256 random bits, so there is nothing for a
    KDF's work factor to protect, and every request pays for the hash.
    """
    return "sha256:" + hashlib.sha256(key.encode()).hexdigest()


def new_key_entry(
    key_id: str, scopes: list[Scope], models: list[str] | None = None
) -> tuple[str, ApiKeyConfig]:
    """A fresh key and the config entry (hash only) that admits it."""
    key = generate_key()
    entry = ApiKeyConfig(id=key_id, hash=hash_key(key), scopes=scopes, models=models)
    return key, entry


_KEY_LIST = TypeAdapter(list[ApiKeyConfig])


def read_keys_file(path: Path) -> list[ApiKeyConfig]:
    """A YAML (or JSON) file holding a list of key entries, or ``{keys: [...]}``."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(
            f"auth.keys_file: {path} does not exist; create it with `embedhost keys create`"
        ) from None
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"auth.keys_file: cannot read {path}: {exc}") from None
    if isinstance(data, dict):
        data = data.get("keys")
    if data is None:
        return []
    try:
        return _KEY_LIST.validate_python(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"[{'.'.join(str(p) for p in e['loc'])}] {e['msg']}" for e in exc.errors()
        )
        raise ConfigError(f"auth.keys_file: {path}: invalid key entries: {problems}") from None


def all_keys(settings: Settings) -> list[ApiKeyConfig]:
    """The configured keys (config + EMBEDHOST_API_KEYS) and the keys file's, ids unique."""
    keys = list(settings.auth.keys)
    if settings.auth.keys_file:
        keys += read_keys_file(Path(settings.auth.keys_file).expanduser())
    seen: set[str] = set()
    for k in keys:
        if k.id in seen:
            raise ConfigError(f"API key id {k.id!r} is defined twice; ids must be unique")
        seen.add(k.id)
    return keys


class KeyStore:
    """Looks a presented key up by its hash, comparing against every stored hash in
    constant time, so that neither the key nor its position leaks through timing."""

    def __init__(self, keys: Iterable[ApiKeyConfig]) -> None:
        self._keys = [(k.hash.removeprefix("sha256:").encode(), k) for k in keys]

    def __len__(self) -> int:
        return len(self._keys)

    @property
    def active(self) -> int:
        return sum(1 for _, k in self._keys if not k.revoked)

    def lookup(self, presented: str) -> ApiKeyConfig | None:
        digest = hashlib.sha256(presented.encode()).hexdigest().encode()
        found: ApiKeyConfig | None = None
        for stored, key in self._keys:
            if secrets.compare_digest(stored, digest):
                found = key
        return found


def presented_key(headers: Mapping[str, str]) -> str | None:
    """The key from ``Authorization: Bearer`` or ``X-API-Key``; raises on a wrong scheme."""
    auth = headers.get("authorization")
    if auth is not None:
        scheme, _, value = auth.strip().partition(" ")
        if scheme.lower() != "bearer":
            raise _unauthorized(
                "unsupported authorization scheme; send 'Authorization: Bearer <key>' "
                "or 'X-API-Key: <key>'"
            )
        value = value.strip()
        if not value:
            raise _unauthorized("empty bearer token; send 'Authorization: Bearer <key>'")
        return value
    x_key = headers.get("x-api-key")
    if x_key is not None and x_key.strip():
        return x_key.strip()
    return None


def _unauthorized(message: str, code: str = "invalid_api_key") -> Unauthorized:
    err = Unauthorized(message, headers={"WWW-Authenticate": WWW_AUTHENTICATE})
    err.code = code
    return err


# --- addresses and the start-time rule ---------------------------------------------------------


def is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def parse_networks(items: Iterable[str]) -> list[Network]:
    return [ipaddress.ip_network(i, strict=False) for i in items]


def _in_networks(addr: str, networks: list[Network]) -> bool:
    try:
        ip = ipaddress.ip_address(addr)
    except ValueError:
        return False
    return any(ip in n for n in networks)


def client_address(peer: str | None, forwarded_for: Iterable[str], trusted: list[Network]) -> str:
    """The client's address: the peer's, or, when the peer is a trusted proxy, the nearest
    address in X-Forwarded-For that is not itself a trusted proxy (walked from the right,
    because everything left of our own proxies' entries is whatever the client wrote)."""
    addr = peer or "unknown"
    if not trusted or not _in_networks(addr, trusted):
        return addr
    hops = [h.strip() for value in forwarded_for for h in value.split(",") if h.strip()]
    for hop in reversed(hops):
        if not _in_networks(hop, trusted):
            try:
                return str(ipaddress.ip_address(hop))
            except ValueError:
                return addr  # garbage from a proxy we trust: fall back to the peer
    return hops[0] if hops else addr


def serve_time_problems(settings: Settings, keys: list[ApiKeyConfig] | None) -> list[str]:
    """What stops this configuration from serving here, as lines naming the field and fix.

    ``keys`` is None when the keys could not be read (the reason is reported separately).
    These depend on the machine (a keys file, an environment variable), so ``check-config``
    reports them as notes and ``serve`` refuses to start on them.
    """
    problems: list[str] = []
    auth, host = settings.auth, settings.server.host
    no_keys = keys is not None and not any(not k.revoked for k in keys)
    if not is_loopback(host) and not auth.allow_insecure:
        if not auth.enabled:
            problems.append(
                f"auth.enabled is false but server.host is {host}, reachable from the network; "
                "configure API keys, bind 127.0.0.1, or set auth.allow_insecure: true"
            )
        elif no_keys:
            problems.append(
                f"no API keys configured but server.host is {host}, reachable from the network; "
                "add keys (auth.keys, auth.keys_file or EMBEDHOST_API_KEYS; "
                "`embedhost keys create`), bind 127.0.0.1, or set auth.allow_insecure: true"
            )
    rl = settings.rate_limits
    if rl.storage == "redis" and rl.redis_url is None:
        problems.append(
            "rate_limits.storage is redis but rate_limits.redis_url is not set; "
            "set EMBEDHOST_RATE_LIMITS__REDIS_URL=redis://HOST:6379/0"
        )
    if rl.storage == "redis" and importlib.util.find_spec("redis") is None:
        # Checked here: at request time a missing client would look like Redis being down.
        problems.append(
            "rate_limits.storage is redis but the redis client is not installed; "
            "pip install 'embedhost[redis]'"
        )
    return problems


# --- rate limits -------------------------------------------------------------------------------


@dataclass(slots=True)
class LimitState:
    """One budget after a hit, for the X-RateLimit-* headers."""

    limit: int
    remaining: int
    reset_s: float

    def headers(self) -> dict[str, str]:
        return {
            "X-RateLimit-Limit": str(self.limit),
            "X-RateLimit-Remaining": str(max(0, self.remaining)),
            "X-RateLimit-Reset": str(max(1, math.ceil(self.reset_s))),
        }


class RateLimiter:
    """Requests and tokens per minute, per key and per client address.

    A sliding-window counter: two counters per budget, so a token cost of thousands is
    one increment (a moving window would store one entry per token). Storage errors
    (Redis down) are logged at most every 10 s, counted in :attr:`storage_errors` (for
    metrics), and then allow or deny as configured; they never become a 500.
    """

    def __init__(self, config: RateLimitsConfig) -> None:
        self.config = config
        self.storage_errors = 0
        """Storage (Redis) failures since start: read by the metrics layer."""
        self.denied = 0
        """Requests refused with 429 since start."""
        self._last_error_log = -math.inf
        self._strategy: _LimitsStrategy | None = None
        self._items: dict[tuple[str, int], RateLimitItem] = {}

    def _limiter(self) -> _LimitsStrategy:
        # Built on first use: the Redis client binds to the running event loop.
        if self._strategy is None:
            from limits.aio.storage import MemoryStorage, RedisStorage
            from limits.aio.strategies import SlidingWindowCounterRateLimiter

            cfg = self.config
            if cfg.storage == "redis" and cfg.redis_url is not None:
                url = cfg.redis_url.get_secret_value()
                storage: Any = RedisStorage(
                    url if url.startswith("async+") else "async+" + url,
                    implementation="redispy",
                    key_prefix=cfg.key_prefix,
                    wrap_exceptions=True,
                    socket_timeout=cfg.redis_timeout_s,
                    socket_connect_timeout=cfg.redis_timeout_s,
                )
            else:
                storage = MemoryStorage()
            self._strategy = SlidingWindowCounterRateLimiter(storage)
        return self._strategy

    def _item(self, kind: str, amount: int) -> RateLimitItem:
        item = self._items.get((kind, amount))
        if item is None:
            from limits import RateLimitItemPerMinute

            item = RateLimitItemPerMinute(amount, namespace=kind)
            self._items[(kind, amount)] = item
        return item

    async def hit(self, budgets: list[tuple[str, int, str]], cost: int) -> LimitState | None:
        """Spend ``cost`` from each ``(kind, per_minute, identity)`` budget, in order.

        Raises :class:`RateLimited` on the first that is spent, with its headers. Returns the
        state of the first budget (for the success headers), or None when none applies.
        """
        if not budgets:
            return None
        try:
            limiter = self._limiter()
            first: LimitState | None = None
            for kind, amount, ident in budgets:
                item = self._item(kind, amount)
                if not await limiter.hit(item, ident, cost=cost):
                    stats = await limiter.get_window_stats(item, ident)
                    state = LimitState(amount, stats.remaining, stats.reset_time - time.time())
                    self.denied += 1
                    what = "requests" if kind.endswith("requests") else "tokens"
                    who = "this API key" if kind.startswith("key") else "this client address"
                    err = RateLimited(
                        f"rate limit exceeded: {amount} {what} per minute for {who}",
                        retry_after=max(1.0, math.ceil(state.reset_s)),
                        headers=state.headers(),
                    )
                    err.limit = kind
                    err.key_id = ident if kind.startswith("key") else None
                    raise err
                if first is None:
                    stats = await limiter.get_window_stats(item, ident)
                    first = LimitState(amount, stats.remaining, stats.reset_time - time.time())
            return first
        except RateLimited:
            raise
        except Exception as exc:  # the store failed: Redis down, timeout, protocol error
            self._storage_failed(exc)
            return None

    def _storage_failed(self, exc: Exception) -> None:
        self.storage_errors += 1
        now = time.monotonic()
        if now - self._last_error_log >= 10.0:
            self._last_error_log = now
            log.warning(
                "rate-limit storage failed (%s: %s); %s requests until it is back "
                "(%d failures so far)",
                type(exc).__name__,
                exc,
                "allowing" if self.config.on_storage_error == "allow" else "refusing",
                self.storage_errors,
            )
        if self.config.on_storage_error == "deny":
            raise RateLimiterUnavailable(
                "rate limiting is unavailable; try again shortly", retry_after=1
            ) from None

    async def close(self) -> None:
        strategy, self._strategy = self._strategy, None
        if strategy is None:
            return
        storage: Any = strategy.storage
        bridge = getattr(storage, "bridge", None)
        client = getattr(bridge, "storage", None)
        try:
            if client is not None and hasattr(client, "aclose"):
                await client.aclose()
        except Exception as exc:
            log.debug("closing the rate-limit storage failed: %s", exc)
        task: asyncio.Task[None] | None = getattr(storage, "timer", None)
        if task is not None and not task.done():
            task.cancel()


def _budgets(
    limits: RateLimit, key_limits: RateLimit, key_id: str | None, address: str, unit: str
) -> list[tuple[str, int, str]]:
    out: list[tuple[str, int, str]] = []
    attr = f"{unit}_per_minute"
    per_key: int | None = getattr(key_limits, attr)
    per_addr: int | None = getattr(limits, attr)
    if key_id is not None and per_key is not None:
        out.append((f"key-{unit}", per_key, key_id))
    if per_addr is not None:
        out.append((f"addr-{unit}", per_addr, address))
    return out


# --- admission ---------------------------------------------------------------------------------


@dataclass(slots=True)
class Admission:
    """An admitted request: who it is, and the budget to charge its tokens to.

    The embedding service calls :meth:`check_model` once the model is resolved and
    :meth:`charge_tokens` once it has counted the tokens, before anything is queued.
    """

    key: ApiKeyConfig | None
    address: str
    security: Security | None = None
    state: dict[str, Any] = field(default_factory=dict)

    @property
    def key_id(self) -> str | None:
        return self.key.id if self.key is not None else None

    def check_model(self, name: str) -> None:
        if self.key is not None and self.key.models is not None and name not in self.key.models:
            raise Forbidden(f"this API key may not use model {name!r}", param="model")

    async def charge_tokens(self, tokens: int) -> None:
        sec = self.security
        if sec is None or tokens <= 0:
            return
        key_limits = self.key.rate_limits if self.key and self.key.rate_limits else None
        budgets = _budgets(
            sec.config.rate_limits.per_address,
            key_limits or sec.config.rate_limits.per_key,
            self.key_id,
            self.address,
            "tokens",
        )
        for _, amount, _ in budgets:
            if tokens > amount:
                # 413, not 429: waiting would not help, and clients retry a 429.
                raise PayloadTooLarge(
                    f"the request has {tokens} tokens, more than the budget of {amount} "
                    "tokens per minute; split it into smaller requests",
                    param="input",
                )
        await sec.limiter.hit(budgets, tokens)


class Security:
    """Everything ``require_scope`` needs, built once by ``create_app``."""

    def __init__(self, settings: Settings) -> None:
        self.config = settings
        keys = all_keys(settings)
        problems = serve_time_problems(settings, keys)
        if problems:
            raise ConfigError("\n".join(["cannot serve this configuration:", *problems]))
        self.keys = KeyStore(keys)
        self.trusted = parse_networks(settings.server.trusted_proxies)
        self.limiter = RateLimiter(settings.rate_limits)
        self.in_flight = 0
        """Requests in flight under ``limits.max_concurrent_requests`` (for metrics)."""
        self.overloaded = 0
        """Requests refused with 503 for concurrency since start (for metrics)."""
        auth, host = settings.auth, settings.server.host
        self.enforce = auth.enabled and self.keys.active > 0
        if self.enforce:
            log.info("API keys required: %d active key(s)", self.keys.active)
        elif is_loopback(host):
            log.info(
                "authentication is off (%s): serving without API keys on loopback %s only",
                "auth.enabled is false" if not auth.enabled else "no API keys configured",
                host,
            )
        else:
            log.warning(
                "authentication is off on %s, reachable from the network "
                "(auth.allow_insecure is true): anyone who can connect can use this server",
                host,
            )

    def address_of(self, scope: AsgiScope) -> str:
        client = scope.get("client")
        peer = client[0] if client else None
        xff = [v.decode("latin-1") for n, v in scope.get("headers", ()) if n == b"x-forwarded-for"]
        return client_address(peer, xff, self.trusted)

    async def admit(
        self,
        scope: AsgiScope,
        headers: Mapping[str, str],
        query: Mapping[str, str],
        required: Scope,
    ) -> Admission:
        """Authenticate, authorize ``required`` and spend one request from the budgets.

        Raises 401 (no key, wrong scheme, unknown or revoked key, a key in the URL),
        403 (scope), 429 (budget) or 503 (rate-limit store down and configured to deny).
        """
        if any(p.lower() in QUERY_KEY_PARAMS for p in query):
            raise _unauthorized(
                "API keys are not accepted in the URL (they end up in logs); "
                "send 'Authorization: Bearer <key>' or 'X-API-Key: <key>'",
                code="api_key_in_url",
            )
        address = self.address_of(scope)
        open_route = required == "metrics" and self.config.auth.metrics_open
        limits = self.config.rate_limits
        # The address budget first: failed key guesses spend it too.
        state = await self.limiter.hit(
            _budgets(limits.per_address, RateLimit(), None, address, "requests"), 1
        )
        key: ApiKeyConfig | None = None
        if self.enforce and not open_route:
            presented = presented_key(headers)
            if presented is None:
                raise _unauthorized(
                    "missing API key; send 'Authorization: Bearer <key>' or 'X-API-Key: <key>'",
                    code="missing_api_key",
                )
            key = self.keys.lookup(presented)
            if key is None:
                raise _unauthorized("invalid API key")
            if key.revoked:
                raise _unauthorized("this API key has been revoked", code="api_key_revoked")
            if required not in key.scopes:
                raise Forbidden(f"this API key lacks the {required!r} scope")
            key_limits = key.rate_limits or limits.per_key
            state = (
                await self.limiter.hit(
                    _budgets(RateLimit(), key_limits, key.id, address, "requests"), 1
                )
                or state
            )
        admission = Admission(key, address, self)
        if state is not None:
            admission.state["ratelimit"] = state
        return admission


# --- slow clients --------------------------------------------------------------------------------


def header_timeout_protocol(timeout_s: float) -> type[Any] | str:
    """uvicorn's httptools protocol, closing connections that do not finish sending a
    request's headers within ``timeout_s`` (slowloris). uvicorn has no such timeout of its
    own: its keep-alive timer stops as soon as the first byte of a request arrives."""
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
    except ImportError:  # httptools missing: uvicorn's h11 protocol, without the timeout
        log.warning("httptools is not installed: no header-read timeout for slow clients")
        return "auto"

    class HeaderTimeoutProtocol(HttpToolsProtocol):
        _header_timer: asyncio.TimerHandle | None = None

        def _arm_header_timer(self) -> None:
            if self._header_timer is None:
                self._header_timer = self.loop.call_later(timeout_s, self._header_timed_out)

        def _disarm_header_timer(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _header_timed_out(self) -> None:
            self._header_timer = None
            if not self.transport.is_closing():
                self.transport.close()

        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            self._arm_header_timer()

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._arm_header_timer()

        def on_headers_complete(self) -> None:
            self._disarm_header_timer()
            super().on_headers_complete()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm_header_timer()
            super().connection_lost(exc)

    return HeaderTimeoutProtocol
