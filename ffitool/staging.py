"""Writes that either complete or leave no trace: stage next to the destination, then rename."""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ffitool.errors import InputError

_SETID = stat.S_ISUID | stat.S_ISGID


@dataclass(frozen=True)
class StagedFile:
    """The file being written: its descriptor (write through this) and its temporary name."""

    fd: int
    path: Path


@dataclass(frozen=True)
class Ownership:
    """What the finished file gets: permission bits and, to keep an original's, owner and group."""

    mode: int
    uid: int | None = None
    gid: int | None = None

    @classmethod
    def of(cls, info: os.stat_result) -> Ownership:
        return cls(stat.S_IMODE(info.st_mode), info.st_uid, info.st_gid)


@contextlib.contextmanager
def staged(destination: Path, ownership: Ownership) -> Iterator[StagedFile]:
    """A temporary file next to `destination` that replaces it only if the block completes.

    Staging in the same directory makes the final rename atomic. Owner, group and mode are set
    on the descriptor; where the owner cannot be kept, setuid and setgid bits are dropped rather
    than handed to whoever runs ffitool. On any failure the staged file is removed and the
    destination (and any input) is as it was; OS errors become one-line InputErrors naming
    the destination.
    """
    try:
        fd, name = tempfile.mkstemp(
            prefix=f".{destination.name}.", suffix=".ffitool", dir=destination.parent
        )
    except OSError as exc:
        raise InputError(
            f"{destination.parent}: cannot create a file: {exc.strerror or exc}"
        ) from None
    path = Path(name)
    try:
        yield StagedFile(fd, path)
        _set_ownership(fd, ownership)
        os.replace(path, destination)
    except OSError as exc:
        with contextlib.suppress(OSError):
            path.unlink()
        raise InputError(f"{destination}: cannot write: {exc.strerror or exc}") from None
    except BaseException:
        with contextlib.suppress(OSError):
            path.unlink()
        raise
    finally:
        os.close(fd)


def _set_ownership(fd: int, ownership: Ownership) -> None:
    mode = ownership.mode
    if ownership.uid is not None and ownership.gid is not None:
        info = os.fstat(fd)
        if (info.st_uid, info.st_gid) != (ownership.uid, ownership.gid):
            try:
                os.fchown(fd, ownership.uid, ownership.gid)
            except PermissionError:
                mode &= ~_SETID
    os.fchmod(fd, mode)  # after fchown, which clears setuid and setgid
