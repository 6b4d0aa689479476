"""`ffitool extract`: a library's module payloads and a manifest.json, written to a directory."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from ffitool.cli.output import reported
from ffitool.errors import UsageError
from ffitool.findings import printable


def extract_command(
    library: Annotated[Path, typer.Argument(help="A library with a blob.")],
    directory: Annotated[Path, typer.Option("-d", "--directory", help="Where to write.")],
    symbol_prefix: Annotated[
        str | None,
        typer.Option(
            "--symbol-prefix",
            help="Extract <P>__tvm_ffi__library_bin, a system-lib blob (default: the plain"
            " blob, else the only system-lib blob).",
        ),
    ] = None,
    force: Annotated[
        bool,
        typer.Option(
            "--force",
            help="Write into a directory that is not empty, replacing manifest.json and the"
            " NNN-kind.bin files (earlier ones too); other files stay.",
        ),
    ] = False,
    cubins: Annotated[
        bool,
        typer.Option(
            "--cubins",
            help="Write the embedded cubins (__tvm_ffi__cubin_<name>) instead, as"
            " <name>.cubin, .fatbin or .ptx by content; no manifest.",
        ),
    ] = False,
) -> None:
    """Write each module's payload to DIR and a manifest.json describing the tree."""
    from ffitool.manifest import extract, extract_cubins

    with reported():
        if cubins:
            if symbol_prefix is not None:
                raise UsageError("--symbol-prefix picks a blob; --cubins extracts no blob")
            files = extract_cubins(library, directory, force)
            sys.stdout.write(f"wrote {len(files)} embedded cubins to {printable(str(directory))}\n")
            return
        result = extract(library, directory, symbol_prefix, force)
    sys.stdout.write(f"wrote {len(result.files)} payloads and {printable(str(result.manifest))}\n")
