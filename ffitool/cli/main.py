"""Entry point of the command line: the fast route for `inspect`, else the typer app.

`ffitool.cli.inspect_run` says why the plain `inspect PATH... [--json]` skips typer. Nothing
here imports typer or rich at module level; `run_app` imports the app when it is needed.
"""

from __future__ import annotations

import signal
import sys

from ffitool.cli.inspect_run import plain_invocation, run_inspect
from ffitool.cli.output import delivered, print_error
from ffitool.errors import EXIT_OK


def main() -> None:
    """Console-script entry point."""
    _exit_cleanly_on(signal.SIGTERM, signal.SIGHUP)
    fast = plain_invocation(sys.argv[1:])
    if fast is not None:
        paths, as_json = fast
        sys.exit(delivered(lambda: run_inspect(paths, as_json)))
    sys.exit(delivered(run_app))


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
