"""security/ and its config: keys, hashing, header parsing, client addresses, the start
rule, JSON depth, the keys CLI."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from embedhost.api.middleware import json_too_deep
from embedhost.cli import cli
from embedhost.config import ApiKeyConfig, load_settings
from embedhost.errors import ConfigError, Unauthorized
from embedhost.security.admission import (
    Security,
    client_address,
    is_loopback,
    parse_networks,
    serve_time_problems,
)
from embedhost.security.keys import (
    KeyStore,
    all_keys,
    generate_key,
    hash_key,
    new_key_entry,
    presented_key,
)
from tests.support import ROOT
from tests.support.app import fake_model


def settings(**overrides: object):  # type: ignore[no-untyped-def]
    return load_settings(None, {"models": [fake_model()], **overrides}, check_paths=False)


def test_keys_are_random_and_stored_as_sha256() -> None:
    a, b = generate_key(), generate_key()
    assert a != b
    assert a.startswith("eh_")
    assert len(a) > 40
    assert hash_key(a) == "sha256:" + hashlib.sha256(a.encode()).hexdigest()
    key, entry = new_key_entry("svc", ["embed", "metrics"], ["m1"])
    assert entry.hash == hash_key(key)
    assert key not in entry.model_dump_json()
    assert entry.scopes == ["embed", "metrics"]
    assert entry.models == ["m1"]


def test_keystore_lookup() -> None:
    k1, e1 = new_key_entry("one", ["embed"])
    k2, e2 = new_key_entry("two", ["admin"])
    store = KeyStore([e1, e2.model_copy(update={"revoked": True})])
    assert store.lookup(k1) is not None
    assert store.lookup(k1).id == "one"
    assert store.lookup(k2).revoked  # type: ignore[union-attr]
    assert store.lookup("eh_wrong") is None
    assert store.lookup(k1 + "x") is None
    assert len(store) == 2
    assert store.active == 1


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"authorization": "Bearer abc"}, "abc"),
        ({"authorization": "bearer   abc  "}, "abc"),
        ({"x-api-key": "abc"}, "abc"),
        ({"authorization": "Bearer abc", "x-api-key": "zzz"}, "abc"),
        ({}, None),
        ({"x-api-key": "  "}, None),
    ],
)
def test_presented_key(headers: dict[str, str], expected: str | None) -> None:
    assert presented_key(headers) == expected


@pytest.mark.parametrize("value", ["Basic dXNlcjpwYXNz", "Token abc", "Bearer", "abc"])
def test_presented_key_wrong_scheme(value: str) -> None:
    with pytest.raises(Unauthorized) as info:
        presented_key({"authorization": value})
    assert info.value.headers["WWW-Authenticate"].startswith("Bearer")


def test_config_refuses_plain_keys_and_duplicate_ids() -> None:
    with pytest.raises(ConfigError, match=r"auth.keys\[0\].hash: hash must look like sha256"):
        settings(auth={"keys": [{"id": "a", "hash": "eh_plainkey"}]})
    h = hash_key("x")
    with pytest.raises(ConfigError, match="unique; repeated: a"):
        settings(auth={"keys": [{"id": "a", "hash": h}, {"id": "a", "hash": h}]})
    with pytest.raises(ConfigError, match="scopes"):
        settings(auth={"keys": [{"id": "a", "hash": h, "scopes": ["root"]}]})


def test_api_keys_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    _, e1 = new_key_entry("file-key", ["embed"])
    _, e2 = new_key_entry("env-key", ["metrics"])
    monkeypatch.setenv("EMBEDHOST_API_KEYS", json.dumps([e2.model_dump()]))
    s = settings(auth={"keys": [e1.model_dump()]})
    assert [k.id for k in s.auth.keys] == ["file-key", "env-key"]
    monkeypatch.setenv("EMBEDHOST_API_KEYS", "not json")
    with pytest.raises(ConfigError, match="EMBEDHOST_API_KEYS is not valid JSON"):
        settings()


def test_keys_file(tmp_path: Path) -> None:
    _, e1 = new_key_entry("a", ["embed"])
    _, e2 = new_key_entry("b", ["admin"])
    f = tmp_path / "keys.yaml"
    f.write_text(yaml.safe_dump([e2.model_dump()]))
    s = settings(auth={"keys": [e1.model_dump()], "keys_file": str(f)})
    assert [k.id for k in all_keys(s)] == ["a", "b"]
    f.write_text(yaml.safe_dump({"keys": [e1.model_dump()]}))
    with pytest.raises(ConfigError, match="defined twice"):
        all_keys(s)
    f.write_text(yaml.safe_dump([{"id": "c", "hash": "nope"}]))
    with pytest.raises(ConfigError, match="invalid key entries"):
        all_keys(s)
    missing = settings(auth={"keys_file": str(tmp_path / "missing.yaml")})
    with pytest.raises(ConfigError, match="does not exist"):
        all_keys(missing)


@pytest.mark.parametrize(
    ("host", "loopback"),
    [("127.0.0.1", True), ("127.1.2.3", True), ("::1", True), ("localhost", True),
     ("0.0.0.0", False), ("::", False), ("10.0.0.5", False), ("example.com", False)],
)  # fmt: skip
def test_is_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_client_address_trusts_only_configured_proxies() -> None:
    trusted = parse_networks(["10.0.0.0/8", "127.0.0.1"])
    # No trusted proxies: the peer, whatever the header says.
    assert client_address("203.0.113.9", ["1.2.3.4"], []) == "203.0.113.9"
    # An untrusted peer cannot choose its address.
    assert client_address("203.0.113.9", ["1.2.3.4"], trusted) == "203.0.113.9"
    # Through our proxy: the address the proxy saw.
    assert client_address("10.0.0.2", ["198.51.100.7"], trusted) == "198.51.100.7"
    # The client wrote a fake first entry; our proxy appended the real one.
    assert client_address("10.0.0.2", ["6.6.6.6, 198.51.100.7"], trusted) == "198.51.100.7"
    # Two proxy hops of ours, over two header lines.
    assert client_address("127.0.0.1", ["198.51.100.7", "10.1.1.1"], trusted) == "198.51.100.7"
    # A trusted peer without the header.
    assert client_address("10.0.0.2", [], trusted) == "10.0.0.2"
    # Garbage appended by a trusted proxy: fall back to the peer.
    assert client_address("10.0.0.2", ["not-an-ip"], trusted) == "10.0.0.2"
    assert client_address(None, [], trusted) == "unknown"


def test_trusted_proxies_validated() -> None:
    with pytest.raises(ConfigError, match="not an IP address or CIDR"):
        settings(server={"trusted_proxies": ["nginx"]})


def test_serve_time_rule() -> None:
    _, key = new_key_entry("k", ["embed"])
    revoked = key.model_copy(update={"revoked": True})
    net = {"host": "0.0.0.0"}

    def problems(keys: list[ApiKeyConfig], **kw: object) -> list[str]:
        s = settings(**kw)
        return serve_time_problems(s, keys)

    assert problems([]) == []  # loopback, no keys: open
    assert problems([], auth={"enabled": False}) == []
    assert problems([key], server=net) == []
    assert "no API keys configured" in problems([], server=net)[0]
    assert "no API keys configured" in problems([revoked], server=net)[0]
    assert "auth.enabled is false" in problems([key], server=net, auth={"enabled": False})[0]
    assert problems([], server=net, auth={"allow_insecure": True}) == []
    assert "redis_url" in problems([], rate_limits={"storage": "redis"})[0]


def test_security_logs_its_mode(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="embedhost.security")
    sec = Security(settings())
    assert not sec.enforce
    assert "serving without API keys on loopback" in caplog.text
    caplog.clear()
    sec = Security(settings(server={"host": "0.0.0.0"}, auth={"allow_insecure": True}))
    assert not sec.enforce
    assert any(r.levelno == logging.WARNING and "reachable" in r.message for r in caplog.records)
    with pytest.raises(ConfigError, match="cannot serve this configuration"):
        Security(settings(server={"host": "0.0.0.0"}))
    _, key = new_key_entry("k", ["embed"])
    assert Security(settings(server={"host": "0.0.0.0"}, auth={"keys": [key.model_dump()]})).enforce
    # Keys configured but auth switched off explicitly, on loopback: open.
    assert not Security(settings(auth={"enabled": False, "keys": [key.model_dump()]})).enforce


@pytest.mark.parametrize(
    ("body", "limit", "deep"),
    [
        (b'{"input": "x"}', 3, False),
        (b'{"input": [[1, 2], [3]]}', 3, False),
        (b'{"input": [[[1]]]}', 3, True),
        (b"[" * 100 + b"]" * 100, 32, True),
        (b'{"input": "' + b"[" * 100 + b'"}', 3, False),  # brackets inside a string
        (b'{"input": ["\\"[[[[", "]]"]}', 3, False),  # escaped quote inside a string
        (b'{"a": [' + b"[1]," * 5000 + b"[2]]}", 3, False),  # many, but shallow
    ],
)
def test_json_depth(body: bytes, limit: int, deep: bool) -> None:
    assert json_too_deep(body, limit) is deep


def test_keys_create_cli() -> None:
    runner = CliRunner()
    r = runner.invoke(cli, ["keys", "create", "--name", "ci-bot", "--scopes", "embed,metrics"])
    assert r.exit_code == 0, r.output
    key = next(w for w in r.output.split() if w.startswith("eh_"))
    yaml_part = r.output.split("auth.keys_file list:")[1].split("or in the environment")[0]
    entry = ApiKeyConfig.model_validate(yaml.safe_load(yaml_part)[0])
    assert entry.id == "ci-bot"
    assert entry.scopes == ["embed", "metrics"]
    assert entry.hash == hash_key(key)
    env_json = r.output.split("EMBEDHOST_API_KEYS='")[1].split("'")[0]
    assert json.loads(env_json)[0]["hash"] == entry.hash
    bad = runner.invoke(cli, ["keys", "create", "--name", "x", "--scopes", "root"])
    assert bad.exit_code == 2


def test_check_config_production_passes_without_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("EMBEDHOST_API_KEYS", raising=False)
    monkeypatch.delenv("EMBEDHOST_RATE_LIMITS__REDIS_URL", raising=False)
    r = CliRunner().invoke(
        cli, ["check-config", str(ROOT / "configs/production.yaml"), "--no-verify-checksums"]
    )
    assert r.exit_code == 0, r.output
    assert "OK" in r.output
    assert "serve will refuse to start here: no API keys configured" in r.output
    assert "EMBEDHOST_RATE_LIMITS__REDIS_URL" in r.output
