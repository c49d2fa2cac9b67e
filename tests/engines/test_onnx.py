"""The ONNX engine on MiniLM exported by `embedhost export-onnx` (PyTorch's exporter)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from embedhost.cli import cli
from embedhost.config import ModelConfig
from embedhost.engines.onnx import OnnxEngine
from embedhost.engines.transformers import TransformersEngine
from embedhost.errors import ConfigError
from embedhost.modelfiles import sha256_of
from embedhost.tokenization import HFTokenizer
from tests.support.engines import SENTENCES, cosine_rows


def onnx_config(path: Path, **kw: object) -> ModelConfig:
    return ModelConfig.model_validate(
        {"name": "minilm-onnx", "engine": "onnx", "path": str(path), **kw}
    )


@pytest.fixture(scope="module")
def engine(onnx_dir: Path) -> Iterator[OnnxEngine]:
    e = OnnxEngine(onnx_config(onnx_dir, threads=2))
    e.load()
    yield e
    e.close()


def test_export_dir_is_self_contained(onnx_dir: Path, minilm_dir: Path) -> None:
    names = {p.relative_to(onnx_dir).as_posix() for p in onnx_dir.rglob("*") if p.is_file()}
    assert {
        "model.onnx",
        "tokenizer.json",
        "config.json",
        "modules.json",
        "1_Pooling/config.json",
    } <= names
    assert "sentence_bert_config.json" in names
    assert not any(n.endswith((".safetensors", ".bin", ".data")) for n in names)
    # The tokenizer the API process would load is the original one.
    assert HFTokenizer(onnx_dir).encode_batch(SENTENCES) == HFTokenizer(minilm_dir).encode_batch(
        SENTENCES
    )
    assert sha256_of(onnx_dir) == sha256_of(onnx_dir / "model.onnx")


def test_info(engine: OnnxEngine) -> None:
    info = engine.load()
    assert (info.engine, info.dims, info.max_tokens, info.pooling) == ("onnx", 384, 256, "mean")
    assert info.normalize is True  # from modules.json (Normalize)
    assert info.dtype == "float32"
    assert info.details["providers"] == ["CPUExecutionProvider"]
    assert info.details["intra_op_threads"] == 2
    assert info.details["graph_optimization_level"] == "all"
    assert info.details["inputs"] == ["attention_mask", "input_ids"]


def test_parity_with_transformers_float32(
    engine: OnnxEngine, reference: TransformersEngine, minilm_dir: Path
) -> None:
    ids = HFTokenizer(minilm_dir).encode_batch(SENTENCES)
    ours = engine.embed(ids)
    ref = reference.embed(ids)
    assert ours.dtype == np.float32
    assert ours.shape == (len(SENTENCES), 384)
    cos = cosine_rows(ours, ref)
    assert cos.min() >= 0.9999, cos


def test_batched_equals_one_at_a_time(engine: OnnxEngine, minilm_dir: Path) -> None:
    ids = HFTokenizer(minilm_dir).encode_batch(SENTENCES)
    batched = engine.embed(ids)
    single = np.concatenate([engine.embed([s]) for s in ids])
    np.testing.assert_allclose(batched, single, rtol=0, atol=1e-4)


@pytest.mark.parametrize("pooling", ["cls", "max", "last"])
def test_configured_pooling_matches_transformers(
    onnx_dir: Path, minilm_dir: Path, pooling: str
) -> None:
    ids = HFTokenizer(minilm_dir).encode_batch(SENTENCES[:5])
    e = OnnxEngine(
        onnx_config(onnx_dir, pooling=pooling, engine_options={"graph_optimization_level": "basic"})
    )
    ref = TransformersEngine(
        ModelConfig(name="r", path=str(minilm_dir), dtype="float32", pooling=pooling)
    )
    assert e.load().pooling == pooling
    ref.load()
    assert cosine_rows(e.embed(ids), ref.embed(ids)).min() >= 0.9999


def test_optimized_export_keeps_parity(
    tmp_path: Path, minilm_dir: Path, reference: TransformersEngine
) -> None:
    out = tmp_path / "opt"
    result = CliRunner().invoke(cli, ["export-onnx", str(minilm_dir), str(out), "--optimize"])
    assert result.exit_code == 0, result.output
    e = OnnxEngine(onnx_config(out))
    e.load()
    ids = HFTokenizer(minilm_dir).encode_batch(SENTENCES)
    assert cosine_rows(e.embed(ids), reference.embed(ids)).min() >= 0.9999


def test_named_file_and_bad_options(onnx_dir: Path, tmp_path: Path) -> None:
    renamed = tmp_path / "renamed"
    renamed.mkdir()
    (renamed / "encoder.onnx").write_bytes((onnx_dir / "model.onnx").read_bytes())
    (renamed / "config.json").write_text(
        json.dumps({"max_position_embeddings": 512, "hidden_size": 384})
    )
    info = OnnxEngine(onnx_config(renamed, engine_options={"file": "encoder.onnx"})).load()
    assert info.details["file"] == "encoder.onnx"
    assert (info.pooling, info.normalize, info.max_tokens) == ("mean", False, 512)  # no ST files
    with pytest.raises(ConfigError, match="export-onnx"):
        OnnxEngine(onnx_config(renamed)).load()
    with pytest.raises(ConfigError, match="graph_optimization_level"):
        OnnxEngine(onnx_config(onnx_dir, engine_options={"graph_optimization_level": "max"})).load()
    with pytest.raises(ConfigError, match="providers"):
        OnnxEngine(
            onnx_config(onnx_dir, engine_options={"providers": ["NoSuchExecutionProvider"]})
        ).load()
    with pytest.raises(ConfigError, match="threadz"):
        OnnxEngine(onnx_config(onnx_dir, engine_options={"threadz": 1})).load()


def test_export_rejects_non_model_dir(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["export-onnx", str(tmp_path), str(tmp_path / "out")])
    assert result.exit_code == 2
    assert "config.json" in result.output
