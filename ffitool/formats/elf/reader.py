"""ELF reader: FFI symbols of shared libraries, executables and relocatable objects.

pyelftools parses the structure (headers, sections, segments). Symbol tables are scanned
without building an object per symbol, with the string-table scan of `formats/strtab.py`
(windows read through the descriptor, searched with memmem; memory stays bounded whatever
the table's size, and nothing is mapped).

The work is linear in the file: header counts are checked against the file before any header
is parsed; each distinct symbol and string table is read once however many headers name it,
and the distinct ones may not together exceed the file (`_SymbolReader`); each distinct name
offset is decoded once, at most `NAME_LIMIT` bytes (`strtab.Names`).
"""

from __future__ import annotations

import bisect
import functools
import struct
from array import array
from collections.abc import Callable, Mapping
from typing import Any, BinaryIO, NamedTuple

from elftools.common.exceptions import ELFError, ELFParseError
from elftools.common.utils import struct_parse
from elftools.construct.lib.container import Container  # a parsed header, fields by name
from elftools.elf import enums as elf_enums
from elftools.elf.structs import ELFStructs

from ffitool.errors import InputError
from ffitool.formats.base import Image, Location, Symbol, SymbolTable
from ffitool.formats.strtab import (
    SYMBOL_SLICE,
    Names,
    Searchable,
    WindowedTable,
    candidate_ranges,
    matching_entries,
    offset_filter,
    read_exactly,
    st_name_column,
)

_KINDS = {
    "ET_DYN": "shared library",
    "ET_EXEC": "executable",
    "ET_REL": "relocatable object",
}
_MACHINES = {
    "EM_X86_64": "x86-64",
    "EM_386": "x86",
    "EM_AARCH64": "aarch64",
    "EM_ARM": "arm",
    "EM_PPC64": "ppc64",
    "EM_PPC": "ppc",
    "EM_S390": "s390",
    "EM_RISCV": "riscv",
    "EM_MIPS": "mips",
    "EM_LOONGARCH": "loongarch",
}
_TABLES = {"SHT_DYNSYM": SymbolTable.DYNAMIC, "SHT_SYMTAB": SymbolTable.STATIC}
SHF_COMPRESSED = 0x800
_SHN_XINDEX = 0xFFFF
_SHN_NAMES = {"SHN_ABS": "*ABS*", "SHN_COMMON": "*COM*"}

# Errors pyelftools (and the struct parsing under it) raise for malformed input.
PARSE_ERRORS = (
    ELFError,
    ELFParseError,
    struct.error,
    ValueError,
    IndexError,
    KeyError,
    OverflowError,
    UnicodeDecodeError,
    AttributeError,
    TypeError,
)


def read_elf(
    stream: BinaryIO,
    size: int,
    display_name: str,
    member: str | None = None,
    base: int = 0,
    fd: int | None = None,
) -> Image:
    """Read one ELF image of `size` bytes from `stream`; `base` is where it starts in the file.

    Given `fd`, a descriptor of that file, the string and symbol tables are read through it in
    windows (the fast path `inspect` takes) instead of whole through `stream`.
    """
    try:
        return _read(ElfFile(stream), size, member, base, fd)
    except PARSE_ERRORS as exc:
        where = f"{display_name}({member})" if member else display_name
        raise InputError(f"{where}: malformed ELF: {exc}") from None


class ElfFile:
    """The ELF header and pyelftools' structs for this class and byte order.

    pyelftools' ELFFile would do the same, but importing it pulls in its DWARF support, a
    sizeable share of a JSON inspect's start-up.
    """

    def __init__(self, stream: BinaryIO) -> None:
        stream.seek(0)
        ident = stream.read(16)
        elfclass = {1: 32, 2: 64}.get(ident[4]) if len(ident) == 16 else None
        little = {1: True, 2: False}.get(ident[5]) if len(ident) == 16 else None
        if elfclass is None or little is None:
            raise ELFError("bad ELF identification (class or data encoding)")
        self.stream = stream
        self.elfclass = elfclass
        self.little_endian = little
        self.structs = ELFStructs(little_endian=little, elfclass=elfclass)
        self.structs.create_basic_structs()
        self.header = struct_parse(self.structs.Elf_Ehdr, stream, 0)
        self.structs.create_advanced_structs(
            self.header["e_type"], self.header["e_machine"], self.header["e_ident"]["EI_OSABI"]
        )

    def __getitem__(self, name: str) -> Any:
        return self.header[name]

    def first_section_header(self) -> Container:
        return struct_parse(self.structs.Elf_Shdr, self.stream, self.header["e_shoff"])

    def num_sections(self) -> int:
        """e_shnum, or for 0xff00 sections and more, sh_size of section 0 (gABI)."""
        if not self.header["e_shoff"]:
            return 0
        return self.header["e_shnum"] or self.first_section_header()["sh_size"]

    def num_segments(self) -> int:
        """e_phnum, or for PN_XNUM (0xffff), sh_info of section 0 (x86-64 psABI)."""
        if self.header["e_phnum"] < 0xFFFF:
            return self.header["e_phnum"]
        return self.first_section_header()["sh_info"]


