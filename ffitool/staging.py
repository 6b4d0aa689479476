"""Writes that either complete or leave no trace: stage next to the destination, then rename."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from ffitool.errors import InputError


@contextlib.contextmanager
def staged(destination: Path, mode: int) -> Iterator[Path]:
    """A temporary path next to `destination` that replaces it only if the block completes.

    Staging in the same directory makes the final rename atomic. On any failure the staged
    file is removed and the destination (and any input) is as it was; OS errors become
    one-line InputErrors naming the destination.
    """
    try:
        fd, name = tempfile.mkstemp(
            prefix=f".{destination.name}.", suffix=".ffitool", dir=destination.parent
        )
    except OSError as exc:
        raise InputError(
            f"{destination.parent}: cannot create a file: {exc.strerror or exc}"
        ) from None
    os.close(fd)
    path = Path(name)
    try:
        yield path
        os.chmod(path, mode)
        os.replace(path, destination)
    except OSError as exc:
        with contextlib.suppress(OSError):
            path.unlink()
        raise InputError(f"{destination}: cannot write: {exc.strerror or exc}") from None
    except BaseException:
        with contextlib.suppress(OSError):
            path.unlink()
        raise
