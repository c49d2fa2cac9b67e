"""Cross-encoders on PyTorch: a Hugging Face ``*ForSequenceClassification`` directory
scored pair by pair, as sentence-transformers' ``CrossEncoder`` scores it.

:class:`TransformersEngine` hands a reranker's load and batches to :class:`Scorer`. Pairs
arrive as token ids (see ``engines/rerank.py``); the token type ids are derived from the
tokenizer's pair layout, and the answer is the classifier's raw logits in float32, one row
per pair (the API process applies the sigmoid, as ``CrossEncoder.predict`` does).

BERT-class cross-encoders run packed, as the embedding path does (``engines/packing.py``):
pairs share rows with a block-diagonal mask, per-pair positions and token types, and the
pooler and classifier read each pair's [CLS] state; other architectures run padded.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from embedhost.config import ModelConfig
from embedhost.engines.base import EngineInfo, Vectors, pad_batch
from embedhost.engines.packing import chunks, pack
from embedhost.engines.rerank import (
    POOLING,
    RERANK,
    PairTemplate,
    pair_template,
    second_segment_starts,
    token_types,
)


class Scorer:
    """One loaded cross-encoder."""

    def __init__(self, config: ModelConfig, torch: Any) -> None:
        self.config = config
        self._torch = torch
        self._model: Any = None
        self._type_vocab = 1
        self._template: PairTemplate | None = None
        self._packing = False
        self._dtype: Any = None
        self._max_width = 512
        self._hidden = 0

    def load(
        self, path: Path, hf_conf: Any, dtype: Any, dtype_name: str, packing: bool = False
    ) -> EngineInfo:
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
        # Packed needs the BERT layout: an encoder whose pooler + classifier read [CLS].
        self._packing = packing and hasattr(model, "bert") and hasattr(model, "classifier")
        self._dtype = dtype
        self._max_width = max_tokens
        self._hidden = int(hf_conf.hidden_size)
        return EngineInfo(
            engine="transformers",
            dims=labels,
            max_tokens=max_tokens,
            pooling=POOLING,
            normalize=False,
            dtype=dtype_name,
            device=cfg.device,
            packs=self._packing,
            task=RERANK,
            details={
                "architecture": (getattr(hf_conf, "architectures", None) or ["?"])[0],
                "torch_threads": self._torch.get_num_threads(),
                "labels": labels,
                "packing": self._packing,
            },
        )

    def score(self, batch: list[list[int]]) -> Vectors:
        if self._packing:
            parts = chunks([len(s) for s in batch])
            return np.concatenate([self._packed(batch[r.start : r.stop]) for r in parts])
        return self._padded(batch)

    def _packed(self, batch: list[list[int]]) -> Vectors:
        torch = self._torch
        assert self._template is not None
        p = pack(batch, self._max_width, self._hidden)
        types = np.zeros_like(p.ids)
        if self._type_vocab > 1 and self._template.second_type:
            second = np.asarray(second_segment_starts(batch, self._template), dtype=np.int64)
            owner = np.maximum(p.segments, 0)
            in_second = (p.segments >= 0) & (p.positions >= second[owner])
            types[in_second] = self._template.second_type
        device = self.config.device
        bert = self._model.bert
        with torch.inference_mode():
            seg = torch.from_numpy(p.segments)
            same = seg[:, :, None] == seg[:, None, :]  # block-diagonal, as engines/packing.py
            mask = torch.zeros(same.shape, dtype=self._dtype)
            mask.masked_fill_(~same, torch.finfo(self._dtype).min)
            hidden = bert(
                input_ids=torch.from_numpy(p.ids).to(device),
                position_ids=torch.from_numpy(p.positions).to(device),
                token_type_ids=torch.from_numpy(types).to(device),
                attention_mask=mask[:, None].to(device),
            ).last_hidden_state
            cls = hidden.reshape(-1, hidden.shape[-1])[torch.from_numpy(p.starts).to(device)]
            pooler = bert.pooler
            pooled = pooler.activation(pooler.dense(cls)) if pooler is not None else cls
            logits = self._model.classifier(pooled)
            out: Vectors = logits.float().cpu().numpy().astype(np.float32, copy=False)
        return out

    def _padded(self, batch: list[list[int]]) -> Vectors:
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
