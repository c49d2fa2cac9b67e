"""The keys printed in this repository are refused in production (issue 24, item 1)."""

from __future__ import annotations

import hashlib
import json
import re

from embedhost.config import ApiKeyConfig, load_settings
from embedhost.security.admission import serve_time_problems
from embedhost.security.examples import PUBLISHED_EXAMPLE_HASHES, published_example_keys
from embedhost.security.keys import new_key_entry
from tests.support import ROOT
from tests.support.app import fake_model

EXAMPLE_KEYS = ("eh-example-app-CHANGE-ME", "eh-example-metrics-CHANGE-ME")


def _entry(key: str, scopes: list[str]) -> ApiKeyConfig:
    return ApiKeyConfig(
        id="ex", hash="sha256:" + hashlib.sha256(key.encode()).hexdigest(), scopes=scopes
    )  # type: ignore[arg-type]


def test_hashes_are_the_printed_keys() -> None:
    assert {_entry(k, ["embed"]).hash for k in EXAMPLE_KEYS} == PUBLISHED_EXAMPLE_HASHES


def test_every_hash_printed_in_the_repo_is_known() -> None:
    """A new example file with a new example key must add its hash here."""
    printed: set[str] = set()
    for path in [ROOT / "deploy" / ".env.example", *(ROOT / "deploy").rglob("*.env")]:
        printed |= set(re.findall(r"sha256:[0-9a-f]{64}", path.read_text()))
    assert printed and printed <= PUBLISHED_EXAMPLE_HASHES


def test_production_refuses_example_keys() -> None:
    example = _entry(EXAMPLE_KEYS[0], ["embed"])
    _, own = new_key_entry("own", ["embed"])
    net = {"host": "0.0.0.0"}

    def problems(keys: list[ApiKeyConfig], environment: str) -> list[str]:
        s = load_settings(
            None,
            {"models": [fake_model()], "server": net, "environment": environment},
            check_paths=False,
        )
        return serve_time_problems(s, keys)

    (why,) = problems([own, example], "production")
    assert "ex" in why and "published" in why and "keys create" in why
    assert problems([own], "production") == []
    assert problems([own, example], "development") == []
    assert published_example_keys([example.model_copy(update={"revoked": True})]) == []
    # Case of the hex digits does not matter.
    upper = example.model_copy(update={"hash": example.hash.upper().replace("SHA256", "sha256")})
    assert published_example_keys([upper]) == ["ex"]
    assert json.dumps(sorted(PUBLISHED_EXAMPLE_HASHES))  # plain strings
