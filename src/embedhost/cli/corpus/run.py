"""The run: :func:`embed_corpus` (rows in order, batches in flight, the writer fed in
input order) and :func:`main` (``embedhost embed INPUT -o OUTPUT``: the progress bar, the
report on stderr and the exit code)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from embedhost.cli.corpus.embedders import Embedder, LocalEmbedder
from embedhost.cli.corpus.errors import BadRow, CorpusError, EmbedFailed
from embedhost.cli.corpus.rows import INPUT_FORMATS, Row, count_rows, read_rows, suffix
from embedhost.cli.corpus.writers import OUTPUT_FORMATS, make_writer


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
    if suffix(source) not in INPUT_FORMATS:
        raise CorpusError(f"{source}: unknown input format; use one of {', '.join(INPUT_FORMATS)}")
    if suffix(output) not in OUTPUT_FORMATS:
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
