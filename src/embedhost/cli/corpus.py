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
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import csv
import email.utils
import hashlib
import json
import os
import re
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Protocol

import numpy as np

INPUT_FORMATS = (".txt", ".jsonl", ".json", ".csv", ".parquet")
OUTPUT_FORMATS = (".parquet", ".npy", ".jsonl")


class CorpusError(Exception):
    """Stops a run; the message is for the person running it."""


class BadRow(CorpusError):
    def __init__(self, row: int, message: str) -> None:
        super().__init__(f"row {row}: {message}")
        self.row = row


class EmbedFailed(CorpusError):
    """The embedder refused a batch (or kept failing after its retries)."""

    def __init__(self, message: str, status: int | None = None, item: int | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.item = item
        """The index in the batch that the error names, if it names one."""


@dataclass(slots=True)
class Row:
    number: int
    """1-based: the line of a .txt or .jsonl, the element of a .json, the data row of a
    .csv or .parquet."""
    id: str
    text: str


# --- input -------------------------------------------------------------------------------


def _suffix(path: Path) -> str:
    return path.suffix.lower()


def _parquet() -> Any:
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
    kind = _suffix(path)
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
        pa = _parquet()
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
    kind = _suffix(path)
    if kind == ".parquet":
        return int(_parquet().parquet.ParquetFile(path).metadata.num_rows)
    if kind == ".json":
        with contextlib.suppress(ValueError, OSError):
            data = json.loads(path.read_text(encoding="utf-8"))
            return len(data) if isinstance(data, list) else 0
        return 0
    with path.open(encoding="utf-8", errors="replace", newline="") as f:
        n = sum(1 for line in f if line.strip())
    return max(0, n - 1) if kind == ".csv" else n


# --- output ------------------------------------------------------------------------------


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
        self._pa = _parquet()
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
        pa = self._pa
        dims = int(vectors.shape[1])
        if self._writer is None:
            self._start(dims)
        flat = pa.array(np.ascontiguousarray(vectors, dtype=np.float32).reshape(-1))
        table = pa.Table.from_arrays(
            [
                pa.array([r.id for r in rows], pa.string()),
                pa.array([text_hash(r.text) for r in rows], pa.string()),
                pa.FixedSizeListArray.from_arrays(flat, dims),
            ],
            schema=self._writer.schema,
        )
        self._writer.write_table(table)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            os.replace(self.partial, self.path)


def make_writer(path: Path) -> Writer:
    kind = _suffix(path)
    if kind == ".jsonl":
        return JsonlWriter(path)
    if kind == ".npy":
        return NpyWriter(path)
    if kind == ".parquet":
        return ParquetWriter(path)
    raise CorpusError(f"{path}: unknown output format; use one of {', '.join(OUTPUT_FORMATS)}")


# --- embedders ---------------------------------------------------------------------------


class Embedder(Protocol):
    async def embed(self, texts: list[str]) -> np.ndarray[Any, Any]: ...

    async def close(self) -> None: ...


def retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or an HTTP date)."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


_ITEM = re.compile(r"\binput (\d+)\b")


