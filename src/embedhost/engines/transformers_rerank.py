"""Cross-encoders on PyTorch: a Hugging Face ``*ForSequenceClassification`` directory
scored pair by pair, as sentence-transformers' ``CrossEncoder`` scores it.

:class:`TransformersEngine` hands a reranker's load and batches to :class:`Scorer`. Pairs
arrive as token ids (see ``engines/rerank.py``); the token type ids are derived from the
tokenizer's pair layout, and the answer is the classifier's raw logits in float32, one row
per pair (the API process applies the sigmoid, as ``CrossEncoder.predict`` does).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from embedhost.config import ModelConfig
from embedhost.engines.base import EngineInfo, Vectors, pad_batch
from embedhost.engines.rerank import POOLING, RERANK, PairTemplate, pair_template, token_types


class Scorer:
    """One loaded cross-encoder (padded batches; the batcher sorts pairs by length)."""

    def __init__(self, config: ModelConfig, torch: Any) -> None:
        self.config = config
        self._torch = torch
        self._model: Any = None
        self._type_vocab = 1
        self._template: PairTemplate | None = None

    def load(self, path: Path, hf_conf: Any, dtype: Any, dtype_name: str) -> EngineInfo:
        from transformers import AutoModelForSequenceClassification

        cfg = self.config
        options = {k: v for k, v in cfg.engine_options.items() if k not in ("packing", "tokenizer")}
        model = AutoModelForSequenceClassification.from_pretrained(path, dtype=dtype, **options)
        self._model = model.to(cfg.device).eval()
        tok = cfg.engine_options.get("tokenizer")
        tok_json = Path(str(tok)) if tok else path / "tokenizer.json"
        if tok_json.is_dir():
            tok_json = tok_json / "tokenizer.json"
        self._template = pair_template(tok_json)
        self._type_vocab = int(getattr(hf_conf, "type_vocab_size", 1) or 1)
        model_max = int(getattr(hf_conf, "max_position_embeddings", 512))
        max_tokens = min(cfg.max_input_tokens or model_max, model_max)
        labels = int(getattr(hf_conf, "num_labels", 1))
        return EngineInfo(
            engine="transformers",
            dims=labels,
            max_tokens=max_tokens,
            pooling=POOLING,
            normalize=False,
            dtype=dtype_name,
            device=cfg.device,
            packs=False,
            task=RERANK,
            details={
                "architecture": (getattr(hf_conf, "architectures", None) or ["?"])[0],
                "torch_threads": self._torch.get_num_threads(),
                "labels": labels,
            },
        )

    def score(self, batch: list[list[int]]) -> Vectors:
        torch = self._torch
        assert self._template is not None
        ids, mask = pad_batch(batch)
        types = token_types(batch, ids.shape[1], self._template, self._type_vocab)
        device = self.config.device
        with torch.inference_mode():
            kwargs: dict[str, Any] = {
                "input_ids": torch.from_numpy(ids).to(device),
                "attention_mask": torch.from_numpy(mask).to(device),
            }
            if self._type_vocab > 1:
                kwargs["token_type_ids"] = torch.from_numpy(types).to(device)
            logits = self._model(**kwargs).logits
            out: Vectors = logits.float().cpu().numpy().astype(np.float32, copy=False)
        return out

    def close(self) -> None:
        self._model = None
