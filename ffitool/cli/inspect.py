"""`ffitool inspect`: its arguments; the body, which the fast route runs without typer, is
`ffitool.cli.inspect_run`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ffitool.cli.inspect_run import run_inspect
from ffitool.cli.options import TARGETS_HELP, JsonOption


def inspect_command(
    paths: Annotated[list[Path], typer.Argument(help=TARGETS_HELP)],
    as_json: JsonOption = False,
) -> None:
    """Show the FFI functions, special symbols and embedded module blob of each file."""
    raise typer.Exit(run_inspect(paths, as_json))
