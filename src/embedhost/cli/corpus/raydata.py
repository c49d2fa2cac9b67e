"""``embedhost embed INPUT -o OUTDIR --ray [ADDRESS]``: a corpus of shards on Ray Data.

INPUT is one file, a directory or a glob of shards, all ``.parquet``, all ``.jsonl`` (one
object a line) or all ``.csv``. Ray Data reads the shards that OUTDIR does not hold yet
(one dataset, order preserved), an actor pool of :class:`EmbedActor` embeds them
(``--replicas`` actors, ``--num-cpus`` / ``--num-gpus`` each, ``--batch-size`` rows a
call), and this process writes one Parquet file per input shard, ``OUTDIR/STEM.parquet``,
with the columns of the single-file output (``id``, ``text_sha256``, ``embedding``), in
the shard's row order.

Each actor is :class:`~embedhost.cli.corpus.embedders.LocalEmbedder`: the serving core the
server builds (:meth:`~embedhost.core.Core.build`: the model's tokenizer, prompts,
truncation, batcher and supervised engine worker), so its vectors are ``--local``'s.

Resumable by shard: a shard streams into ``.STEM.parquet.partial`` and is renamed to
``STEM.parquet`` once its last row is written, so a file under its final name is a finished
shard; a rerun skips those and redoes only the unfinished ones (a partial file is
overwritten). Without ``--id-field`` a row's id is its 1-based row number in its shard.
"""

from __future__ import annotations

import asyncio
import glob
import os
import threading
import time
from collections.abc import Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from embedhost.cli.corpus.embedders import LocalEmbedder
from embedhost.cli.corpus.errors import BadRow, CorpusError
from embedhost.cli.corpus.rows import Row, load_pyarrow, suffix
from embedhost.cli.corpus.writers import ParquetWriter, text_hash

SHARD_FORMATS = (".parquet", ".jsonl", ".csv")
_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class RayOptions:
    address: str | None = None
    """A running cluster (``ray://...``, ``HOST:PORT``, ``auto``); None: ``ray.init()``'s
    default (``RAY_ADDRESS``, a cluster started on this machine, else a new local one)."""
    config: Path | None = None
    model: str | None = None
    input_type: str | None = None
    text_field: str = "text"
    id_field: str | None = None
    replicas: int = 1
    batch_size: int = 64
    num_cpus: float = 1.0
    num_gpus: float = 0.0
    overwrite: bool = False
    progress: bool = True


@dataclass(slots=True)
class RaySummary:
    shards: int = 0
    skipped_shards: int = 0
    embedded: int = 0
    seconds: float = 0.0


def find_shards(source: str) -> list[Path]:
    """The input shards, sorted by name: ``source`` is a file, a directory or a glob."""
    if glob.has_magic(source):
        paths = [Path(p) for p in sorted(glob.glob(source)) if Path(p).is_file()]
    elif Path(source).is_dir():
        paths = sorted(
            p for p in Path(source).iterdir() if p.is_file() and suffix(p) in SHARD_FORMATS
        )
    elif Path(source).is_file():
        paths = [Path(source)]
    else:
        raise CorpusError(f"{source}: no such file or directory")
    if not paths:
        raise CorpusError(f"{source}: no {'/'.join(SHARD_FORMATS)} shards there")
    kinds = {suffix(p) for p in paths}
    if len(kinds) > 1 or not kinds <= set(SHARD_FORMATS):
        raise CorpusError(
            f"{source}: the shards must all be one of {', '.join(SHARD_FORMATS)} "
            f"(found {', '.join(sorted(kinds))})"
        )
    stems: dict[str, Path] = {}
    for p in paths:
        if p.stem in stems:
            raise CorpusError(f"{p} and {stems[p.stem]} would both write {p.stem}.parquet")
        stems[p.stem] = p
    return [p.resolve() for p in paths]


def shard_output(outdir: Path, shard: Path) -> Path:
    return outdir / f"{shard.stem}.parquet"


