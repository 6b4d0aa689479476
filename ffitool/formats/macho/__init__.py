"""Mach-O, thin and universal: everything ffitool knows of it.

- `commands`: the header and load commands, their structs and constants, parsed once for all;
- `reader`: the images' load commands, symbol tables and export tries, for inspect;
- `image`: one slice's load commands and `__LINKEDIT` tables as the writer and verifier see them;
- `trie`: the export trie: its nodes parsed (for the reader's lookups too), decoded, encoded;
- `codesign` and `sign`: code signatures, read and written again ad hoc;
- `writer`: pack's edit of each slice and of the universal header;
- `verify`: the checks a packed file passes before it replaces anything;
- `packer`: the seam the pack flow drives.

This module stays small: the registry imports it to learn the format, not to read one.
"""

from __future__ import annotations

from ffitool.formats import Format
from ffitool.formats.sniff import MACHO_FILE, UNIVERSAL_FILE

FORMAT = Format(
    name="Mach-O",
    containers=(MACHO_FILE, UNIVERSAL_FILE),
    reader="ffitool.formats.macho.reader:read_macho",
    in_archives=True,
    packable_kinds=frozenset({"shared library", "bundle"}),
    packer="ffitool.formats.macho.packer:MachoPacker",
    slices=True,
    arch_names={"x86-64": "x86_64", "aarch64": "arm64"},  # as lipo spells them
)
