"""Commands that call a running server's admin API over HTTP: ``models ...`` (versions,
promotion, rollback, split, shadow, reload) and ``cache clear``."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer

from embedhost import catalog

# --- embedhost models ... : the admin API over HTTP --------------------------------------

models_cli = typer.Typer(
    help="Model versions on a running server: list, load, promote, rollback, unload, split.",
    no_args_is_help=True,
)

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
    engine: Annotated[
        str, typer.Option(help=", ".join(catalog.names()) + ", or plugin:module:attr.")
    ] = catalog.DEFAULT_ENGINE,
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


# --- embedhost cache ... : the embedding cache of a running server -------------------------

cache_cli = typer.Typer(help="The embedding cache of a running server.", no_args_is_help=True)


@cache_cli.command("clear")
def cache_clear(
    model: Annotated[str | None, typer.Option(help="Only this model's entries.")] = None,
    version: Annotated[
        str | None, typer.Option(help="Only this version's entries (needs --model).")
    ] = None,
    url: UrlOpt = "http://127.0.0.1:8008",
    api_key: KeyOpt = None,
) -> None:
    """Clear the cache (the server's memory and the shared Redis): all, a model or a version."""
    if version is not None and model is None:
        raise typer.BadParameter("--version needs --model")
    from urllib.parse import urlencode

    query = urlencode({k: v for k, v in (("model", model), ("version", version)) if v})
    data = _admin("DELETE", url, "/cache" + (f"?{query}" if query else ""), api_key)
    redis_removed = data["redis_keys_removed"]
    typer.echo(
        f"cleared {data['memory_entries_removed']} in-process entries"
        + (f" and {redis_removed} Redis keys" if redis_removed is not None else "")
    )
