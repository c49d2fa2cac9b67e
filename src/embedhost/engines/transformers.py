"""Hugging Face models on PyTorch, in the sentence-transformers layout.

Reads ``modules.json`` (is there a Normalize module?), ``1_Pooling/config.json`` (pooling
mode) and ``sentence_bert_config.json`` (max_seq_length) when present, so that vectors
match sentence-transformers on the same weights. ``dtype: auto`` picks bfloat16 where the
hardware computes it natively (CPUs with AMX or AVX512-BF16, CUDA devices that support
it) and float32 elsewhere.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from embedhost.config import ModelConfig
from embedhost.engines.base import EngineInfo, Vectors, pad_batch, read_st_config
from embedhost.engines.packing import chunks, pack
from embedhost.engines.rerank import RERANK, hf_task, resolve_task
from embedhost.engines.transformers_rerank import Scorer
from embedhost.errors import ConfigError

log = logging.getLogger(__name__)


# oneDNN ISA caps (ONEDNN_MAX_CPU_ISA) under which bfloat16 still runs natively.
_BF16_ISAS = ("ALL", "DEFAULT", "BF16", "AMX", "FP16", "AVX10")


def cpu_has_native_bf16() -> bool:
    """AMX or AVX512-BF16, read from /proc/cpuinfo (Linux x86), unless the process is
    capped below them: torch's ``ATEN_CPU_CAPABILITY`` at ``avx2``/``default``, or oneDNN's
    ``ONEDNN_MAX_CPU_ISA`` at an ISA without bfloat16 (``AVX2``, ``AVX512_CORE``). A capped
    process would emulate bfloat16 slowly, so ``dtype: auto`` picks float32 there, as on
    a CPU without it (and an AVX2-only machine is emulated faithfully)."""
    if os.environ.get("ATEN_CPU_CAPABILITY", "").lower() in ("avx2", "default"):
        return False
    isa = os.environ.get("ONEDNN_MAX_CPU_ISA", "").upper()
    if isa and not any(name in isa for name in _BF16_ISAS):
        return False
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    flags = set()
    for line in text.splitlines():
        if line.startswith("flags"):
            flags.update(line.split(":", 1)[1].split())
            break
    return bool({"amx_bf16", "avx512_bf16"} & flags)


def resolve_dtype(dtype: str, device: str) -> str:
    if dtype != "auto":
        return dtype
    if device == "cpu":
        return "bfloat16" if cpu_has_native_bf16() else "float32"
    if device.startswith("cuda"):
        import torch

        return "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
    return "float32"


# Encoder families whose forward takes per-token position ids and a prepared 4D mask, with
# absolute positions from 0 (RoBERTa-style models offset positions by the pad id: not here).
_PACKABLE = {"bert"}


def _packing_supported(hf_conf: Any) -> bool:
    """Whether sequences of this model can be packed into shared rows (see packing.py)."""
    return getattr(hf_conf, "model_type", "") in _PACKABLE and not getattr(
        hf_conf, "is_decoder", False
    )


class TransformersEngine:
    def __init__(self, config: ModelConfig) -> None:
        self.config = config
        self._model: Any = None
        self._torch: Any = None
        self._pooling = "mean"
        self._device = config.device
        self._packing = False
        self._max_width = 512
        self._hidden = 0
        self._dtype: Any = None
        self._scorer: Scorer | None = None

    def load(self) -> EngineInfo:
        import torch
        from transformers import AutoConfig, AutoModel
        from transformers.utils import logging as hf_logging

        # A progress bar on stderr would break the worker's structured log lines.
        hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]

        self._torch = torch
        cfg = self.config
        path = cfg.resolved_path()
        st = read_st_config(path)
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        dtype_name = resolve_dtype(cfg.dtype, cfg.device)
        dtype = getattr(torch, dtype_name)
        hf_conf = AutoConfig.from_pretrained(path)
        options = dict(cfg.engine_options)
        packing = options.pop("packing", "auto")
        if packing not in (True, False, "auto"):
            raise ConfigError(
                f"engine_options.packing must be true, false or auto, not {packing!r}"
            )
        if resolve_task(cfg, hf_task(path)) == RERANK:
            # A cross-encoder: scores of pairs (engines/transformers_rerank.py).
            self._scorer = Scorer(cfg, torch)
            packs = _packing_supported(hf_conf) if packing == "auto" else bool(packing)
            return self._scorer.load(path, hf_conf, dtype, dtype_name, packs)
        model = AutoModel.from_pretrained(path, dtype=dtype, **options)
        self._model = model.to(cfg.device).eval()
        self._pooling = cfg.pooling if cfg.pooling != "auto" else st.get("pooling", "mean")
        normalize = cfg.normalize if cfg.normalize is not None else bool(st.get("normalize", False))
        model_max = int(getattr(hf_conf, "max_position_embeddings", 512))
        max_tokens = min(cfg.max_input_tokens or st.get("max_tokens", model_max), model_max)
        dims = int(hf_conf.hidden_size)
        self._dtype = dtype
        self._hidden = dims
        self._max_width = max_tokens
        self._packing = _packing_supported(hf_conf) if packing == "auto" else bool(packing)
        return EngineInfo(
            engine="transformers",
            dims=dims,
            max_tokens=max_tokens,
            pooling=self._pooling,
            normalize=normalize,
            dtype=dtype_name,
            device=cfg.device,
            packs=self._packing,
            token_states=True,
            details={
                "architecture": (getattr(hf_conf, "architectures", None) or ["?"])[0],
                "torch_threads": torch.get_num_threads(),
                "packing": self._packing,
            },
        )

    def embed(self, batch: list[list[int]]) -> Vectors:
        if self._scorer is not None:
            return self._scorer.score(batch)
        if self._packing:
            return self._embed_packed(batch)
        torch = self._torch
        ids, mask = pad_batch(batch)
        with torch.inference_mode():
            t_ids = torch.from_numpy(ids).to(self._device)
            t_mask = torch.from_numpy(mask).to(self._device)
            hidden = self._model(input_ids=t_ids, attention_mask=t_mask).last_hidden_state
            pooled = self._pool(hidden.float(), t_mask)
            out: Vectors = pooled.cpu().numpy().astype(np.float32, copy=False)
        return out

    def _embed_packed(self, batch: list[list[int]]) -> Vectors:
        parts = chunks([len(s) for s in batch])
        if len(parts) == 1:
            return self._forward_packed(batch)
        return np.concatenate([self._forward_packed(batch[r.start : r.stop]) for r in parts])

    def _forward_packed(self, batch: list[list[int]]) -> Vectors:
        torch = self._torch
        p = pack(batch, self._max_width, self._hidden)
        with torch.inference_mode():
            seg = torch.from_numpy(p.segments)
            # Block-diagonal: a token attends to the tokens of its own sequence only (pad
            # tokens, segment -1, to each other, so that no row of the mask is empty).
            same = seg[:, :, None] == seg[:, None, :]
            mask = torch.zeros(same.shape, dtype=self._dtype)
            mask.masked_fill_(~same, torch.finfo(self._dtype).min)
            hidden = self._model(
                input_ids=torch.from_numpy(p.ids).to(self._device),
                position_ids=torch.from_numpy(p.positions).to(self._device),
                attention_mask=mask[:, None].to(self._device),
            ).last_hidden_state
            flat = hidden.reshape(-1, hidden.shape[-1])
            starts = torch.from_numpy(p.starts).to(self._device)
            lengths = torch.from_numpy(p.lengths).to(self._device)
            if self._pooling == "cls":
                pooled = flat[starts].float()
            elif self._pooling == "last":
                pooled = flat[starts + lengths - 1].float()
            else:
                seg_flat = seg.reshape(-1).to(self._device)
                keep = seg_flat >= 0
                index = seg_flat[keep]
                tokens = flat[keep].float()
                n = len(batch)
                if self._pooling == "max":
                    pooled = torch.full((n, tokens.shape[1]), float("-inf"), device=tokens.device)
                    pooled.scatter_reduce_(
                        0, index[:, None].expand(-1, tokens.shape[1]), tokens, "amax"
                    )
                else:
                    pooled = torch.zeros((n, tokens.shape[1]), device=tokens.device)
                    pooled.index_add_(0, index, tokens)
                    pooled /= lengths[:, None].float()
            out: Vectors = pooled.cpu().numpy().astype(np.float32, copy=False)
        return out

    def _pool(self, hidden: Any, mask: Any) -> Any:
        torch = self._torch
        if self._pooling == "cls":
            return hidden[:, 0]
        if self._pooling == "last":
            last = mask.sum(dim=1) - 1
            return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
        m = mask.unsqueeze(-1).to(hidden.dtype)
        if self._pooling == "max":
            return hidden.masked_fill(m == 0, float("-inf")).max(dim=1).values
        return (hidden * m).sum(dim=1) / m.sum(dim=1).clamp(min=1e-9)

    def token_states(self, ids: list[int]) -> Vectors:
        """One sequence alone (no padding, no packing): its last hidden states."""
        torch = self._torch
        with torch.inference_mode():
            t_ids = torch.tensor([ids], dtype=torch.long, device=self._device)
            hidden = self._model(
                input_ids=t_ids, attention_mask=torch.ones_like(t_ids)
            ).last_hidden_state[0]
            out: Vectors = hidden.float().cpu().numpy().astype(np.float32, copy=False)
        return out

    def close(self) -> None:
        self._model = None
        if self._scorer is not None:
            self._scorer.close()
