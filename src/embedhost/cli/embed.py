"""``embedhost embed``, in both of its forms, against a server or in-process (``--local``).

The two forms are told apart by ``-o``: ``embedhost embed TEXT...`` prints the JSON answer
for a few texts; ``embedhost embed INPUT -o OUTPUT`` embeds a corpus file
(:mod:`embedhost.cli.corpus`). Without ``--local`` both call a server's
``/v1/embeddings`` over HTTP; with it, the server's own code runs in this process; with
``--ray`` it runs in a pool of Ray actors over shards (:mod:`embedhost.cli.corpus.raydata`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

_RAY_DEFAULT = "default"
"""``--ray`` without an address: ``ray.init()``'s own choice of cluster."""


def optional_ray_address(argv: list[str]) -> list[str]:
    """``--ray [ADDRESS]``: typer has no option with an optional value, so a bare ``--ray``
    (last, or before another option) gets :data:`_RAY_DEFAULT` here, before parsing."""
    out: list[str] = []
    for i, arg in enumerate(argv):
        out.append(arg)
        if arg == "--ray" and (i + 1 == len(argv) or argv[i + 1].startswith("-")):
            out.append(_RAY_DEFAULT)
    return out


def embed(
    inputs: Annotated[
        list[str],
        typer.Argument(
            help="Texts to embed (the JSON answer is printed); with -o, one input file.",
            show_default=False,
        ),
    ],
    output: Annotated[
        Path | None,
        typer.Option(
            "--output",
            "-o",
            help="Embed the file INPUT into OUTPUT (.parquet, .npy, .jsonl) instead.",
        ),
    ] = None,
    url: Annotated[str, typer.Option(envvar="EMBEDHOST_URL", help="Server base URL.")] = (
        "http://127.0.0.1:8008"
    ),
    model: Annotated[str | None, typer.Option(help="Model name.")] = None,
    api_key: Annotated[
        str | None,
        typer.Option(envvar="EMBEDHOST_API_KEY", help="API key, if the server needs one."),
    ] = None,
    input_type: Annotated[
        str | None,
        typer.Option(help="query, document, or a prompt name of the model (its prompt)."),
    ] = None,
    local: Annotated[
        bool, typer.Option(help="Embed in this process (no server): the server's engine code.")
    ] = False,
    config: Annotated[
        Path | None,
        typer.Option(
            "--config",
            "-c",
            envvar="EMBEDHOST_CONFIG",
            help="With --local: the server config whose models to use (default: built-in).",
        ),
    ] = None,
    text_field: Annotated[
        str, typer.Option("--field", help="JSON/CSV/Parquet field holding the text.")
    ] = "text",
    id_field: Annotated[
        str | None,
        typer.Option("--id-field", help="Field holding each row's id (default: row number)."),
    ] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="Texts per request.")] = 64,
    concurrency: Annotated[int, typer.Option(min=1, help="Requests in flight.")] = 4,
    resume: Annotated[
        bool, typer.Option(help="Skip the ids OUTPUT already holds; append the rest.")
    ] = False,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing OUTPUT.")] = False,
    retries: Annotated[
        int, typer.Option(min=0, help="Retries of a request answered 429/503 or cut off.")
    ] = 8,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
    ray: Annotated[
        str | None,
        typer.Option(
            "--ray",
            metavar="[ADDRESS]",
            help="Embed INPUT (a file, directory or glob of shards) on Ray Data into the "
            "directory OUTPUT, one .parquet a shard; ADDRESS: a cluster (default: Ray's).",
        ),
    ] = None,
    replicas: Annotated[int, typer.Option(min=1, help="With --ray: engine actors.")] = 1,
    num_cpus: Annotated[float, typer.Option(min=0, help="With --ray: CPUs per actor.")] = 1.0,
    num_gpus: Annotated[float, typer.Option(min=0, help="With --ray: GPUs per actor.")] = 0.0,
) -> None:
    """Embed texts, or a file with -o.

    \b
    embedhost embed "some text" "another"          print the JSON answer
    embedhost embed corpus.jsonl -o vectors.parquet embed a file (progress, retries, --resume)
    embedhost embed 'shards/*.parquet' -o out/ --ray   on Ray Data, one .parquet a shard
    """
    from embedhost.cli import corpus

    if output is None:
        looks_like_file = Path(inputs[0]).suffix.lower() in corpus.INPUT_FORMATS
        if len(inputs) == 1 and looks_like_file and Path(inputs[0]).is_file():
            typer.echo(
                f"note: embedding the text {inputs[0]!r}; to embed the file, add -o OUTPUT",
                err=True,
            )
        _quick_embed(inputs, url, model, api_key, input_type, local, config)
        return
    if len(inputs) != 1:
        typer.echo("error: with -o, give exactly one input file", err=True)
        raise typer.Exit(2)
    if ray is not None:
        from embedhost.cli.corpus import raydata

        code = raydata.main(
            inputs[0],
            output,
            raydata.RayOptions(
                address=None if ray == _RAY_DEFAULT else ray,
                config=config,
                model=model,
                input_type=input_type,
                text_field=text_field,
                id_field=id_field,
                replicas=replicas,
                batch_size=batch_size,
                num_cpus=num_cpus,
                num_gpus=num_gpus,
                overwrite=overwrite,
                progress=not quiet,
            ),
        )
        if code:
            raise typer.Exit(code)
        return
    options = corpus.RunOptions(
        text_field=text_field,
        id_field=id_field,
        batch_size=batch_size,
        concurrency=concurrency,
        resume=resume,
        overwrite=overwrite,
        progress=not quiet,
    )
    if local:
        embedder: corpus.Embedder = corpus.LocalEmbedder(config, model=model, input_type=input_type)
    else:
        embedder = corpus.HttpEmbedder(
            url, api_key=api_key, model=model, input_type=input_type, retries=retries
        )
    code = corpus.main(Path(inputs[0]), output, embedder, options)
    if code:
        raise typer.Exit(code)


def _quick_embed(
    texts: list[str],
    url: str,
    model: str | None,
    api_key: str | None,
    input_type: str | None,
    local: bool,
    config: Path | None,
) -> None:
    """Today's ``embedhost embed TEXT...``: print the answer as JSON."""
    if local:
        from embedhost.cli import corpus

        try:
            answer = corpus.local_answer(texts, config, model, input_type)
        except corpus.EmbedFailed as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(1) from None
        except corpus.CorpusError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from None
        typer.echo(json.dumps(answer))
        return
    import httpx

    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    body: dict[str, Any] = {"input": texts}
    if model:
        body["model"] = model
    if input_type:
        body["input_type"] = input_type
    r = httpx.post(f"{url.rstrip('/')}/v1/embeddings", json=body, headers=headers, timeout=60)
    typer.echo(json.dumps(r.json()))
    if r.status_code >= 400:
        raise typer.Exit(1)
