"""The README's GGUF and ONNX examples and the 16 GB laptop profile are valid configs."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from embedhost.config import load_settings
from embedhost.engines import llama_cpp, onnx
from embedhost.engines.base import check_options
from tests.support import ROOT


def engine_section_models() -> list[dict[str, object]]:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Engines: GGUF (llama.cpp) and ONNX", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```yaml\n(.*?)```", section, re.S)
    assert len(blocks) == 2
    return [m for b in blocks for m in yaml.safe_load(b)["models"]]


def test_readme_engine_examples_validate(gguf_f16: Path, onnx_dir: Path) -> None:
    models = engine_section_models()
    assert [m["engine"] for m in models] == ["llama_cpp", "onnx"]
    for m in models:
        m.pop("checksum")
        m["path"] = str(gguf_f16 if m["engine"] == "llama_cpp" else onnx_dir)
    settings = load_settings(None, {"models": models})
    gguf, onnx_model = settings.models
    assert check_options("llama_cpp", gguf.engine_options, llama_cpp.OPTIONS) == gguf.engine_options
    assert onnx.check_onnx_options(onnx_model.engine_options) == onnx_model.engine_options


def test_laptop_profile_uses_known_llama_cpp_options() -> None:
    settings = load_settings(ROOT / "configs" / "local_16gb.yaml", check_paths=False)
    model = settings.models[0]
    assert model.engine == "llama_cpp"
    assert check_options("llama_cpp", model.engine_options, llama_cpp.OPTIONS)["n_gpu_layers"] == -1
