"""PE reader: FFI exports of Windows DLLs and EXEs, PE32 and PE32+.

A DLL has no symbol table that the loader uses: `GetProcAddress` searches the export directory
(a name pointer table, sorted, beside an ordinal table and the export address table). So the
export directory is this reader's one symbol table. Every count, RVA and offset it states is
checked against the section table and the file size before anything is read, and the tables
are read in bounded windows, so a lying header ends in a one-line error, never in a huge
allocation, and nothing is followed twice (forwarders are reported, never resolved).

Only the marked names are decoded: the name strings are searched for the FFI markers the way
the ELF and Mach-O string tables are (strtab.py), and only the name pointers that point into a
matching string are looked up in the ordinal and address tables. `exports` lists everything,
for the tests; the writer reads the directory whole, as bytes, through `layout.export_table`.
"""

from __future__ import annotations

import contextlib
import os
import struct
import sys
from array import array
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

from ffitool.errors import InputError
from ffitool.formats.base import Image, Location, Symbol, SymbolTable
from ffitool.formats.strtab import (
    SYMBOL_SLICE,
    Names,
    WindowedTable,
    candidate_ranges,
    matching_entries,
    offset_filter,
)

_PE_SIGNATURE = b"PE\0\0"
COFF_HEADER = struct.Struct("<HHIIIHH")
SECTION_HEADER = struct.Struct("<8sIIIIIIHHI")
EXPORT_DIRECTORY = struct.Struct("<IIHHIIIIIII")
_PE32 = 0x10B
_PE32_PLUS = 0x20B
OPTIONAL_AT = 4 + COFF_HEADER.size
"""The optional header's offset from the PE signature."""
DATA_DIRECTORIES = {_PE32: 96, _PE32_PLUS: 112}
"""Where the data directories start in the optional header of each kind (NumberOfRvaAndSizes
is the 4 bytes before)."""
EXPORT_ENTRY = 0
SECURITY_ENTRY = 4
MAX_SECTIONS = 96
"""The limit the PE specification states for the Windows loader (the field allows 65,535):
it also bounds the section lookups, which scan the table."""
_MAX_HEADER_OFFSET = 1 << 28

_MACHINES = {0x8664: "x86-64", 0xAA64: "aarch64", 0x14C: "x86", 0x1C4: "arm", 0xA641: "arm64ec"}
_IMAGE_FILE_DLL = 0x2000
_SCN_UNINITIALIZED_DATA = 0x80
_SCN_MEM_EXECUTE = 0x20000000
_WIN_CERTIFICATE = struct.Struct("<IHH")


class PeMalformed(Exception):
    """A structural problem, turned into one InputError naming the file."""


@dataclass(frozen=True)
class Section:
    """One section header: where its bytes are in memory (RVA) and in the file, which is
    what every RVA the export directory states is translated through."""

    name: str
    virtual_address: int
    virtual_size: int
    raw_size: int
    raw_offset: int
    flags: int

    @property
    def backed(self) -> int:
        """Bytes of the section the file holds: the loader maps at most VirtualSize of the
        raw data (a VirtualSize of 0, from old linkers, means the raw size)."""
        if self.flags & _SCN_UNINITIALIZED_DATA:
            return 0
        return min(self.virtual_size, self.raw_size) if self.virtual_size else self.raw_size

    @property
    def extent(self) -> int:
        return max(self.virtual_size, self.raw_size)

    @property
    def executable(self) -> bool:
        return bool(self.flags & _SCN_MEM_EXECUTE)


@dataclass(frozen=True)
class Export:
    """One entry of the export address table, named or not."""

    ordinal: int
    """The biased ordinal (what a .def file and `GetProcAddress(MAKEINTRESOURCE(n))` use)."""
    name: str | None
    """None for an export by ordinal only."""
    rva: int
    forwarder: str | None
    """"DLL.name" (or "DLL.#ordinal") when the RVA points at a forwarder string."""


