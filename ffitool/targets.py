"""What `inspect` and `check` read: files, directory trees and wheels, as a stream of results.

A CI job points the tool at what it ships (a build directory, a wheel), which can hold
anything: symlink loops, FIFOs, thousands of source files, a zip bomb. So:

- a path given explicitly that is a file is read as `inspect_path` reads it (anything that
  is not an object file is an error there);
- a directory is walked depth-first in sorted order, one directory's entries in memory at a
  time. Files are recognised by content (ELF or Mach-O magic, `!<arch>\\n`; a wheel by the
  zip magic and a `.whl` name), and anything else is ignored without a word, so a source tree
  does not flood the output. Symbolic links are never followed inside a directory: a link to
  a directory is not descended (no loop can recur, nothing outside the tree is walked); a
  link to a file inside the tree is not read twice (`libx.so -> libx.so.1` is reported once,
  where the file lies). A link that loops, and a link to a regular file outside the tree,
  are skipped with a note; special files (FIFO, socket, device) are skipped with a note
  without being opened;
- a wheel is read through its central directory, one entry at a time, never extracted to
  disk. A member stored uncompressed is read where it lies in the wheel; a deflated one is
  decompressed into an anonymous memory file (`memfd`), refused when it would exceed
  `MEMBER_LIMIT`, its declared size, or `MAX_RATIO` times its compressed size; all of a
  wheel's libraries together may not exceed `MAX_RATIO` times the wheel (entries that share
  one member's data cannot multiply the work, and two whose data starts at the same byte
  end the wheel's reading). Offsets are reported from the start of the member, as in the
  file a user would extract.

Every failure is one `Unreadable` result for the file or member concerned; the rest is
still read. `inspect` is `iter_sources` (the walk, which only sniffs) followed by
`read_source` on each source, which is where the time goes and what workers can share.
"""

from __future__ import annotations

import errno
import os
import stat
import struct
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import BinaryIO

from ffitool.errors import InputError
from ffitool.files import CHUNK, open_regular_file
from ffitool.formats.sniff import HEAD_SIZE, is_coff_library, is_wheel, looks_like_object
from ffitool.library import InspectedFile, inspect_open

MEMBER_LIMIT = 2 << 30
"""The largest wheel member decompressed (into memory), in bytes."""
MAX_RATIO = 200
"""A deflated member expanding more than this (real libraries: under 10) is a zip bomb...
and the libraries of one wheel may not expand, together, to more than this times its size."""
RATIO_FLOOR = 1 << 20
"""...unless it stays below this size, which costs nothing to decompress."""
MAX_ENTRIES = 1_000_000
"""Central directory entries read from one wheel (large real wheels hold tens of thousands)."""

_SPECIAL_KINDS = (
    (stat.S_ISFIFO, "FIFO"),
    (stat.S_ISSOCK, "socket"),
    (stat.S_ISCHR, "character device"),
    (stat.S_ISBLK, "block device"),
)


@dataclass(frozen=True)
class Inspected:
    """A file or member that was read; `file.path` is its display name."""

    file: InspectedFile


@dataclass(frozen=True)
class Unreadable:
    """A file or member that could not be read; `message` starts with `name`."""

    name: str
    message: str


@dataclass(frozen=True)
class Skipped:
    """A directory entry deliberately not read (a link loop, a special file): a note."""

    name: str
    reason: str


Target = Inspected | Unreadable | Skipped


@dataclass(frozen=True)
class Source:
    """A file to read: one given explicitly, or an object file or wheel found in a directory.

    Sources are cheap to list (a walk opens each file only to read its first 8 bytes) and
    independent to read, so `check` can spread `read_source` over worker processes.
    """

    path: str
    explicit: bool


def inspect(
    *paths: str | os.PathLike[str], digests: bool = True
) -> Iterator[Inspected | Skipped | Unreadable]:
    """Read each path as `ffitool inspect` does: a file, a directory tree or a wheel.

    Yields, in the order the command reports them, an `Inspected` per object file or archive
    read, a `Skipped` per entry left out on purpose (a note), an `Unreadable` per file or
    member that could not be read (the command's one-line error); nothing is raised for an
    input. Results come as they are read, so a large tree is never held whole. Without
    `digests`, payloads are not hashed (sha256 is None), as for `inspect_path`.
    """
    names = [os.fspath(path) for path in paths]  # a wrong argument fails here, not when iterated
    return _inspect_all(names, digests)


