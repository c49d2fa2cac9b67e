"""API keys: generation, the stored form (a hash), the keys file, constant-time lookup and
reading the key a request presents.

Keys are never stored: config and keys files hold ``sha256:<hex>`` of each key, and a
presented key is hashed and compared against every stored hash with
``secrets.compare_digest``.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from collections.abc import Iterable, Mapping
from pathlib import Path
from urllib.parse import parse_qsl

import yaml
from pydantic import TypeAdapter, ValidationError

from embedhost.config import ApiKeyConfig, Scope, Settings, validation_problems
from embedhost.errors import ConfigError, Unauthorized

KEY_PREFIX = "eh_"
WWW_AUTHENTICATE = 'Bearer realm="embedhost"'
# Query parameters that look like a credential. A key in a URL ends up in access logs,
# proxy logs and browser history, so such requests are refused even with a valid header,
# on every route. Names are compared folded: lower case, without separators or brackets
# (api_key, API-Key, apiKey, api_key[], x-api-key all fold to a name below).
CREDENTIAL_PARAMS = frozenset(
    {
        "apikey",
        "xapikey",
        "key",
        "keys",
        "token",
        "accesstoken",
        "authtoken",
        "apitoken",
        "idtoken",
        "auth",
        "authorization",
        "bearer",
        "secret",
        "clientsecret",
        "password",
        "passwd",
        "jwt",
        "sessiontoken",
        "accesskey",
        "secretkey",
    }
)
# Folded names ending in one of these are credentials too (openai_api_key, x-auth-token).
_CREDENTIAL_SUFFIXES = ("apikey", "accesstoken", "authtoken", "secretkey", "bearer")
_NOT_NAME = re.compile(r"\[[^\]]*\]|[^a-z0-9]")


def is_credential_param(name: str) -> bool:
    """Whether a query parameter's name looks like it carries a credential."""
    folded = _NOT_NAME.sub("", name.lower())
    return folded in CREDENTIAL_PARAMS or folded.endswith(_CREDENTIAL_SUFFIXES)


def credential_in_query(query_string: bytes | str) -> bool:
    """Whether a raw query string names a credential-looking parameter (with or without a
    value; percent-encoded names are decoded first)."""
    qs = query_string.decode("latin-1") if isinstance(query_string, bytes) else query_string
    if not qs:
        return False
    return any(is_credential_param(name) for name, _ in parse_qsl(qs, keep_blank_values=True))


def key_in_url() -> Unauthorized:
    return unauthorized(
        "API keys are not accepted in the URL (they end up in logs); "
        "send 'Authorization: Bearer <key>' or 'X-API-Key: <key>'",
        code="api_key_in_url",
    )


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
        problems = "; ".join(f"[{where}] {msg}" for where, msg in validation_problems(exc))
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
            raise unauthorized(
                "unsupported authorization scheme; send 'Authorization: Bearer <key>' "
                "or 'X-API-Key: <key>'"
            )
        value = value.strip()
        if not value:
            raise unauthorized("empty bearer token; send 'Authorization: Bearer <key>'")
        return value
    x_key = headers.get("x-api-key")
    if x_key is not None and x_key.strip():
        return x_key.strip()
    return None


def unauthorized(message: str, code: str = "invalid_api_key") -> Unauthorized:
    """A 401 with ``WWW-Authenticate``, for every way a key can fail."""
    err = Unauthorized(message, headers={"WWW-Authenticate": WWW_AUTHENTICATE})
    err.code = code
    return err
