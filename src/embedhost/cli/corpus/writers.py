"""Writing vectors: one writer per output format (``.jsonl``, ``.npy`` with its
``.ids.txt``, ``.parquet``), each able to resume a file an earlier run left."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from pathlib import Path
from typing import IO, Any, Protocol

import numpy as np

from embedhost.cli.corpus.errors import BadRow, CorpusError
from embedhost.cli.corpus.rows import Row, load_pyarrow, suffix

OUTPUT_FORMATS = (".parquet", ".npy", ".jsonl")


def text_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class Writer(Protocol):
    def open(self, resume: bool) -> set[str]:
        """Prepare the output; with ``resume``, the ids it already holds."""
        ...

    def write(self, rows: list[Row], vectors: np.ndarray[Any, Any]) -> None: ...

    def close(self) -> None:
        """Make what was written complete on disk (also after a failure)."""
        ...


class JsonlWriter:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._f: IO[str] | None = None

    def open(self, resume: bool) -> set[str]:
        done: set[str] = set()
        if resume and self.path.exists():
            good = 0
            with self.path.open("rb") as f:
                for line in f:
                    if not line.endswith(b"\n"):
                        break  # the half-written last line of an interrupted run
                    with contextlib.suppress(ValueError):
                        done.add(str(json.loads(line)["id"]))
                    good += len(line)
            os.truncate(self.path, good)
        self._f = self.path.open("a" if resume else "w", encoding="utf-8")
        return done

    def write(self, rows: list[Row], vectors: np.ndarray[Any, Any]) -> None:
        assert self._f is not None
        for row, vec in zip(rows, vectors, strict=True):
            rec = {"id": row.id, "text_sha256": text_hash(row.text), "embedding": vec.tolist()}
            self._f.write(json.dumps(rec) + "\n")
        self._f.flush()

    def close(self) -> None:
        if self._f is not None:
            self._f.close()


_NPY_HEADER = 128  # bytes, the whole header: room for any shape, rewritten in place


class NpyWriter:
    """A float32 ``.npy`` appended to in place (its header is rewritten with the row count
    after every write), and the ids one a line in ``NAME.ids.txt``."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.ids_path = path.with_suffix(".ids.txt")
        self._f: IO[bytes] | None = None
        self._ids: IO[str] | None = None
        self._rows = 0
        self._dims = 0
        self._offset = _NPY_HEADER

    def open(self, resume: bool) -> set[str]:
        done: list[str] = []
        if resume and self.path.exists():
            with self.path.open("rb") as f:
                version = np.lib.format.read_magic(f)
                read = (
                    np.lib.format.read_array_header_1_0
                    if version == (1, 0)
                    else np.lib.format.read_array_header_2_0
                )
                shape, _, dtype = read(f)
                self._offset = f.tell()
            if len(shape) != 2 or np.dtype(dtype) != np.dtype("<f4"):
                raise CorpusError(f"{self.path} is not a float32 matrix; cannot resume it")
            self._dims = int(shape[1])
            rows = (self.path.stat().st_size - self._offset) // (4 * self._dims)
            if self.ids_path.exists():
                done = self.ids_path.read_text(encoding="utf-8").splitlines()
            # An interrupted run may have written vectors without their ids, or half a row.
            self._rows = min(rows, len(done))
            done = done[: self._rows]
            os.truncate(self.path, self._offset + self._rows * 4 * self._dims)
            self.ids_path.write_text("".join(i + "\n" for i in done), encoding="utf-8")
            self._f = self.path.open("r+b")
            self._f.seek(0, os.SEEK_END)
        else:
            self._f = self.path.open("w+b")
            self._f.write(b"\0" * _NPY_HEADER)
        self._ids = self.ids_path.open("a" if resume else "w", encoding="utf-8")
        return set(done)

    def write(self, rows: list[Row], vectors: np.ndarray[Any, Any]) -> None:
        assert self._f is not None and self._ids is not None
        if not self._dims:
            self._dims = int(vectors.shape[1])
        if vectors.shape[1] != self._dims:
            raise CorpusError(
                f"{self.path} holds {self._dims}-dimensional vectors; the model answers "
                f"{vectors.shape[1]}"
            )
        for row in rows:
            if "\n" in row.id or "\r" in row.id:
                raise BadRow(row.number, "an id with a line break cannot go in a .ids.txt")
        self._f.write(np.ascontiguousarray(vectors, dtype="<f4").tobytes())
        self._rows += len(rows)
        self._ids.write("".join(r.id + "\n" for r in rows))
        self._write_header()
        self._f.flush()
        self._ids.flush()

    def _write_header(self) -> None:
        assert self._f is not None
        end = self._f.tell()
        head = (
            f"{{'descr': '<f4', 'fortran_order': False, 'shape': ({self._rows}, {self._dims}), }}"
        )
        room = self._offset - 10  # magic (6) + version (2) + length (2)
        if len(head) + 1 > room:
            raise CorpusError(f"{self.path}: its header has no room for {self._rows} rows")
        self._f.seek(0)
        self._f.write(b"\x93NUMPY\x01\x00" + room.to_bytes(2, "little"))
        self._f.write((head.ljust(room - 1) + "\n").encode("latin1"))
        self._f.seek(end)

    def close(self) -> None:
        if self._f is not None:
            if self._dims:
                self._write_header()
            self._f.close()
            if not self._dims:  # nothing was ever written: no half-made file
                self.path.unlink(missing_ok=True)
        if self._ids is not None:
            self._ids.close()


