"""ELF: everything ffitool knows of it.

- `reader`: the section and dynamic symbol tables, through pyelftools' structs and mmap;
- `dynamic`: what the loader reads through PT_DYNAMIC alone (hash tables, versions, relocations);
- `writer` and `tables`: pack's edit, which grows the file without moving what is there;
- `verify`: the checks a packed file passes before it replaces anything;
- `packer`: the seam the pack flow drives.

This module stays small: the registry imports it to learn the format, not to read one.
"""

from __future__ import annotations

from ffitool.formats import Format
from ffitool.formats.sniff import ELF_FILE

FORMAT = Format(
    name="ELF",
    containers=(ELF_FILE,),
    reader="ffitool.formats.elf.reader:read_elf",
    in_archives=True,
    packable_kinds=frozenset({"shared library"}),
    packer="ffitool.formats.elf.packer:ElfPacker",
)
