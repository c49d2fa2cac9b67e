"""The engine catalog: one row per engine, the only place outside ``engines/`` that names one.

A row says what the rest of the house needs to know about an engine without loading it:
the class to import in the worker (as a ``module:attr`` string, so that nothing here pulls
in torch, llama.cpp or ONNX Runtime), whether its model ``path`` is one file or a
directory, which tokenizer the API process builds for it, the extra that installs it, the
tasks it runs, whether its file names carry a quantization, and its capabilities.
``config`` (engine names, path and quantization checks), ``modelfiles``, ``tokenization``,
the engine loader, the preflight of run-time loads and the CLI read this and nothing else.

A new engine is one module under ``engines/`` and one row: built-in rows are listed here,
others are added with :func:`register` (the test suite's fake engine does). A row exists
in the process that registers it: the worker supervisor hands the row to the spawned
worker, which registers it there too. ``plugin:module:attr`` names any importable engine
class without a row; it gets a generic one (:func:`row`).

This module sits in the base layer (``config`` and ``modelfiles`` read it) and so imports
nothing from embedhost.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class PathKind(StrEnum):
    """What a model's ``path`` must be for an engine."""

    FILE = "file"
    DIRECTORY = "directory"
    ANY = "any"  # plugin engines: only that it exists


class TokenizerKind(StrEnum):
    """Where the API process finds the tokenizer (``engine_options.tokenizer`` overrides both)."""

    HF = "hf"  # tokenizer.json in the model directory (Hugging Face tokenizers)
    GGUF = "gguf"  # the vocabulary embedded in the .gguf file


EMBED = "embed"
"""Vectors: the task every engine runs."""
RERANK = "rerank"
"""Scores of query-document pairs (a cross-encoder); see ``embedhost.scoring``."""

PLUGIN_PREFIX = "plugin:"


@dataclass(frozen=True, slots=True)
class EngineRow:
    """What one engine is, without importing it."""

    name: str
    """The ``engine`` value in a model's config."""
    target: str
    """The engine class, ``module:attr``, imported in the worker only."""
    path: PathKind
    tokenizer: TokenizerKind = TokenizerKind.HF
    extra: str | None = None
    """The ``embedhost[extra]`` that installs its libraries; None: always installed."""
    tasks: tuple[str, ...] = (EMBED,)
    file_suffix: str = ""
    """For a :attr:`PathKind.FILE` engine, the file's ending (``.gguf``), for messages."""
    quantized_names: bool = False
    """Its file names name a quantization (GGUF ``...-q4_0.gguf``), checked against the config."""
    plugin: bool = False
    """Arbitrary code named in a config (``plugin:module:attr``), not a known row."""
    # capabilities
    packs: bool = False
    """It can run a batch packed, without padding (whether a loaded model does is
    ``EngineInfo.packs``, reported by the engine at load)."""

    @property
    def path_noun(self) -> str:
        """The path it wants, as messages say it: ``.gguf file`` or ``directory``."""
        if self.path is PathKind.FILE:
            return f"{self.file_suffix} file".lstrip()
        return "directory"


TRANSFORMERS = "transformers"
LLAMA_CPP = "llama_cpp"
ONNX = "onnx"
DEFAULT_ENGINE = TRANSFORMERS
"""The engine of a model whose config names none."""

_BUILTIN = (
    EngineRow(
        name=TRANSFORMERS,
        tasks=(EMBED, RERANK),
        target="embedhost.engines.transformers:TransformersEngine",
        path=PathKind.DIRECTORY,
        packs=True,  # BERT-class models, engine_options.packing: auto
    ),
    EngineRow(
        name=LLAMA_CPP,
        tasks=(EMBED, RERANK),
        target="embedhost.engines.llama_cpp:LlamaCppEngine",
        path=PathKind.FILE,
        file_suffix=".gguf",
        tokenizer=TokenizerKind.GGUF,
        extra="gguf",
        quantized_names=True,
        packs=True,  # llama.cpp takes sequences as one flat batch
    ),
    EngineRow(
        name=ONNX,
        tasks=(EMBED, RERANK),
        target="embedhost.engines.onnx:OnnxEngine",
        path=PathKind.DIRECTORY,
        extra="onnx",
    ),
)

_rows: dict[str, EngineRow] = {r.name: r for r in _BUILTIN}


class UnknownEngine(ValueError):
    """A name that is neither a row nor ``plugin:module:attr``; the message lists the choices."""

    def __init__(self, name: str) -> None:
        super().__init__(
            f"unknown engine {name!r}; use one of {', '.join(names())} "
            "(or plugin:module:attr for a custom engine class)"
        )


def names() -> tuple[str, ...]:
    """The engines with a row, built-in first, in the order they were added."""
    return tuple(_rows)


def register(entry: EngineRow) -> None:
    """Add an engine's row (again: a no-op). A name taken by another row is an error."""
    if entry.name.startswith(PLUGIN_PREFIX) or ":" in entry.name:
        raise ValueError(f"engine name {entry.name!r}: ':' is kept for plugin:module:attr")
    if ":" not in entry.target:
        raise ValueError(f"engine {entry.name!r}: target {entry.target!r} is not module:attr")
    current = _rows.get(entry.name)
    if current is not None and current != entry:
        raise ValueError(f"engine {entry.name!r} is already registered with another row")
    _rows[entry.name] = entry


def adopt(entry: EngineRow) -> None:
    """Make ``entry`` known in this process unless it is already (a worker, handed its row
    by the supervisor: built-in and plugin rows are, registered ones are not)."""
    if entry.plugin or _rows.get(entry.name) == entry:
        return
    register(entry)


def row(name: str) -> EngineRow:
    """The row of ``name``: a registered one, or the generic row of ``plugin:module:attr``.

    Raises :class:`UnknownEngine` otherwise.
    """
    found = _rows.get(name)
    if found is not None:
        return found
    parts = name.split(":")
    if name.startswith(PLUGIN_PREFIX) and len(parts) == 3 and all(parts[1:]):
        # Nothing is known about a plugin: the path only has to exist, its model
        # directory holds a tokenizer.json, and it embeds.
        return EngineRow(name=name, target=f"{parts[1]}:{parts[2]}", path=PathKind.ANY, plugin=True)
    raise UnknownEngine(name)