@dataclass
class Headers:
    """The COFF and optional headers and the section table, read once: what the reader needs
    (the data directories' (RVA, size) of the exports and (file offset, size) of the
    certificate table), and the raw bytes the writer and verifier take their fields from
    (`layout.PeLayout`)."""

    machine: int
    characteristics: int
    bits: int
    sections: list[Section]
    exports: tuple[int, int]
    security: tuple[int, int]
    signature_at: int
    magic: int
    optional: bytes
    """The optional header, all `SizeOfOptionalHeader` bytes of it."""
    directory_count: int
    """NumberOfRvaAndSizes (0 when the optional header is too short to hold it)."""
    raw_sections: bytes
    """The section table as the file holds it."""


class PeFile:
    """One PE file opened for reading, with every range checked against the file size."""

    def __init__(self, stream: BinaryIO, fd: int | None, size: int) -> None:
        self.stream = stream
        self.fd = fd
        self.size = size
        self._names: dict[int, Names] = {}
        self.headers = self._headers()

    def read(self, offset: int, count: int, what: str) -> bytes:
        if offset < 0 or count < 0 or offset + count > self.size:
            raise PeMalformed(
                f"{what} ({count} bytes at offset {offset}) extends past the end of the file"
                f" ({self.size} bytes)"
            )
        if self.fd is not None:
            data = os.pread(self.fd, count, offset)
        else:
            self.stream.seek(offset)
            data = self.stream.read(count)
        if len(data) != count:
            raise PeMalformed("the file shrank while it was being read")
        return data

    def _headers(self) -> Headers:
        dos = self.read(0, 64, "DOS header")
        lfanew = int.from_bytes(dos[60:64], "little")
        if lfanew > min(self.size, _MAX_HEADER_OFFSET) or lfanew + 24 > self.size:
            raise PeMalformed("no PE header: an MS-DOS program, or a truncated file")
        if self.read(lfanew, 4, "PE signature") != _PE_SIGNATURE:
            raise PeMalformed("no PE signature: an MS-DOS program or another MZ format")
        fields = COFF_HEADER.unpack(self.read(lfanew + 4, COFF_HEADER.size, "COFF header"))
        machine, nsections, _, _, _, optional_size, characteristics = fields
        if nsections > MAX_SECTIONS:
            raise PeMalformed(f"COFF header claims {nsections} sections (at most {MAX_SECTIONS})")
        optional_at = lfanew + OPTIONAL_AT
        optional = self.read(optional_at, optional_size, "optional header")
        if len(optional) < 2 or int.from_bytes(optional[:2], "little") not in DATA_DIRECTORIES:
            raise PeMalformed("no PE32 or PE32+ optional header (a COFF object?)")
        magic = int.from_bytes(optional[:2], "little")
        start = DATA_DIRECTORIES[magic]
        # NumberOfRvaAndSizes, just before the directories, bounded by the header's size.
        ndirs = (
            int.from_bytes(optional[start - 4 : start], "little") if len(optional) >= start else 0
        )
        directories = optional[start : start + 8 * ndirs]

        def directory(index: int) -> tuple[int, int]:
            if 8 * index + 8 > len(directories):
                return 0, 0
            rva, length = struct.unpack_from("<II", directories, 8 * index)
            return rva, length

        table = self.read(
            optional_at + optional_size, nsections * SECTION_HEADER.size, "section table"
        )
        sections = []
        for index in range(nsections):
            raw = SECTION_HEADER.unpack_from(table, index * SECTION_HEADER.size)
            name = raw[0].split(b"\0", 1)[0].decode("utf-8", "backslashreplace")
            sections.append(Section(name, raw[2], raw[1], raw[3], raw[4], raw[9]))
        return Headers(
            machine,
            characteristics,
            64 if magic == _PE32_PLUS else 32,
            sections,
            directory(EXPORT_ENTRY),
            directory(SECURITY_ENTRY),
            signature_at=lfanew,
            magic=magic,
            optional=optional,
            directory_count=ndirs,
            raw_sections=table,
        )

    def section_of(self, rva: int) -> Section | None:
        for section in self.headers.sections:
            if section.virtual_address <= rva < section.virtual_address + section.extent:
                return section
        return None

    def offset_of(self, rva: int, count: int, what: str) -> int:
        """The file offset of `count` bytes at `rva`, all inside one section's file bytes."""
        section = self.section_of(rva)
        if section is None:
            raise PeMalformed(f"{what} at RVA {rva:#x} is in no section")
        delta = rva - section.virtual_address
        if delta + count > section.backed:
            raise PeMalformed(f"{what} at RVA {rva:#x} runs past the file bytes of {section.name}")
        offset = section.raw_offset + delta
        if offset + count > self.size:
            raise PeMalformed(f"{what} at RVA {rva:#x} extends past the end of the file")
        return offset

    def read_rva(self, rva: int, count: int, what: str) -> bytes:
        return self.read(self.offset_of(rva, count, what), count, what)

    def strings(self, rva: int) -> WindowedTable | bytes:
        """The file bytes of the section holding `rva`, from `rva` to the section's end: where
        a name or forwarder string at `rva` must end."""
        section = self.section_of(rva)
        if section is None:
            # unreachable: every caller passes an RVA the reader has already placed in a
            # section (each name pointer is checked; forwarders lie in the export directory).
            raise PeMalformed(f"name at RVA {rva:#x} is in no section")
        delta = rva - section.virtual_address
        length = min(section.backed - delta, self.size - section.raw_offset - delta)
        if length <= 0:
            raise PeMalformed(f"name at RVA {rva:#x} is not backed by file bytes")
        offset = section.raw_offset + delta
        if self.fd is not None:
            return WindowedTable(self.fd, offset, length)
        return self.read(offset, length, "names")

    def text(self, rva: int) -> str:
        """The NUL-terminated string at `rva` (a name, a forwarder), read through one cached
        view of its section, so that consecutive names cost a slice, not a read each, and
        any number of pointers to one string cost one read (see `Names`)."""
        section = self.section_of(rva)
        if section is None:
            raise PeMalformed(f"name at RVA {rva:#x} is in no section")
        names = self._names.get(section.virtual_address)
        if names is None:
            table = self.strings(section.virtual_address)
            names = Names(table, PeMalformed, f"{section.name} export name")
            self._names[section.virtual_address] = names
        if rva - section.virtual_address >= len(names):
            raise PeMalformed(f"name at RVA {rva:#x} is not backed by file bytes")
        return names[rva - section.virtual_address]


