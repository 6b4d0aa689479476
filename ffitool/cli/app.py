"""Typer commands. Each one calls the API, then renders JSON or rich text; no logic of its own.

Heavy modules (pyelftools, rich) are imported inside the commands so that `--help` and
`--json` runs start fast.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import typer

from ffitool.cli.main import main as entry_main
from ffitool.cli.main import print_error, print_json, print_warning, run_inspect
from ffitool.errors import FfitoolError, UsageError
from ffitool.findings import printable
from ffitool.staging import STDOUT
from ffitool.units import format_size

EXIT_CODES_HELP = (
    "Exit codes (the same for every command): 0 success; 1 a check failed; 2 usage error; "
    "3 an input could not be read or is not a supported object file, or an output could not "
    "be written or failed verification (the input is then unchanged); 141 the reader of the "
    "output closed it (| head). A malformed blob inside a readable library is reported as "
    "findings and does not change the exit code of inspect."
)

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
blob_app = typer.Typer(
    help="Work on raw `__tvm_ffi__library_bin` blobs.",
    epilog=EXIT_CODES_HELP,
    no_args_is_help=True,
    rich_markup_mode=None,
)
app.add_typer(blob_app, name="blob")

JsonOption = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]
TARGETS_HELP = (
    "Libraries, objects, static archives, wheels (.whl) or directories (walked recursively;"
    " object files recognised by content)."
)


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


@app.command("inspect", epilog=EXIT_CODES_HELP)
def inspect_command(
    paths: Annotated[list[Path], typer.Argument(help=TARGETS_HELP)],
    as_json: JsonOption = False,
) -> None:
    """Show the FFI functions, special symbols and embedded module blob of each file."""
    raise typer.Exit(run_inspect(paths, as_json))


@app.command("check", epilog=EXIT_CODES_HELP)
def check_command(
    paths: Annotated[list[Path] | None, typer.Argument(help=TARGETS_HELP)] = None,
    output_format: Annotated[
        str, typer.Option("--format", metavar="text|json|sarif|github", help="Output format.")
    ] = "text",
    require_function: Annotated[
        list[str] | None,
        typer.Option("--require-function", metavar="NAME", help="Must export __tvm_ffi_NAME."),
    ] = None,
    require_kind: Annotated[
        list[str] | None,
        typer.Option("--require-kind", metavar="KIND", help="A module of KIND must be embedded."),
    ] = None,
    allow_kind: Annotated[
        list[str] | None,
        typer.Option("--allow-kind", metavar="KIND", help="Only these module kinds (and _lib)."),
    ] = None,
    max_blob_size: Annotated[
        str | None, typer.Option("--max-blob-size", metavar="SIZE", help="e.g. 64MiB.")
    ] = None,
    require_ffi: Annotated[
        bool | None,
        typer.Option("--require-ffi/--no-require-ffi", help="Fail files without FFI symbols."),
    ] = None,
    select: Annotated[
        list[str] | None,
        typer.Option("--select", metavar="CODES", help="Report only these codes or prefixes."),
    ] = None,
    ignore: Annotated[
        list[str] | None,
        typer.Option("--ignore", metavar="CODES", help="Do not report these codes or prefixes."),
    ] = None,
    strict: Annotated[
        bool | None, typer.Option("--strict/--no-strict", help="Warnings fail too.")
    ] = None,
    config: Annotated[
        Path | None,
        typer.Option("--config", help="Read [tool.ffitool.check] from this file."),
    ] = None,
    jobs: Annotated[
        int,
        typer.Option("--jobs", "-j", min=0, help="Worker processes (0: one per core, up to 8)."),
    ] = 0,
    list_rules: Annotated[
        bool, typer.Option("--list-rules", help="List every rule and exit.")
    ] = False,
    explain: Annotated[
        str | None, typer.Option("--explain", metavar="CODE", help="Explain one rule and exit.")
    ] = None,
) -> None:
    """Check libraries for CI: exit 1 when a finding fails (errors; warnings with --strict)."""
    from ffitool.check_config import resolve
    from ffitool.cli import check as checking
    from ffitool.rules import RULES

    with _reported():
        if list_rules:
            checking.print_rules()
            return
        if explain is not None:
            if explain.upper() not in RULES:
                raise UsageError(f"--explain {explain!r}: no rule has this code")
            sys.stdout.write(checking.explain(explain.upper()))
            return
        if output_format not in checking.FORMATS:
            raise UsageError(
                f"--format {output_format!r}: choose one of {', '.join(checking.FORMATS)}"
            )
        if not paths:
            raise UsageError("nothing to check: give files or directories")
        given = {
            "require-function": require_function,
            "require-kind": require_kind,
            "allow-kind": allow_kind,
            "max-blob-size": max_blob_size,
            "require-ffi": require_ffi,
            "select": _comma_list(select),
            "ignore": _comma_list(ignore),
            "strict": strict,
        }
        settings = resolve(given, config, search_from=Path.cwd())
        code = checking.run_check(paths, settings, output_format, jobs)
    raise typer.Exit(code)


def _comma_list(values: list[str] | None) -> list[str] | None:
    """`--select B1,L101 --select R` -> ["B1", "L101", "R"], as ruff spells selections."""
    if values is None:
        return None
    return [part.strip() for value in values for part in value.split(",") if part.strip()]


@blob_app.command("decode", epilog=EXIT_CODES_HELP)
def blob_decode_command(
    path: Annotated[
        Path, typer.Argument(help="A raw blob, as TVM's PackImportsToBytes writes it.")
    ],
    as_json: JsonOption = False,
) -> None:
    """Decode a raw blob file: modules, import tree, digests and findings."""
    from ffitool.library import inspect_blob_file

    with _reported():
        report = inspect_blob_file(path)
    if as_json:
        from ffitool.report import blob_document

        print_json(blob_document(report, lazy=True))
    else:
        from ffitool.cli.render import print_blob_report

        print_blob_report(report)


@app.command("pack", epilog=EXIT_CODES_HELP)
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
    from ffitool.manifest import read_manifest
    from ffitool.pack import SIGNATURE_MODES, existing_modules, pack_library, payload_source
    from ffitool.pack.plan import Edits, plan_edits, plan_from_modules, validate_kind
    from ffitool.pack.stream import blob_size

    edits_given = bool(add or replace or remove or parent is not None or cascade)
    arches = tuple(arch or ())
    with _reported(library):
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


@app.command("extract", epilog=EXIT_CODES_HELP)
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
) -> None:
    """Write each module's payload to DIR and a manifest.json describing the tree."""
    from ffitool.manifest import extract

    with _reported():
        result = extract(library, directory, symbol_prefix, force)
    sys.stdout.write(f"wrote {len(result.files)} payloads and {printable(str(result.manifest))}\n")


