"""Engines: transformers (PyTorch), llama_cpp (GGUF), onnx. Imported lazily, in the worker.

Which class an engine name means is its row in :mod:`embedhost.catalog`; this module only
imports it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from embedhost import catalog

if TYPE_CHECKING:
    from embedhost.config import ModelConfig
    from embedhost.engines.base import Engine


def engine_class(name: str) -> type[Engine]:
    module, attr = catalog.row(name).target.split(":")
    cls: type[Engine] = getattr(importlib.import_module(module), attr)
    return cls


def create_engine(config: ModelConfig) -> Engine:
    return engine_class(config.engine)(config)