@dataclass(frozen=True)
class Directory:
    """The export directory's tables, checked: they lie in the file."""

    base: int
    functions: int
    names: int
    address_table: int
    name_table: int
    ordinal_table: int
    start: int
    end: int
    """The export directory's RVA range: an address inside it is a forwarder string."""


def export_directory(pe: PeFile) -> Directory | None:
    rva, length = pe.headers.exports
    if not rva or not length:
        return None
    fields = EXPORT_DIRECTORY.unpack(pe.read_rva(rva, EXPORT_DIRECTORY.size, "export directory"))
    _, _, _, _, _, base, functions, names, address_table, name_table, ordinal_table = fields
    directory = Directory(
        base, functions, names, address_table, name_table, ordinal_table, rva, rva + length
    )
    if functions:
        pe.offset_of(address_table, 4 * functions, "export address table")
    if names:
        pe.offset_of(name_table, 4 * names, "export name pointer table")
        pe.offset_of(ordinal_table, 2 * names, "export ordinal table")
    return directory


def column(pe: PeFile, rva: int, first: int, last: int, width: int, what: str) -> array[int]:
    """Entries `first` to `last` of a table of little-endian words of `width` bytes."""
    data = pe.read_rva(rva + width * first, width * (last - first), what)
    words = array("I" if width == 4 else "H")
    words.frombytes(data)
    if sys.byteorder != "little":
        words.byteswap()
    return words


def _name_spans(pe: PeFile, directory: Directory) -> Iterator[tuple[int, WindowedTable | bytes]]:
    """(RVA, bytes from that RVA to its section's end) of each section that holds names.

    The name pointer table is read a slice at a time for its lowest pointer per section; the
    strings from there to the section's end are what is searched for markers.
    """
    lowest: dict[int, int] = {}
    for first in range(0, directory.names, SYMBOL_SLICE):
        last = min(directory.names, first + SYMBOL_SLICE)
        pointers = column(pe, directory.name_table, first, last, 4, "export name pointer table")
        low = min(pointers)
        high = max(pointers)
        for rva in (low, high) if pe.section_of(low) is pe.section_of(high) else pointers:
            section = pe.section_of(rva)
            if section is None:
                raise PeMalformed(f"export name at RVA {rva:#x} is in no section")
            key = section.virtual_address
            lowest[key] = min(lowest.get(key, rva), rva)
    for rva in sorted(lowest.values()):
        yield rva, pe.strings(rva)


