"""Streaming a planned blob into a file, and checking what was streamed, in bounded memory.

Payloads move with `os.copy_file_range` (the kernel copies, nothing passes through Python)
and fall back to 1 MiB reads and writes where the kernel cannot do that. An input is read
through the descriptor it was checked on (`open_input`): renaming another file, or a FIFO,
over its path afterwards changes nothing.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

from ffitool.blob import frame, shapes_size
from ffitool.edit.plan import PayloadSource, Plan, file_identity
from ffitool.errors import InputError
from ffitool.files import CHUNK, open_regular_file

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


class InputFile:
    """A checked input file, held open so that every later read goes through the same
    descriptor; closed when the last payload source naming it is dropped (a plan may be
    printed, kept and packed later, so no `with` block can own it)."""

    __slots__ = ("fd",)

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def __del__(self, _close: Callable[[int], None] = os.close) -> None:
        _close(self.fd)

    def reader(self, display: str | os.PathLike[str]) -> BinaryIO:
        """A file object on this descriptor (a duplicate of it), named `display` in messages."""
        return open(display, "rb", opener=lambda _name, _flags: os.dup(self.fd))


def open_input(
    path: str | os.PathLike[str], *, within: tuple[int, str] | None = None, follow: bool = True
) -> tuple[InputFile, os.stat_result]:
    """Open a regular file once, without blocking on a FIFO swapped in (`open_regular_file`),
    and hold that descriptor; its `fstat` is what the caller checks."""
    handle, _ = open_regular_file(path, within=within, follow=follow)
    with handle:
        held = InputFile(os.dup(handle.fileno()))
    return held, os.fstat(held.fd)


@contextlib.contextmanager
def _descriptor(source: PayloadSource) -> Iterator[int]:
    """The descriptor the source is read through, its range checked: the one it was checked
    on, else its path opened now (a library through `/proc/self/fd`, a caller's own range)."""
    if source.held is not None:
        _check_range(source, source.held.fd)
        yield source.held.fd
        return
    handle, _ = open_regular_file(source.path)
    with handle:
        _check_range(source, handle.fileno())
        yield handle.fileno()


def _check_range(source: PayloadSource, fd: int) -> None:
    info = os.fstat(fd)
    if source.identity is not None and file_identity(info) != source.identity:
        raise InputError(f"{source.path}: changed after it was checked; nothing was written")
    if info.st_size < source.offset + source.size:
        raise InputError(f"{source.path}: shorter than the payload it should hold")


def copy_payload(
    source: PayloadSource, out_fd: int, position: int, progress: Progress | None = None
) -> None:
    """Copy the source's bytes to `out_fd` at `position`."""
    with _descriptor(source) as in_fd:
        done = 0
        kernel = True
        while done < source.size:
            want = min(source.size - done, _KERNEL_CHUNK if kernel else CHUNK)
            sent = 0
            if kernel:
                try:
                    sent = os.copy_file_range(
                        in_fd, out_fd, want, source.offset + done, position + done
                    )
                except OSError:
                    kernel = False
            if not sent:
                kernel = False
                data = os.pread(in_fd, want, source.offset + done)
                if not data:
                    raise InputError(f"{source.path}: ended while its payload was copied")
                sent = os.pwrite(out_fd, data, position + done)
            done += sent
            if progress is not None:
                progress(sent)


def payload_chunks(source: PayloadSource) -> Iterator[bytes]:
    """The source's bytes in chunks of at most 1 MiB, for writers that transform them."""
    with _descriptor(source) as fd:
        done = 0
        while done < source.size:
            data = os.pread(fd, min(source.size - done, CHUNK), source.offset + done)
            if not data:
                raise InputError(f"{source.path}: ended inside its payload")
            done += len(data)
            yield data


def same_bytes(source: PayloadSource, path: str | os.PathLike[str], offset: int) -> bool:
    """Whether `path` holds exactly the source's bytes at `offset`.

    Reads into two reused buffers and compares them as bytearrays (a memcmp): fresh 1 MiB
    objects per chunk would page-fault their way through, and comparing memoryviews goes
    element by element; either makes this several times slower than reading.
    """
    chunk = min(_KERNEL_CHUNK // 8, max(source.size, 1))
    expected, actual = bytearray(chunk), bytearray(chunk)
    with (
        _descriptor(source) as fd,
        open(fd, "rb", buffering=0, closefd=False) as want,
        open(Path(path), "rb", buffering=0) as have,
    ):
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
