"""ONNX models on ONNX Runtime (``engines/onnx_export.py`` produces them).

A model directory holds ``model.onnx`` (or the file named by ``engine_options.file``) and
``tokenizer.json`` (read by the API process). Pooling, normalization and the length limit
come from the sentence-transformers files when present (``modules.json``,
``1_Pooling/config.json``, ``sentence_bert_config.json``), else from the config, exactly
as for the transformers engine, so both engines give the same vectors for one model.

The graph may return token states ``[batch, seq, hidden]`` (pooled here, in numpy) or
already pooled vectors ``[batch, hidden]`` (used as they are).

"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from embedhost.config import ModelConfig
from embedhost.engines.base import (
    EngineInfo,
    MissingExtra,
    Vectors,
    check_options,
    pad_batch,
    read_st_config,
)
from embedhost.engines.onnx_rerank import OUTPUT as ONNX_LOGITS
from embedhost.engines.rerank import (
    EMBED,
    POOLING,
    RERANK,
    PairTemplate,
    hf_task,
    pair_template,
    resolve_task,
    token_types,
)
from embedhost.errors import ConfigError

log = logging.getLogger(__name__)

OPTIONS = {
    "file": str,
    "intra_op_threads": int,
    "inter_op_threads": int,
    "graph_optimization_level": str,
    "providers": list,
    "tokenizer": str,  # read by the API process (tokenization.load_tokenizer)
}
OPT_LEVELS = {
    "disable": "ORT_DISABLE_ALL",
    "basic": "ORT_ENABLE_BASIC",
    "extended": "ORT_ENABLE_EXTENDED",
    "all": "ORT_ENABLE_ALL",
}
_NUMPY_TYPES = {"tensor(int64)": np.int64, "tensor(int32)": np.int32}
_TYPE_NAMES = {
    "tensor(float)": "float32",
    "tensor(float16)": "float16",
    "tensor(bfloat16)": "bfloat16",
}


def _ort() -> Any:
    try:
        import onnxruntime
    except ImportError:
        raise MissingExtra("onnxruntime", "onnx") from None
    return onnxruntime


def check_onnx_options(options: dict[str, Any]) -> dict[str, Any]:
    options = check_options("onnx", options, OPTIONS)
    level = options.get("graph_optimization_level", "all")
    if level not in OPT_LEVELS:
        raise ConfigError(
            f"engine_options.graph_optimization_level {level!r}; use one of {', '.join(OPT_LEVELS)}"
        )
    return options


def default_providers(device: str) -> list[str]:
    if device.startswith("cuda"):
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def pool(hidden: np.ndarray, mask: np.ndarray, pooling: str) -> np.ndarray:
    """Pool token states [batch, seq, hidden] with an attention mask [batch, seq]."""
    out: np.ndarray
    if pooling == "cls":
        out = hidden[:, 0]
    elif pooling == "last":
        out = hidden[np.arange(hidden.shape[0]), mask.sum(axis=1) - 1]
    elif pooling == "max":
        out = np.where(mask[:, :, None] > 0, hidden, -np.inf).max(axis=1)
    else:
        m = mask[:, :, None].astype(hidden.dtype)
        out = (hidden * m).sum(axis=1) / np.maximum(m.sum(axis=1), 1e-9)
    return out


class OnnxEngine:
    def __init__(self, config: ModelConfig) -> None:
        self.config = config
        self._session: Any = None
        self._inputs: dict[str, Any] = {}
        self._output = ""
        self._pooling = "mean"
        self._pooled_graph = False
        self._pairs: PairTemplate | None = None
        """A reranker's pair layout (its token types); None for an embedding model."""
        self._type_vocab = 1

    def load(self) -> EngineInfo:
        cfg = self.config
        opts = check_onnx_options(cfg.engine_options)
        ort = _ort()
        path = cfg.resolved_path()
        file = path / str(opts.get("file", "model.onnx"))
        if not file.is_file():
            raise ConfigError(
                f"{file} does not exist; export one with `embedhost export-onnx HF_DIR {path}` "
                "or name the file with engine_options.file"
            )
        so = ort.SessionOptions()
        threads = opts.get("intra_op_threads", cfg.threads)
        if threads:
            so.intra_op_num_threads = int(threads)
        if "inter_op_threads" in opts:
            so.inter_op_num_threads = int(opts["inter_op_threads"])
        level = str(opts.get("graph_optimization_level", "all"))
        so.graph_optimization_level = getattr(ort.GraphOptimizationLevel, OPT_LEVELS[level])
        available = set(ort.get_available_providers())
        wanted = list(opts.get("providers") or default_providers(cfg.device))
        providers = [p for p in wanted if p in available]
        if not providers:
            raise ConfigError(
                f"none of the execution providers {wanted} is available here "
                f"(available: {sorted(available)})"
            )
        if providers != wanted:
            log.warning(
                "model %s: providers %s not available; using %s",
                cfg.ref,
                sorted(set(wanted) - available),
                providers,
            )
        self._session = ort.InferenceSession(str(file), sess_options=so, providers=providers)
        self._inputs = {i.name: i for i in self._session.get_inputs()}
        if "input_ids" not in self._inputs:
            raise ConfigError(
                f"{file.name} has no input_ids input (inputs: {sorted(self._inputs)})"
            )
        out = self._session.get_outputs()[0]
        self._output = out.name
        self._pooled_graph = len(out.shape) == 2

        st = read_st_config(path)
        hf = _read_json(path / "config.json")
        detected = RERANK if hf_task(path) == RERANK and self._output == ONNX_LOGITS else EMBED
        if resolve_task(cfg, detected) == RERANK:
            # A cross-encoder's export: logits of pairs (engines/onnx_rerank.py).
            self._pairs = pair_template(path / "tokenizer.json")
            self._type_vocab = int(hf.get("type_vocab_size", 1) or 1)
        self._pooled_graph = self._pooled_graph or self._pairs is not None
        self._pooling = cfg.pooling if cfg.pooling != "auto" else st.get("pooling", "mean")
        normalize = cfg.normalize if cfg.normalize is not None else bool(st.get("normalize", False))
        model_max = int(hf.get("max_position_embeddings", 512))
        max_tokens = min(cfg.max_input_tokens or st.get("max_tokens", model_max), model_max)
        dims = int(
            self.embed([[1, 1]]).shape[1]
            if self._pairs is not None or not hf.get("hidden_size")
            else hf["hidden_size"]
        )
        rerank = self._pairs is not None
        return EngineInfo(
            engine="onnx",
            dims=dims,
            max_tokens=max_tokens,
            task=RERANK if rerank else EMBED,
            pooling=POOLING if rerank else "graph" if self._pooled_graph else self._pooling,
            normalize=normalize,
            dtype=_TYPE_NAMES.get(out.type, out.type),
            device=cfg.device,
            token_states=not self._pooled_graph,
            details={
                "file": file.name,
                "providers": self._session.get_providers(),
                "graph_optimization_level": level,
                "intra_op_threads": so.intra_op_num_threads or "default",
                "inputs": sorted(self._inputs),
                "output": self._output,
                "architecture": (hf.get("architectures") or ["?"])[0],
                "opset": _opset(file),
            },
        )

    def embed(self, batch: list[list[int]]) -> Vectors:
        ids, mask = pad_batch(batch)
        (out,) = self._session.run([self._output], self._feeds(ids, mask, batch))
        pooled = (
            out
            if self._pooled_graph
            else pool(out.astype(np.float32, copy=False), mask, self._pooling)
        )
        return np.ascontiguousarray(pooled, dtype=np.float32)

    def token_states(self, ids: list[int]) -> Vectors:
        """One sequence's token states (a graph that returns them; not a pooled graph)."""
        if self._pooled_graph:
            raise RuntimeError("this ONNX graph returns pooled vectors, not token states")
        t_ids, mask = pad_batch([ids])
        (out,) = self._session.run([self._output], self._feeds(t_ids, mask, [ids]))
        return np.ascontiguousarray(out[0], dtype=np.float32)

    def _feeds(
        self, ids: np.ndarray, mask: np.ndarray, batch: list[list[int]]
    ) -> dict[str, np.ndarray]:
        n, width = ids.shape
        feeds: dict[str, np.ndarray] = {}
        for name, meta in self._inputs.items():
            kind = _NUMPY_TYPES.get(meta.type, np.int64)
            if name == "input_ids":
                feeds[name] = ids.astype(kind, copy=False)
            elif name == "attention_mask":
                feeds[name] = mask.astype(kind, copy=False)
            elif name == "token_type_ids" and self._pairs is not None:
                types = token_types(batch, width, self._pairs, self._type_vocab)
                feeds[name] = types.astype(kind, copy=False)
            elif name == "token_type_ids":
                feeds[name] = np.zeros_like(ids, dtype=kind)
            elif name == "position_ids":
                feeds[name] = np.broadcast_to(np.arange(width, dtype=kind), (n, width)).copy()
            else:
                raise RuntimeError(f"unsupported model input {name!r}")
        return feeds

    def close(self) -> None:
        self._session = None


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def _opset(file: Path) -> int | None:
    try:
        import onnx
    except ImportError:
        return None
    model = onnx.load(str(file), load_external_data=False)
    return next((int(o.version) for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