def _ffi_exports(pe: PeFile, directory: Directory) -> list[tuple[int, str]]:
    """(index in the name tables, name) of the exports whose names carry an FFI marker.

    A name listed twice is kept once, at its first index, as a binary search finds one: a
    table of a million pointers to one marked name costs a million integers, not symbols,
    and one read of the name.
    """
    found: dict[str, int] = {}
    decoded: set[int] = set()
    for origin, strings in _name_spans(pe, directory):
        ranges = [(origin + a, origin + b) for a, b in candidate_ranges(strings)]
        if not ranges:
            continue
        wanted = offset_filter(ranges)
        for first in range(0, directory.names, SYMBOL_SLICE):
            last = min(directory.names, first + SYMBOL_SLICE)
            pointers = column(pe, directory.name_table, first, last, 4, "export name pointer table")
            for index, rva in matching_entries(pointers, wanted(pointers)):
                if rva not in decoded:
                    decoded.add(rva)
                    found.setdefault(pe.text(rva), first + index)
    return sorted((index, name) for name, index in found.items())


def _export(pe: PeFile, directory: Directory, position: int, name: str | None) -> Export:
    """The export at `position` of the address table, with its forwarder if it has one."""
    (rva,) = column(pe, directory.address_table, position, position + 1, 4, "export address")
    forwarder = None
    if directory.start <= rva < directory.end:
        forwarder = pe.text(rva)
    return Export(directory.base + position, name, rva, forwarder)


def check_position(directory: Directory, index: int, position: int) -> None:
    """Refuse name `index`'s entry of the ordinal table, `position`, unless it is a slot of
    the export address table."""
    if position >= directory.functions:
        raise PeMalformed(f"export name {index} has ordinal index {position}, past the exports")


def _ordinal_position(pe: PeFile, directory: Directory, index: int) -> int:
    (position,) = column(pe, directory.ordinal_table, index, index + 1, 2, "export ordinal")
    check_position(directory, index, position)
    return position


def open_pe(stream: BinaryIO, size: int, display_name: str, fd: int | None = None) -> PeFile:
    """A PE file with its headers and section table read and checked."""
    with _errors(display_name):
        return PeFile(stream, fd, size)


def exports(pe: PeFile, display_name: str) -> list[Export]:
    """Every export of a PE file, in ordinal order: named ones, ordinal-only ones and
    forwarders (unused address table slots, RVA 0, are left out)."""
    with _errors(display_name):
        directory = export_directory(pe)
        if directory is None:
            return []
        names: dict[int, str] = {}
        for first in range(0, directory.names, SYMBOL_SLICE):
            last = min(directory.names, first + SYMBOL_SLICE)
            pointers = column(pe, directory.name_table, first, last, 4, "export name pointer table")
            positions = column(pe, directory.ordinal_table, first, last, 2, "export ordinals")
            for index, (rva, position) in enumerate(zip(pointers, positions, strict=True), first):
                check_position(directory, index, position)
                names.setdefault(position, pe.text(rva))
        found = []
        for first in range(0, directory.functions, SYMBOL_SLICE):
            last = min(directory.functions, first + SYMBOL_SLICE)
            addresses = column(pe, directory.address_table, first, last, 4, "export addresses")
            for position, rva in enumerate(addresses, first):
                if rva:
                    forwarder = pe.text(rva) if directory.start <= rva < directory.end else None
                    found.append(
                        Export(directory.base + position, names.get(position), rva, forwarder)
                    )
        return found


