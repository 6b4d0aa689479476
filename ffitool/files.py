"""Opening an input without trusting what its path names: a FIFO or device is refused before
it can block, and a name is opened relative to the directory descriptor that was checked.

Every reader of an input (inspect, pack's payloads, check's configuration, the directory walk)
opens through here; it imports nothing of ffitool's but its errors, so every layer may use it.
"""

from __future__ import annotations

import os
import stat
from typing import BinaryIO

from ffitool.errors import InputError

CHUNK = 1 << 20
"""Bytes one read or write of a file's contents moves when they are streamed (copied, hashed,
checksummed, inflated, walked a table at a time): large enough that each call's cost is
spread over a megabyte, small enough that memory stays flat whatever the file's size."""


def open_regular_file(
    path: str | os.PathLike[str],
    *,
    within: tuple[int, str] | None = None,
    follow: bool = True,
) -> tuple[BinaryIO, int]:
    """Open a regular file for reading; refuse FIFOs and devices, which could block or never end.

    The type is checked before opening (opening a device can have effects) and again on the
    descriptor, opened with O_NONBLOCK, so a FIFO swapped in between cannot block either. With
    `within=(dir_fd, name)` it is `name` relative to that directory that is opened, `path`
    only names it in messages; without `follow` a symlink as the last component is refused.
    """
    display = str(path)
    dir_fd, name = within if within is not None else (None, path)
    flags = os.O_NONBLOCK | (0 if follow else os.O_NOFOLLOW)

    def opener(_: str, mode: int) -> int:
        return os.open(name, mode | flags, dir_fd=dir_fd)

    try:
        if not stat.S_ISREG(os.stat(name, dir_fd=dir_fd, follow_symlinks=follow).st_mode):
            raise InputError(f"{display}: not a regular file")
        handle = open(display, "rb", opener=opener)  # noqa: SIM115 - the caller owns it
        info = os.fstat(handle.fileno())
        if not stat.S_ISREG(info.st_mode):
            handle.close()
            raise InputError(f"{display}: not a regular file")
        return handle, info.st_size
    except OSError as exc:
        raise InputError(f"{display}: cannot open: {exc.strerror or exc}") from None
