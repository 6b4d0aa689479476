"""Object-format readers behind one entry point that picks the reader by magic bytes."""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import BinaryIO

from ffitool.errors import InputError
from ffitool.formats import archive, macho, pe
from ffitool.formats.base import ELF_MAGIC, Image, Location, Slice, Symbol, SymbolTable

__all__ = [
    "Image",
    "Location",
    "ObjectFile",
    "Slice",
    "Symbol",
    "SymbolTable",
    "Window",
    "read_object",
]

_OTHER_MAGICS = {
    macho.MAGIC_32: "32-bit Mach-O files are not supported yet",
    **dict.fromkeys(
        pe.COFF_MACHINES,
        "COFF objects are not supported (inspect the DLL or EXE they are linked into)",
    ),
}


@dataclass(frozen=True)
class ObjectFile:
    """An input file split into the images that have their own symbol tables."""

    format: str
    """The container: "ELF", "Mach-O", "Mach-O universal", "PE" or "ar archive"."""
    size: int
    images: tuple[Image, ...]
    unreadable: tuple[tuple[str, str], ...] = ()
    """(member, one-line error) of each archive member that could not be read."""


def read_object(stream: BinaryIO, size: int, display_name: str) -> ObjectFile:
    """Sniff the format of an open file and read its images; raises InputError if unsupported."""
    stream.seek(0)
    head = stream.read(8)
    fd = _descriptor(stream)
    if head.startswith(ELF_MAGIC):
        from ffitool.formats import elf  # imported when first needed: see ELF_MAGIC

        return ObjectFile("ELF", size, (elf.read_elf(stream, size, display_name, fd=fd),))
    if head.startswith(macho.MAGIC_64) or macho.is_universal(head):
        container = "Mach-O universal" if macho.is_universal(head) else "Mach-O"
        return ObjectFile(container, size, macho.read_macho(stream, size, display_name, fd=fd))
    if head.startswith(pe.MAGIC):
        return ObjectFile("PE", size, (pe.read_pe(stream, size, display_name, fd=fd),))
    if head == archive.MAGIC and pe.is_coff_library(stream, size):
        raise InputError(
            f"{display_name}: COFF libraries (.lib) are not supported (inspect the DLL instead)"
        )
    if head == archive.MAGIC:
        images, unreadable = _archive_images(stream, size, display_name, fd)
        return ObjectFile("ar archive", size, tuple(images), tuple(unreadable))
    if head == archive.THIN_MAGIC:
        raise InputError(f"{display_name}: thin ar archives hold no members to read")
    for magic, message in _OTHER_MAGICS.items():
        if head.startswith(magic):
            raise InputError(f"{display_name}: {message}")
    raise InputError(f"{display_name}: not an ELF file, Mach-O file, PE file or ar archive")


def _descriptor(stream: BinaryIO) -> int | None:
    """The stream's file descriptor, through which the ELF reader maps its tables, if it has one."""
    try:
        return stream.fileno()
    except (AttributeError, OSError, ValueError):
        return None


def _archive_images(
    stream: BinaryIO, size: int, display_name: str, fd: int | None
) -> tuple[list[Image], list[tuple[str, str]]]:
    """The members' images, and (member, error) for each member that is not a readable ELF or
    Mach-O file: one corrupt object does not hide what the other members hold."""
    images = []
    unreadable = []
    for member in archive.iter_members(stream, size, display_name):
        if member.error:
            unreadable.append((member.name, member.error))
            continue
        stream.seek(member.offset)
        magic = stream.read(4)
        window = Window(stream, member.offset, member.size)
        try:
            if magic == ELF_MAGIC:
                from ffitool.formats import elf  # imported when first needed: see ELF_MAGIC

                images.append(
                    elf.read_elf(window, member.size, display_name, member.name, member.offset, fd)
                )
            elif magic == macho.MAGIC_64:
                images.extend(
                    macho.read_macho(
                        window, member.size, display_name, member.name, member.offset, fd
                    )
                )
        except InputError as exc:
            unreadable.append((member.name, str(exc)))
    return images, unreadable


class Window(io.RawIOBase):
    """A read-only view of `size` bytes of `base` starting at `start`, for per-member parsing;
    `name` names it in messages, as a file's name does."""

    def __init__(self, base: BinaryIO, start: int, size: int, name: str = "") -> None:
        super().__init__()
        self.name = name
        self._base = base
        self._start = start
        self._size = size
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        origin = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        self._pos = max(0, origin + offset)
        return self._pos

    def tell(self) -> int:
        return self._pos

    def read(self, size: int = -1) -> bytes:
        """Clamp the request first: RawIOBase.read would allocate `size` bytes up front."""
        left = max(0, self._size - self._pos)
        return super().read(left if size is None or size < 0 else min(size, left))

    def readinto(self, buffer) -> int:  # type: ignore[override]
        count = max(0, min(len(buffer), self._size - self._pos))
        self._base.seek(self._start + self._pos)
        data = self._base.read(count)
        buffer[: len(data)] = data
        self._pos += len(data)
        return len(data)
