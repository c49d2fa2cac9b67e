"""Engines: transformers (PyTorch), llama_cpp (GGUF), onnx. Imported lazily, in the worker."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from embedhost.config import ModelConfig
    from embedhost.engines.base import Engine

_BUILTIN = {
    "transformers": "embedhost.engines.transformers:TransformersEngine",
    "llama_cpp": "embedhost.engines.llama_cpp:LlamaCppEngine",
    "onnx": "embedhost.engines.onnx:OnnxEngine",
}


def engine_class(name: str) -> type[Engine]:
    target = _BUILTIN.get(name)
    if target is None:
        # plugin:module:attr
        target = name.split(":", 1)[1]
    module, attr = target.split(":")
    cls: type[Engine] = getattr(importlib.import_module(module), attr)
    return cls


def create_engine(config: ModelConfig) -> Engine:
    return engine_class(config.engine)(config)