class EmbedActor:
    """One embedhost engine in a Ray actor: a :class:`LocalEmbedder` whose event loop runs
    on a thread of its own (the core's batcher and worker supervision need a running loop
    between calls), called by Ray Data with a pyarrow batch of input rows."""

    def __init__(
        self,
        config: str | None,
        model: str | None,
        input_type: str | None,
        text_field: str,
        id_field: str | None,
    ) -> None:
        self.text_field = text_field
        self.id_field = id_field
        self._loop = asyncio.new_event_loop()
        threading.Thread(target=self._loop.run_forever, name="embedhost", daemon=True).start()
        self._embedder = LocalEmbedder(
            Path(config) if config else None, model=model, input_type=input_type
        )
        self._call(self._embedder.start())

    def _call(self, coro: Coroutine[Any, Any, _T]) -> _T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def __call__(self, batch: Any) -> Any:
        """Rows in (the text and id fields, ``path``), the same rows out: ``path``, ``id``
        (None without an id field), ``text_sha256``, ``embedding`` and ``error`` (None, or
        why the row cannot be embedded; the caller stops at the first)."""
        pa = load_pyarrow()
        n = batch.num_rows
        errors: list[str | None] = [None] * n
        names = batch.column_names
        texts: list[Any] = (
            batch.column(self.text_field).to_pylist() if self.text_field in names else [None] * n
        )
        ids: list[str | None] = [None] * n
        if self.id_field is not None:
            raw = batch.column(self.id_field).to_pylist() if self.id_field in names else [None] * n
            for i, v in enumerate(raw):
                if v is None:
                    errors[i] = f"no id in field {self.id_field!r}"
                elif isinstance(v, bool | float | dict | list):
                    errors[i] = f"id {v!r:.60} must be a string or an integer"
                else:
                    ids[i] = str(v)
        for i, t in enumerate(texts):
            if self.text_field not in names:
                errors[i] = f"no field {self.text_field!r} (it has: {', '.join(names)})"
            elif not isinstance(t, str):
                errors[i] = f"field {self.text_field!r} is not a string ({t!r:.60})"
            elif not t.strip():
                errors[i] = f"field {self.text_field!r} is empty"
        good = [i for i in range(n) if errors[i] is None]
        vectors: np.ndarray[Any, Any] | None = None
        if good:
            try:
                vectors = self._call(self._embedder.embed([texts[i] for i in good]))
            except CorpusError as exc:
                item = getattr(exc, "item", None)
                for k, i in enumerate(good):
                    if item is None or k == item:
                        errors[i] = str(exc)
        dims = int(vectors.shape[1]) if vectors is not None else 1
        full = np.zeros((n, dims), dtype=np.float32)
        if vectors is not None:
            full[good] = vectors
        return pa.table(
            {
                "path": batch.column("path"),
                "id": pa.array(ids, pa.string()),
                "text_sha256": pa.array(
                    [text_hash(t) if isinstance(t, str) else "" for t in texts], pa.string()
                ),
                "embedding": pa.FixedSizeListArray.from_arrays(pa.array(full.reshape(-1)), dims),
                "error": pa.array(errors, pa.string()),
            }
        )


def _read(ray: Any, paths: list[Path], text_field: str, id_field: str | None) -> Any:
    names = [str(p) for p in paths]
    kind = suffix(paths[0])
    # Reading is light next to embedding; with a CPU of their own the read tasks would wait
    # forever when the actors hold every CPU of the cluster (--replicas x --num-cpus).
    common = {"include_paths": True, "num_cpus": 0}
    if kind == ".parquet":
        columns = [c for c in (text_field, id_field) if c is not None]
        return ray.data.read_parquet(names, columns=columns, **common)
    if kind == ".jsonl":
        return ray.data.read_json(names, lines=True, **common)
    import pyarrow.csv as pacsv

    # As the single-file reader does: a CSV's text and id are strings, even "42".
    types = {c: load_pyarrow().string() for c in (text_field, id_field) if c is not None}
    return ray.data.read_csv(
        names, convert_options=pacsv.ConvertOptions(column_types=types), **common
    )


