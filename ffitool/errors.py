"""Errors that end a command, each tied to one documented exit code.

The CLI maps these to exit codes without inspecting messages, so every failure a user can
cause is one of these classes and carries a complete one-line message.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_CHECK_FAILED = 1
EXIT_USAGE = 2
EXIT_BAD_INPUT = 3
EXIT_OUTPUT_CLOSED = 141
"""The reader of the output went away (`ffitool inspect dir | head`): 128 + SIGPIPE, what a
shell reports for a command that SIGPIPE ended, so pipelines and `set -o pipefail` read it
as they read any other command's; ffitool ends on its own to remove what it staged."""


class FfitoolError(Exception):
    """Base class: a clean, one-line failure with the exit code the CLI should use."""

    exit_code = EXIT_BAD_INPUT


class UsageError(FfitoolError):
    """The command line itself is wrong (exit 2)."""

    exit_code = EXIT_USAGE


class InputError(FfitoolError):
    """An input could not be read or is not a supported object file (exit 3)."""

    exit_code = EXIT_BAD_INPUT


class BlobError(InputError):
    """A blob that the runtime would reject; `offset` is the byte offset from the blob start."""

    def __init__(self, what: str, offset: int) -> None:
        super().__init__(f"{what} at blob offset {offset}")
        self.what = what
        self.offset = offset