def _inspect_all(paths: list[str], digests: bool) -> Iterator[Target]:
    for item in iter_sources(paths):
        if isinstance(item, Source):
            yield from read_source(item, digests=digests)
        else:
            yield item


def iter_sources(
    paths: Sequence[str | os.PathLike[str]],
) -> Iterator[Source | Unreadable | Skipped]:
    """The files `inspect` reads, in its order, and the notes and errors of the walks."""
    for path in paths:
        display = os.fspath(path)
        if not os.path.isdir(path):
            yield Source(display, explicit=True)
            continue
        found = False
        for item in _walk(display):
            found = found or not isinstance(item, Skipped)
            yield item
        if not found:  # a CI job pointed at the wrong directory should hear of it
            yield Skipped(
                display, "no ELF, Mach-O or PE file, ar archive or wheel in this directory"
            )


def read_source(source: Source, *, digests: bool = True) -> Iterator[Target]:
    """Read one file: a wheel member by member, an object file, or (found in a directory and
    no longer an object file) nothing."""
    opened = _open_sniffed(source.path, follow=source.explicit)
    if isinstance(opened, Unreadable):
        yield opened
        return
    handle, size, kind = opened
    with handle:
        if kind == "wheel":
            found = False
            for target in _wheel(handle, size, source.path, digests):
                found = found or not isinstance(target, Skipped)
                yield target
            if source.explicit and not found:
                yield Skipped(source.path, "no ELF, Mach-O or PE file or ar archive in it")
        elif source.explicit or kind == "object":
            yield from _inspect(handle, size, source.path, digests)


def _walk(root: str) -> Iterator[Source | Unreadable | Skipped]:
    """Depth-first over `root` in sorted order; the stack holds one listing per level."""
    inside = os.path.realpath(root)
    listing = _listing(root)
    if isinstance(listing, Unreadable):
        yield listing
        return
    stack = [iter(listing)]
    while stack:
        entry = next(stack[-1], None)
        if entry is None:
            stack.pop()
        elif entry.is_dir(follow_symlinks=False):
            listing = _listing(entry.path)
            if isinstance(listing, Unreadable):
                yield listing
            else:
                stack.append(iter(listing))
        elif entry.is_symlink():
            yield from _symlink(entry.path, inside)
        elif entry.is_file(follow_symlinks=False):
            yield from _candidate(entry.path)
        else:
            yield from _special(entry)


def _listing(directory: str) -> list[os.DirEntry[str]] | Unreadable:
    try:
        with os.scandir(directory) as entries:
            return sorted(entries, key=lambda e: e.name)
    except OSError as exc:
        return Unreadable(directory, f"{directory}: cannot list: {exc.strerror or exc}")


def _symlink(path: str, inside: str) -> Iterator[Skipped]:
    """Links are not followed; say so only where that hides something (see the module doc)."""
    try:
        info = os.stat(path)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            yield Skipped(path, "symbolic link loop")
        return
    target = os.path.realpath(path)
    if stat.S_ISREG(info.st_mode) and os.path.commonpath([inside, target]) != inside:
        yield Skipped(path, "symbolic link to a file outside the directory, not followed")


def _special(entry: os.DirEntry[str]) -> Iterator[Skipped]:
    try:
        mode = entry.stat(follow_symlinks=False).st_mode
    except OSError:
        return  # gone since it was listed
    kind = next((name for test, name in _SPECIAL_KINDS if test(mode)), "special file")
    yield Skipped(entry.path, kind)


def _candidate(path: str) -> Iterator[Source | Unreadable]:
    """A regular file in a directory: a source if its content makes it one."""
    opened = _open_sniffed(path, follow=False)
    if isinstance(opened, Unreadable):
        yield opened
        return
    handle, size, kind = opened
    with handle:
        # A Microsoft library (.lib) beside its DLL is no input: ffitool refuses to read one.
        source = kind is not None and not is_coff_library(handle, size)
    if source:
        yield Source(path, explicit=False)


def _open_sniffed(display: str, *, follow: bool) -> tuple[BinaryIO, int, str | None] | Unreadable:
    """The open file, its size, and "wheel", "object" or None by its first bytes."""
    try:
        handle, size = open_regular_file(display, follow=follow)
    except InputError as exc:
        return Unreadable(display, str(exc))
    try:
        head = os.pread(handle.fileno(), HEAD_SIZE, 0)
    except OSError as exc:
        handle.close()
        return Unreadable(display, f"{display}: read error: {exc.strerror or exc}")
    if is_wheel(head, display):
        return handle, size, "wheel"
    return handle, size, "object" if looks_like_object(head) else None


