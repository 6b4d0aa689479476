"""`ffitool blob decode|encode|emit-c`: raw `__tvm_ffi__library_bin` blobs, outside a library."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from ffitool.cli.options import EXIT_CODES_HELP, JsonOption
from ffitool.cli.output import print_json, reported
from ffitool.findings import printable
from ffitool.staging import STDOUT
from ffitool.units import format_size

blob_app = typer.Typer(
    help="Work on raw `__tvm_ffi__library_bin` blobs.",
    epilog=EXIT_CODES_HELP,
    no_args_is_help=True,
    rich_markup_mode=None,
)


@blob_app.command("decode", epilog=EXIT_CODES_HELP)
def blob_decode_command(
    path: Annotated[
        Path, typer.Argument(help="A raw blob, as TVM's PackImportsToBytes writes it.")
    ],
    as_json: JsonOption = False,
) -> None:
    """Decode a raw blob file: modules, import tree, digests and findings."""
    from ffitool.library import inspect_blob_file

    with reported():
        report = inspect_blob_file(path)
    if as_json:
        from ffitool.report import blob_document

        print_json(blob_document(report, lazy=True))
    else:
        from ffitool.cli.render import print_blob_report

        print_blob_report(report)


@blob_app.command("encode", epilog=EXIT_CODES_HELP)
def blob_encode_command(
    manifest: Annotated[Path, typer.Argument(help="An ffitool.manifest/1 file.")],
    output: Annotated[
        Path, typer.Option("-o", "--output", help="The raw blob to write (- for stdout).")
    ],
) -> None:
    """Write the raw blob a manifest describes."""
    from ffitool.edit.plan import plan_from_modules
    from ffitool.emit import write_raw_blob
    from ffitool.manifest import read_manifest

    with reported():
        size = write_raw_blob(plan_from_modules(read_manifest(manifest)), output)
    (sys.stderr if output == STDOUT else sys.stdout).write(
        f"wrote {format_size(size)} to {printable(str(output))}\n"
    )


@blob_app.command("emit-c", epilog=EXIT_CODES_HELP)
def blob_emit_c_command(
    manifest: Annotated[Path, typer.Argument(help="An ffitool.manifest/1 file.")],
    output: Annotated[
        Path, typer.Option("-o", "--output", help="The C file to write (- for stdout).")
    ],
    symbol_prefix: Annotated[
        str, typer.Option("--symbol-prefix", help="C symbol prefix of a system library.")
    ] = "",
    system_lib: Annotated[
        bool,
        typer.Option("--system-lib", help="Register with TVMFFIEnvModRegisterSystemLibSymbol."),
    ] = False,
) -> None:
    """Write C source defining the blob symbol, for toolchains that can still link."""
    from ffitool.edit.plan import plan_from_modules
    from ffitool.emit import write_c_source
    from ffitool.manifest import read_manifest

    with reported(manifest):
        plan = plan_from_modules(read_manifest(manifest))
        size = write_c_source(plan, output, symbol_prefix, system_lib)
    summary = sys.stderr if output == STDOUT else sys.stdout
    summary.write(f"wrote a {format_size(size)} blob as C to {printable(str(output))}\n")
