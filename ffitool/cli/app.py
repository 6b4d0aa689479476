"""Typer commands. Each one calls the API, then renders JSON or rich text; no logic of its own.

Heavy modules (pyelftools, rich) are imported inside the commands so that `--help` and
`--json` runs start fast.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from ffitool.errors import EXIT_BAD_INPUT, EXIT_OK, FfitoolError

EXIT_CODES_HELP = (
    "Exit codes (the same for every command): 0 success; 1 a check failed; 2 usage error; "
    "3 an input could not be read or is not a supported object file. A malformed blob inside "
    "a readable library is reported as findings and does not change the exit code of inspect."
)

app = typer.Typer(
    name="ffitool",
    help="Inspect and rewrite binaries that follow the Apache TVM FFI ABI, without loading them.",
    epilog=EXIT_CODES_HELP,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
blob_app = typer.Typer(
    help="Work on raw `__tvm_ffi__library_bin` blobs.",
    epilog=EXIT_CODES_HELP,
    no_args_is_help=True,
    rich_markup_mode=None,
)
app.add_typer(blob_app, name="blob")

JsonOption = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]


@app.command("inspect", epilog=EXIT_CODES_HELP)
def inspect_command(
    paths: Annotated[list[Path], typer.Argument(help="Libraries, objects or static archives.")],
    as_json: JsonOption = False,
) -> None:
    """Show the FFI functions, special symbols and embedded module blob of each file."""
    from ffitool.library import inspect_path

    inspected = []
    errors: list[tuple[str, str]] = []
    for path in paths:
        try:
            inspected.append(inspect_path(path))
        except FfitoolError as exc:
            errors.append((str(path), str(exc)))
    if as_json:
        from ffitool.report import inspect_document

        _print_json(inspect_document(inspected, errors))
    else:
        from ffitool.cli.render import print_inspected

        print_inspected(inspected)
    for _, message in errors:
        _print_error(message)
    raise typer.Exit(EXIT_BAD_INPUT if errors else EXIT_OK)


@blob_app.command("decode", epilog=EXIT_CODES_HELP)
def blob_decode_command(
    path: Annotated[
        Path, typer.Argument(help="A raw blob, as TVM's PackImportsToBytes writes it.")
    ],
    as_json: JsonOption = False,
) -> None:
    """Decode a raw blob file: modules, import tree, digests and findings."""
    from ffitool.library import inspect_blob_file

    try:
        report = inspect_blob_file(path)
    except FfitoolError as exc:
        _print_error(str(exc))
        raise typer.Exit(exc.exit_code) from None
    if as_json:
        from ffitool.report import blob_document

        _print_json(blob_document(report))
    else:
        from ffitool.cli.render import print_blob_report

        print_blob_report(report)


def _print_json(document: object) -> None:
    sys.stdout.write(json.dumps(document, indent=2) + "\n")


def _print_error(message: str) -> None:
    sys.stderr.write(f"ffitool: error: {message}\n")


def main() -> None:
    """Console-script entry point."""
    app(prog_name="ffitool")