def read_pe(
    stream: BinaryIO,
    size: int,
    display_name: str,
    member: str | None = None,
    base: int = 0,
    fd: int | None = None,
) -> Image:
    """The FFI exports of a PE image (a DLL, or an EXE that exports functions).

    `member` and `base` complete the registry's reader signature: a PE file is never read as
    an archive member (Microsoft libraries are refused), so it always starts at 0."""
    pe = open_pe(stream, size, display_name, fd)
    with _errors(display_name):
        headers = pe.headers
        directory = export_directory(pe)
        symbols: list[Symbol] = []
        locations: dict[tuple[str, SymbolTable], Location] = {}
        if directory is not None:
            for index, name in _ffi_exports(pe, directory):
                position = _ordinal_position(pe, directory, index)
                entry = _export(pe, directory, position, name)
                symbol = _symbol(pe, entry, name)
                symbols.append(symbol)
                location = _locate(pe, symbol)
                if location is not None:
                    locations[(name, SymbolTable.EXPORTS)] = location
        dll = bool(headers.characteristics & _IMAGE_FILE_DLL)
        return Image(
            member=None,
            format="PE",
            kind="shared library" if dll else "executable",
            loadable=True,
            machine=_MACHINES.get(headers.machine, f"machine {headers.machine:#x}"),
            bits=headers.bits,
            endianness="little",
            symbols=tuple(symbols),
            tables=(SymbolTable.EXPORTS,) if directory is not None else (),
            locations=locations,
            signature=_signature(pe),
        )


def _symbol(pe: PeFile, entry: Export, name: str) -> Symbol:
    """An export as a symbol. A forwarder is exported (the loader resolves it in the other
    DLL) but defined in no section of this file, so it is not counted as a function here."""
    if entry.forwarder is not None:
        return Symbol(
            name=name,
            table=SymbolTable.EXPORTS,
            binding="FORWARDER",
            type=f"FORWARDER to {entry.forwarder}",
            visibility="DEFAULT",
            address=entry.rva,
            size=0,
            section=None,
            exported=True,
            external=True,
        )
    section = pe.section_of(entry.rva)
    return Symbol(
        name=name,
        table=SymbolTable.EXPORTS,
        binding="EXPORT",
        type="FUNC" if section is not None and section.executable else "OBJECT",
        visibility="DEFAULT",
        address=entry.rva,
        size=0,
        section=section.name if section is not None else "*no section*",
        nobits=section is not None and entry.rva - section.virtual_address >= section.backed,
        executable=section.executable if section is not None else None,
        exported=True,
        external=True,
        hidden_because="",
    )


def _locate(pe: PeFile, symbol: Symbol) -> Location | None:
    """File bytes from a data export to the end of its section's file bytes: PE has no
    symbol sizes, and the blob's own nbytes header bounds it within them."""
    if symbol.section is None or symbol.nobits or symbol.executable is not False:
        return None
    section = pe.section_of(symbol.address)
    if section is None:
        return None
    delta = symbol.address - section.virtual_address
    start = section.raw_offset + delta
    available = min(section.backed - delta, pe.size - start)
    if available <= 0:
        return None
    return Location(start, available)


def _signature(pe: PeFile) -> str:
    """ "certificate" when the security directory holds an Authenticode certificate table
    (its address is a file offset, not an RVA), else "none"."""
    offset, length = pe.headers.security
    if not offset or not length:
        return "none"
    if offset + length > pe.size:
        raise PeMalformed(
            f"certificate table ({length} bytes at offset {offset}) extends past"
            " the end of the file"
        )
    header = pe.read(offset, _WIN_CERTIFICATE.size, "certificate table")
    entry_length = _WIN_CERTIFICATE.unpack(header)[0]
    if entry_length < _WIN_CERTIFICATE.size or entry_length > length:
        raise PeMalformed(f"certificate entry of {entry_length} bytes in a {length}-byte table")
    return "certificate"


@contextlib.contextmanager
def _errors(display_name: str) -> Iterator[None]:
    """Turns structural problems and read errors into one InputError naming the file."""
    try:
        yield
    except PeMalformed as exc:
        raise InputError(f"{display_name}: malformed PE: {exc}") from None
    except OSError as exc:
        raise InputError(f"{display_name}: read error: {exc.strerror or exc}") from None
