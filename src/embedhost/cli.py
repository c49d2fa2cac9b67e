"""The ``embedhost`` command: serve, check-config, embed, version."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from embedhost import __version__
from embedhost.errors import ConfigError

cli = typer.Typer(
    name="embedhost",
    help="A production server for text-embedding models.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

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


@cli.command()
def serve(
    config: ConfigOpt = None,
    host: Annotated[str | None, typer.Option(help="Bind address (server.host).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (server.port).")] = None,
    log_level: Annotated[str | None, typer.Option(help="debug, info, warning, error.")] = None,
) -> None:
    """Start the HTTP server."""
    import uvicorn

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
    from embedhost.server import EmbedhostServer

    setup_logging(settings.server.log_level, settings.server.log_format)
    s = settings.server
    try:
        app = create_app(settings)
        app.state.config_path = config  # SIGHUP and POST /admin/reload re-read it
    except ConfigError as exc:
        typer.echo(exc.message, err=True)
        raise typer.Exit(2) from None
    from embedhost.server import header_timeout_protocol

    tls: dict[str, Any] = {}
    if s.ssl_certfile and s.ssl_keyfile:
        tls = {
            "ssl_certfile": s.ssl_certfile,
            "ssl_keyfile": s.ssl_keyfile,
            "ssl_keyfile_password": (
                s.ssl_keyfile_password.get_secret_value() if s.ssl_keyfile_password else None
            ),
        }
    uv = uvicorn.Config(
        app,
        host=s.host,
        port=s.port,
        log_config=None,
        log_level=s.log_level,
        access_log=s.access_log,
        timeout_keep_alive=int(s.timeout_keep_alive_s),
        timeout_graceful_shutdown=int(s.graceful_shutdown_s),
        lifespan="on",
        # X-Forwarded-For is ours to judge (server.trusted_proxies), not uvicorn's.
        proxy_headers=False,
        forwarded_allow_ips=None,
        server_header=False,
        http=header_timeout_protocol(s.timeout_header_read_s),
        **tls,
    )
    logging.getLogger(__name__).info(
        "embedhost %s serving %s on %s://%s:%d",
        __version__,
        ", ".join(m.ref for m in settings.models),
        "https" if tls else "http",
        s.host,
        s.port,
    )
    EmbedhostServer(uv, app.state, s.shutdown_delay_s).run()


@cli.command("check-config")
def check_config(
    file: Annotated[Path, typer.Argument(help="YAML config file to validate.")],
    verify_checksums: Annotated[
        bool, typer.Option(help="Hash the model files and compare with their checksums.")
    ] = True,
) -> None:
    """Validate a config file (and the model files it names) without serving."""
    from embedhost.config import load_settings, quantization_warnings, verify_checksum

    _setup_logging("warning")
    try:
        settings = load_settings(file)
        if verify_checksums:
            for m in settings.models:
                verify_checksum(m)
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


@cli.command()
def embed(
    texts: Annotated[list[str], typer.Argument(help="Texts to embed.")],
    url: Annotated[str, typer.Option(help="Server base URL.")] = "http://127.0.0.1:8008",
    model: Annotated[str | None, typer.Option(help="Model name.")] = None,
    api_key: Annotated[
        str | None,
        typer.Option(envvar="EMBEDHOST_API_KEY", help="API key, if the server needs one."),
    ] = None,
) -> None:
    """Embed texts with a running server and print the JSON answer."""
    import httpx

    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    body: dict[str, Any] = {"input": texts}
    if model:
        body["model"] = model
    r = httpx.post(f"{url.rstrip('/')}/v1/embeddings", json=body, headers=headers, timeout=60)
    typer.echo(json.dumps(r.json()))
    if r.status_code >= 400:
        raise typer.Exit(1)


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
cli.add_typer(keys_cli, name="keys")


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

    from embedhost.security.keys import new_key_entry

    scope_list = [x.strip() for x in scopes.split(",") if x.strip()]
    model_list = [x.strip() for x in models.split(",") if x.strip()] if models else None
    try:
        key, entry = new_key_entry(name, scope_list, model_list)  # type: ignore[arg-type]
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
        )
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


@cli.command()
def version() -> None:
    """Print the version."""
    typer.echo(__version__)


def main() -> None:
    cli()


@cli.command("export-onnx")
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
    from embedhost.config import resolve_model_path, sha256_of
    from embedhost.engines.onnx import export_onnx

    _setup_logging("warning")
    try:
        target = export_onnx(resolve_model_path(hf_dir), out_dir, optimize=optimize, opset=opset)
    except (ConfigError, FileNotFoundError, ImportError) as exc:
        typer.echo(getattr(exc, "message", str(exc)), err=True)
        raise typer.Exit(2) from None
    typer.echo(f"wrote {target} (sha256:{sha256_of(target)})")
    typer.echo(f"serve it with: engine: onnx, path: {out_dir}")


# --- embedhost models ... : the admin API over HTTP --------------------------------------

models_cli = typer.Typer(
    help="Model versions on a running server: list, load, promote, rollback, unload, split.",
    no_args_is_help=True,
)
cli.add_typer(models_cli, name="models")

UrlOpt = Annotated[str, typer.Option(envvar="EMBEDHOST_URL", help="Server base URL.")]
KeyOpt = Annotated[
    str | None,
    typer.Option(envvar="EMBEDHOST_API_KEY", help="API key with the admin scope."),
]


def _admin(method: str, url: str, path: str, api_key: str | None, body: Any = None) -> Any:
    """One admin call; prints the server's error and exits 1 on failure."""
    import httpx

    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        r = httpx.request(
            method,
            f"{url.rstrip('/')}/admin{path}",
            json=body,
            headers=headers,
            timeout=httpx.Timeout(10, read=900),  # a load with --wait lasts as long as it lasts
        )
    except httpx.HTTPError as exc:
        typer.echo(f"error: cannot reach {url}: {exc}", err=True)
        raise typer.Exit(1) from None
    try:
        data = r.json()
    except ValueError:
        data = {"error": {"message": r.text}}
    if r.status_code >= 400:
        msg = data.get("error", {}).get("message", r.text) if isinstance(data, dict) else r.text
        typer.echo(f"error ({r.status_code}): {msg}", err=True)
        raise typer.Exit(1)
    return data


