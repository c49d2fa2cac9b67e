"""The engine catalog: rows, plugin rows, registration, and that nothing else names engines."""

from __future__ import annotations

import ast
import pickle
from pathlib import Path

import pytest

from embedhost import catalog
from embedhost.catalog import EngineRow, PathKind, TokenizerKind, UnknownEngine
from tests import fakes

SRC = Path(__file__).resolve().parents[2] / "src" / "embedhost"


def test_builtin_rows() -> None:
    assert catalog.names()[:3] == ("transformers", "llama_cpp", "onnx")
    gguf = catalog.row("llama_cpp")
    assert (gguf.path, gguf.tokenizer, gguf.extra, gguf.path_noun) == (
        PathKind.FILE,
        TokenizerKind.GGUF,
        "gguf",
        ".gguf file",
    )
    assert gguf.quantized_names and gguf.packs and gguf.tasks == ("embed", "rerank")
    assert catalog.row("onnx").extra == "onnx" and not catalog.row("onnx").packs
    assert catalog.row(catalog.DEFAULT_ENGINE).path_noun == "directory"


def test_plugin_row_is_generic() -> None:
    r = catalog.row("plugin:tests.fakes:FakeEngine")
    assert r.target == "tests.fakes:FakeEngine"
    assert (r.path, r.tokenizer, r.tasks, r.plugin) == (
        PathKind.ANY,
        TokenizerKind.HF,
        ("embed",),
        True,
    )


@pytest.mark.parametrize(
    "name", ["tensorrt", "plugin:", "plugin:mod", "plugin::attr", "plugin:a:b:c"]
)
def test_unknown_engine_lists_the_choices(name: str) -> None:
    with pytest.raises(UnknownEngine, match="use one of transformers, llama_cpp, onnx"):
        catalog.row(name)


def test_register_and_adopt() -> None:
    assert catalog.row("fake") is fakes.ROW  # conftest registered it
    catalog.register(fakes.ROW)  # again: a no-op
    with pytest.raises(ValueError, match="already registered"):
        catalog.register(EngineRow(name="fake", target="x:Y", path=PathKind.ANY))
    with pytest.raises(ValueError, match="plugin"):
        catalog.register(EngineRow(name="plugin:x:Y", target="x:Y", path=PathKind.ANY))
    # What the worker is handed travels pickled, and adopting a known row changes nothing.
    assert pickle.loads(pickle.dumps(fakes.ROW)) == fakes.ROW
    catalog.adopt(catalog.row("plugin:tests.fakes:FakeEngine"))
    catalog.adopt(catalog.row("onnx"))
    assert "plugin:tests.fakes:FakeEngine" not in catalog.names()


def _engine_name_comparisons(tree: ast.AST) -> list[int]:
    names = {"transformers", "llama_cpp", "onnx"}
    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare):
            for part in [node.left, *node.comparators]:
                consts = part.elts if isinstance(part, ast.Tuple | ast.Set | ast.List) else [part]
                if any(isinstance(c, ast.Constant) and c.value in names for c in consts):
                    lines.append(node.lineno)
    return lines


def test_only_the_catalog_and_engines_compare_engine_names() -> None:
    found = {
        f"{p.relative_to(SRC)}:{line}"
        for p in SRC.rglob("*.py")
        if p.name != "catalog.py" and "engines" not in p.relative_to(SRC).parts
        for line in _engine_name_comparisons(ast.parse(p.read_text()))
    }
    assert not found
