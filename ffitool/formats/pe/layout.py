"""A PE file's headers and export directory as the writer rewrites them and the verifier
compares them: the optional header's fields at their offsets, the data directories, the whole
export directory, and the checksum.

Nothing here reads a header again: `reader.PeFile` reads the COFF and optional headers and
the section table once, for inspect, pack and verify alike, and `PeLayout` takes its fields
from those bytes. The export tables are read through the reader's `export_directory`, whose
checks they pass; what this module adds is reading them whole, which inspect never needs.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Sequence
from dataclasses import dataclass

from ffitool.files import CHUNK
from ffitool.formats.pe.reader import (
    DATA_DIRECTORIES,
    EXPORT_DIRECTORY,
    OPTIONAL_AT,
    Directory,
    PeFile,
    PeMalformed,
    check_position,
    column,
    export_directory,
)

# Where the optional header's fields are, from its start (the same in PE32 and PE32+).
INITIALIZED_DATA = 8
SECTION_ALIGNMENT = 32
FILE_ALIGNMENT = 36
SIZE_OF_IMAGE = 56
SIZE_OF_HEADERS = 60
CHECKSUM = 64
DLL_CHARACTERISTICS = 70
_DIRECTORY_SLOTS = 16
"""The data directories the PE specification defines; NumberOfRvaAndSizes may state more."""
_NAME_WINDOW = 4096
"""Bytes read past the last name's start for its end: more than any name's length."""


@dataclass(frozen=True)
class ExportTable:
    """An export directory, whole: what a rebuilt one must reproduce."""

    header: tuple[int, ...]
    """The directory's 11 fields (Characteristics ... AddressOfNameOrdinals)."""
    dll_name: bytes
    addresses: list[int]
    """The export address table, one RVA per ordinal from Base (0: an unused slot)."""
    forwarders: dict[int, bytes]
    """Position in the address table -> forwarder string, for entries that are forwarders."""
    names: list[tuple[bytes, int]]
    """The name pointer table in its order: (name, position in the address table)."""

    @property
    def base(self) -> int:
        return self.header[5]

    def resolved(self) -> dict[int, tuple[str, int | bytes]]:
        """Ordinal -> what the loader gives for it: ("forwarder", string) or ("rva", RVA)."""
        return {
            self.base + position: ("forwarder", self.forwarders[position])
            if position in self.forwarders
            else ("rva", rva)
            for position, rva in enumerate(self.addresses)
            if rva
        }


@dataclass(frozen=True)
class PeLayout:
    """A PE file's header fields the writer reads or changes, taken from the headers its
    `PeFile` read; refused when the optional header cannot hold the data directories a
    rewrite sets."""

    pe: PeFile
    section_alignment: int
    file_alignment: int
    size_of_image: int
    size_of_headers: int
    initialized_data: int
    checksum: int
    dll_characteristics: int

    @classmethod
    def read(cls, pe: PeFile) -> PeLayout:
        optional = pe.headers.optional
        count_at = DATA_DIRECTORIES[pe.headers.magic] - 4
        if len(optional) < count_at + 4:
            raise PeMalformed(
                f"an optional header of {len(optional)} bytes has no data directories"
            )
        count = pe.headers.directory_count
        if count_at + 4 + 8 * min(count, _DIRECTORY_SLOTS) > len(optional):
            raise PeMalformed(f"{count} data directories do not fit in the optional header")
        fields = {
            name: struct.unpack_from("<I", optional, at)[0]
            for name, at in (
                ("section_alignment", SECTION_ALIGNMENT),
                ("file_alignment", FILE_ALIGNMENT),
                ("size_of_image", SIZE_OF_IMAGE),
                ("size_of_headers", SIZE_OF_HEADERS),
                ("initialized_data", INITIALIZED_DATA),
                ("checksum", CHECKSUM),
            )
        }
        (characteristics,) = struct.unpack_from("<H", optional, DLL_CHARACTERISTICS)
        return cls(pe, dll_characteristics=characteristics, **fields)

    @property
    def signature_at(self) -> int:
        return self.pe.headers.signature_at

    @property
    def magic(self) -> int:
        return self.pe.headers.magic

    @property
    def optional_size(self) -> int:
        return len(self.pe.headers.optional)

    @property
    def directory_count(self) -> int:
        return self.pe.headers.directory_count

    @property
    def raw_sections(self) -> bytes:
        return self.pe.headers.raw_sections

    @property
    def optional_at(self) -> int:
        return self.signature_at + OPTIONAL_AT

    @property
    def table_at(self) -> int:
        return self.optional_at + self.optional_size

    def directory_at(self, index: int) -> int:
        """The file offset of data directory `index`'s (RVA, size)."""
        return self.optional_at + DATA_DIRECTORIES[self.magic] + 8 * index

    def directory(self, index: int) -> tuple[int, int]:
        """Data directory `index`'s (RVA, size), (0, 0) past NumberOfRvaAndSizes. Read from
        the file: past the 16 the specification defines, the entries NumberOfRvaAndSizes
        states lie beyond the optional header (in the section table, or past the file)."""
        if index >= self.directory_count:
            return 0, 0
        rva, size = struct.unpack("<II", self.pe.read(self.directory_at(index), 8, "directory"))
        return rva, size


