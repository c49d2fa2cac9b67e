"""Reading a corpus file: the input formats, :class:`Row`, :func:`read_rows` (lazily, with
each row's number for error messages) and :func:`count_rows` (for the progress bar)."""

from __future__ import annotations

import contextlib
import csv
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from embedhost.cli.corpus.errors import BadRow, CorpusError

INPUT_FORMATS = (".txt", ".jsonl", ".json", ".csv", ".parquet")


@dataclass(slots=True)
class Row:
    number: int
    """1-based: the line of a .txt or .jsonl, the element of a .json, the data row of a
    .csv or .parquet."""
    id: str
    text: str


def suffix(path: Path) -> str:
    return path.suffix.lower()


def load_pyarrow() -> Any:
    try:
        import pyarrow as pa
        import pyarrow.parquet  # the submodule, as pa.parquet
    except ImportError:
        raise CorpusError("Parquet files need pyarrow: pip install 'embedhost[parquet]'") from None
    return pa


def _record(obj: Any, number: int, text_field: str, id_field: str | None) -> Row:
    if isinstance(obj, str) and id_field is None:
        text: Any = obj
        ident: Any = number
    elif isinstance(obj, dict):
        if text_field not in obj:
            raise BadRow(number, f"no field {text_field!r} (it has: {', '.join(map(str, obj))})")
        text = obj[text_field]
        if id_field is None:
            ident = number
        elif obj.get(id_field) is None:
            raise BadRow(number, f"no id in field {id_field!r}")
        else:
            ident = obj[id_field]
    else:
        raise BadRow(number, f"expected an object with a {text_field!r} field, got {obj!r:.60}")
    if not isinstance(text, str):
        raise BadRow(number, f"field {text_field!r} is not a string ({text!r:.60})")
    if not text.strip():
        raise BadRow(number, f"field {text_field!r} is empty")
    if isinstance(ident, bool | float | dict | list):
        raise BadRow(number, f"id {ident!r:.60} must be a string or an integer")
    return Row(number, str(ident), text)


def read_rows(path: Path, text_field: str = "text", id_field: str | None = None) -> Iterator[Row]:
    """The rows of an input file, lazily; raises :class:`BadRow` at the first bad one."""
    kind = suffix(path)
    if kind == ".txt":
        with path.open(encoding="utf-8", newline="") as f:
            for n, line in enumerate(f, 1):
                text = line.rstrip("\r\n")
                if text.strip():
                    yield Row(n, str(n), text)
    elif kind == ".jsonl":
        with path.open(encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except ValueError as exc:
                    raise BadRow(n, f"invalid JSON: {exc}") from None
                yield _record(obj, n, text_field, id_field)
    elif kind == ".json":
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except ValueError as exc:
            raise CorpusError(f"{path}: invalid JSON: {exc}") from None
        if not isinstance(data, list):
            raise CorpusError(f"{path}: expected a JSON array of objects or strings")
        for n, obj in enumerate(data, 1):
            yield _record(obj, n, text_field, id_field)
    elif kind == ".csv":
        with path.open(encoding="utf-8", newline="") as f:
            reader = csv.DictReader(f)
            columns = reader.fieldnames or []
            for name in (text_field, id_field):
                if name is not None and name not in columns:
                    raise CorpusError(
                        f"{path}: no column {name!r} (columns: {', '.join(columns)}); "
                        "choose one with --field / --id-field"
                    )
            for n, rec in enumerate(reader, 1):
                if None in rec:
                    raise BadRow(n, "more values than columns")
                yield _record(rec, n, text_field, id_field)
    elif kind == ".parquet":
        pa = load_pyarrow()
        pf = pa.parquet.ParquetFile(path)
        columns = pf.schema_arrow.names
        wanted = [c for c in (text_field, id_field) if c is not None]
        for name in wanted:
            if name not in columns:
                raise CorpusError(
                    f"{path}: no column {name!r} (columns: {', '.join(columns)}); "
                    "choose one with --field / --id-field"
                )
        n = 0
        for batch in pf.iter_batches(columns=wanted):
            for rec in batch.to_pylist():
                n += 1
                yield _record(rec, n, text_field, id_field)
    else:
        raise CorpusError(f"{path}: unknown input format; use one of {', '.join(INPUT_FORMATS)}")


def count_rows(path: Path) -> int:
    """About how many rows ``path`` holds (for the progress bar): a quick pass."""
    kind = suffix(path)
    if kind == ".parquet":
        return int(load_pyarrow().parquet.ParquetFile(path).metadata.num_rows)
    if kind == ".json":
        with contextlib.suppress(ValueError, OSError):
            data = json.loads(path.read_text(encoding="utf-8"))
            return len(data) if isinstance(data, list) else 0
        return 0
    with path.open(encoding="utf-8", errors="replace", newline="") as f:
        n = sum(1 for line in f if line.strip())
    return max(0, n - 1) if kind == ".csv" else n
