"""The ``embedhost`` command.

Local commands (:mod:`.local`): serve, check-config, keys create, export-onnx, version.
Remote commands (:mod:`.remote`), which call a running server: embed, models ..., cache clear.
``loadtest`` (:mod:`.loadtest`): load against any OpenAI-compatible embeddings endpoint.
"""

from __future__ import annotations

import typer

from embedhost.cli import loadtest, local, remote

cli = typer.Typer(
    name="embedhost",
    help="A production server for text-embedding models.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
cli.command()(local.serve)
cli.command("check-config")(local.check_config)
cli.command()(remote.embed)
cli.add_typer(local.keys_cli, name="keys")
cli.command()(local.version)
cli.command("export-onnx")(local.export_onnx_cmd)
cli.add_typer(remote.models_cli, name="models")
cli.command()(loadtest.loadtest)
cli.add_typer(remote.cache_cli, name="cache")


def main() -> None:
    cli()