def _inspect(
    handle: BinaryIO, size: int, display: str, digests: bool, base: int = 0
) -> Iterator[Inspected | Unreadable]:
    """The object, then each archive member that could not be read (the others were)."""
    try:
        inspected = inspect_open(handle, size, display, base, digests=digests)
    except InputError as exc:
        yield Unreadable(display, str(exc))
        return
    yield Inspected(inspected)
    for member, message in inspected.unreadable:
        yield Unreadable(f"{display}({member})", message)


# --- wheels -------------------------------------------------------------------------------
# Read with struct rather than zipfile: zipfile builds a ZipInfo for every central directory
# entry up front (gigabytes for a directory of millions), and extracts through buffers.

_EOCD = struct.Struct("<4s4H2IH")
_ZIP64_LOCATOR = struct.Struct("<4sIQI")
_ZIP64_EOCD = struct.Struct("<4sQ2H2I4Q")
_CENTRAL = struct.Struct("<4s6H3I5H2I")
_LOCAL = struct.Struct("<4s5H3I2H")
_STORED, _DEFLATED = 0, 8


class _BadZip(Exception):
    """The wheel as a whole cannot be read; the message says why."""


@dataclass(frozen=True)
class _Entry:
    name: str
    flags: int
    method: int
    crc: int
    compressed: int
    size: int
    local: int


def _wheel(handle: BinaryIO, size: int, display: str, digests: bool) -> Iterator[Target]:
    fd = handle.fileno()
    budget = _Budget(max(RATIO_FLOOR, MAX_RATIO * size))
    try:
        for entry in _central_directory(fd, size):
            yield from _member(handle, size, display, entry, budget, digests)
    except _BadZip as exc:
        yield Unreadable(display, f"{display}: not a readable wheel: {exc}")
    except OSError as exc:
        yield Unreadable(display, f"{display}: read error: {exc.strerror or exc}")


class _Budget:
    """The bytes all object members of one wheel may expand to, together.

    Each member is bounded on its own, but central directory entries can all point at the
    same member data (the overlapping zip bomb): without a total, 100k entries would each
    decompress the same 2 GiB. Entries whose data starts at the same byte are refused
    outright (no zip tool writes two); data that overlaps otherwise is held by the total.
    """

    def __init__(self, left: int) -> None:
        self.left = left
        self._starts: dict[int, str] = {}

    def take(self, size: int, start: int, name: str) -> None:
        """Charge an object member of `size` bytes whose data starts at `start`."""
        first = self._starts.setdefault(start, name)
        if first != name:
            raise _BadZip(f"members {first} and {name} share their data at offset {start}")
        if size > self.left:
            raise _BadZip(
                f"its libraries expand to more than {MAX_RATIO} times its size"
                " (members overlapping?)"
            )
        self.left -= size


def _read_at(fd: int, length: int, offset: int) -> bytes:
    data = os.pread(fd, length, offset)
    if len(data) != length:
        raise _BadZip(f"the file ends inside a record at offset {offset}")
    return data


def _central_directory(fd: int, size: int) -> Iterator[_Entry]:
    """The entries, one at a time, after checking the directory's claimed extent and count."""
    count, cd_size, cd_offset, end = _end_record(fd, size)
    if cd_offset + cd_size > end:
        raise _BadZip(f"central directory of {cd_size} bytes at {cd_offset} overruns the file")
    if count * _CENTRAL.size > cd_size:
        raise _BadZip(f"central directory claims {count} entries in only {cd_size} bytes")
    if count > MAX_ENTRIES:
        raise _BadZip(f"central directory claims {count} entries; at most {MAX_ENTRIES} are read")
    position, stop = cd_offset, cd_offset + cd_size
    for _ in range(count):
        if position + _CENTRAL.size > stop:
            raise _BadZip(f"central directory ends before its {count} entries")
        fields = _CENTRAL.unpack(_read_at(fd, _CENTRAL.size, position))
        (magic, _, _, flags, method, _, _, crc, compressed, length, name_len, extra_len,
         comment_len, _, _, _, local) = fields  # fmt: skip
        if magic != b"PK\x01\x02":
            raise _BadZip(f"bad central directory entry at offset {position}")
        variable = _read_at(fd, name_len + extra_len, position + _CENTRAL.size)
        raw_name, extra = variable[:name_len], variable[name_len:]
        length, compressed, local = _zip64_sizes(extra, length, compressed, local)
        encoding = "utf-8" if flags & 0x800 else "cp437"
        name = raw_name.decode(encoding, "backslashreplace")
        position += _CENTRAL.size + name_len + extra_len + comment_len
        yield _Entry(name, flags, method, crc, compressed, length, local)