def _read(elf: ElfFile, size: int, member: str | None, base: int, fd: int | None) -> Image:
    e_type = elf.header["e_type"]
    if e_type not in _KINDS:
        raise ELFError(f"unsupported ELF type {e_type}")
    # Headers only: pyelftools' section objects parse whole tables (the GNU hash table of a
    # 75k-symbol library costs more than everything else together).
    sections = section_headers(elf, size)
    loadable = e_type != "ET_REL"
    segments = _Segments(program_headers(elf, size)) if loadable else None
    reader = _SymbolReader(_TableSource(elf, size, fd, base), sections, loadable)
    for index, header in enumerate(sections):
        table = _TABLES.get(header["sh_type"])
        if table is not None:
            reader.read(index, table)
    locations: dict[tuple[str, SymbolTable], Location] = {}
    for symbol, shndx in reader.data:
        where = _locate(symbol, shndx, sections, segments, size)
        if where is not None:
            locations[(symbol.name, symbol.table)] = Location(
                where.file_offset + base, where.available, where.in_section
            )
    machine = elf.header["e_machine"]
    return Image(
        member=member,
        format="ELF",
        kind=_KINDS[e_type],
        loadable=loadable,
        machine=_MACHINES.get(machine, str(machine).removeprefix("EM_").lower()),
        bits=elf.elfclass,
        endianness="little" if elf.little_endian else "big",
        symbols=tuple(reader.symbols),
        tables=tuple(reader.tables),
        locations=locations,
    )


def section_headers(elf: ElfFile, size: int) -> list[Container]:
    """Every section header, as pyelftools containers (which can be built back to bytes)."""
    return _read_headers(elf, size, elf.num_sections(), "e_shoff", "e_shentsize", "Elf_Shdr")


def program_headers(elf: ElfFile, size: int) -> list[Container]:
    """Every program header, as pyelftools containers."""
    return _read_headers(elf, size, elf.num_segments(), "e_phoff", "e_phentsize", "Elf_Phdr")


def _read_headers(
    elf: ElfFile, size: int, count: int, offset_key: str, size_key: str, struct_name: str
) -> list[Container]:
    """Parse a section or program header table, refusing counts the file cannot hold."""
    if not count:
        return []
    layout = getattr(elf.structs, struct_name)
    offset, entry_size = elf[offset_key], elf[size_key]
    if entry_size < layout.sizeof():
        raise ELFError(f"{size_key} {entry_size} is smaller than a {struct_name}")
    if offset > size or count > (size - offset) // entry_size:
        raise ELFError(f"{count} {struct_name} entries at offset {offset} do not fit in the file")
    return [struct_parse(layout, elf.stream, offset + i * entry_size) for i in range(count)]


class SectionNames:
    """Section names from the section-header string table, read once, each name once."""

    def __init__(self, elf: ElfFile, sections: list[Container], size: int) -> None:
        index = elf["e_shstrndx"]
        if index == _SHN_XINDEX:  # the real index is in section 0's sh_link
            index = sections[0]["sh_link"] if sections else 0
        table = section_bytes(elf, sections[index], size) if 0 < index < len(sections) else b""
        self._names = Names(table, ELFError, "section name")
        self._length = len(table)
        self._sections = sections

    def __getitem__(self, index: int) -> str:
        offset = self._sections[index]["sh_name"]
        return self._names[offset] if offset < self._length else f"#{index}"


_SHF_EXECINSTR = 0x4
_HIDDEN_VERSION = 0x8000
"""Bit 15 of a `.gnu.version` entry: the symbol is `name@V`, not the default `name@@V`."""
"""sh_flags bit of sections that hold machine code."""


def _names(enum: Mapping[str, object], prefix: str, count: int) -> tuple[str, ...]:
    """Every value of a small field as pyelftools names it, without `prefix`, built once so
    that a million symbols share a handful of strings."""
    named = {value: name for name, value in enum.items() if isinstance(value, int)}
    return tuple(named.get(value, str(value)).removeprefix(prefix) for value in range(count))


