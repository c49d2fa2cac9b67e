"""What the engines share to run a cross-encoder (``task: rerank``).

A reranker takes the same pipe protocol as an embedding model: each sequence is one
query-document pair, already built by the API process (``embedhost.pairs``) as the
model's tokenizer would build it (``[CLS] q [SEP] d [SEP]`` for BERT), and the engine
answers one row of raw classifier logits per pair (``EngineInfo.dims`` = the number of
labels). The API process applies the activation (sigmoid for one label), so that raw and
relevance scores both exist, and the cache keeps the raw logits.

Here: reading a model's task (:func:`hf_task`, :func:`resolve_task`), the pair layout of
a Hugging Face tokenizer (:func:`pair_template`, the API process reads it too), and the
token type ids a BERT-class engine derives from a pair (:func:`token_types`): the
second segment starts after the template's middle tokens, so nothing but token ids has
to cross the pipe.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from embedhost.config import ModelConfig
from embedhost.errors import ConfigError

EMBED = "embed"
RERANK = "rerank"
POOLING = "classifier"
"""``EngineInfo.pooling`` of a reranker: its classifier head reads the pair (this also
keeps its cache namespace apart from the same weights served as an embedding model)."""


def hf_task(directory: Path) -> str:
    """``rerank`` when the directory's ``config.json`` names a ``*ForSequenceClassification``
    architecture, else ``embed``."""
    conf = directory / "config.json"
    if not conf.is_file():
        return EMBED
    try:
        archs = json.loads(conf.read_text()).get("architectures") or []
    except (OSError, ValueError):
        return EMBED
    return RERANK if any(str(a).endswith("ForSequenceClassification") for a in archs) else EMBED


def resolve_task(config: ModelConfig, detected: str) -> str:
    """The configured task, else the detected one. ``task: rerank`` on a model without a
    classifier head is a config error (it would score with random weights)."""
    if config.task is None:
        return detected
    if config.task == RERANK and detected != RERANK:
        raise ConfigError(
            f"model {config.ref} has task: rerank, but {config.path} has no classification "
            "head (no *ForSequenceClassification architecture, cls_out tensors or "
            "classifier in its export)"
        )
    return config.task


@dataclass(frozen=True, slots=True)
class PairTemplate:
    """How a tokenizer lays out a pair: ``prefix + A + middle + B + suffix``; the tokens
    from B on have token type ``second_type``."""

    prefix: tuple[int, ...]
    middle: tuple[int, ...]
    suffix: tuple[int, ...]
    second_type: int = 1

    @property
    def overhead(self) -> int:
        return len(self.prefix) + len(self.middle) + len(self.suffix)

    def build(self, a: list[int], b: list[int]) -> list[int]:
        return [*self.prefix, *a, *self.middle, *b, *self.suffix]


def _special_ids(spec: dict[str, Any], name: str) -> tuple[int, ...]:
    entry = spec.get(name) or {}
    return tuple(int(i) for i in entry.get("ids", []))


def _from_processor(proc: dict[str, Any]) -> PairTemplate | None:
    kind = proc.get("type")
    if kind == "BertProcessing":
        cls, sep = int(proc["cls"][1]), int(proc["sep"][1])
        return PairTemplate((cls,), (sep,), (sep,), 1)
    if kind == "RobertaProcessing":
        cls, sep = int(proc["cls"][1]), int(proc["sep"][1])
        return PairTemplate((cls,), (sep, sep), (sep,), 0)
    if kind == "TemplateProcessing":
        parts: list[list[int]] = [[], [], []]
        at, second = 0, 1
        specials = proc.get("special_tokens", {})
        for piece in proc.get("pair", []):
            if "Sequence" in piece:
                seq = piece["Sequence"]
                if seq.get("id") == "B":
                    second = int(seq.get("type_id", 1))
                at += 1
            elif "SpecialToken" in piece:
                parts[min(at, 2)].extend(_special_ids(specials, piece["SpecialToken"]["id"]))
        return PairTemplate(tuple(parts[0]), tuple(parts[1]), tuple(parts[2]), second)
    if kind == "Sequence":
        for sub in proc.get("processors", []):
            found = _from_processor(sub)
            if found is not None:
                return found
    return None


def pair_template(tokenizer_json: Path) -> PairTemplate:
    """The pair layout of a Hugging Face ``tokenizer.json`` (its post-processor); none
    found: the two sequences joined without special tokens."""
    data = json.loads(tokenizer_json.read_text())
    proc = data.get("post_processor")
    found = _from_processor(proc) if isinstance(proc, dict) else None
    return found if found is not None else PairTemplate((), (), (), 0)


def token_types(
    batch: list[list[int]], width: int, template: PairTemplate, type_vocab: int
) -> npt.NDArray[np.int64]:
    """Token type ids of pairs right-padded to ``width``: ``second_type`` from the token
    after the first occurrence of the template's middle tokens to the end of the pair
    (zeros when the model has one token type); pad positions 0 (they are masked)."""
    out = np.zeros((len(batch), width), dtype=np.int64)
    if type_vocab < 2 or not template.middle or template.second_type == 0:
        return out
    for row, (seq, start) in enumerate(
        zip(batch, second_segment_starts(batch, template), strict=True)
    ):
        out[row, start : len(seq)] = template.second_type
    return out


def second_segment_starts(batch: list[list[int]], template: PairTemplate) -> list[int]:
    """Where each pair's second segment starts (its length when there is none)."""
    mid = list(template.middle)
    k = len(mid)
    begin = len(template.prefix)
    starts = []
    for seq in batch:
        found = len(seq)
        pos = begin
        while k:
            try:
                pos = seq.index(mid[0], pos)
            except ValueError:
                break
            if seq[pos : pos + k] == mid:
                found = pos + k
                break
            pos += 1
        starts.append(found)
    return starts
