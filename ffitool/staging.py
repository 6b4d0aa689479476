"""Writes that either complete or leave no trace, and that nobody can redirect.

The new file is created in the destination's directory and written only through the
descriptor that created it. On Linux it is an unnamed `O_TMPFILE` (a killed process leaves
nothing behind) that gets a name only when it is complete: it is linked under a fresh
temporary name, that name is checked to still be this file, and it is renamed over the
destination. Elsewhere it is created under a fresh name with `O_EXCL | O_NOFOLLOW`, with the
same check before the rename. Every name is resolved relative to the directory's descriptor,
so swapping a path component while ffitool runs redirects nothing.
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ffitool.errors import InputError

_SETID = stat.S_ISUID | stat.S_ISGID
_O_TMPFILE = getattr(os, "O_TMPFILE", 0)
_PROC_FD = Path("/proc/self/fd")


@dataclass(frozen=True)
class StagedFile:
    """The file being written: its descriptor (write through this) and a path that names it
    for readers (`/proc/self/fd/N` for an unnamed file)."""

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


def descriptor_path(fd: int) -> Path | None:
    """A path that opens the very file behind `fd`, where the system has one."""
    path = _PROC_FD / str(fd)
    return path if path.exists() else None


STDOUT = Path("-")
"""The destination that means standard output, as `-o -` names it."""


@contextlib.contextmanager
def staged(destination: Path, ownership: Ownership) -> Iterator[StagedFile]:
    """A new file that replaces `destination` only if the block completes.

    An existing destination must be a regular file: a device, FIFO, socket, directory or
    symlink there is refused rather than replaced. Owner, group and mode are set on the
    descriptor; where the owner cannot be kept, setuid and setgid bits are dropped rather than
    handed to whoever runs ffitool. On any failure (signals included, see `cli.entry`) the new
    file is removed and the destination is as it was; OS errors become one-line InputErrors.
    """
    if destination == STDOUT:
        with _staged_for_stdout() as staging:
            yield staging
        return
    name = destination.name
    try:
        directory = os.open(destination.parent, os.O_RDONLY | os.O_DIRECTORY)
    except OSError as exc:
        raise InputError(f"{destination.parent}: cannot open: {exc.strerror or exc}") from None
    named: str | None = None
    fd = -1
    try:
        _refuse_special(destination, directory)
        fd, named = _create(destination, directory)
        path = destination.parent / named if named else descriptor_path(fd)
        if path is None:
            raise InputError(f"{destination}: no way to name the new file for reading")
        yield StagedFile(fd, path)
        _set_ownership(fd, ownership)
        if named is None:
            named = _link(fd, directory, name)
        _check_still_ours(fd, directory, named, destination)
        os.rename(named, name, src_dir_fd=directory, dst_dir_fd=directory)
        named = None
    except OSError as exc:
        raise InputError(f"{destination}: cannot write: {exc.strerror or exc}") from None
    finally:
        if named is not None:
            with contextlib.suppress(OSError):
                os.unlink(named, dir_fd=directory)
        if fd >= 0:
            os.close(fd)
        os.close(directory)


@contextlib.contextmanager
def _staged_for_stdout() -> Iterator[StagedFile]:
    """An unnamed temporary file, copied to standard output once the block completes: what
    goes out is complete and verified, as a file would be before its rename."""
    import tempfile

    with tempfile.TemporaryFile() as handle:
        fd = handle.fileno()
        yield StagedFile(fd, descriptor_path(fd) or Path(handle.name))
        size = os.fstat(fd).st_size
        done = 0
        while done < size:
            data = os.pread(fd, min(1 << 20, size - done), done)
            if not data:
                break
            view = memoryview(data)
            while view:
                view = view[os.write(1, view) :]
            done += len(data)


def _refuse_special(destination: Path, directory: int) -> None:
    try:
        info = os.stat(destination.name, dir_fd=directory, follow_symlinks=False)
    except FileNotFoundError:
        return
    if stat.S_ISLNK(info.st_mode):
        raise InputError(f"{destination}: is a symbolic link; name the file it points to")
    if not stat.S_ISREG(info.st_mode):
        raise InputError(f"{destination}: exists and is not a regular file; not replacing it")


def _create(destination: Path, directory: int) -> tuple[int, str | None]:
    """A new empty file in `directory`: unnamed where possible, else under a fresh name."""
    if _O_TMPFILE and _PROC_FD.is_dir():  # it can only be named through /proc
        try:
            return os.open(".", _O_TMPFILE | os.O_RDWR, 0o600, dir_fd=directory), None
        except OSError:
            pass  # a file system without O_TMPFILE: fall back to a named file
    flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
    for _ in range(100):
        named = _fresh_name(destination.name)
        try:
            return os.open(named, flags, 0o600, dir_fd=directory), named
        except FileExistsError:
            continue
        except OSError as exc:
            raise InputError(
                f"{destination.parent}: cannot create a file: {exc.strerror or exc}"
            ) from None
    raise InputError(f"{destination.parent}: cannot create a file: no free temporary name")


def _fresh_name(name: str) -> str:
    return f".{name}.{os.urandom(6).hex()}.ffitool"


def _link(fd: int, directory: int, name: str) -> str:
    """Give the unnamed file a fresh temporary name in `directory`."""
    for _ in range(100):
        named = _fresh_name(name)
        try:
            os.link(_PROC_FD / str(fd), named, dst_dir_fd=directory, follow_symlinks=True)
            return named
        except FileExistsError:
            continue
    raise InputError(f"{name}: no free temporary name to publish the new file")


def _check_still_ours(fd: int, directory: int, named: str, destination: Path) -> None:
    """The temporary name must still be the file we wrote: nobody swapped it meanwhile."""
    ours = os.fstat(fd)
    found = os.stat(named, dir_fd=directory, follow_symlinks=False)
    if (found.st_dev, found.st_ino) != (ours.st_dev, ours.st_ino):
        raise InputError(f"{destination}: the new file was replaced by another while written")


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
