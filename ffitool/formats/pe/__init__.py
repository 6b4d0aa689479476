"""PE (Windows DLLs and executables): everything ffitool knows of it.

- `reader`: the headers, sections and export directory, read once for inspect, pack and
  verify;
- `layout`: the header fields and the whole export directory the writer and verifier need,
  taken from what the reader read, and the checksum;
- `writer`: pack's edit, a new section and a new export directory;
- `verify`: the checks a packed file passes before it replaces anything;
- `packer`: the seam the pack flow drives.

This module stays small: the registry imports it to learn the format, not to read one.
"""

from __future__ import annotations

from ffitool.formats import Format
from ffitool.formats.sniff import PE_FILE

FORMAT = Format(
    name="PE",
    containers=(PE_FILE,),
    reader="ffitool.formats.pe.reader:read_pe",
    in_archives=False,
    packable_kinds=frozenset({"shared library"}),
    packer="ffitool.formats.pe.packer:PePacker",
)
