"""Reader for `ar` static archives (GNU and BSD name styles): yields the members' extents.

Every length comes from a fixed-width decimal field and is checked against the file size
before use, so a corrupt header ends in an error, never in a huge read.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

from ffitool.errors import InputError

MAGIC = b"!<arch>\n"
THIN_MAGIC = b"!<thin>\n"
_HEADER_SIZE = 60
# Symbol indexes and the long-name table, by their raw 16-byte names (GNU) or names (BSD).
_SPECIAL = {"/", "/SYM64/", "//", "__.SYMDEF", "__.SYMDEF SORTED", "__.SYMDEF_64"}


@dataclass(frozen=True)
class Member:
    """One archive member: its name and where its contents lie in the archive file."""

    name: str
    offset: int
    size: int


def iter_members(stream: BinaryIO, file_size: int, display_name: str) -> Iterator[Member]:
    """Walk the member headers of an archive, skipping symbol and name tables."""
    stream.seek(0)
    if stream.read(len(MAGIC)) != MAGIC:
        raise InputError(f"{display_name}: not an ar archive (thin archives are not supported)")
    long_names = b""
    position = len(MAGIC)
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
        name, skip = raw_name, 0
        if raw_name == "//":
            long_names = stream.read(size)
        elif raw_name.startswith("#1/"):
            skip = _decimal(raw_name[3:].encode(), display_name, position)
            if skip > size:
                raise InputError(f"{display_name}: member name at offset {position} is too long")
            name = stream.read(skip).rstrip(b"\0").decode("utf-8", "backslashreplace")
        elif raw_name.startswith("/") and raw_name[1:].isascii() and raw_name[1:].isdigit():
            index = int(raw_name[1:])
            end = long_names.find(b"\n", index)
            if index >= len(long_names) or end == -1:
                raise InputError(f"{display_name}: bad long member name at offset {position}")
            name = long_names[index:end].decode("utf-8", "backslashreplace").removesuffix("/")
        else:
            name = raw_name.removesuffix("/")
        if raw_name not in _SPECIAL and name not in _SPECIAL:
            yield Member(name, start + skip, size - skip)
        position = start + size + (size & 1)


def _decimal(field: bytes, display_name: str, position: int) -> int:
    text = field.decode("latin-1").strip()
    if not (text.isascii() and text.isdigit()):
        raise InputError(
            f"{display_name}: bad number {text!r} in archive header at offset {position}"
        )
    return int(text)
