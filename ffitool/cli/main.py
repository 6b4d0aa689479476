"""Entry point of the command line, and the `inspect` command's body, without typer.

Importing typer costs about 30 ms, a third of what `nm -D` takes on libtorch_cpu.so, and the
inspect speed target compares the two. The common invocation, `inspect` followed by paths
and `--json` only, therefore runs here directly; everything else (options, help, other
commands, paths that start with a dash) goes through the typer app, which calls the same
`run_inspect`, so both routes print the same bytes and exit with the same codes.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path

from ffitool.errors import EXIT_BAD_INPUT, EXIT_OK, EXIT_OUTPUT_CLOSED


def main() -> None:
    """Console-script entry point."""
    _exit_cleanly_on(signal.SIGTERM, signal.SIGHUP)
    args = sys.argv[1:]
    paths = [a for a in args[1:] if a != "--json"]
    plain = paths and not any(p.startswith("-") for p in paths) and args.count("--json") <= 1
    if args[:1] == ["inspect"] and plain:
        sys.exit(_delivered(lambda: run_inspect([Path(p) for p in paths], "--json" in args)))
    sys.exit(_delivered(run_app))


def _delivered(run: Callable[[], int]) -> int:
    """Run a command to its end and flush its output; what no command turned into a clean
    error ends here, as one line or a documented exit code, never as a traceback.

    - The reader of stdout (or stderr) went away (`| head`): nothing more can be delivered,
      so nothing more is said, and the exit code is EXIT_OUTPUT_CLOSED (141, what a shell
      reports for a process that SIGPIPE ended). Click turns EPIPE into `sys.exit(1)`
      itself, which `check` uses for failing findings; that exit is recognised by the
      BrokenPipeError it was raised while handling.
    - An OSError that escaped a command (a path that vanished between a check and its use,
      a missing library given to `pack`): `ffitool: error: PATH: reason`, exit 3.
    - ^C in the fast `inspect` route: `Aborted!` and exit 1, as click does.
    """
    try:
        code = run()
        sys.stdout.flush()  # here, not at exit, where a closed pipe is a traceback
    except BrokenPipeError:
        return _output_closed()
    except SystemExit as exc:
        if isinstance(exc.__context__, BrokenPipeError):
            return _output_closed()
        raise
    except KeyboardInterrupt:
        sys.stderr.write("Aborted!\n")
        return 1
    except OSError as exc:
        print_error(_os_error_message(exc))
        return EXIT_BAD_INPUT
    return code


def _output_closed() -> int:
    """Point stdout and stderr at /dev/null, so that the flush at exit finds no closed pipe
    to complain about on a stderr that may be gone too."""
    null = os.open(os.devnull, os.O_WRONLY)
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(AttributeError, ValueError, OSError):
            os.dup2(null, stream.fileno())
    return EXIT_OUTPUT_CLOSED


def _os_error_message(exc: OSError) -> str:
    """`PATH: reason` from an OSError: the form of every error line (the path is the first
    one the call named; an error without one, rare, is the reason alone)."""
    reason = exc.strerror or str(exc)
    if isinstance(exc.filename, (str, bytes)):
        return f"{os.fsdecode(exc.filename)}: {reason}"
    return reason


def run_app() -> int:
    """Run the typer app; click's usage errors become one line, like ours, with exit 2.

    Click would print a usage block, a hint and `Error: ...`; here the same message reads
    `ffitool: error: pack: No such option: --bogus (see 'ffitool pack -h')`. Help
    shown for a command given no arguments keeps click's form.
    """
    import typer

    from ffitool.cli.app import app

    # The click typer runs on: `click` itself, or the copy typer 0.26 vendors as typer._click.
    click = sys.modules[typer.Exit.__module__]
    no_args_is_help = getattr(click, "NoArgsIsHelpError", ())  # click < 8.2 exits 0 itself
    try:
        code = app(prog_name="ffitool", standalone_mode=False)
    except no_args_is_help as exc:
        exc.show()
        return exc.exit_code
    except click.UsageError as exc:
        command = exc.ctx.command_path if exc.ctx is not None else "ffitool"
        subject = command.partition(" ")[2]  # the subcommand: `pack`, `blob decode`
        message = f"{exc.format_message().rstrip('.')} (see '{command} -h')"
        print_error(f"{subject}: {message}" if subject else message)
        return exc.exit_code
    except click.ClickException as exc:
        print_error(exc.format_message())
        return exc.exit_code
    except click.Abort:
        sys.stderr.write("Aborted!\n")
        return 1
    return code if isinstance(code, int) else EXIT_OK


def _exit_cleanly_on(*signals: signal.Signals) -> None:
    """Turn these signals into SystemExit, as ^C is turned into KeyboardInterrupt: the
    `finally` blocks that remove a half-written file then run before the process ends."""

    def leave(number: int, _frame: object) -> None:
        raise SystemExit(128 + number)

    for number in signals:
        signal.signal(number, leave)


def run_inspect(paths: list[Path], as_json: bool) -> int:
    """Inspect each path (file, directory or wheel), print the report, the notes about what
    was skipped and the errors; returns the exit code."""
    from ffitool.targets import Inspected, Skipped, iter_targets

    inspected = []
    errors: list[tuple[str, str]] = []
    for target in iter_targets(paths):
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


def print_json(document: object) -> None:
    """Print a document from `ffitool.report` (made with `lazy=True`), streamed."""
    from ffitool.report import write_json

    write_json(document, sys.stdout.write)
    sys.stdout.write("\n")


def print_note(message: str) -> None:
    """One line on stderr about something left out on purpose: not an error."""
    from ffitool.findings import printable

    sys.stderr.write(f"ffitool: note: {printable(message)}\n")


def print_warning(message: str) -> None:
    """One line on stderr about the output that the user must act on: not an error."""
    from ffitool.findings import printable

    sys.stderr.write(f"ffitool: warning: {printable(message)}\n")


def print_error(message: str) -> None:
    """One line on stderr. Messages quote paths, section and symbol names from the input:
    control and bidi characters are escaped so that none reaches the terminal raw."""
    from ffitool.findings import printable

    sys.stderr.write(f"ffitool: error: {printable(message)}\n")