def _end_record(fd: int, size: int) -> tuple[int, int, int, int]:
    """Entry count, directory size and offset, and where the end records start."""
    tail_start = max(0, size - _EOCD.size - 0xFFFF)
    tail = os.pread(fd, size - tail_start, tail_start)
    at = tail.rfind(b"PK\x05\x06")
    if at < 0 or at + _EOCD.size > len(tail):
        raise _BadZip("no end of central directory record")
    _, disk, cd_disk, _, count, cd_size, cd_offset, _ = _EOCD.unpack_from(tail, at)
    end = tail_start + at
    if 0xFFFF in (count, disk, cd_disk) or 0xFFFFFFFF in (cd_size, cd_offset):
        locator_at = end - _ZIP64_LOCATOR.size
        if locator_at < 0:
            raise _BadZip("zip64 end record missing")
        magic, _, record_at, _ = _ZIP64_LOCATOR.unpack(
            _read_at(fd, _ZIP64_LOCATOR.size, locator_at)
        )
        if magic != b"PK\x06\x07" or record_at + _ZIP64_EOCD.size > locator_at:
            raise _BadZip("bad zip64 end record locator")
        fields = _ZIP64_EOCD.unpack(_read_at(fd, _ZIP64_EOCD.size, record_at))
        magic, _, _, _, disk, cd_disk, _, count, cd_size, cd_offset = fields
        if magic != b"PK\x06\x06":
            raise _BadZip("bad zip64 end record")
        end = record_at
    if disk or cd_disk:
        raise _BadZip("multi-disk archives are not supported")
    return count, cd_size, cd_offset, end


def _zip64_sizes(extra: bytes, length: int, compressed: int, local: int) -> tuple[int, int, int]:
    """Replace the 0xFFFFFFFF fields by their values in the zip64 extra field, in its order."""
    wanted = [v == 0xFFFFFFFF for v in (length, compressed, local)]
    if not any(wanted):
        return length, compressed, local
    position = 0
    while position + 4 <= len(extra):
        tag, data_len = struct.unpack_from("<HH", extra, position)
        data = extra[position + 4 : position + 4 + data_len]
        if tag == 1:
            values = [length, compressed, local]
            index = 0
            for slot, missing in enumerate(wanted):
                if missing:
                    if index + 8 > len(data):
                        raise _BadZip("zip64 extra field too short")
                    values[slot] = struct.unpack_from("<Q", data, index)[0]
                    index += 8
            return values[0], values[1], values[2]
        position += 4 + data_len
    raise _BadZip("zip64 sizes missing")


def _member(
    handle: BinaryIO, size: int, wheel: str, entry: _Entry, budget: _Budget, digests: bool
) -> Iterator[Target]:
    """One wheel member: sniffed by content, read when it is an ELF file or ar archive."""
    display = f"{wheel}!{entry.name}"
    fd = handle.fileno()
    if entry.name.endswith("/") or entry.name.lower().endswith(".lib"):
        return  # a folder, or a Microsoft library beside its DLL, which ffitool refuses
    local = None
    if entry.local + _LOCAL.size <= size:
        local = _LOCAL.unpack(_read_at(fd, _LOCAL.size, entry.local))
    if local is None or local[0] != b"PK\x03\x04":
        yield Unreadable(display, f"{display}: no local header at offset {entry.local}")
        return
    start = entry.local + _LOCAL.size + local[-2] + local[-1]
    if start + entry.compressed > size:
        yield Unreadable(display, f"{display}: data of {entry.compressed} bytes overruns the file")
        return
    if entry.flags & 1:
        yield Unreadable(display, f"{display}: encrypted members are not supported")
    elif entry.method == _STORED:
        if not looks_like_object(os.pread(fd, HEAD_SIZE, start)):
            return
        if entry.size != entry.compressed:
            yield Unreadable(
                display,
                f"{display}: lying size: stored with {entry.compressed} bytes,"
                f" declares {entry.size}",
            )
            return
        budget.take(entry.size, start, entry.name)
        yield from _inspect(handle, entry.size, display, digests, start)
    elif entry.method == _DEFLATED:
        yield from _deflated(fd, start, entry, display, budget, digests)
    else:
        yield Unreadable(
            display,
            f"{display}: compression method {entry.method} is not supported"
            " (wheels use stored or deflate)",
        )