class HttpEmbedder:
    """``POST /v1/embeddings`` on any OpenAI-compatible server (base64 vectors), retrying
    429 and 503 answers after their ``Retry-After`` (else a doubling backoff) and dropped
    connections, ``retries`` times."""

    def __init__(
        self,
        url: str,
        *,
        api_key: str | None = None,
        model: str | None = None,
        input_type: str | None = None,
        retries: int = 8,
        timeout: float = 300.0,
        transport: Any = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        import httpx

        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = httpx.AsyncClient(
            base_url=url.rstrip("/"),
            headers=headers,
            timeout=httpx.Timeout(timeout, connect=10),
            transport=transport,
        )
        self.model = model
        self.input_type = input_type
        self.retries = retries
        self.sleep = sleep
        self.retried = 0

    async def embed(self, texts: list[str]) -> np.ndarray[Any, Any]:
        import httpx

        body: dict[str, Any] = {"input": texts, "encoding_format": "base64"}
        if self.model:
            body["model"] = self.model
        if self.input_type:
            body["input_type"] = self.input_type
        delay = 0.5
        for attempt in range(self.retries + 1):
            last = attempt == self.retries
            try:
                r = await self._client.post("/v1/embeddings", json=body)
            except httpx.TransportError as exc:
                if last:
                    raise EmbedFailed(f"cannot reach {self._client.base_url}: {exc}") from None
                wait = delay
            else:
                if r.status_code == 200:
                    return _decode(r.json(), len(texts))
                if r.status_code not in (429, 503) or last:
                    raise _failure(r)
                wait = retry_after(r.headers.get("Retry-After")) or delay
            self.retried += 1
            await self.sleep(wait)
            delay = min(delay * 2, 30.0)
        raise AssertionError("unreachable")

    async def close(self) -> None:
        await self._client.aclose()


def _decode(body: dict[str, Any], n: int) -> np.ndarray[Any, Any]:
    data = sorted(body["data"], key=lambda d: d["index"])
    if len(data) != n:
        raise EmbedFailed(f"the server answered {len(data)} vectors for {n} texts")
    rows = [
        np.frombuffer(base64.b64decode(d["embedding"]), dtype="<f4")
        if isinstance(d["embedding"], str)
        else np.asarray(d["embedding"], dtype=np.float32)
        for d in data
    ]
    return np.stack(rows).astype(np.float32, copy=False)


def _failure(r: Any) -> EmbedFailed:
    try:
        err = r.json().get("error", {})
        message = str(err.get("message") or r.text)
    except ValueError:
        message = r.text[:500]
    m = _ITEM.search(message)
    return EmbedFailed(
        f"the server answered {r.status_code}: {message}",
        status=r.status_code,
        item=int(m.group(1)) if m else None,
    )


class LocalEmbedder:
    """The server's own path in this process: model registry (tokenizer, prompts, engine
    worker), batcher and service, without HTTP. ``config``: a server config file (its
    models); without it, the built-in default model."""

    def __init__(
        self, config: Path | None = None, *, model: str | None = None, input_type: str | None = None
    ) -> None:
        self.config = config
        self.model = model
        self.input_type = input_type
        self._registry: Any = None
        self._service: Any = None

    async def start(self, timeout: float = 600.0) -> None:
        from embedhost.config import load_settings
        from embedhost.errors import EmbedhostError
        from embedhost.models.registry import ModelRegistry
        from embedhost.service import EmbeddingService

        try:
            settings = load_settings(self.config)
            self._registry = ModelRegistry(settings)
            self._service = EmbeddingService(self._registry, settings.limits)
            self._registry.start()
            handle = self._service.resolve(self.model)  # an unknown model fails here
        except EmbedhostError as exc:
            raise CorpusError(exc.message) from None
        deadline = time.monotonic() + timeout
        while handle.status != "ready":
            if handle.status == "failed" or time.monotonic() > deadline:
                reason = handle.reason or f"not ready in {timeout:.0f}s"
                raise CorpusError(f"model {handle.ref} did not load: {reason}")
            await asyncio.sleep(0.05)

    async def embed(self, texts: list[str]) -> np.ndarray[Any, Any]:
        from embedhost.errors import STATUS, EmbedhostError
        from embedhost.service import EmbedOptions

        try:
            handle = self._service.resolve(self.model)
            result = await self._service.embed(
                handle, texts, EmbedOptions(input_type=self.input_type)
            )
        except EmbedhostError as exc:
            m = _ITEM.search(exc.message)
            raise EmbedFailed(
                exc.message, status=STATUS.get(type(exc)), item=int(m.group(1)) if m else None
            ) from None
        return np.asarray(result.vectors, dtype=np.float32)

    async def close(self) -> None:
        if self._registry is not None:
            await self._registry.stop(10.0)


# --- the run -----------------------------------------------------------------------------


@dataclass(slots=True)
class Summary:
    embedded: int = 0
    skipped: int = 0
    seconds: float = 0.0
    error: str | None = None
    failed_row: int | None = None


Advance = Callable[[int], None]


def check_paths(source: Path, output: Path, *, resume: bool, overwrite: bool) -> None:
    if not source.is_file():
        raise CorpusError(f"{source}: no such file")
    if _suffix(source) not in INPUT_FORMATS:
        raise CorpusError(f"{source}: unknown input format; use one of {', '.join(INPUT_FORMATS)}")
    if _suffix(output) not in OUTPUT_FORMATS:
        raise CorpusError(
            f"{output}: unknown output format; use one of {', '.join(OUTPUT_FORMATS)}"
        )
    if output.exists() and not (resume or overwrite):
        raise CorpusError(f"{output} exists: pass --resume to continue it or --overwrite")


async def embed_corpus(
    source: Path,
    output: Path,
    embedder: Embedder,
    *,
    text_field: str = "text",
    id_field: str | None = None,
    batch_size: int = 64,
    concurrency: int = 4,
    resume: bool = False,
    overwrite: bool = False,
    progress: Callable[[int, int], Advance] | None = None,
) -> Summary:
    """Embed every row of ``source`` into ``output``, in order. Returns what was done; a
    bad row or a refused batch ends the run with ``Summary.error`` set, after the rows
    before it are written (the run can then go on with ``resume``)."""
    check_paths(source, output, resume=resume, overwrite=overwrite)
    if batch_size < 1 or concurrency < 1:
        raise CorpusError("--batch-size and --concurrency must be at least 1")
    writer = make_writer(output)
    done = writer.open(resume)
    summary = Summary()
    start = time.monotonic()
    advance: Advance = progress(count_rows(source), len(done)) if progress else (lambda n: None)
    gate = asyncio.Semaphore(concurrency)
    pending: dict[int, asyncio.Task[np.ndarray[Any, Any]]] = {}
    batches: dict[int, list[Row]] = {}
    next_write = 0
    seq = 0
    seen: set[str] = set()

    async def run(rows: list[Row]) -> np.ndarray[Any, Any]:
        try:
            return await embedder.embed([r.text for r in rows])
        finally:
            gate.release()

    def flush() -> None:
        """Write finished batches in order, up to the first unfinished or failed one."""
        nonlocal next_write
        while next_write in pending and pending[next_write].done():
            task = pending[next_write]
            if task.exception() is not None:
                return
            rows = batches.pop(next_write)
            writer.write(rows, task.result())
            summary.embedded += len(rows)
            advance(len(rows))
            del pending[next_write]
            next_write += 1

    def first_failure() -> tuple[int, BaseException] | None:
        for i in sorted(pending):
            t = pending[i]
            if t.done() and t.exception() is not None:
                return i, t.exception()  # type: ignore[return-value]
        return None

    async def submit(rows: list[Row]) -> None:
        nonlocal seq
        await gate.acquire()
        batches[seq] = rows
        pending[seq] = asyncio.create_task(run(rows))
        seq += 1

    error: CorpusError | None = None
    try:
        batch: list[Row] = []
        try:
            for row in read_rows(source, text_field, id_field):
                if row.id in seen:
                    raise BadRow(row.number, f"duplicate id {row.id!r}")
                seen.add(row.id)
                if row.id in done:
                    summary.skipped += 1
                    continue
                batch.append(row)
                if len(batch) >= batch_size:
                    await submit(batch)
                    batch = []
                    flush()
                    if first_failure() is not None:
                        break
        except BadRow as exc:
            error = exc
        if batch and first_failure() is None:
            await submit(batch)  # the rows before a bad row are kept too
        if pending:
            await asyncio.wait(pending.values())
        flush()
        failed = first_failure()
        if failed is not None:
            i, cause = failed
            rows = batches[i]
            if isinstance(cause, EmbedFailed) and cause.item is not None and cause.item < len(rows):
                error = BadRow(rows[cause.item].number, str(cause))
            elif isinstance(cause, CorpusError):
                error = CorpusError(f"rows {rows[0].number}-{rows[-1].number}: {cause}")
            else:
                raise cause
    finally:
        for t in pending.values():
            t.cancel()
        writer.close()
    summary.seconds = time.monotonic() - start
    if error is not None:
        summary.error = str(error)
        summary.failed_row = error.row if isinstance(error, BadRow) else None
    return summary


# --- the command -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RunOptions:
    text_field: str = "text"
    id_field: str | None = None
    batch_size: int = 64
    concurrency: int = 4
    resume: bool = False
    overwrite: bool = False
    progress: bool = True


def main(source: Path, output: Path, embedder: Embedder, options: RunOptions) -> int:
    """``embedhost embed INPUT -o OUTPUT``: run, report on stderr, return the exit code
    (0 done, 1 stopped at a bad row or a failed request, 2 a usage error)."""
    from rich.console import Console

    console = Console(stderr=True, soft_wrap=True)
    try:
        check_paths(source, output, resume=options.resume, overwrite=options.overwrite)
        summary = asyncio.run(_run(source, output, embedder, options, console))
    except CorpusError as exc:
        console.print(f"[red]error:[/red] {exc}", highlight=False)
        return 2
    except KeyboardInterrupt:
        console.print(f"interrupted; the rows written so far are in {output} (--resume goes on)")
        return 130
    rate = summary.embedded / summary.seconds if summary.seconds > 0 else 0.0
    line = f"{summary.embedded} texts embedded in {summary.seconds:.1f}s ({rate:.0f} texts/s)"
    if summary.skipped:
        line += f", {summary.skipped} already in {output} skipped"
    console.print(f"{line} -> {output}", highlight=False)
    if summary.error is not None:
        console.print(f"[red]error:[/red] {summary.error}", highlight=False)
        console.print(
            f"the rows before it are in {output}; fix the input and run again with --resume",
            highlight=False,
        )
        return 1
    return 0


async def _run(
    source: Path, output: Path, embedder: Embedder, options: RunOptions, console: Any
) -> Summary:
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        ProgressColumn,
        SpinnerColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )
    from rich.text import Text

    class Rate(ProgressColumn):
        def render(self, task: Any) -> Text:
            speed = task.finished_speed or task.speed
            if not speed and task.elapsed:
                speed = task.completed / task.elapsed
            return Text(f"{speed:,.0f} texts/s" if speed else "- texts/s", style="cyan")

    bar = Progress(
        SpinnerColumn(),
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        Rate(),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=console,
        disable=not options.progress,
    )

    def track(total: int, done: int) -> Advance:
        task = bar.add_task(source.name, total=max(total - done, 0))
        return lambda n: bar.advance(task, n)

    try:
        if isinstance(embedder, LocalEmbedder):
            with console.status("loading the model in this process"):
                await embedder.start()
        with bar:
            return await embed_corpus(
                source,
                output,
                embedder,
                text_field=options.text_field,
                id_field=options.id_field,
                batch_size=options.batch_size,
                concurrency=options.concurrency,
                resume=options.resume,
                overwrite=options.overwrite,
                progress=track,
            )
    finally:
        await embedder.close()


def local_answer(
    texts: list[str], config: Path | None, model: str | None, input_type: str | None
) -> dict[str, Any]:
    """``embedhost embed --local TEXT...``: an OpenAI-shaped answer, computed here."""

    async def go() -> dict[str, Any]:
        embedder = LocalEmbedder(config, model=model, input_type=input_type)
        try:
            await embedder.start()
            vectors = await embedder.embed(texts)
        finally:
            await embedder.close()
        return {
            "object": "list",
            "data": [
                {"object": "embedding", "index": i, "embedding": v.tolist()}
                for i, v in enumerate(vectors)
            ],
            "model": model or "default",
        }

    return asyncio.run(go())