class _ShardSink:
    """The driver's side: rows come back in input order, one shard after another; each
    shard goes to its ParquetWriter and is renamed into place when the next one starts."""

    def __init__(self, outdir: Path, shards: list[Path]) -> None:
        self.outdir = outdir
        self.by_name = {p.name: p for p in shards}
        self.shard: Path | None = None
        self.writer: ParquetWriter | None = None
        self.rows = 0
        self.embedded = 0
        self.finished: list[Path] = []

    def _switch(self, path: str) -> None:
        self.finish()
        shard = self.by_name.get(os.path.basename(path))
        if shard is None:
            raise CorpusError(f"Ray Data returned rows of an unknown file {path}")
        self.shard, self.rows = shard, 0
        self.writer = ParquetWriter(shard_output(self.outdir, shard))
        self.writer.open(False)

    def write(self, table: Any) -> None:
        paths = table.column("path").to_pylist()
        ids = table.column("id").to_pylist()
        hashes = table.column("text_sha256").to_pylist()
        errors = table.column("error").to_pylist()
        emb = table.column("embedding").combine_chunks()
        dims = emb.type.list_size
        vectors = emb.flatten().to_numpy(zero_copy_only=False).reshape(-1, dims)
        start = 0
        while start < len(paths):
            end = start
            while end < len(paths) and paths[end] == paths[start]:
                end += 1
            if self.shard is None or self.shard.name != os.path.basename(paths[start]):
                self._switch(paths[start])
            assert self.writer is not None and self.shard is not None
            rows = []
            for i in range(start, end):
                self.rows += 1
                if errors[i] is not None:
                    raise BadRow(self.rows, f"{self.shard}: {errors[i]}")
                rows.append(Row(self.rows, ids[i] if ids[i] is not None else str(self.rows), ""))
            self.writer.write_hashed(
                rows, [hashes[i] for i in range(start, end)], vectors[start:end]
            )
            self.embedded += len(rows)
            start = end

    def finish(self) -> None:
        if self.writer is not None and self.shard is not None:
            self.writer.close()  # renames .STEM.parquet.partial to STEM.parquet
            self.finished.append(self.shard)
        self.writer, self.shard = None, None

    def abort(self) -> None:
        if self.writer is not None:
            self.writer.abort()
        self.writer, self.shard = None, None


def embed_shards(source: str, outdir: Path, options: RayOptions) -> RaySummary:
    """Embed every unfinished shard of ``source`` into ``outdir`` on Ray (see the module)."""
    if options.replicas < 1 or options.batch_size < 1:
        raise CorpusError("--replicas and --batch-size must be at least 1")
    shards = find_shards(source)
    if outdir.exists() and not outdir.is_dir():
        raise CorpusError(f"{outdir}: with --ray, OUTPUT is a directory (one .parquet a shard)")
    outdir.mkdir(parents=True, exist_ok=True)
    if options.overwrite:
        for p in shards:
            shard_output(outdir, p).unlink(missing_ok=True)
    pending = [p for p in shards if not shard_output(outdir, p).exists()]
    summary = RaySummary(shards=len(shards), skipped_shards=len(shards) - len(pending))
    if not pending:
        return summary
    try:
        import ray.data

        import ray
    except ImportError:
        raise CorpusError("--ray needs Ray Data: pip install 'embedhost[ray]'") from None
    start = time.monotonic()
    if not ray.is_initialized():
        ray.init(address=options.address, log_to_driver=False, configure_logging=False)
    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.preserve_order = True  # rows come back in input order
    ctx.enable_progress_bars = options.progress
    ds = _read(ray, pending, options.text_field, options.id_field).map_batches(
        EmbedActor,
        fn_constructor_kwargs={
            "config": str(options.config.resolve()) if options.config else None,
            "model": options.model,
            "input_type": options.input_type,
            "text_field": options.text_field,
            "id_field": options.id_field,
        },
        batch_size=options.batch_size,
        batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(size=options.replicas),
        num_cpus=options.num_cpus,
        num_gpus=options.num_gpus,
    )
    sink = _ShardSink(outdir, pending)
    try:
        for table in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
            sink.write(table)
        sink.finish()
    except BaseException:
        sink.abort()
        raise
    finally:
        summary.embedded = sink.embedded
        summary.seconds = time.monotonic() - start
    return summary


def main(source: str, outdir: Path, options: RayOptions) -> int:
    """The command: run, report on stderr, return the exit code (0 done, 1 a bad row, 2 a
    usage error)."""
    from rich.console import Console

    console = Console(stderr=True, soft_wrap=True)
    try:
        summary = embed_shards(source, outdir, options)
    except BadRow as exc:
        console.print(f"[red]error:[/red] {exc}", highlight=False)
        console.print("the shards before it are in place; fix it and run again", highlight=False)
        return 1
    except CorpusError as exc:
        console.print(f"[red]error:[/red] {exc}", highlight=False)
        return 2
    rate = summary.embedded / summary.seconds if summary.seconds > 0 else 0.0
    line = (
        f"{summary.embedded} texts embedded in {summary.seconds:.1f}s ({rate:.0f} texts/s), "
        f"{summary.shards - summary.skipped_shards} shards"
    )
    if summary.skipped_shards:
        line += f", {summary.skipped_shards} already done skipped"
    console.print(f"{line} -> {outdir}", highlight=False)
    return 0