def _deflated(
    fd: int, start: int, entry: _Entry, display: str, budget: _Budget, digests: bool
) -> Iterator[Target]:
    stream = _Inflater(fd, start, entry.compressed)
    try:
        head = stream.read_fully(HEAD_SIZE)
        if not looks_like_object(head):
            return
        refusal = _refusal(entry)
        if refusal:
            yield Unreadable(display, f"{display}: {refusal}")
            return
        budget.take(entry.size, start, entry.name)
        with _memory_file() as copy:
            copy.write(head)
            # One byte past the declared size is enough to call it a lie.
            while stream.produced <= entry.size and (
                chunk := stream.read(min(CHUNK, entry.size + 1 - stream.produced))
            ):
                copy.write(chunk)
            problem = _mismatch(stream, entry)
            if problem:
                yield Unreadable(display, f"{display}: {problem}")
                return
            copy.flush()
            yield from _inspect(copy, stream.produced, display, digests)
    except zlib.error as exc:
        yield Unreadable(display, f"{display}: bad deflate data: {exc}")


def _refusal(entry: _Entry) -> str | None:
    """Why a member is not decompressed at all, judged from its declared sizes."""
    if entry.size > MEMBER_LIMIT:
        return (
            f"declares {entry.size} bytes, more than the {MEMBER_LIMIT >> 30} GiB read from a wheel"
        )
    if entry.size > RATIO_FLOOR and entry.size > MAX_RATIO * entry.compressed:
        return (
            f"declares {entry.size} bytes from {entry.compressed} compressed,"
            f" a ratio over {MAX_RATIO}:1 (a zip bomb?)"
        )
    return None


def _mismatch(stream: _Inflater, entry: _Entry) -> str | None:
    if stream.produced > entry.size:
        return f"lying size: decompresses to more than the {entry.size} bytes it declares"
    if not stream.finished:
        return "compressed data ends early"
    if stream.produced != entry.size:
        return f"lying size: decompresses to {stream.produced} bytes, declares {entry.size}"
    if stream.crc != entry.crc:
        return f"CRC-32 {stream.crc:08x} does not match the recorded {entry.crc:08x}"
    return None


def _memory_file() -> BinaryIO:
    """An anonymous file in memory, gone when closed: nothing of the wheel reaches the disk."""
    create = getattr(os, "memfd_create", None)
    if create is None:  # not Linux: an unnamed temporary file is the nearest thing
        import tempfile

        return tempfile.TemporaryFile()
    fd = create("ffitool-member", os.MFD_CLOEXEC)
    return os.fdopen(fd, "w+b")


class _Inflater:
    """A deflate stream read from `size` bytes at `start` of a file, a bounded piece at a time."""

    def __init__(self, fd: int, start: int, size: int) -> None:
        self._fd = fd
        self._at = start
        self._end = start + size
        self._inflate = zlib.decompressobj(-15)
        self._pending = b""
        self._chunk = 4 << 10  # sniffing needs 8 bytes: read small, then more as it goes on
        self.produced = 0
        self.crc = 0

    @property
    def finished(self) -> bool:
        return self._inflate.eof

    def read(self, limit: int) -> bytes:
        """At most `limit` bytes of output, b"" only at the end of the stream or input."""
        while True:
            if not self._pending and self._at < self._end and not self._inflate.eof:
                count = min(self._chunk, self._end - self._at)
                self._pending = os.pread(self._fd, count, self._at)
                self._chunk = min(2 * self._chunk, CHUNK)
                if not self._pending:
                    raise OSError(errno.EIO, "the file shrank while it was being read")
                self._at += len(self._pending)
            out = self._inflate.decompress(self._pending, limit)
            self._pending = self._inflate.unconsumed_tail
            if out or self._inflate.eof or (not self._pending and self._at >= self._end):
                self.produced += len(out)
                self.crc = zlib.crc32(out, self.crc)
                return out

    def read_fully(self, count: int) -> bytes:
        data = b""
        while len(data) < count and (part := self.read(count - len(data))):
            data += part
        return data


__all__ = [
    "MAX_ENTRIES",
    "MAX_RATIO",
    "MEMBER_LIMIT",
    "Inspected",
    "Skipped",
    "Source",
    "Target",
    "Unreadable",
    "inspect",
    "iter_sources",
    "read_source",
]