class ParquetWriter:
    """Parquet files cannot be appended to: rows stream into ``.NAME.partial`` (the rows of
    an earlier run first, with ``--resume``), which replaces NAME when the run ends,
    whether it finished or stopped at a bad row."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.partial = path.with_name(f".{path.name}.partial")
        self._pa = load_pyarrow()
        self._writer: Any = None
        self._old: Any = None

    def open(self, resume: bool) -> set[str]:
        if resume and self.path.exists():
            self._old = self._pa.parquet.read_table(self.path)
            return {str(i) for i in self._old.column("id").to_pylist()}
        return set()

    def _start(self, dims: int) -> None:
        pa = self._pa
        schema = pa.schema(
            [
                ("id", pa.string()),
                ("text_sha256", pa.string()),
                ("embedding", pa.list_(pa.float32(), dims)),
            ]
        )
        self._writer = pa.parquet.ParquetWriter(self.partial, schema)
        if self._old is not None and self._old.num_rows:
            self._writer.write_table(self._old.cast(schema))

    def write(self, rows: list[Row], vectors: np.ndarray[Any, Any]) -> None:
        self.write_hashed(rows, [text_hash(r.text) for r in rows], vectors)

    def write_hashed(
        self, rows: list[Row], hashes: list[str], vectors: np.ndarray[Any, Any]
    ) -> None:
        """:meth:`write` with the texts' hashes already computed (``--ray``'s actors do)."""
        pa = self._pa
        dims = int(vectors.shape[1])
        if self._writer is None:
            self._start(dims)
        flat = pa.array(np.ascontiguousarray(vectors, dtype=np.float32).reshape(-1))
        table = pa.Table.from_arrays(
            [
                pa.array([r.id for r in rows], pa.string()),
                pa.array(hashes, pa.string()),
                pa.FixedSizeListArray.from_arrays(flat, dims),
            ],
            schema=self._writer.schema,
        )
        self._writer.write_table(table)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            os.replace(self.partial, self.path)

    def abort(self) -> None:
        """Drop what this run wrote (``--ray``: a shard is all there or not there)."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        self.partial.unlink(missing_ok=True)


def make_writer(path: Path) -> Writer:
    kind = suffix(path)
    if kind == ".jsonl":
        return JsonlWriter(path)
    if kind == ".npy":
        return NpyWriter(path)
    if kind == ".parquet":
        return ParquetWriter(path)
    raise CorpusError(f"{path}: unknown output format; use one of {', '.join(OUTPUT_FORMATS)}")
