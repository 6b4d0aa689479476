"""Streaming a planned blob into a file, and checking what was streamed, in bounded memory.

Payloads move with `os.copy_file_range` (the kernel copies, nothing passes through Python)
and fall back to 1 MiB reads and writes where the kernel cannot do that.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from ffitool.blob import frame, shapes_size
from ffitool.errors import InputError
from ffitool.pack.plan import PayloadSource, Plan, file_identity

_CHUNK = 1 << 20
_KERNEL_CHUNK = 64 << 20

Progress = Callable[[int], None]
"""Called with the number of payload bytes just written."""


def blob_size(plan: Plan) -> int:
    """Bytes the planned blob occupies."""
    return shapes_size(plan.shapes())


def write_blob(out_fd: int, offset: int, plan: Plan, progress: Progress | None = None) -> int:
    """Write the planned blob at `offset` of `out_fd`; returns the number of bytes written."""
    position = offset
    for piece in frame(plan.shapes()):
        if isinstance(piece, bytes):
            os.pwrite(out_fd, piece, position)
            position += len(piece)
            continue
        source = plan.modules[piece].source
        assert source is not None  # frame() only marks modules with payloads
        copy_payload(source, out_fd, position, progress)
        position += source.size
    return position - offset


def copy_payload(
    source: PayloadSource, out_fd: int, position: int, progress: Progress | None = None
) -> None:
    """Copy the source's bytes to `out_fd` at `position`."""
    with open(source.path, "rb") as handle:
        info = os.fstat(handle.fileno())
        if source.identity is not None and file_identity(info) != source.identity:
            raise InputError(f"{source.path}: changed after it was checked; nothing was written")
        if info.st_size < source.offset + source.size:
            raise InputError(f"{source.path}: shorter than the payload it should hold")
        done = 0
        kernel = True
        while done < source.size:
            want = min(source.size - done, _KERNEL_CHUNK if kernel else _CHUNK)
            sent = 0
            if kernel:
                try:
                    sent = os.copy_file_range(
                        handle.fileno(), out_fd, want, source.offset + done, position + done
                    )
                except OSError:
                    kernel = False
            if not sent:
                kernel = False
                data = os.pread(handle.fileno(), want, source.offset + done)
                if not data:
                    raise InputError(f"{source.path}: ended while its payload was copied")
                sent = os.pwrite(out_fd, data, position + done)
            done += sent
            if progress is not None:
                progress(sent)


def same_bytes(source: PayloadSource, path: str, offset: int) -> bool:
    """Whether `path` holds exactly the source's bytes at `offset`.

    Reads into two reused buffers and compares them as bytearrays (a memcmp): fresh 1 MiB
    objects per chunk would page-fault their way through, and comparing memoryviews goes
    element by element; either makes this several times slower than reading.
    """
    chunk = min(_KERNEL_CHUNK // 8, max(source.size, 1))
    expected, actual = bytearray(chunk), bytearray(chunk)
    with open(source.path, "rb", buffering=0) as want, open(path, "rb", buffering=0) as have:
        want.seek(source.offset)
        have.seek(offset)
        left = source.size
        while left:
            count = min(left, chunk)
            if count < chunk:
                expected, actual = bytearray(count), bytearray(count)
            if want.readinto(expected) != count or have.readinto(actual) != count:
                return False
            if expected != actual:
                return False
            left -= count
    return True
