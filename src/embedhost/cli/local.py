"""Commands that run here, without a server: serve, check-config, keys create, export-onnx,
version.

Heavy imports (the app, torch through the engines, uvicorn) happen inside the commands
that need them, so that ``embedhost --help`` and ``embedhost keys create`` start fast.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from embedhost import __version__
from embedhost.errors import ConfigError

ConfigOpt = Annotated[
    Path | None,
    typer.Option(
        "--config",
        "-c",
        envvar="EMBEDHOST_CONFIG",
        help="YAML config file. Without it: the built-in default model on 127.0.0.1:8008.",
    ),
]


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def serve(
    config: ConfigOpt = None,
    host: Annotated[str | None, typer.Option(help="Bind address (server.host).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (server.port).")] = None,
    log_level: Annotated[str | None, typer.Option(help="debug, info, warning, error.")] = None,
    on_ray: Annotated[
        bool,
        typer.Option(
            "--ray",
            help="Run on Ray Serve (embedhost[ray]): replicas and autoscaling from ray.* "
            "settings; joins ray.address / $RAY_ADDRESS, else starts a local cluster.",
        ),
    ] = False,
) -> None:
    """Start the HTTP server."""
    from embedhost.api.app import create_app
    from embedhost.config import load_settings

    server: dict[str, Any] = {}
    if host is not None:
        server["host"] = host
    if port is not None:
        server["port"] = port
    if log_level is not None:
        server["log_level"] = log_level
    _setup_logging(log_level or "info")
    try:
        settings = load_settings(config, {"server": server} if server else None)
    except ConfigError as exc:
        typer.echo(exc.message, err=True)
        raise typer.Exit(2) from None
    from embedhost.logs import setup_logging

    setup_logging(
        settings.server.log_level,
        settings.server.log_format,
        instance=settings.server.resolved_instance_id,
        destination=settings.server.log_stream,
    )
    if on_ray:
        from embedhost.rayserve import serve_forever

        serve_forever(settings, config, {"server": server} if server else None)
        return
    try:
        # SIGHUP and POST /admin/reload re-read the config file.
        app = create_app(settings, config_path=config)
    except ConfigError as exc:
        typer.echo(exc.message, err=True)
        raise typer.Exit(2) from None
    from embedhost.api.context import context_of_app
    from embedhost.server import run

    run(app, settings, context_of_app(app))


def check_config(
    file: Annotated[Path, typer.Argument(help="YAML config file to validate.")],
    verify_checksums: Annotated[
        bool, typer.Option(help="Hash the model files and compare with their checksums.")
    ] = True,
) -> None:
    """Validate a config file (and the model files it names) without serving."""
    from embedhost.config import load_settings, quantization_warnings
    from embedhost.modelfiles import verify_checksum
    from embedhost.tokenization import load_prompts

    _setup_logging("warning")
    try:
        settings = load_settings(file)
        if verify_checksums:
            for m in settings.models:
                verify_checksum(m)
        for m in settings.models:
            load_prompts(m)  # a prompts file that does not parse, a default not declared
    except ConfigError as exc:
        typer.echo(exc.message, err=True)
        raise typer.Exit(2) from None
    for w in quantization_warnings(settings):
        typer.echo(f"warning: {w}", err=True)
    for note in _serve_time_notes(settings):
        typer.echo(f"note: {note}", err=True)
    typer.echo(
        f"{file}: OK ({len(settings.models)} model(s): "
        + ", ".join(f"{m.ref} [{m.engine}]" for m in settings.models)
        + ")"
    )


def _serve_time_notes(settings: Any) -> list[str]:
    """What ``serve`` will need on the machine it runs on (keys, a keys file, a Redis URL):
    reported, not failed, because the machine checking a file is often not that one."""
    from embedhost.security.admission import serve_time_problems
    from embedhost.security.keys import all_keys

    notes: list[str] = []
    try:
        keys = all_keys(settings)
    except ConfigError as exc:
        notes.append(f"serve will refuse to start here: {exc.message}")
        keys = None
    notes += [f"serve will refuse to start here: {p}" for p in serve_time_problems(settings, keys)]
    return notes


keys_cli = typer.Typer(help="API keys: create them (the config stores only their hashes).")


@keys_cli.command("create")
def keys_create(
    name: Annotated[str, typer.Option("--name", help="The key's id: in logs, metrics, limits.")],
    scopes: Annotated[
        str, typer.Option("--scopes", help="Comma-separated: embed, admin, metrics.")
    ] = "embed",
    models: Annotated[
        str | None, typer.Option("--models", help="Comma-separated models it may use (all).")
    ] = None,
) -> None:
    """Create a key: print it once, and the config entry (its hash) to add."""
    import yaml
    from pydantic import ValidationError

    from embedhost.config import validation_problems
    from embedhost.security.keys import new_key_entry

    scope_list = [x.strip() for x in scopes.split(",") if x.strip()]
    model_list = [x.strip() for x in models.split(",") if x.strip()] if models else None
    try:
        key, entry = new_key_entry(name, scope_list, model_list)  # type: ignore[arg-type]
    except ValidationError as exc:
        problems = "; ".join(f"{where}: {msg}" for where, msg in validation_problems(exc))
        typer.echo(f"invalid key: {problems}", err=True)
        raise typer.Exit(2) from None
    data = entry.model_dump(exclude_none=True, exclude_defaults=False)
    data.pop("revoked", None)
    typer.echo("API key (shown once; store it in your secret manager):\n")
    typer.echo(f"  {key}\n")
    typer.echo("Add this entry under auth.keys in the config, or to the auth.keys_file list:\n")
    typer.echo(yaml.safe_dump([data], sort_keys=False).rstrip())
    typer.echo("\nor in the environment (a JSON list; join several entries):\n")
    typer.echo(f"  EMBEDHOST_API_KEYS='{json.dumps([data])}'")


def version() -> None:
    """Print the version."""
    typer.echo(__version__)


def export_onnx_cmd(
    hf_dir: Annotated[
        str, typer.Argument(help="Hugging Face model directory (or pkg:PYTHON_PACKAGE).")
    ],
    out_dir: Annotated[Path, typer.Argument(help="Output directory, servable by engine onnx.")],
    optimize: Annotated[
        bool, typer.Option(help="Run ONNX Runtime's transformer optimizer on the export.")
    ] = False,
    opset: Annotated[int, typer.Option(help="ONNX opset version.")] = 18,
) -> None:
    """Export a Hugging Face model to ONNX (model.onnx + tokenizer + pooling config)."""
    from embedhost.engines.onnx_export import export_onnx
    from embedhost.modelfiles import resolve_model_path, sha256_of

    _setup_logging("warning")
    try:
        target = export_onnx(resolve_model_path(hf_dir), out_dir, optimize=optimize, opset=opset)
    except (ConfigError, FileNotFoundError, ImportError) as exc:
        typer.echo(getattr(exc, "message", str(exc)), err=True)
        raise typer.Exit(2) from None
    typer.echo(f"wrote {target} (sha256:{sha256_of(target)})")
    typer.echo(f"serve it with: engine: onnx, path: {out_dir}")
