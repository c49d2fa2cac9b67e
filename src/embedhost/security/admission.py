"""Admitting a request: who is calling (its key, its client address behind trusted
proxies), whether it may (scope, allowed models), and charging its budgets.

Also the start-time rule, :func:`serve_time_problems`: nothing reachable from the network
runs without keys (``serve`` refuses to start on it, ``check-config`` reports it).
:class:`Security` is built once by ``create_app``; ``require_scope`` calls
:meth:`Security.admit`, and the :class:`Admission` it returns travels with the request to
the embedding service, which charges the counted tokens through it.
"""

from __future__ import annotations

import importlib.util
import ipaddress
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from embedhost.config import ApiKeyConfig, RateLimit, Scope, Settings
from embedhost.errors import ConfigError, Forbidden, PayloadTooLarge
from embedhost.security.examples import published_example_keys
from embedhost.security.keys import (
    KeyStore,
    all_keys,
    credential_in_query,
    key_in_url,
    presented_key,
    unauthorized,
)
from embedhost.security.ratelimit import LimitState, RateLimiter, budgets_for

if TYPE_CHECKING:
    from starlette.types import Scope as AsgiScope

log = logging.getLogger(__name__)

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


# --- client addresses and the start-time rule -------------------------------------------------


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
    addr = normal_address(peer or "unknown")
    if not trusted or not _in_networks(addr, trusted):
        return addr
    hops = [h.strip() for value in forwarded_for for h in value.split(",") if h.strip()]
    for hop in reversed(hops):
        if not _in_networks(hop, trusted):
            try:
                ipaddress.ip_address(hop)
            except ValueError:
                return addr  # garbage from a proxy we trust: fall back to the peer
            return normal_address(hop)
    return normal_address(hops[0]) if hops else addr


def normal_address(addr: str) -> str:
    """One spelling per address, so that it has one rate-limit budget: an IPv4-mapped IPv6
    address (``::ffff:10.0.0.1``) as its IPv4 address, IPv6 compressed and lower case (what
    is not an IP address is kept as it is)."""
    try:
        ip = ipaddress.ip_address(addr.strip("[]"))
    except ValueError:
        return addr
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ip)


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
    if settings.environment == "production" and (examples := published_example_keys(keys or [])):
        problems.append(
            f"API key(s) {', '.join(examples)} use a hash published in this repository's "
            "examples (anyone can read the key) and environment is production; "
            "create your own with `embedhost keys create`"
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
    ratelimit: LimitState | None = None
    """The first request budget after this request's hit, for the X-RateLimit-* headers."""

    @property
    def key_id(self) -> str | None:
        return self.key.id if self.key is not None else None

    def may_use(self, name: str) -> bool:
        """Whether this caller may use model ``name`` (what it may also see on /info)."""
        return self.key is None or self.key.models is None or name in self.key.models

    @property
    def sees_server_figures(self) -> bool:
        """Whether this caller may see server-wide figures (every tenant's traffic, cache
        counters): without keys, or with the ``metrics`` or ``admin`` scope."""
        return self.key is None or any(s in ("metrics", "admin") for s in self.key.scopes)

    def check_model(self, name: str) -> None:
        if not self.may_use(name):
            raise Forbidden(f"this API key may not use model {name!r}", param="model")

    async def charge_tokens(self, tokens: int) -> None:
        sec = self.security
        if sec is None or tokens <= 0:
            return
        key_limits = self.key.rate_limits if self.key and self.key.rate_limits else None
        budgets = budgets_for(
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

    async def authenticate(
        self, scope: AsgiScope, headers: Mapping[str, str], *, need_key: bool = True
    ) -> Admission:
        """Who is calling, before anything else (the body included) is read: refuses a key
        in the URL, spends one request from the address's budget (failed key guesses spend
        it too), then checks the key. The scope and the key's own budget are
        :meth:`admit`'s, once the route is known. ``need_key`` False: an open route (no
        key asked for, none looked at).

        Raises 401 (no key, wrong scheme, unknown or revoked key, a key in the URL), 429
        (the address's budget) or 503 (rate-limit store down and configured to deny).
        """
        if credential_in_query(scope.get("query_string", b"")):
            raise key_in_url()
        address = self.address_of(scope)
        limits = self.config.rate_limits
        state = await self.limiter.hit(
            budgets_for(limits.per_address, RateLimit(), None, address, "requests"), 1
        )
        key: ApiKeyConfig | None = None
        if self.enforce and need_key:
            key = self._key(headers)
        return Admission(key, address, self, state)

    def _key(self, headers: Mapping[str, str]) -> ApiKeyConfig:
        presented = presented_key(headers)
        if presented is None:
            raise unauthorized(
                "missing API key; send 'Authorization: Bearer <key>' or 'X-API-Key: <key>'",
                code="missing_api_key",
            )
        key = self.keys.lookup(presented)
        if key is None:
            raise unauthorized("invalid API key")
        if key.revoked:
            raise unauthorized("this API key has been revoked", code="api_key_revoked")
        return key

    async def admit(
        self,
        scope: AsgiScope,
        headers: Mapping[str, str],
        required: Scope,
        authenticated: Admission | None = None,
    ) -> Admission:
        """Authenticate (unless ``authenticated``, :meth:`authenticate`'s answer from
        before the body was read, is given), authorize ``required`` and spend one request
        from the key's budget.

        Raises 401 (no key, wrong scheme, unknown or revoked key, a key in the URL),
        403 (scope), 429 (budget) or 503 (rate-limit store down and configured to deny).
        """
        open_route = required == "metrics" and self.config.auth.metrics_open
        if authenticated is None:
            authenticated = await self.authenticate(scope, headers, need_key=not open_route)
        key = authenticated.key
        state = authenticated.ratelimit
        if key is None or open_route:
            return Admission(None, authenticated.address, self, state)
        if required not in key.scopes:
            raise Forbidden(f"this API key lacks the {required!r} scope")
        key_limits = key.rate_limits or self.config.rate_limits.per_key
        state = (
            await self.limiter.hit(
                budgets_for(RateLimit(), key_limits, key.id, authenticated.address, "requests"),
                1,
            )
            or state
        )
        return Admission(key, authenticated.address, self, state)
