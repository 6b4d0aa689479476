"""The binary formats ffitool reads and packs, in one registry, behind one entry point.

A format is a package of its own (`ffitool.formats.elf`, `.macho`, `.pe`) holding everything
the project knows of it: structs, reader, writer, verifier. Each package states its `FORMAT`:
its name, the containers `sniff` names that it reads, its reader and its packer (or none).
`read_object` sniffs an input once and hands it to the format that reads it; `ffitool.pack`
finds the packer the same way. A fourth format is one more package and one more line in
`_PACKAGES`. Nothing here imports a format package until an input needs it, so reading a
Mach-O file never loads the ELF reader or pyelftools.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cache
from importlib import import_module
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Protocol, cast

from ffitool.errors import InputError
from ffitool.formats import archive, sniff
from ffitool.formats.base import Image, Location, Slice, Symbol, SymbolTable

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

__all__ = [
    "Format",
    "Image",
    "Location",
    "ObjectFile",
    "Packer",
    "Slice",
    "Symbol",
    "SymbolTable",
    "Window",
    "format_named",
    "formats",
    "read_object",
]

_PACKAGES = ("ffitool.formats.elf", "ffitool.formats.macho", "ffitool.formats.pe")
"""The format registry: one line per format package."""


class Packer(Protocol):
    """One format's seam in the pack flow: plan the edit from the locked input's headers,
    write it to the staged file, verify the staged file against the input, say where the blob
    went. Only the flow (`ffitool.pack`) drives it; the blob's own check is the flow's too."""

    def plan(self, handle: BinaryIO, size: int, display: str, blob_size: int) -> Any: ...

    def write(self, source: str, fd: int, edit: Any, blob: Callable[[int, int], None]) -> None: ...

    def blob_offsets(self, edit: Any) -> list[int | None]:
        """Where each image of the written file holds its blob (None: an image not packed)."""
        ...

    def verify(self, staging: Path, source: Path, edit: Any) -> None: ...

    def result(self, edit: Any) -> tuple[Any, tuple[str, ...]]: ...


@dataclass(frozen=True)
class Format:
    """One binary format as the rest of ffitool sees it. The reader and packer are named as
    "module:attribute" and imported when an input needs them, so learning the registry costs
    no format's code."""

    name: str
    containers: tuple[str, ...]
    """The containers (`sniff` results, also the reports' "format") it reads."""
    reader: str
    """(stream, size, display name, archive member or None, where the stream starts in the
    file, descriptor of the file or None) -> an Image, or a tuple of them (one per slice)."""
    in_archives: bool
    """Whether its objects are read as ar archive members."""
    packable_kinds: frozenset[str] = frozenset()
    """The kinds of image (`Image.kind`) that pack can rewrite; none: no packer."""
    packer: str | None = None
    """The Packer class: made with no arguments, or with (architectures to pack, whether to
    remove the signature) for a format with `slices`."""
    slices: bool = False
    """Whether the file holds architecture slices and signatures that pack options select."""
    arch_names: Mapping[str, str] = field(default_factory=dict)
    """The reader's machine names as the format's own tools spell them (`--arch`), where they
    differ."""

    def read(
        self,
        stream: BinaryIO,
        size: int,
        display: str,
        member: str | None = None,
        base: int = 0,
        fd: int | None = None,
    ) -> tuple[Image, ...]:
        """The images of one file (or archive member) of this format."""
        found = _attribute(self.reader)(stream, size, display, member, base, fd)
        return found if isinstance(found, tuple) else (found,)

    def make_packer(self, arches: tuple[str, ...], remove_signature: bool) -> Packer:
        """This format's packer (only for a format with one)."""
        assert self.packer is not None, f"{self.name} has no packer"
        made = _attribute(self.packer)
        return made(arches, remove_signature) if self.slices else made()


def _attribute(reference: str) -> Any:
    module, name = reference.split(":")
    return getattr(import_module(module), name)


@cache
def formats() -> tuple[Format, ...]:
    """Every registered format, its package imported (each package's `__init__` is small)."""
    return tuple(import_module(package).FORMAT for package in _PACKAGES)


def format_named(container: str) -> Format | None:
    """The format that reads a container, by the name `sniff` and the reports give it."""
    return next((f for f in formats() if container in f.containers), None)


@dataclass(frozen=True)
class ObjectFile:
    """An input file split into the images that have their own symbol tables."""

    format: str
    """The container: "ELF", "Mach-O", "Mach-O universal", "PE" or "ar archive"."""
    size: int
    images: tuple[Image, ...]
    unreadable: tuple[tuple[str, str], ...] = ()
    """(member, one-line error) of each archive member that could not be read."""


_UNSUPPORTED = {
    sniff.THIN_ARCHIVE: "thin ar archives hold no members to read",
    sniff.MACHO_32_FILE: "32-bit Mach-O files are not supported yet",
    sniff.COFF_OBJECT: (
        "COFF objects are not supported (inspect the DLL or EXE they are linked into)"
    ),
    sniff.CUBIN_FILE: "a CUDA cubin is device code, not a host library (`inspect` decodes it)",
    sniff.FATBIN_FILE: "a CUDA fatbin is device code, not a host library (`inspect` decodes it)",
}


def read_object(stream: BinaryIO, size: int, display_name: str) -> ObjectFile:
    """Sniff the format of an open file and read its images; raises InputError if unsupported."""
    stream.seek(0)
    container = sniff.sniff(stream.read(sniff.HEAD_SIZE))
    fd = _descriptor(stream)
    found = None if container is None else format_named(container)
    if container is not None and found is not None:
        return ObjectFile(container, size, found.read(stream, size, display_name, None, 0, fd))
    if container == sniff.ARCHIVE and sniff.is_coff_library(stream, size):
        raise InputError(
            f"{display_name}: COFF libraries (.lib) are not supported (inspect the DLL instead)"
        )
    if container == sniff.ARCHIVE:
        images, unreadable = _archive_images(stream, size, display_name, fd)
        return ObjectFile(container, size, tuple(images), tuple(unreadable))
    if container is not None:
        raise InputError(f"{display_name}: {_UNSUPPORTED[container]}")
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
    images: list[Image] = []
    unreadable = []
    for member in archive.iter_members(stream, size, display_name):
        if member.error:
            unreadable.append((member.name, member.error))
            continue
        stream.seek(member.offset)
        container = sniff.sniff(stream.read(sniff.HEAD_SIZE))
        found = None if container is None else format_named(container)
        if found is None or not found.in_archives or container == sniff.UNIVERSAL_FILE:
            continue
        window = cast(BinaryIO, Window(stream, member.offset, member.size))
        try:
            images.extend(
                found.read(window, member.size, display_name, member.name, member.offset, fd)
            )
        except InputError as exc:
            unreadable.append((member.name, str(exc)))
    return images, unreadable


class Window(io.RawIOBase):
    """A read-only view of `size` bytes of `base` starting at `start`, for per-member parsing;
    `name` names it in messages, as a file's name does.

    It is the binary file the readers take: a raw stream is not a `typing.BinaryIO` to a type
    checker (typeshed declares that of the concrete file classes only), so it is cast to one
    where it is made."""

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

    def readinto(self, buffer: WriteableBuffer) -> int:
        target = memoryview(buffer).cast("B")
        count = max(0, min(len(target), self._size - self._pos))
        self._base.seek(self._start + self._pos)
        data = self._base.read(count)
        target[: len(data)] = data
        self._pos += len(data)
        return len(data)