_BINDS = _names(elf_enums.ENUM_ST_INFO_BIND, "STB_", 16)
_TYPES = _names(elf_enums.ENUM_ST_INFO_TYPE, "STT_", 16)
_VISIBILITIES = _names(elf_enums.ENUM_ST_VISIBILITY, "STV_", 8)
_SPECIAL_SHNDX = {
    value: name for name, value in elf_enums.ENUM_ST_SHNDX.items() if isinstance(value, int)
}


@functools.cache
def _symbol_layout(elfclass: int, little: bool) -> struct.Struct:
    """Elf32_Sym (name, value, size, info, other, shndx) or Elf64_Sym (name, info, other,
    shndx, value, size)."""
    order = "<" if little else ">"
    return struct.Struct(order + ("IIIBBH" if elfclass == 32 else "IBBHQQ"))


class _Traits(NamedTuple):
    """What a symbol's st_info, st_other and st_shndx make of it, worked out once for every
    symbol that has the same three (100k functions share one)."""

    binding: str
    type: str
    visibility: str
    section: str | None
    nobits: bool
    executable: bool | None
    exported: bool
    external: bool
    hidden_because: str
    shndx: int | str
    """st_shndx, or its special name (SHN_UNDEF, SHN_ABS...)."""
    data: bool
    """A defined data symbol with file contents: one whose bytes the model may read."""


class _Strings(NamedTuple):
    """One string table: its names by offset, and which st_name values may be FFI names."""

    names: Names
    wanted: Callable[[array[int]], set[int]]


