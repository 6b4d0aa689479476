"""A new file made from an input file: the one way every format's writer writes its output.

Each format's plan says, before a byte is written, how big the output is, which ranges of the
input it holds and where, which bytes replace or follow them, and where the blob goes; the
format's writer then finishes what can only be computed over the bytes as written (PE's
checksum, Mach-O's signatures). How those pieces reach the file is the same for every format
and lives here, once.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field

from ffitool.edit.plan import PayloadSource
from ffitool.edit.stream import copy_payload

BlobWriter = Callable[[int, int], None]
"""`write_blob(out_fd, offset)`: streams the planned blob into the output at `offset`."""


@dataclass(kw_only=True)
class FileEdit:
    """An output file, decided before a byte is written. Every copy, patch and blob lies
    inside its first `size` bytes; what none of them covers reads as zeros."""

    size: int = 0
    """The output's size."""
    copies: list[tuple[int, int, int]] = field(default_factory=list)
    """(input offset, length, output offset): input bytes the output holds."""
    patches: list[tuple[int, bytes]] = field(default_factory=list)
    """New bytes at output offsets: over copied bytes (header fields, tables rewritten in
    place), or past them (new tables)."""
    blobs: list[int] = field(default_factory=list)
    """Output offsets the blob is written at (one per slice of a fat Mach-O file)."""

    def apply(
        self,
        source: str,
        out_fd: int,
        write_blob: BlobWriter,
        rewrite_copied: Callable[[int], None] | None = None,
    ) -> None:
        """Write the output to `out_fd`, a new empty file, from the input at `source`.

        The file is first given its size: it has that size whatever follows, and a gap no
        copy or patch fills (alignment padding) stays a hole, never written. Copies go through
        the kernel (`copy_payload`). `rewrite_copied(out_fd)`, if given, changes copied bytes
        in place before any patch lands (ELF renumbers relocations there), so a patch always
        has the last word on its bytes; the blob comes last, so that nothing overwrites it.
        """
        os.ftruncate(out_fd, self.size)
        for start, length, at in self.copies:
            if length:
                copy_payload(PayloadSource(source, start, length), out_fd, at)
        if rewrite_copied is not None:
            rewrite_copied(out_fd)
        for at, data in self.patches:
            os.pwrite(out_fd, data, at)
        for offset in self.blobs:
            write_blob(out_fd, offset)
