"""`ffitool check`: its options, the settings they make, and the outcome in one of four formats.

Text output goes through rich for colour on a terminal and is never wrapped: a path or a
symbol name stays on one line, so piping it to grep finds it. The modules that read and check
the targets are imported when the command runs, so that the app's other commands start fast.
"""

from __future__ import annotations

import itertools
import sys
from collections.abc import Sequence
from contextlib import closing
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from ffitool.cli.options import TARGETS_HELP
from ffitool.cli.output import print_error, print_json, print_note, reported
from ffitool.errors import UsageError
from ffitool.findings import Severity, printable

if TYPE_CHECKING:
    from ffitool.check_config import CheckSettings
    from ffitool.check_report import CheckOutcome

FORMATS = ("text", "json", "sarif", "github")


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
    require_arch: Annotated[
        list[str] | None,
        typer.Option(
            "--require-arch",
            metavar="ARCH",
            help="Device code must run on ARCH (sm_90, sm_90a; repeat or comma list).",
        ),
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
    from ffitool.rules import RULES

    with reported():
        if list_rules:
            print_rules()
            return
        if explain is not None:
            if explain.upper() not in RULES:
                raise UsageError(f"--explain {explain!r}: no rule has this code")
            sys.stdout.write(explanation(explain.upper()))
            return
        if output_format not in FORMATS:
            raise UsageError(f"--format {output_format!r}: choose one of {', '.join(FORMATS)}")
        if not paths:
            raise UsageError("nothing to check: give files or directories")
        given = {
            "require-function": require_function,
            "require-kind": require_kind,
            "allow-kind": allow_kind,
            "require-arch": require_arch,
            "max-blob-size": max_blob_size,
            "require-ffi": require_ffi,
            "select": _comma_list(select),
            "ignore": _comma_list(ignore),
            "strict": strict,
        }
        settings = resolve(given, config, search_from=Path.cwd())
        code = run_check(paths, settings, output_format, jobs)
    raise typer.Exit(code)


def _comma_list(values: list[str] | None) -> list[str] | None:
    """`--select B1,L101 --select R` -> ["B1", "L101", "R"], as ruff spells selections."""
    if values is None:
        return None
    return [part.strip() for value in values for part in value.split(",") if part.strip()]


def run_check(
    paths: Sequence[Path], settings: CheckSettings, output_format: str, jobs: int = 0
) -> int:
    """Check every target, print the outcome in `output_format`; returns the exit code."""
    from ffitool.check_report import CheckOutcome, check_document, github_lines, sarif_document
    from ffitool.checks import nothing_found
    from ffitool.cli.check_workers import checked_sources
    from ffitool.targets import Skipped

    outcome = CheckOutcome(settings)
    with closing(checked_sources(paths, settings.requirements, jobs)) as every:
        for origin, sources in itertools.groupby(every, key=lambda checked: checked[0]):
            found = False  # a file under this path was checked, or could not be read
            for path, result in (checked for _, results in sources for checked in results):
                if isinstance(result, Skipped):
                    outcome.skipped.append((path, result.reason))
                    print_note(f"{path}: skipped: {result.reason}")
                elif isinstance(result, str):
                    outcome.unreadable.append((path, result))
                    found = True
                else:
                    outcome.add(path, result)
                    found = True
            given = str(paths[origin])
            if not found and (missing := nothing_found(given, settings.requirements)):
                outcome.add(given, missing)
    if output_format == "json":
        print_json(check_document(outcome))
    elif output_format == "sarif":
        print_json(sarif_document(outcome, _version()))
    elif output_format == "github":
        sys.stdout.writelines(f"{line}\n" for line in github_lines(outcome))
    else:
        _print_text(outcome)
    for _, error in outcome.unreadable:
        print_error(error)
    return outcome.exit_code


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("ffitool")
    except PackageNotFoundError:
        return "0+unknown"


_STYLES = {Severity.ERROR: "bold red", Severity.WARNING: "yellow", Severity.INFO: "cyan"}


def _print_text(outcome: CheckOutcome) -> None:
    """Findings grouped by target, then one summary line; files without findings are counted."""
    from rich.text import Text

    from ffitool.cli.render import output_console

    console = output_console()
    for path, items in outcome.checked:
        if not items:
            continue
        console.print(Text(printable(path), style="bold"), soft_wrap=True)
        for item in items:
            found = item.finding
            line = Text("  ")
            line.append(found.code, style=_STYLES[found.severity])
            line.append(f" {found.severity.value}: ")
            if item.member is not None:
                line.append(f"{printable(item.member)}: ")
            line.append(printable(found.message))
            if item.file_offset is not None:
                line.append(f" (file offset {item.file_offset:#x})")
            console.print(line, soft_wrap=True)
    counts = outcome.counts()
    summary = (
        f"{len(outcome.checked)} {_plural(len(outcome.checked), 'file')} checked:"
        f" {counts['error']} {_plural(counts['error'], 'error')},"
        f" {counts['warning']} {_plural(counts['warning'], 'warning')},"
        f" {counts['info']} info"
    )
    if outcome.unreadable:
        summary += f", {len(outcome.unreadable)} unreadable"
    verdict = "failed" if outcome.exit_code else "passed"
    console.print(Text(f"{summary}; {verdict}", style="bold red" if outcome.exit_code else ""))


def _plural(count: int, noun: str) -> str:
    return noun if count == 1 else f"{noun}s"


def print_rules() -> None:
    """`--list-rules`: code, severity and title, one rule a line."""
    from ffitool.rules import RULES

    for rule in RULES.values():
        sys.stdout.write(f"{rule.code}  {rule.severity.value:<7}  {rule.title}\n")


def explanation(code: str) -> str:
    """`--explain CODE`: the rule's title, severity and explanation."""
    from ffitool.rules import RULES

    rule = RULES[code]
    return f"{rule.code} ({rule.severity.value}): {rule.title}\n\n{rule.explanation}\n"