class _SymbolReader:
    """The FFI symbols of one image's symbol tables.

    Each symbol table and each string table is read once however many headers name it (a
    header repeated 2,000 times costs one read), and the distinct tables read may not add up
    to more than the image: real tables are disjoint, so the scans cost at most the image's
    size whatever the headers say. Only the entries whose name holds an FFI marker are
    decoded, each distinct name once.
    """

    def __init__(self, source: _TableSource, sections: list[Container], loadable: bool) -> None:
        self.symbols: list[Symbol] = []
        self.tables: list[SymbolTable] = []
        self.data: list[tuple[Symbol, int]] = []
        """The defined data symbols with file contents, with their section index."""
        self._source = source
        self._sections = sections
        self._section_names = SectionNames(source.elf, sections, source.size)
        self._loadable = loadable
        self._scanned: set[tuple[tuple[int, int], int, _Strings]] = set()
        """Symbol tables read: extent, entry size, string table."""
        self._done: set[tuple[SymbolTable, tuple[tuple[int, int], int, _Strings]]] = set()
        """The same, with the kind they were read as (the symbols differ by kind)."""
        self._strings: dict[tuple[int, int], _Strings | None] = {}
        self._spans = {"symbol": 0, "string": 0}
        self._traits: dict[tuple[SymbolTable, int, int, int, bool], _Traits] = {}
        self._layout = _symbol_layout(source.elf.elfclass, source.elf.little_endian)

    def read(self, index: int, table: SymbolTable) -> None:
        """Add the FFI symbols of section `index`, a symbol table of kind `table`."""
        if table not in self.tables:
            self.tables.append(table)
        header = self._sections[index]
        link = header["sh_link"]
        if not 0 < link < len(self._sections):
            raise ELFError(
                f"{self._section_names[index]}: string table index {link} is out of range"
            )
        strings = self._string_table(_extent(self._sections[link], self._source.size))
        if strings is None:
            return
        entry_size = header["sh_entsize"] or self._layout.size
        if entry_size < self._layout.size:
            raise ELFError(f"{self._section_names[index]}: entry size {entry_size} is too small")
        extent = _extent(header, self._source.size)
        scan = (extent, entry_size, strings)
        if (table, scan) in self._done:
            return
        if scan not in self._scanned:
            self._charge("symbol", extent[1])
            self._scanned.add(scan)
        self._done.add((table, scan))
        versions = self._versions(index) if table is SymbolTable.DYNAMIC else b""
        self._scan(table, extent, entry_size, strings, versions)

    def _versions(self, index: int) -> bytes:
        """The `.gnu.version` entries (one u16 per symbol) of dynamic symbol table `index`,
        or nothing. dlsym skips a symbol defined only in a hidden version (`name@V`, not
        `name@@V`: version index 2 or more with bit 15 set), as glibc's lookup does."""
        for header in self._sections:
            if header["sh_type"] == "SHT_GNU_versym" and header["sh_link"] == index:
                extent = _extent(header, self._source.size)
                if extent[1] <= _WHOLE_TABLE:  # 2 bytes a symbol: 4M symbols fit
                    return self._source.table(extent)[:]  # bytes, as this size is read whole
        return b""

    def _charge(self, kind: str, length: int) -> None:
        """Count the bytes of a distinct table read; refuse tables that overlap."""
        self._spans[kind] += length
        if self._spans[kind] > self._source.size:
            raise ELFError(
                f"{kind} tables overlap: the distinct ones span more than the"
                f" {self._source.size} bytes of the file"
            )

    def _string_table(self, extent: tuple[int, int]) -> _Strings | None:
        """The string table at `extent`, scanned for FFI markers once; None without any."""
        if extent not in self._strings:
            self._charge("string", extent[1])
            strings = self._source.table(extent)
            ranges = candidate_ranges(strings)
            self._strings[extent] = (
                _Strings(Names(strings, ELFError, "symbol name"), offset_filter(ranges))
                if ranges
                else None
            )
        return self._strings[extent]

    def _scan(
        self,
        table: SymbolTable,
        extent: tuple[int, int],
        entry_size: int,
        strings: _Strings,
        versions: bytes,
    ) -> None:
        """Decode the entries whose names may be FFI names, a slice of entries at a time.

        Memory stays flat whatever size the header claims, and the matching entries are
        unpacked with `struct` (pyelftools' parser costs 100 us a symbol: a minute for 500k
        functions); what their flags make of them is worked out once per combination.
        """
        entries = self._source.table(extent)
        count = len(entries) // entry_size
        little = self._source.elf.little_endian
        unpack = self._layout.unpack_from
        elf32 = self._layout.size == 16
        names, wanted = strings
        for first in range(0, count, SYMBOL_SLICE):
            data = entries[first * entry_size : min(count, first + SYMBOL_SLICE) * entry_size]
            fields = st_name_column(data, entry_size, little)
            matches = matching_entries(fields, wanted(fields))
            for offset in sorted({offset for _, offset in matches}):
                names[offset]  # in table order: a windowed table is read once through
            for number, offset in matches:
                if elf32:
                    _, value, size, info, other, shndx = unpack(data, number * entry_size)
                else:
                    _, info, other, shndx, value, size = unpack(data, number * entry_size)
                at = 2 * (first + number)
                version = int.from_bytes(versions[at : at + 2], "little" if little else "big")
                hidden = bool(version & _HIDDEN_VERSION) and version & ~_HIDDEN_VERSION >= 2
                key = (table, info, other & 7, shndx, hidden)
                traits = self._traits.get(key) or self._traits.setdefault(key, self._make(*key))
                symbol = Symbol(
                    names[offset],
                    table,
                    traits.binding,
                    traits.type,
                    traits.visibility,
                    value,
                    size,
                    traits.section,
                    traits.nobits,
                    traits.executable,
                    traits.exported,
                    traits.external,
                    traits.hidden_because,
                )
                self.symbols.append(symbol)
                if traits.data:
                    self.data.append((symbol, shndx))

    def _make(
        self, table: SymbolTable, info: int, other: int, shndx: int, hidden_version: bool
    ) -> _Traits:
        binding, kind, visibility = _BINDS[info >> 4], _TYPES[info & 0xF], _VISIBILITIES[other]
        special = _SPECIAL_SHNDX.get(shndx, shndx)
        section: str | None
        nobits = False
        executable = None
        if special == "SHN_UNDEF":
            section = None
        elif isinstance(special, str):
            section = _SHN_NAMES.get(special, special)
        elif shndx < len(self._sections):
            section = self._section_names[shndx]
            nobits = self._sections[shndx]["sh_type"] == "SHT_NOBITS"
            executable = bool(self._sections[shndx]["sh_flags"] & _SHF_EXECINSTR)
        else:
            section = f"#{shndx}"
        return _Traits(
            binding,
            kind,
            visibility,
            section,
            nobits,
            executable,
            exported=self._loadable
            and table is SymbolTable.DYNAMIC
            and section is not None
            and _dlsym_finds(binding, visibility)
            and not hidden_version,
            external=binding in ("GLOBAL", "WEAK"),
            hidden_because=_hidden_because(binding, visibility, table, hidden_version),
            shndx=special,
            data=section is not None and not nobits and kind != "FUNC" and isinstance(special, int),
        )


def _dlsym_finds(binding: str, visibility: str) -> bool:
    """The dynamic linker resolves a dynamic-table entry by name only if it is global (or
    weak, or GNU unique) and neither hidden nor internal."""
    return binding in ("GLOBAL", "WEAK", "GNU_UNIQUE") and visibility in ("DEFAULT", "PROTECTED")


