"""The typer app: the top-level options and the commands, each defined in a module of its own.

The command modules import only what defines their options; each command imports the API it
calls (pyelftools, rich and the readers among it) when it runs, so that `--help` and every
other command start fast.
"""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from ffitool.cli import check, extract, inspect, pack
from ffitool.cli.blob import blob_app
from ffitool.cli.options import EXIT_CODES_HELP

app = typer.Typer(
    name="ffitool",
    help="Inspect and rewrite binaries that follow the Apache TVM FFI ABI, without loading them.",
    epilog=EXIT_CODES_HELP,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    # Inherited by every subcommand's context.
    context_settings={"help_option_names": ["-h", "--help"]},
)
app.add_typer(blob_app, name="blob")
app.command("inspect", epilog=EXIT_CODES_HELP)(inspect.inspect_command)
app.command("check", epilog=EXIT_CODES_HELP)(check.check_command)
app.command("pack", epilog=EXIT_CODES_HELP)(pack.pack_command)
app.command("extract", epilog=EXIT_CODES_HELP)(extract.extract_command)


def _print_version(requested: bool) -> None:
    """`--version`: the installed distribution's version, as pip reports it."""
    if not requested:
        return
    from importlib.metadata import PackageNotFoundError, version

    try:
        number = version("ffitool")
    except PackageNotFoundError:  # run from a source tree that was never installed
        from ffitool import __version__ as number
    sys.stdout.write(f"ffitool {number}\n")
    raise typer.Exit()


@app.callback()
def main_options(
    _version: Annotated[
        bool,
        typer.Option(
            "--version",
            callback=_print_version,
            is_eager=True,
            help="Print the version and exit.",
        ),
    ] = False,
) -> None:
    """Options before the command name; typer needs this callback to offer `--version`."""
