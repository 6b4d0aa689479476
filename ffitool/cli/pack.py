"""`ffitool pack`: embed, replace or remove module blobs in a library, verified before renaming."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from ffitool.cli.output import print_warning, reported
from ffitool.errors import UsageError
from ffitool.findings import printable
from ffitool.staging import STDOUT
from ffitool.units import format_size


def pack_command(
    library: Annotated[Path, typer.Argument(help="The shared library to rewrite.")],
    add: Annotated[
        list[str] | None, typer.Option("--add", metavar="KIND:FILE", help="Embed FILE as a module.")
    ] = None,
    replace: Annotated[
        list[str] | None,
        typer.Option("--replace", metavar="KIND|INDEX:FILE", help="Swap one module's payload."),
    ] = None,
    remove: Annotated[
        list[str] | None, typer.Option("--remove", metavar="KIND|INDEX", help="Drop a module.")
    ] = None,
    parent: Annotated[
        int | None, typer.Option("--parent", help="Module that imports the added ones.")
    ] = None,
    cascade: Annotated[
        bool, typer.Option("--cascade", help="Also remove modules a removal would orphan.")
    ] = False,
    manifest: Annotated[
        Path | None, typer.Option("--manifest", help="Replace the blob with a manifest's.")
    ] = None,
    output: Annotated[
        Path | None,
        typer.Option("-o", "--output", help="Write here (- for stdout) instead of in place."),
    ] = None,
    arch: Annotated[
        list[str] | None,
        typer.Option(
            "--arch", metavar="ARCH", help="Mach-O: pack only this slice (x86_64, arm64)."
        ),
    ] = None,
    signature: Annotated[
        str,
        typer.Option(
            "--signature",
            metavar="adhoc|remove",
            help="Mach-O: sign each packed slice again ad hoc (default) or leave it unsigned.",
        ),
    ] = "adhoc",
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the plan only.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", help="No progress bar or summary.")] = False,
) -> None:
    """Embed, replace or remove module blobs in an ELF shared library, a Mach-O dylib or
    bundle (thin or universal) or a Windows DLL, verified before renaming."""
    from ffitool.cli.render import print_plan, progress_bar
    from ffitool.edit.plan import Edits, plan_edits, plan_from_modules, validate_kind
    from ffitool.edit.stream import blob_size
    from ffitool.manifest import read_manifest
    from ffitool.pack import SIGNATURE_MODES, existing_modules, pack_library, payload_source

    edits_given = bool(add or replace or remove or parent is not None or cascade)
    arches = tuple(arch or ())
    with reported(library):
        if signature not in SIGNATURE_MODES:
            raise UsageError(f"--signature must be one of {', '.join(SIGNATURE_MODES)}")
        if manifest is not None and edits_given:
            raise UsageError("--manifest replaces the whole blob; it cannot be combined with edits")
        if manifest is None and not edits_given:
            raise UsageError("nothing to do: give --add, --replace, --remove or --manifest")
        if not (add or replace or remove) and manifest is None:
            raise UsageError("--parent and --cascade only qualify --add and --remove")
        if manifest is not None:
            plan = plan_from_modules(read_manifest(manifest))
        else:
            additions = []
            for spec in add or []:
                kind, path = _split_spec(spec, "--add")
                additions.append((validate_kind(kind), path))
            swaps = [_split_spec(spec, "--replace") for spec in replace or []]
            edits = Edits(
                add=tuple((kind, payload_source(path)) for kind, path in additions),
                replace=tuple((selector, payload_source(path)) for selector, path in swaps),
                remove=tuple(remove or ()),
                parent=parent,
                cascade=cascade,
            )
            plan = plan_edits(existing_modules(library, arches), edits)
        size = blob_size(plan)
        if dry_run:
            print_plan(library, output or library, plan, size)
            return
        with progress_bar(size, enabled=not quiet) as progress:
            result = pack_library(
                library, plan, output, progress, arches=arches, signature=signature
            )
    for warning in result.warnings:
        print_warning(f"{library}: {warning}")
    if not quiet:
        summary = sys.stderr if output == STDOUT else sys.stdout  # stdout holds the library
        summary.write(
            f"packed {len(plan.modules)} modules ({format_size(size)})"
            f" into {printable(str(result.destination))}\n"
        )


def _split_spec(spec: str, option: str) -> tuple[str, str]:
    """`KIND:FILE` -> (KIND, FILE); kinds contain no ':', so the first one separates."""
    selector, colon, path = spec.partition(":")
    if not colon or not selector or not path:
        raise UsageError(f"{option} '{printable(spec)}': expected KIND:FILE")
    return selector, path