def export_table(pe: PeFile) -> ExportTable | None:
    """The whole export directory of `pe`, checked as the reader checks it, or None.

    Its tables and strings, as laid out by any linker, are distinct bytes of the file, so
    together they fit in it; a directory whose entries share bytes (every name pointing into
    one long string at successive offsets) would be copied out far larger than the file, and
    is refused before it is: the copy `writer.build_exports` makes is never more than the
    file's size.
    """
    directory: Directory | None = export_directory(pe)
    if directory is None:
        return None
    rva = directory.start
    header = EXPORT_DIRECTORY.unpack(pe.read_rva(rva, EXPORT_DIRECTORY.size, "export directory"))
    budget = _Budget(pe.size - 4 * directory.functions - 6 * directory.names)
    addresses = list(
        column(pe, directory.address_table, 0, directory.functions, 4, "export address table")
    )
    pointers = column(pe, directory.name_table, 0, directory.names, 4, "export name table")
    positions = column(pe, directory.ordinal_table, 0, directory.names, 2, "export ordinals")
    for index, position in enumerate(positions):
        check_position(directory, index, position)
    names = list(zip(raw_strings(pe, pointers, budget), positions, strict=True))
    forwarded = [p for p, a in enumerate(addresses) if directory.start <= a < directory.end]
    forwarders = dict(
        zip(forwarded, raw_strings(pe, [addresses[p] for p in forwarded], budget), strict=True)
    )
    dll_name = raw_strings(pe, [header[3]], budget)[0] if header[3] else b""
    return ExportTable(header, dll_name, addresses, forwarders, names)


class _Budget:
    """What is left of the file's size for the export tables and strings (see export_table)."""

    def __init__(self, left: int) -> None:
        self.size = left

    def take(self, count: int) -> None:
        self.size -= count
        if self.size < 0:
            raise PeMalformed(
                "the export tables and strings take more bytes than the file holds: they overlap"
            )


def raw_strings(pe: PeFile, rvas: Sequence[int], budget: _Budget) -> list[bytes]:
    """The NUL-terminated strings at `rvas` (names, forwarders) as bytes, copied exactly even
    when they are not UTF-8. When they share a section, as a linker lays them out, the span
    that holds them is read once: 65,535 names cost one read, not one each. Each string's
    length (with its NUL) is taken from `budget` before it is copied, and no string is
    searched past what is left of it, so overlapping strings cost no more than the file."""
    if not rvas:
        return []
    low, high = min(rvas), max(rvas)
    section = pe.section_of(low)
    if section is None or section is not pe.section_of(high):
        return [_raw_string(pe, rva, budget) for rva in rvas]
    stop = min(section.virtual_address + section.backed, high + _NAME_WINDOW)
    data = pe.read_rva(low, max(stop - low, 0), "export names")
    found = []
    for rva in rvas:
        start = rva - low
        end = data.find(b"\0", start, start + budget.size + 1)
        if end < 0:
            found.append(_raw_string(pe, rva, budget))
            continue
        budget.take(end - start + 1)
        found.append(data[start:end])
    return found


def _raw_string(pe: PeFile, rva: int, budget: _Budget) -> bytes:
    table = pe.strings(rva)
    end = table.find(b"\0", 0, budget.size + 1)
    length = end if end != -1 else min(len(table), budget.size + 1)
    budget.take(length + 1)
    return bytes(table[0:length])


def pe_checksum(fd: int, size: int, checksum_at: int) -> int:
    """The optional header's CheckSum of the file: its 16-bit little-endian words summed with
    end-around carry (the CheckSum field counted as zero), folded to 16 bits, plus its size.

    Adding 16-bit words with end-around carry is addition modulo 0xFFFF, and 2**16 is 1 modulo
    0xFFFF, so a chunk's words sum to the chunk read as one little-endian integer, modulo
    0xFFFF: one bignum remainder per megabyte instead of a Python loop per word.
    """
    total = 0
    nonzero = False
    for offset in range(0, size, CHUNK):
        chunk = bytearray(os.pread(fd, min(CHUNK, size - offset), offset))
        if len(chunk) != min(CHUNK, size - offset):
            raise OSError("the file shrank while its checksum was computed")
        field_at = checksum_at - offset
        if -4 < field_at < len(chunk):
            for at in range(max(field_at, 0), min(field_at + 4, len(chunk))):
                chunk[at] = 0
        nonzero = nonzero or chunk.count(0) != len(chunk)
        total = (total + int.from_bytes(chunk, "little") % 0xFFFF) % 0xFFFF
    if total == 0 and nonzero:
        total = 0xFFFF
    return (total + size) & 0xFFFFFFFF
