"""The ``embedhost`` command.

Commands that run here, without a server (:mod:`.local`): serve, check-config, keys create,
export-onnx, version.
``embed`` (:mod:`.embed`): texts or a corpus file (:mod:`.corpus`), against a server or
in-process with ``--local``.
Commands that call a running server's admin API (:mod:`.admin`): models ..., cache clear.
``loadtest`` (:mod:`.loadtest`): load against any OpenAI-compatible embeddings endpoint.
"""

from __future__ import annotations

import typer

from embedhost.cli import admin, embed, loadtest, local

cli = typer.Typer(
    name="embedhost",
    help="A production server for text-embedding models.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
cli.command()(local.serve)
cli.command("check-config")(local.check_config)
cli.command()(embed.embed)
cli.add_typer(local.keys_cli, name="keys")
cli.command()(local.version)
cli.command("export-onnx")(local.export_onnx_cmd)
cli.add_typer(admin.models_cli, name="models")
cli.command()(loadtest.loadtest)
cli.add_typer(admin.cache_cli, name="cache")


def main() -> None:
    import sys

    cli(embed.optional_ray_address(sys.argv[1:]))
