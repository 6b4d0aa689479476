"""What every command prints besides its report, and how a run's end becomes an exit code.

Importing this module loads neither typer nor rich: the fast `inspect` route uses it too.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

from ffitool.errors import EXIT_BAD_INPUT, EXIT_OUTPUT_CLOSED, FfitoolError, UsageError
from ffitool.findings import printable


def print_json(document: object) -> None:
    """Print a document from `ffitool.report` (made with `lazy=True`), streamed."""
    from ffitool.report import write_json

    write_json(document, sys.stdout.write)
    sys.stdout.write("\n")


def print_note(message: str) -> None:
    """One line on stderr about something left out on purpose: not an error."""
    sys.stderr.write(f"ffitool: note: {printable(message)}\n")


def print_warning(message: str) -> None:
    """One line on stderr about the output that the user must act on: not an error."""
    sys.stderr.write(f"ffitool: warning: {printable(message)}\n")


def print_error(message: str) -> None:
    """One line on stderr. Messages quote paths, section and symbol names from the input:
    control and bidi characters are escaped so that none reaches the terminal raw."""
    sys.stderr.write(f"ffitool: error: {printable(message)}\n")


@contextlib.contextmanager
def reported(subject: Path | None = None) -> Iterator[None]:
    """An FfitoolError becomes its one-line message on stderr and its exit code.

    `subject` is the file the command works on: usage errors, which name an option rather than
    a file (`--remove 2 would orphan ...`), are prefixed with it so that every error reads
    `ffitool: error: PATH: what went wrong`. For the typer commands only: the exit is
    `typer.Exit`, which click turns into the code the app returns.
    """
    try:
        yield
    except FfitoolError as exc:
        import typer

        message = str(exc)
        if subject is not None and isinstance(exc, UsageError):
            message = f"{subject}: {message}"
        print_error(message)
        raise typer.Exit(exc.exit_code) from None


def delivered(run: Callable[[], int]) -> int:
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
