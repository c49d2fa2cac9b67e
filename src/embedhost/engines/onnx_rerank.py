"""Cross-encoders on ONNX Runtime: the export (``embedhost export-onnx`` on a
``*ForSequenceClassification`` directory) and the feeds of a scoring batch.

The export takes ``input_ids``, ``attention_mask`` and ``token_type_ids`` and answers the
classifier's ``logits`` in float32, ``[batch, labels]``; the directory keeps the model's
``config.json`` (its architecture says it is a reranker, see ``engines/rerank.py``) and
tokenizer (its pair layout gives the token types), so it is servable without torch.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

OUTPUT = "logits"


def export_classifier(hf_dir: Path, target: Path, opset: int) -> None:
    """Export a cross-encoder's logits to ``target`` (dynamic batch and sequence axes)."""
    import torch
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(hf_dir, dtype=torch.float32).eval()

    class Logits(torch.nn.Module):
        def __init__(self, inner: Any) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any) -> Any:
            return self.inner(
                input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
            ).logits

    # Distinct tensors: one object passed twice makes the exporter alias the inputs.
    sample = (
        torch.full((2, 8), 1000, dtype=torch.int64),
        torch.ones((2, 8), dtype=torch.int64),
        torch.zeros((2, 8), dtype=torch.int64),
    )
    batch, seq = torch.export.Dim("batch"), torch.export.Dim("sequence")
    axes = {0: batch, 1: seq}
    with warnings.catch_warnings():  # see onnx_export.py: the exporter's own deprecations
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            Logits(model).eval(),
            sample,
            str(target),
            input_names=["input_ids", "attention_mask", "token_type_ids"],
            output_names=[OUTPUT],
            dynamic_shapes={"input_ids": axes, "attention_mask": axes, "token_type_ids": axes},
            opset_version=opset,
            dynamo=True,
            external_data=False,
        )
