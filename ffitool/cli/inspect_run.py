"""The `inspect` command's body, importable without typer or rich.

Importing typer costs about 30 ms, a third of what `nm -D` takes on libtorch_cpu.so, and the
inspect speed target compares the two. `ffitool.cli.main` therefore runs the common
invocation, `inspect` followed by paths and `--json` only, by calling `run_inspect` directly;
the typer command in `ffitool.cli.inspect` calls it too, so both routes print the same bytes
and exit with the same codes.
"""

from __future__ import annotations

from pathlib import Path

from ffitool.cli.output import print_error, print_json, print_note
from ffitool.errors import EXIT_BAD_INPUT, EXIT_OK


def plain_invocation(args: list[str]) -> tuple[list[Path], bool] | None:
    """The paths and `--json` of `inspect PATH... [--json]`, the invocation the fast route
    takes; None for any other command line (options, help, other commands, paths that start
    with a dash), which the typer app parses."""
    paths = [a for a in args[1:] if a != "--json"]
    if args[:1] != ["inspect"] or not paths or args.count("--json") > 1:
        return None
    if any(p.startswith("-") for p in paths):
        return None
    return [Path(p) for p in paths], "--json" in args


def run_inspect(paths: list[Path], as_json: bool) -> int:
    """Inspect each path (file, directory or wheel), print the report, the notes about what
    was skipped and the errors; returns the exit code."""
    from ffitool.targets import Inspected, Skipped, inspect

    inspected = []
    errors: list[tuple[str, str]] = []
    for target in inspect(*paths):
        if isinstance(target, Inspected):
            inspected.append(target.file)
        elif isinstance(target, Skipped):
            print_note(f"{target.name}: skipped: {target.reason}")
        else:
            errors.append((target.name, target.message))
    if as_json:
        from ffitool.report import inspect_document

        print_json(inspect_document(inspected, errors, lazy=True))
    else:
        from ffitool.cli.render import print_inspected

        print_inspected(inspected)
    for _, message in errors:
        print_error(message)
    return EXIT_BAD_INPUT if errors else EXIT_OK
