"""``embedhost export-onnx``: a Hugging Face model exported to an ONNX model directory.

:func:`export_onnx` exports a model's token states through PyTorch's exporter (optionally
followed by ONNX Runtime's transformer optimizer) and copies the tokenizer and
sentence-transformers files next to it, so the output directory is servable by the onnx
engine (``engines/onnx.py``) without torch.
"""

from __future__ import annotations

import json
import logging
import shutil
import warnings
from pathlib import Path
from typing import Any

from embedhost.engines.base import MissingExtra
from embedhost.engines.onnx_rerank import export_classifier
from embedhost.engines.rerank import RERANK, hf_task
from embedhost.errors import ConfigError

log = logging.getLogger(__name__)

# Files that make an output directory servable without the original: tokenizer,
# model config (max length, architecture), sentence-transformers pooling/normalize.
_COPY_SUFFIXES = (".json", ".txt", ".model")
_WEIGHT_NAMES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")


def export_onnx(hf_dir: Path, out_dir: Path, *, optimize: bool = False, opset: int = 18) -> Path:
    """Export a Hugging Face model's token states to ``out_dir/model.onnx``; returns it.

    Dynamic batch and sequence axes; inputs ``input_ids`` and ``attention_mask``; output
    ``last_hidden_state`` in float32. Weights are stored inside the .onnx file (models under
    2 GB), so its checksum is one file's sha256.
    """
    try:
        import torch
        from transformers import AutoConfig, AutoModel
    except ImportError:
        raise MissingExtra("torch and transformers", "all") from None
    if not (hf_dir / "config.json").is_file():
        raise ConfigError(f"{hf_dir} is not a Hugging Face model directory (no config.json)")
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / "model.onnx"
    hf_conf = AutoConfig.from_pretrained(hf_dir)
    if hf_task(hf_dir) == RERANK:  # a cross-encoder: its logits (engines/onnx_rerank.py)
        export_classifier(hf_dir, target, opset)
        if optimize:
            _optimize(target, str(getattr(hf_conf, "model_type", "")))
        _copy_support_files(hf_dir, out_dir)
        return target
    model = AutoModel.from_pretrained(hf_dir, dtype=torch.float32).eval()

    class TokenStates(torch.nn.Module):
        def __init__(self, inner: Any) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, input_ids: Any, attention_mask: Any) -> Any:
            return self.inner(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    # Two distinct tensors: passing one object twice makes the exporter alias the inputs.
    sample_ids = torch.full((2, 8), 1000, dtype=torch.int64)
    sample_mask = torch.ones((2, 8), dtype=torch.int64)
    batch, seq = torch.export.Dim("batch"), torch.export.Dim("sequence")
    # torch's exporter trips over its own deprecations (FutureWarning from torch.utils
    # pytree); they are not the user's to act on, and under -W error they abort the export.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            TokenStates(model).eval(),
            (sample_ids, sample_mask),
            str(target),
            input_names=["input_ids", "attention_mask"],
            output_names=["last_hidden_state"],
            dynamic_shapes={"input_ids": {0: batch, 1: seq}, "attention_mask": {0: batch, 1: seq}},
            opset_version=opset,
            dynamo=True,
            external_data=False,
        )
    if optimize:
        _optimize(target, str(getattr(hf_conf, "model_type", "")))
    _copy_support_files(hf_dir, out_dir)
    return target


def _optimize(target: Path, model_type: str) -> None:
    from onnxruntime.transformers.optimizer import MODEL_TYPES, optimize_model

    kind = model_type if model_type in MODEL_TYPES else "bert"
    optimized = optimize_model(
        str(target), model_type=kind, num_heads=0, hidden_size=0, opt_level=1
    )
    log.info("onnxruntime optimizer fused: %s", optimized.get_fused_operator_statistics())
    optimized.save_model_to_file(str(target))


def _copy_support_files(hf_dir: Path, out_dir: Path) -> None:
    for f in hf_dir.iterdir():
        if f.is_file() and f.name.endswith(_COPY_SUFFIXES) and f.name not in _WEIGHT_NAMES:
            shutil.copy2(f, out_dir / f.name)
    modules = hf_dir / "modules.json"
    if modules.is_file():
        for m in json.loads(modules.read_text()):
            sub = m.get("path", "")
            if sub and (hf_dir / sub).is_dir():
                (out_dir / sub).mkdir(exist_ok=True)
                for f in (hf_dir / sub).iterdir():
                    if f.is_file() and f.suffix == ".json":
                        shutil.copy2(f, out_dir / sub / f.name)