@blob_app.command("encode", epilog=EXIT_CODES_HELP)
def blob_encode_command(
    manifest: Annotated[Path, typer.Argument(help="An ffitool.manifest/1 file.")],
    output: Annotated[
        Path, typer.Option("-o", "--output", help="The raw blob to write (- for stdout).")
    ],
) -> None:
    """Write the raw blob a manifest describes."""
    from ffitool.emit import write_raw_blob
    from ffitool.manifest import read_manifest
    from ffitool.pack.plan import plan_from_modules

    with _reported():
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
    from ffitool.emit import write_c_source
    from ffitool.manifest import read_manifest
    from ffitool.pack.plan import plan_from_modules

    with _reported(manifest):
        plan = plan_from_modules(read_manifest(manifest))
        size = write_c_source(plan, output, symbol_prefix, system_lib)
    summary = sys.stderr if output == STDOUT else sys.stdout
    summary.write(f"wrote a {format_size(size)} blob as C to {printable(str(output))}\n")


def _split_spec(spec: str, option: str) -> tuple[str, str]:
    """`KIND:FILE` -> (KIND, FILE); kinds contain no ':', so the first one separates."""
    selector, colon, path = spec.partition(":")
    if not colon or not selector or not path:
        raise UsageError(f"{option} '{printable(spec)}': expected KIND:FILE")
    return selector, path


@contextlib.contextmanager
def _reported(subject: Path | None = None) -> Iterator[None]:
    """An FfitoolError becomes its one-line message on stderr and its exit code.

    `subject` is the file the command works on: usage errors, which name an option rather than
    a file (`--remove 2 would orphan ...`), are prefixed with it so that every error reads
    `ffitool: error: PATH: what went wrong`.
    """
    try:
        yield
    except FfitoolError as exc:
        message = str(exc)
        if subject is not None and isinstance(exc, UsageError):
            message = f"{subject}: {message}"
        print_error(message)
        raise typer.Exit(exc.exit_code) from None


def main() -> None:
    """The entry point installed before `ffitool.cli.main` existed; both run the same app."""
    entry_main()