def _hidden_because(binding: str, visibility: str, table: SymbolTable, hidden_version: bool) -> str:
    if table is SymbolTable.STATIC:
        return "only in .symtab, not in the dynamic symbol table"
    if hidden_version and _dlsym_finds(binding, visibility):
        return "defined only in a hidden symbol version (`name@V`, not the default `name@@V`)"
    return f"{binding} binding and {visibility} visibility"


def section_bytes(elf: ElfFile, header: Container, size: int) -> bytes:
    """A section's contents, after checking that its extent lies inside the file."""
    offset, length = _extent(header, size)
    if not length:
        return b""
    elf.stream.seek(offset)
    return elf.stream.read(length)


def _extent(header: Container, size: int) -> tuple[int, int]:
    """(offset, length) of a symbol or string table's bytes, checked against the file size."""
    if header["sh_flags"] & SHF_COMPRESSED:
        raise ELFError("a symbol or string table is compressed; they never are")
    if header["sh_type"] == "SHT_NOBITS":
        return 0, 0
    offset, length = header["sh_offset"], header["sh_size"]
    if offset > size or length > size - offset:
        raise ELFError(
            f"a section of {length} bytes at offset {offset} extends past the end"
            f" of the {size}-byte file"
        )
    return offset, length


_WHOLE_TABLE = 8 << 20
"""Tables up to this size are read whole; a libtorch-sized `.strtab` (80 MB) in windows."""


class _TableSource:
    """Reads tables of one image: in windows given a descriptor, whole otherwise."""

    def __init__(self, elf: ElfFile, size: int, fd: int | None, base: int) -> None:
        self.elf = elf
        self.size = size
        self._fd = fd
        self._base = base

    def table(self, extent: tuple[int, int]) -> Searchable:
        """The bytes at `extent` (checked by `_extent`) of the image: read whole up to
        `_WHOLE_TABLE` (searching and slicing bytes is C's work), in windows past that."""
        offset, length = extent
        if self._fd is None:
            self.elf.stream.seek(offset)
            return self.elf.stream.read(length) if length else b""
        if length <= _WHOLE_TABLE:
            return read_exactly(self._fd, self._base + offset, length)
        return WindowedTable(self._fd, self._base + offset, length)


class _Segments:
    """The PT_LOAD segments of an image by address, so that locating a symbol costs a
    bisection, not a walk over every segment (a header may claim 65,535 of them)."""

    def __init__(self, program: list[Container]) -> None:
        loads = sorted(
            (h["p_vaddr"], h["p_filesz"], h["p_offset"])
            for h in program
            if h["p_type"] == "PT_LOAD" and h["p_filesz"]
        )
        self._starts = [vaddr for vaddr, _, _ in loads]
        self._loads = loads

    def locate(self, address: int) -> Location | None:
        """The file bytes behind `address`: in the segment that starts last at or before it
        (a loader's segments are disjoint: then it is the only one that can hold it)."""
        slot = bisect.bisect_right(self._starts, address) - 1
        if slot < 0:
            return None
        vaddr, filesz, offset = self._loads[slot]
        delta = address - vaddr
        return Location(offset + delta, filesz - delta) if delta < filesz else None


def _locate(
    symbol: Symbol, shndx: int, sections: list[Container], segments: _Segments | None, size: int
) -> Location | None:
    """File bytes behind a defined data symbol (a blob; functions are never read): through
    PT_LOAD segments, or its section in an object; None unless they start inside the image's
    `size` bytes, and never more than the image holds."""
    found = _located(symbol, shndx, sections, segments)
    if found is None or not 0 <= found.file_offset < size:
        return None
    available = min(found.available, size - found.file_offset)
    return Location(found.file_offset, available, _in_section(symbol, shndx, sections, segments))


def _in_section(
    symbol: Symbol, shndx: int, sections: list[Container], segments: _Segments | None
) -> int | None:
    """Bytes from the symbol to the end of its section (0 when its value lies outside it): what
    bounds an embedded cubin, whose end symbol must be in the same section."""
    if not 0 <= shndx < len(sections):
        return None
    section = sections[shndx]
    start = section["sh_addr"] if segments is not None else 0
    return max(0, start + section["sh_size"] - symbol.address) if symbol.address >= start else 0


def _located(
    symbol: Symbol, shndx: int, sections: list[Container], segments: _Segments | None
) -> Location | None:
    """Where the headers say a symbol's bytes are, before checking the file holds them."""
    if segments is not None:
        return segments.locate(symbol.address)
    if not 0 <= shndx < len(sections):
        return None
    section = sections[shndx]
    if 0 <= symbol.address < section["sh_size"]:
        return Location(section["sh_offset"] + symbol.address, section["sh_size"] - symbol.address)
    return None
