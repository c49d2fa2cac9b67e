"""``embedhost embed INPUT -o OUTPUT``: embed a corpus file, against a server or in-process.

Input: ``.txt`` (one text a line; blank lines skipped; the id is the line number),
``.jsonl`` and ``.json`` (objects, or plain strings; the text in ``--field``, the id in
``--id-field`` or the row number), ``.csv`` (a header row; same fields) and ``.parquet``
(same columns). Output: ``.parquet`` (columns ``id``, ``text_sha256``, ``embedding``),
``.jsonl`` (the same, one object a line) or ``.npy`` (a float32 matrix, with the ids one
a line in ``NAME.ids.txt`` beside it). Ids are strings; each must be unique.

Rows go out in ``--batch-size`` requests, ``--concurrency`` at a time; the results are
written in input order. 429 and 503 answers (and dropped connections) are retried after
the server's ``Retry-After``. ``--resume`` skips the ids the output already holds and
appends the rest. A bad row (invalid JSON, a missing or empty text, a duplicate id) stops
the run with its row number once the rows before it are written, so that fixing the row
and running again with ``--resume`` continues where it stopped.

The same code runs in-process with ``--local``: the model registry, tokenizer, prompts,
batcher and engine worker the server uses, without HTTP.

The parts, by job: :mod:`.rows` reads input files, :mod:`.writers` writes the output
formats, :mod:`.embedders` gets the vectors (over HTTP or in this process), :mod:`.run`
drives a run and reports it; :mod:`.errors` holds what stops a run. The names other code
uses are re-exported here.
"""

from __future__ import annotations

from embedhost.cli.corpus.embedders import (
    Embedder,
    HttpEmbedder,
    LocalEmbedder,
    local_answer,
    retry_after,
)
from embedhost.cli.corpus.errors import BadRow, CorpusError, EmbedFailed
from embedhost.cli.corpus.rows import INPUT_FORMATS, Row, count_rows, read_rows
from embedhost.cli.corpus.run import RunOptions, Summary, check_paths, embed_corpus, main
from embedhost.cli.corpus.writers import (
    OUTPUT_FORMATS,
    JsonlWriter,
    NpyWriter,
    ParquetWriter,
    Writer,
    make_writer,
    text_hash,
)

__all__ = [
    "INPUT_FORMATS",
    "OUTPUT_FORMATS",
    "BadRow",
    "CorpusError",
    "EmbedFailed",
    "Embedder",
    "HttpEmbedder",
    "JsonlWriter",
    "LocalEmbedder",
    "NpyWriter",
    "ParquetWriter",
    "Row",
    "RunOptions",
    "Summary",
    "Writer",
    "check_paths",
    "count_rows",
    "embed_corpus",
    "local_answer",
    "main",
    "make_writer",
    "read_rows",
    "retry_after",
    "text_hash",
]
