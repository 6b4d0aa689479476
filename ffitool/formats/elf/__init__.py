"""ELF: everything ffitool knows of it.

- `reader`: the section and dynamic symbol tables, through pyelftools' structs and mmap;
- `dynamic`: what the loader reads through PT_DYNAMIC alone (hash tables, versions, relocations);
- `writer` and `tables`: pack's edit, which grows the file without moving what is there;
- `verify`: the checks a packed file passes before it replaces anything;
- `packer`: the seam the pack flow drives.

This module stays small: the registry imports it to learn the format, not to read one.
"""

from __future__ import annotations

from typing import BinaryIO

from ffitool.formats import Format, Image, Packer
from ffitool.formats.sniff import ELF_FILE


def _read(
    stream: BinaryIO, size: int, display: str, member: str | None, base: int, fd: int | None
) -> tuple[Image, ...]:
    from ffitool.formats.elf.reader import read_elf

    return (read_elf(stream, size, display, member, base, fd),)


def _packer(arches: tuple[str, ...], remove_signature: bool) -> Packer:
    from ffitool.formats.elf.packer import ElfPacker

    return ElfPacker()


FORMAT = Format(
    name="ELF",
    containers=(ELF_FILE,),
    read=_read,
    in_archives=True,
    packable_kinds=frozenset({"shared library"}),
    packer=_packer,
)