def _print_versions(groups: list[dict[str, Any]]) -> None:
    rows = [("MODEL", "VERSION", "STATE", "ROLE", "TRAFFIC", "REQUESTS", "ERRORS", "P50_MS")]
    for g in groups:
        shadow = (g.get("shadow") or {}).get("version")
        for v in g["versions"]:
            role = (
                "current"
                if v["version"] == g["current"]
                else "shadow"
                if v["version"] == shadow
                else ""
            )
            traffic = g["traffic"].get(v["version"])
            stats = v["stats"]
            rows.append(
                (
                    g["name"],
                    v["version"],
                    v["status"],
                    role,
                    "" if traffic is None else f"{traffic:g}",
                    str(stats["requests"]),
                    str(stats["errors"]),
                    str(stats["latency"].get("p50_ms", "")),
                )
            )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        typer.echo("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())


@models_cli.command("list")
def models_list(
    url: UrlOpt = "http://127.0.0.1:8008",
    api_key: KeyOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the raw JSON.")] = False,
) -> None:
    """Every model, its versions, their states, the split and per-version stats."""
    data = _admin("GET", url, "/models", api_key)
    if as_json:
        typer.echo(json.dumps(data, indent=2))
    else:
        _print_versions(data["models"])


@models_cli.command("load")
def models_load(
    name: Annotated[str, typer.Argument(help="Model name (new or existing).")],
    path: Annotated[str, typer.Argument(help="Model directory, .gguf file, or pkg:NAME.")],
    version: Annotated[str, typer.Option(help="The new version's label.")],
    engine: Annotated[str, typer.Option(help="transformers, llama_cpp, onnx.")] = "transformers",
    checksum: Annotated[str | None, typer.Option(help="sha256:<hex> or manifest:FILE.")] = None,
    dtype: Annotated[str | None, typer.Option(help="auto, float32, bfloat16, float16.")] = None,
    quantization: Annotated[str | None, typer.Option(help="GGUF quantization.")] = None,
    replicas: Annotated[int | None, typer.Option(help="Worker processes.")] = None,
    device: Annotated[str | None, typer.Option(help="cpu, cuda, cuda:N, mps.")] = None,
    option: Annotated[
        list[str] | None, typer.Option(help="Engine option KEY=VALUE (JSON values allowed).")
    ] = None,
    promote: Annotated[bool, typer.Option(help="Make it current once ready.")] = False,
    wait: Annotated[bool, typer.Option(help="Wait until it is ready or failed.")] = True,
    url: UrlOpt = "http://127.0.0.1:8008",
    api_key: KeyOpt = None,
) -> None:
    """Load a new version (checksum verified, warmed) beside the current one."""
    body: dict[str, Any] = {"version": version, "path": path, "engine": engine}
    for key, value in (
        ("checksum", checksum),
        ("dtype", dtype),
        ("quantization", quantization),
        ("replicas", replicas),
        ("device", device),
    ):
        if value is not None:
            body[key] = value
    if option:
        body["engine_options"] = dict(_key_value(o) for o in option)
    body.update(promote=promote, wait=wait)
    data = _admin("POST", url, f"/models/{name}/versions", api_key, body)
    typer.echo(f"{data['ref']}: {data['status']}" + (" (promoted)" if promote and wait else ""))


def _key_value(text: str) -> tuple[str, Any]:
    key, sep, raw = text.partition("=")
    if not sep:
        raise typer.BadParameter(f"{text!r}: expected KEY=VALUE")
    try:
        return key, json.loads(raw)
    except ValueError:
        return key, raw


@models_cli.command("promote")
def models_promote(
    name: str,
    version: str,
    keep_previous: Annotated[
        bool | None, typer.Option(help="Keep the old version loaded for rollback.")
    ] = None,
    url: UrlOpt = "http://127.0.0.1:8008",
    api_key: KeyOpt = None,
) -> None:
    """Make a ready version current; the previous one drains and stops."""
    body = {"version": version, "keep_previous": keep_previous, "wait": True}
    data = _admin("POST", url, f"/models/{name}/promote", api_key, body)
    typer.echo(f"{name}: current {data['current']} (previous {data['previous']})")


@models_cli.command("rollback")
def models_rollback(
    name: str, url: UrlOpt = "http://127.0.0.1:8008", api_key: KeyOpt = None
) -> None:
    """Back to the previous current version (reloaded if it was stopped)."""
    data = _admin("POST", url, f"/models/{name}/rollback", api_key, {"wait": True})
    typer.echo(f"{name}: current {data['current']}")


@models_cli.command("unload")
def models_unload(
    name: str, version: str, url: UrlOpt = "http://127.0.0.1:8008", api_key: KeyOpt = None
) -> None:
    """Drain and stop a version that is not current."""
    data = _admin("DELETE", url, f"/models/{name}/versions/{version}?wait=true", api_key)
    typer.echo(f"{data['ref']}: {data['status']}")


@models_cli.command("split")
def models_split(
    name: str,
    weights: Annotated[
        list[str] | None, typer.Argument(help="VERSION=WEIGHT ..., e.g. 1=90 2=10; none clears.")
    ] = None,
    url: UrlOpt = "http://127.0.0.1:8008",
    api_key: KeyOpt = None,
) -> None:
    """Sticky A/B weights between versions of one model."""
    parsed: dict[str, float] = {}
    for w in weights or []:
        version, _, value = w.partition("=")
        try:
            parsed[version] = float(value)
        except ValueError:
            raise typer.BadParameter(f"{w!r}: expected VERSION=WEIGHT") from None
    data = _admin("PUT", url, f"/models/{name}/split", api_key, {"weights": parsed})
    typer.echo(f"{name}: traffic {data['traffic'] or 'all to ' + data['current']}")


@models_cli.command("shadow")
def models_shadow(
    name: str,
    version: Annotated[
        str | None, typer.Argument(help="Candidate version; omit to turn off.")
    ] = None,
    rate: Annotated[float, typer.Option(help="Share of requests mirrored.")] = 1.0,
    url: UrlOpt = "http://127.0.0.1:8008",
    api_key: KeyOpt = None,
) -> None:
    """Mirror traffic to a candidate version (its answers are only compared, never returned)."""
    body = {"version": version, "sample_rate": rate}
    data = _admin("PUT", url, f"/models/{name}/shadow", api_key, body)
    typer.echo(f"{name}: shadow {(data['shadow'] or {}).get('version', 'off')}")


@models_cli.command("reload")
def models_reload(url: UrlOpt = "http://127.0.0.1:8008", api_key: KeyOpt = None) -> None:
    """Re-read the server's config file and apply the difference (as SIGHUP does)."""
    typer.echo(json.dumps(_admin("POST", url, "/reload", api_key), indent=2))
