"""Checksums (plain and manifest), version config rules, the memory estimate, the router."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from embedhost.config import LifecycleConfig, ModelConfig
from embedhost.errors import ChecksumMismatch, ConfigError, InsufficientMemory
from embedhost.modelfiles import verify_checksum
from embedhost.models.preflight import estimate_bytes, preflight
from embedhost.models.router import choose
from tests.support.app import fake_model, make_settings


def _model_dir(tmp_path: Path) -> Path:
    d = tmp_path / "m"
    d.mkdir()
    (d / "model.safetensors").write_bytes(b"weights" * 100)
    (d / "extra.bin").write_bytes(b"more")
    (d / "config.json").write_text("{}")
    return d


def _sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def _cfg(path: Path, checksum: str) -> ModelConfig:
    return ModelConfig(name="m", path=str(path), checksum=checksum)


def test_manifest_ok_and_mismatch(tmp_path: Path) -> None:
    d = _model_dir(tmp_path)
    lines = [f"{_sha(d / n)}  {n}" for n in ("model.safetensors", "extra.bin", "config.json")]
    (d / "SHA256SUMS").write_text("\n".join(lines) + "\n")
    digest = verify_checksum(_cfg(d, "manifest:SHA256SUMS"))
    assert digest == "sha256:" + _sha(d / "SHA256SUMS")
    (d / "config.json").write_text('{"tampered": true}')
    with pytest.raises(ChecksumMismatch) as exc:
        verify_checksum(_cfg(d, "manifest:SHA256SUMS"))
    msg = exc.value.message
    assert "config.json" in msg
    assert f"expected sha256:{lines[2].split()[0]}" in msg
    assert f"actual sha256:{_sha(d / 'config.json')}" in msg


def test_manifest_must_cover_every_weight_file(tmp_path: Path) -> None:
    d = _model_dir(tmp_path)
    (d / "SHA256SUMS").write_text(f"{_sha(d / 'model.safetensors')}  model.safetensors\n")
    with pytest.raises(ChecksumMismatch, match=r"extra\.bin.*not covered"):
        verify_checksum(_cfg(d, "manifest:SHA256SUMS"))
    (d / "SHA256SUMS").write_text(
        f"{_sha(d / 'model.safetensors')}  model.safetensors\n"
        f"{_sha(d / 'extra.bin')}  extra.bin\n"
        f"{'0' * 64}  gone.bin\n"
    )
    with pytest.raises(ChecksumMismatch, match=r"gone\.bin is listed .* but missing"):
        verify_checksum(_cfg(d, "manifest:SHA256SUMS"))


def test_checksum_form_validated() -> None:
    with pytest.raises(ValueError, match="manifest:FILE"):
        ModelConfig(name="m", path="/x", checksum="md5:abc")


def test_version_config_rules() -> None:
    with pytest.raises(ConfigError, match="cannot be its shadow"):
        make_settings([fake_model("m", shadow=True)])
    with pytest.raises(ConfigError, match="two shadows"):
        make_settings(
            [
                fake_model("m", version="1"),
                fake_model("m", version="2", shadow=True),
                fake_model("m", version="3", shadow=True),
            ]
        )
    with pytest.raises(ConfigError, match="a shadow never answers"):
        make_settings([fake_model("m"), fake_model("m", version="2", shadow=True, traffic=5)])
    s = make_settings([fake_model("m", traffic=9), fake_model("m", version="2", traffic=1)])
    assert [m.traffic for m in s.models] == [9, 1]


def test_memory_estimate_and_guard(tmp_path: Path) -> None:
    d = _model_dir(tmp_path)
    with (d / "model.safetensors").open("wb") as f:
        f.truncate(1 << 40)
    cfg = ModelConfig(name="m", path=str(d), replicas=2)
    lc = LifecycleConfig(memory_factor=1.0, worker_overhead_mb=1)
    assert estimate_bytes(cfg, lc) == 2 * ((1 << 40) + 4 + (1 << 20))
    with pytest.raises(InsufficientMemory, match="MiB"):
        preflight(cfg, lc)
    preflight(cfg, lc.model_copy(update={"memory_guard": False}))


def test_split_moves_only_the_slice_that_changed_hands() -> None:
    keys = [f"user:{i}" for i in range(4000)]
    a = {k: choose("m", k, {"1": 90, "2": 10}) for k in keys}
    b = {k: choose("m", k, {"1": 80, "2": 20}) for k in keys}
    # Going from 10% to 20%, nobody who had version 2 loses it.
    assert all(b[k] == "2" for k in keys if a[k] == "2")
