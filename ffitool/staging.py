"""Writes that either complete or leave no trace, and that nobody can redirect.

The new file is created in the destination's directory and written only through the
descriptor that created it. On Linux it is an unnamed `O_TMPFILE` (a killed process leaves
nothing behind) that gets a name only when it is complete, and never in the destination's
directory itself: it is linked into a directory that ffitool creates there for this one write
(mode 0700, checked on its descriptor to belong to whoever owns ffitool's new files), where
nobody else can remove, rename or replace an entry, and renamed from that directory's
descriptor over the destination. Then the directory is removed. A temporary name in a shared
directory could be swapped for a symlink between any check of it and the rename; a name in a
private directory cannot. Without `O_TMPFILE` the file is created in such a directory from the
start (`O_EXCL | O_NOFOLLOW`), which a killed process then leaves behind. Every name is
resolved relative to a directory's descriptor, so swapping a path component while ffitool
runs redirects nothing.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

from ffitool.errors import InputError
from ffitool.files import CHUNK

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
    handed to whoever runs ffitool. On any failure (signals included, see `cli.main`) the new
    file is removed and the destination is as it was; OS errors become one-line InputErrors.
    """
    if destination == STDOUT:
        with _staged_for_stdout() as staging:
            yield staging
        return
    try:
        directory = os.open(destination.parent, os.O_RDONLY | os.O_DIRECTORY)
    except OSError as exc:
        raise InputError(f"{destination.parent}: cannot open: {exc.strerror or exc}") from None
    private: _PrivateDirectory | None = None
    fd = -1
    try:
        _refuse_special(destination, directory)
        fd = _unnamed(directory)
        if fd >= 0:
            owner = os.fstat(fd).st_uid  # before the owner is set: what our files get here
            path = _PROC_FD / str(fd)
        else:
            private = _PrivateDirectory(directory, destination)
            private.open()
            fd = private.create()
            private.check(os.fstat(fd).st_uid)
            path = destination.parent / private.name / destination.name
        yield StagedFile(fd, path)
        _set_ownership(fd, ownership)
        if private is None:
            private = _PrivateDirectory(directory, destination)
            private.open()
            private.check(owner)
            private.link(fd)
        private.publish()
    except OSError as exc:
        raise InputError(f"{destination}: cannot write: {exc.strerror or exc}") from None
    finally:
        if private is not None:
            private.remove()
        if fd >= 0:
            os.close(fd)
        os.close(directory)


@contextlib.contextmanager
def _staged_for_stdout() -> Iterator[StagedFile]:
    """An unnamed temporary file, copied to standard output once the block completes: what
    goes out is complete and verified, as a file would be before its rename. Standard output
    refusing it is never followed by a summary claiming an output that did not arrive: a
    reader that closed the pipe ends the command silently with exit 141, like every other
    command's closed pipe (BrokenPipeError reaches `cli.output`); any other failure (a full
    disk) is a one-line error like a failed rename."""
    import tempfile

    with tempfile.TemporaryFile() as handle:
        fd = handle.fileno()
        yield StagedFile(fd, descriptor_path(fd) or Path(handle.name))
        size = os.fstat(fd).st_size
        done = 0
        while done < size:
            data = os.pread(fd, min(CHUNK, size - done), done)
            if not data:
                break
            view = memoryview(data)
            try:
                while view:
                    view = view[os.write(1, view) :]
            except BrokenPipeError:
                raise
            except OSError as exc:
                raise InputError(
                    f"{STDOUT}: cannot write to standard output: {exc.strerror or exc}"
                ) from None
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


def _unnamed(directory: int) -> int:
    """A new, unnamed file in `directory`, or -1 where the system or file system has none."""
    if not (_O_TMPFILE and _PROC_FD.is_dir()):  # it can only be named through /proc
        return -1
    try:
        return os.open(".", _O_TMPFILE | os.O_RDWR, 0o600, dir_fd=directory)
    except OSError:
        return -1  # a file system without O_TMPFILE: a named file in a private directory


class _PrivateDirectory:
    """A fresh directory in the destination's directory that nobody else can change, where the
    new file is named before it is renamed over the destination.

    It is created 0700 under a fresh name (a default ACL cannot widen that: mkdir's mode masks
    it) and opened without following a symlink; `check` then looks at that descriptor, since
    another user may have renamed it away and put a directory of theirs, or one others may
    write to, under its name in between.
    """

    def __init__(self, parent: int, destination: Path) -> None:
        self._parent = parent
        self._destination = destination
        self._entry = destination.name
        self._linked = False
        self._foreign = False
        self.fd = -1
        self.name = _fresh_directory(parent, destination)

    def open(self) -> None:
        """Open it by name, refusing a symlink (or file) another user may have put there."""
        flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW
        try:
            self.fd = os.open(self.name, flags, dir_fd=self._parent)
        except OSError as exc:
            if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
                raise
            self._refuse()

    def check(self, owner: int) -> None:
        """Refuse the directory unless it belongs to `owner` (whom our new files belong to:
        the effective uid, unless a file system maps it, as NFS does for root) and nobody
        else may write to it."""
        info = os.fstat(self.fd)
        if info.st_uid != owner or info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            self._refuse()

    def _refuse(self) -> NoReturn:
        self._foreign = True
        raise InputError(
            f"{self._destination.parent}: the directory ffitool created there to publish the"
            " new file was replaced by another; nothing was written"
        )

    def create(self) -> int:
        """The new file, created in this directory under the destination's name."""
        flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
        fd = os.open(self._entry, flags, 0o600, dir_fd=self.fd)
        self._linked = True
        return fd

    def link(self, fd: int) -> None:
        """Give the unnamed file `fd` the destination's name in this directory."""
        os.link(_PROC_FD / str(fd), self._entry, dst_dir_fd=self.fd, follow_symlinks=True)
        self._linked = True

    def publish(self) -> None:
        """Rename the new file over the destination: source and target are each resolved in
        a directory's descriptor, and only ffitool can change the source's directory."""
        os.rename(self._entry, self._entry, src_dir_fd=self.fd, dst_dir_fd=self._parent)
        self._linked = False

    def remove(self) -> None:
        """Remove the new file if it is still here, then the directory, unless what now has
        its name is another's (ours, moved away by them, is then left where they put it)."""
        if self.fd >= 0:
            if self._linked:
                with contextlib.suppress(OSError):
                    os.unlink(self._entry, dir_fd=self.fd)
            os.close(self.fd)
        if not self._foreign:
            with contextlib.suppress(OSError):
                os.rmdir(self.name, dir_fd=self._parent)


def _fresh_directory(parent: int, destination: Path) -> str:
    for _ in range(100):
        name = f".{destination.name[:200]}.{os.urandom(6).hex()}.ffitool"  # within NAME_MAX
        try:
            os.mkdir(name, 0o700, dir_fd=parent)
            return name
        except FileExistsError:
            continue
        except OSError as exc:
            raise InputError(
                f"{destination.parent}: cannot create a file: {exc.strerror or exc}"
            ) from None
    raise InputError(f"{destination.parent}: cannot create a file: no free temporary name")


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
