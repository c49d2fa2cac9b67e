"""The ``embedhost loadtest`` command: its options, the runs against one or two servers
(with the live view on a terminal) and the report, as a table or JSON."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
from dataclasses import asdict
from typing import TYPE_CHECKING, Annotated, Any

import typer

from embedhost.cli.loadtest.load import (
    OPEN_LOOP_IN_FLIGHT,
    Load,
    Recorder,
    Target,
    read_corpus,
    request_bodies,
    run_load,
)
from embedhost.cli.loadtest.report import LiveView, report_table

if TYPE_CHECKING:
    from rich.console import Console


async def _run_one(
    label: str, target: Target, load: Load, bodies: list[bytes], console: Console | None
) -> dict[str, Any]:
    rec = Recorder()
    if console is None:
        await run_load(target, load, bodies, recorder=rec)
    else:
        from rich.live import Live

        with Live(LiveView(label, load, rec), console=console, refresh_per_second=4):
            await run_load(target, load, bodies, recorder=rec)
    return {
        "label": label,
        "url": target.endpoint,
        "model": target.model,
        "results": rec.summary(),
    }


async def run_all(
    targets: list[tuple[str, Target]], load: Load, texts: list[str], console: Console | None
) -> dict[str, Any]:
    runs = []
    for label, target in targets:
        bodies = request_bodies(texts, target, load)
        runs.append(await _run_one(label, target, load, bodies, console))
    return {"load": asdict(load), "runs": runs}


# --- the command -------------------------------------------------------------------------------


def loadtest(
    url: Annotated[
        str,
        typer.Option(
            envvar="EMBEDHOST_URL",
            help="Server base URL (…/v1/embeddings is added), a …/v1 base, or the full URL.",
        ),
    ] = "http://127.0.0.1:8008",
    model: Annotated[str | None, typer.Option(help="Model name; default: the server's.")] = None,
    api_key: Annotated[
        str | None, typer.Option(envvar="EMBEDHOST_API_KEY", help="API key (Bearer).")
    ] = None,
    concurrency: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Closed loop: concurrent clients (default 8). With --rate: most requests "
            "in flight (default 256).",
        ),
    ] = None,
    duration: Annotated[
        float | None, typer.Option(min=0.1, help="Seconds to run (default 10).")
    ] = None,
    requests: Annotated[
        int | None, typer.Option(min=1, help="Number of requests, instead of --duration.")
    ] = None,
    texts_per_request: Annotated[int, typer.Option(min=1, help="Texts in each request.")] = 1,
    corpus: Annotated[
        str,
        typer.Option(
            help="A file with one text a line, or a bundled corpus: queries (short) or "
            "passages (~110 tokens)."
        ),
    ] = "queries",
    rate: Annotated[
        float | None,
        typer.Option(min=0.001, help="Open loop: requests per second on a fixed schedule."),
    ] = None,
    input_type: Annotated[
        str | None, typer.Option(help="Send input_type (embedhost's prompts).")
    ] = None,
    timeout: Annotated[float, typer.Option(min=0.1, help="Per-request timeout (s).")] = 60.0,
    compare: Annotated[
        str | None, typer.Option(help="A second server's URL: the same load, side by side.")
    ] = None,
    compare_model: Annotated[
        str | None, typer.Option(help="Model name on the second server (default: --model).")
    ] = None,
    compare_api_key: Annotated[
        str | None,
        typer.Option(envvar="EMBEDHOST_COMPARE_API_KEY", help="Second server's key."),
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the report as JSON (no live display).")
    ] = False,
    rerank: Annotated[
        bool,
        typer.Option(
            "--rerank",
            help="Rerank mode: a query and --texts-per-request documents per request, to "
            "/v1/rerank (texts/s are then pairs/s).",
        ),
    ] = False,
) -> None:
    """Load-test an OpenAI-compatible embeddings endpoint (embedhost or any other)."""
    from rich.console import Console

    if requests is not None and duration is not None:
        raise typer.BadParameter("give --duration or --requests, not both")
    if requests is None and duration is None:
        duration = 10.0
    try:
        load = Load(
            concurrency=concurrency or (OPEN_LOOP_IN_FLIGHT if rate else 8),
            requests=requests,
            duration_s=duration,
            texts_per_request=texts_per_request,
            rate=rate,
            timeout_s=timeout,
            corpus=corpus,
            input_type=input_type,
        )
        texts = read_corpus(corpus)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    targets = [(url if compare else "server", Target(url, model, api_key, rerank))]
    if compare:
        second = Target(compare, compare_model or model, compare_api_key or api_key, rerank)
        if compare == url:
            targets = [(f"{url} (A)", targets[0][1]), (f"{url} (B)", second)]
        else:
            targets.append((compare, second))
    err = Console(stderr=True)
    live = None if as_json or not err.is_terminal or os.environ.get("TERM") == "dumb" else err
    report = _run(run_all(targets, load, texts, live))
    if as_json:
        sys.stdout.write(json.dumps(report, indent=2) + "\n")
    else:
        Console().print(report_table(load, [(r["label"], r["results"]) for r in report["runs"]]))
    if all(r["results"]["ok"] == 0 for r in report["runs"]):
        raise typer.Exit(1)


def _run(coro: Any) -> dict[str, Any]:
    with contextlib.suppress(ImportError):
        import uvloop

        result: dict[str, Any] = uvloop.run(coro)
        return result
    out: dict[str, Any] = asyncio.run(coro)
    return out
