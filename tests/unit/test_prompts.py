"""Prompts: where they come from (config, sentence-transformers file), how names resolve,
and the config errors."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from embedhost.config import ModelConfig, load_settings
from embedhost.errors import ConfigError, InputTooLong, InvalidRequest
from embedhost.tokenization import HFTokenizer, Prompt, Prompts, load_prompts, prepare_texts
from tests.support import MINILM, ROOT
from tests.support.app import make_settings


def st_dir(tmp_path: Path, data: object) -> Path:
    (tmp_path / "config_sentence_transformers.json").write_text(json.dumps(data))
    (tmp_path / "tokenizer.json").write_text("{}")
    return tmp_path


def test_read_from_the_sentence_transformers_file(tmp_path: Path) -> None:
    d = st_dir(tmp_path, {"prompts": {"query": "q: ", "doc": ""}, "default_prompt_name": "query"})
    p = load_prompts(ModelConfig(name="m", path=str(d)))
    assert p.texts == {"query": "q: ", "doc": ""}
    assert p.default == "query"


def test_config_overrides_the_file(tmp_path: Path) -> None:
    d = st_dir(tmp_path, {"prompts": {"query": "q: "}, "default_prompt_name": "query"})
    p = load_prompts(ModelConfig(name="m", path=str(d), prompts={"search": "s: "}))
    # prompts in the config replace the file's, its default included
    assert p.texts == {"search": "s: "}
    assert p.default is None
    p = load_prompts(ModelConfig(name="m", path=str(d), default_prompt=""))
    assert p.default is None and p.texts == {"query": "q: "}


def test_bad_files_and_configs(tmp_path: Path) -> None:
    d = st_dir(tmp_path, {"prompts": {"query": 3}})
    with pytest.raises(ConfigError, match="must map names to texts"):
        load_prompts(ModelConfig(name="m", path=str(d)))
    d = st_dir(tmp_path, {"prompts": {"query": "q"}, "default_prompt_name": "nope"})
    with pytest.raises(ConfigError, match="default_prompt_name 'nope'"):
        load_prompts(ModelConfig(name="m", path=str(d)))
    with pytest.raises(ConfigError, match="default_prompt 'x' is not one of prompts"):
        make_settings([{"name": "m", "path": MINILM, "prompts": {"q": "q"}, "default_prompt": "x"}])
    with pytest.raises(ConfigError, match="prompt name"):
        make_settings([{"name": "m", "path": MINILM, "prompts": {"bad name": "q"}}])


def test_resolve() -> None:
    p = Prompts({"search_query": "sq: ", "search_document": "sd: ", "clustering": "c: "})
    assert p.resolve("query", None) == Prompt("search_query", "sq: ")
    assert p.resolve("document", None) == Prompt("search_document", "sd: ")
    assert p.resolve("clustering", None) == Prompt("clustering", "c: ")
    assert p.resolve(None, "clustering") == Prompt("clustering", "c: ")
    assert p.resolve(None, None) is None
    with pytest.raises(InvalidRequest, match="clustering, search_document, search_query"):
        p.resolve(None, "query")  # prompt_name is exact, as in TEI
    # A name the model declares wins over the alias.
    q = Prompts({"query": "a", "search_query": "b"})
    assert q.resolve("query", None) == Prompt("query", "a")


def test_prompt_counts_and_truncation(minilm_dir: Path) -> None:
    tok = HFTokenizer(minilm_dir)
    prompt = Prompt("q", "query: ")
    out = prepare_texts(tok, ["hello world"], 512, "right", prompt)
    assert out.ids == tok.encode_batch(["query: hello world"])
    with pytest.raises(InputTooLong, match="the prompt 'q' takes 2 tokens"):
        prepare_texts(tok, ["hello"], 4, "right", prompt)
    # The smallest limit that leaves one token of input.
    out = prepare_texts(tok, ["hello world"], 5, "left", prompt)
    assert out.ids == [tok.encode_batch(["query: world"])[0]]


def test_readme_prompts_example_validates() -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Query and document prompts", 1)[1].split("\n## ", 1)[0]
    (block,) = re.findall(r"```yaml\n(.*?)```", section, re.S)
    settings = load_settings(None, yaml.safe_load(block))
    p = load_prompts(settings.models[0])
    assert p.texts == {"query": "query: ", "passage": "passage: "}
    assert p.default == "passage"
    assert p.resolve("document", None) == Prompt("passage", "passage: ")
