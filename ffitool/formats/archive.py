"""Reader for `ar` static archives (GNU and BSD name styles): yields the members' extents.

Every length comes from a fixed-width decimal field and is checked against the file size
before use, so a corrupt header ends in an error, never in a huge read.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

from ffitool.errors import InputError
from ffitool.formats.sniff import AR
from ffitool.formats.strtab import NAME_LIMIT, Names

_HEADER_SIZE = 60
# Symbol indexes and the long-name table, by their raw 16-byte names (GNU) or names (BSD).
_SPECIAL = {"/", "/SYM64/", "//", "__.SYMDEF", "__.SYMDEF SORTED", "__.SYMDEF_64"}


@dataclass(frozen=True)
class Member:
    """One archive member: its name and where its contents lie in the archive file."""

    name: str
    offset: int
    size: int
    error: str = ""
    """Why the member cannot be read (its name is damaged), as a one-line message naming the
    archive and the member; empty when it can."""


class _BadName(Exception):
    """A member's name cannot be read; its extent is known, so the walk goes on."""


def iter_members(stream: BinaryIO, file_size: int, display_name: str) -> Iterator[Member]:
    """Walk the member headers of an archive, skipping symbol and name tables.

    Each member header is read once and each long name once however many members share it
    (`strtab.Names`), so the walk costs the archive's size; a member whose name cannot be read
    is yielded with an error, and the members after it are still read.
    """
    stream.seek(0)
    if stream.read(len(AR)) != AR:
        # unreachable: read_object dispatches here on these very bytes, read through the same
        # descriptor; only a file rewritten in between by another process gets here.
        raise InputError(f"{display_name}: not an ar archive (thin archives are not supported)")
    long_names = Names(b"", _BadName, "long member name", b"\n")
    position = len(AR)
    while position + _HEADER_SIZE <= file_size:
        stream.seek(position)
        header = stream.read(_HEADER_SIZE)
        if header[58:60] != b"`\n":
            raise InputError(f"{display_name}: bad archive member header at offset {position}")
        size = _decimal(header[48:58], display_name, position)
        start = position + _HEADER_SIZE
        if size > file_size - start:
            raise InputError(
                f"{display_name}: archive member at offset {position} claims {size} bytes,"
                f" only {file_size - start} remain"
            )
        raw_name = header[:16].decode("latin-1").rstrip(" ")
        if raw_name == "//":
            long_names = Names(stream.read(size), _BadName, "long member name", b"\n")
        skip = 0
        if raw_name.startswith("#1/"):
            skip = _decimal(raw_name[3:].encode(), display_name, position)
        try:
            name = _name(stream, raw_name, skip, size, long_names)
        except _BadName as exc:
            yield Member(raw_name, start, size, f"{display_name}({raw_name}): {exc}")
        else:
            if raw_name not in _SPECIAL and name not in _SPECIAL:
                yield Member(name, start + skip, size - skip)
        position = start + size + (size & 1)


def _name(stream: BinaryIO, raw_name: str, skip: int, size: int, long_names: Names) -> str:
    """A member's name: in its header, after it (BSD `#1/N`), or in the long-name table (GNU
    `/offset`); the stream is at the member's contents."""
    if raw_name.startswith("#1/"):
        if skip > size:
            raise _BadName(f"its name of {skip} bytes is longer than the member ({size} bytes)")
        if skip > NAME_LIMIT:
            raise _BadName(f"its name of {skip} bytes is longer than {NAME_LIMIT} bytes")
        return stream.read(skip).rstrip(b"\0").decode("utf-8", "backslashreplace")
    if raw_name.startswith("/") and raw_name[1:].isascii() and raw_name[1:].isdigit():
        index = int(raw_name[1:])
        if index >= len(long_names):
            raise _BadName(f"long name offset {index} is past the long-name table")
        return long_names[index].removesuffix("/")
    return raw_name.removesuffix("/")


def _decimal(field: bytes, display_name: str, position: int) -> int:
    text = field.decode("latin-1").strip()
    if not (text.isascii() and text.isdigit()):
        raise InputError(
            f"{display_name}: bad number {text!r} in archive header at offset {position}"
        )
    return int(text)
