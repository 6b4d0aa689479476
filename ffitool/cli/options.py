"""The help texts and options the typer commands share, so that each reads the same way."""

from __future__ import annotations

from typing import Annotated

import typer

EXIT_CODES_HELP = (
    "Exit codes (the same for every command): 0 success; 1 a check failed; 2 usage error; "
    "3 an input could not be read or is not a supported object file, or an output could not "
    "be written or failed verification (the input is then unchanged); 141 the reader of the "
    "output closed it (| head). A malformed blob inside a readable library is reported as "
    "findings and does not change the exit code of inspect."
)

JsonOption = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]
TARGETS_HELP = (
    "Libraries, objects, static archives, wheels (.whl) or directories (walked recursively;"
    " object files recognised by content)."
)
