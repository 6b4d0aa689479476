"""ELF reader: FFI symbols of shared libraries, executables and relocatable objects.

pyelftools parses the structure (headers, sections, segments). Symbol tables are scanned
without building an object per symbol, with the string-table scan of `formats/strtab.py`
(windows read through the descriptor, searched with memmem; memory stays bounded whatever
the table's size, and nothing is mapped).
"""

from __future__ import annotations

import functools
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from typing import BinaryIO, NamedTuple

from elftools.common.exceptions import ELFError, ELFParseError
from elftools.common.utils import struct_parse
from elftools.elf import enums as elf_enums
from elftools.elf.structs import ELFStructs

from ffitool.errors import InputError
from ffitool.formats.base import ELF_MAGIC, Image, Location, Symbol, SymbolTable
from ffitool.formats.strtab import (
    SYMBOL_SLICE,
    Searchable,
    WindowedTable,
    c_string,
    candidate_ranges,
    matching_entries,
    offset_filter,
    st_name_column,
)

MAGIC = ELF_MAGIC

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

    def __getitem__(self, name: str):
        return self.header[name]

    def first_section_header(self):
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
    segments = None
    if loadable:
        program = program_headers(elf, size)
        segments = [h for h in program if h["p_type"] == "PT_LOAD"]
    names = SectionNames(elf, sections, size)
    symbols: list[Symbol] = []
    tables: list[SymbolTable] = []
    locations: dict[tuple[str, SymbolTable], Location] = {}
    source = _TableSource(elf, size, fd, base)
    for index, header in enumerate(sections):
        table = _TABLES.get(header["sh_type"])
        if table is None:
            continue
        tables.append(table)
        for symbol, shndx in _ffi_symbols(source, index, table, sections, names, loadable):
            symbols.append(symbol)
            where = _locate(symbol, shndx, sections, segments, size)
            if where is not None:
                locations[(symbol.name, table)] = Location(
                    where.file_offset + base, where.available
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
        symbols=tuple(symbols),
        tables=tuple(tables),
        locations=locations,
    )


def section_headers(elf: ElfFile, size: int) -> list:
    """Every section header, as pyelftools containers (which can be built back to bytes)."""
    return _read_headers(elf, size, elf.num_sections(), "e_shoff", "e_shentsize", "Elf_Shdr")


def program_headers(elf: ElfFile, size: int) -> list:
    """Every program header, as pyelftools containers."""
    return _read_headers(elf, size, elf.num_segments(), "e_phoff", "e_phentsize", "Elf_Phdr")


def _read_headers(
    elf: ElfFile, size: int, count: int, offset_key: str, size_key: str, struct_name: str
) -> list:
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
    """Section names from the section-header string table, read once."""

    def __init__(self, elf: ElfFile, sections: list, size: int) -> None:
        index = elf["e_shstrndx"]
        if index == _SHN_XINDEX:  # the real index is in section 0's sh_link
            index = sections[0]["sh_link"] if sections else 0
        self._table = (
            section_bytes(elf, sections[index], size) if 0 < index < len(sections) else b""
        )
        self._sections = sections

    def __getitem__(self, index: int) -> str:
        offset = self._sections[index]["sh_name"]
        return c_string(self._table, offset) if offset < len(self._table) else f"#{index}"


def _ffi_symbols(
    source: _TableSource,
    index: int,
    table: SymbolTable,
    sections: list,
    names: SectionNames,
    loadable: bool,
) -> list[tuple[Symbol, object]]:
    """Decode only the symbols whose names carry an FFI marker, with their raw section index.

    The table is walked in slices of `SYMBOL_SLICE` entries, so memory stays flat whatever
    size the header claims, and the matching entries are unpacked with `struct` (pyelftools'
    parser costs 100 us a symbol: a minute for 500k functions).
    """
    header = sections[index]
    link = header["sh_link"]
    if not 0 < link < len(sections):
        raise ELFError(f"{names[index]}: string table index {link} is out of range")
    elf = source.elf
    with source.open(sections[link]) as strings:
        ranges = candidate_ranges(strings)
        if not ranges:
            return []
        layout = _symbol_layout(elf.elfclass, elf.little_endian)
        entry_size = header["sh_entsize"] or layout.size
        if entry_size < layout.size:
            raise ELFError(f"{names[index]}: entry size {entry_size} is too small")
        wanted = offset_filter(ranges)
        result = []
        with source.open(header) as entries:
            count = len(entries) // entry_size
            for first in range(0, count, SYMBOL_SLICE):
                last = min(count, first + SYMBOL_SLICE)
                data = entries[first * entry_size : last * entry_size]
                fields = st_name_column(data, entry_size, elf.little_endian)
                for number, offset in matching_entries(fields, wanted(fields)):
                    raw = _unpack_symbol(layout, data, number * entry_size)
                    symbol = _symbol(
                        c_string(strings, offset), raw, table, sections, names, loadable
                    )
                    result.append((symbol, raw.shndx))
        return result


_SHF_EXECINSTR = 0x4
"""sh_flags bit of sections that hold machine code."""


class _RawSymbol(NamedTuple):
    """The fields of one Elf_Sym, named the way pyelftools names them."""

    value: int
    size: int
    bind: str
    type: str
    visibility: str
    shndx: int | str


def _names(enum: dict, prefix: str, count: int) -> tuple[str, ...]:
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


def _unpack_symbol(layout: struct.Struct, data: bytes, at: int) -> _RawSymbol:
    if layout.format[1:] == "IIIBBH":
        _, value, size, info, other, shndx = layout.unpack_from(data, at)
    else:
        _, info, other, shndx, value, size = layout.unpack_from(data, at)
    return _RawSymbol(
        value,
        size,
        _BINDS[info >> 4],
        _TYPES[info & 0xF],
        _VISIBILITIES[other & 7],
        _SPECIAL_SHNDX.get(shndx, shndx),
    )


def entries_named(elf: ElfFile, size: int, header, sections: list, name: str) -> list[int]:
    """Indices of a symbol table's entries whose name is exactly `name`.

    The same fast path as the reader: the string table is searched in C and st_name compared
    as a column, so a writer need not decode the other 100k entries either.
    """
    strings = section_bytes(elf, sections[header["sh_link"]], size)
    wanted = name.encode() + b"\0"
    starts = set()
    at = strings.find(wanted)
    while at != -1:
        starts.add(at)
        at = strings.find(wanted, at + 1)
    if not starts:
        return []
    entry_size = header["sh_entsize"] or elf.structs.Elf_Sym.sizeof()
    if entry_size < elf.structs.Elf_Sym.sizeof():
        raise ELFError(f"symbol entry size {entry_size} is too small")
    fields = st_name_column(section_bytes(elf, header, size), entry_size, elf.little_endian)
    return [number for number, _ in matching_entries(fields, starts.intersection(fields))]


def section_bytes(elf: ElfFile, header, size: int) -> bytes:
    """A section's contents, after checking that its extent lies inside the file."""
    offset, length = _extent(header, size)
    if not length:
        return b""
    elf.stream.seek(offset)
    return elf.stream.read(length)


def _extent(header, size: int) -> tuple[int, int]:
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


class _TableSource:
    """Opens sections of one image as searchable tables: read in windows given a descriptor."""

    def __init__(self, elf: ElfFile, size: int, fd: int | None, base: int) -> None:
        self.elf = elf
        self._size = size
        self._fd = fd
        self._base = base

    @contextmanager
    def open(self, header) -> Iterator[Searchable]:
        """The section's bytes, after checking that its extent lies inside the image."""
        offset, length = _extent(header, self._size)
        if self._fd is None:
            yield section_bytes(self.elf, header, self._size)
        else:
            yield WindowedTable(self._fd, self._base + offset, length)


def _symbol(
    name: str,
    raw: _RawSymbol,
    table: SymbolTable,
    sections: list,
    names: SectionNames,
    loadable: bool,
) -> Symbol:
    shndx = raw.shndx
    section_name: str | None
    nobits = False
    executable = None
    if shndx == "SHN_UNDEF":
        section_name = None
    elif isinstance(shndx, str):
        section_name = _SHN_NAMES.get(shndx, shndx)
    elif 0 <= shndx < len(sections):
        section_name = names[shndx]
        nobits = sections[shndx]["sh_type"] == "SHT_NOBITS"
        executable = bool(sections[shndx]["sh_flags"] & _SHF_EXECINSTR)
    else:
        section_name = f"#{shndx}"
    return Symbol(
        name=name,
        table=table,
        binding=raw.bind,
        type=raw.type,
        visibility=raw.visibility,
        address=raw.value,
        size=raw.size,
        section=section_name,
        nobits=nobits,
        executable=executable,
        exported=loadable
        and table is SymbolTable.DYNAMIC
        and section_name is not None
        and _dlsym_finds(raw),
        external=raw.bind in ("GLOBAL", "WEAK"),
        hidden_because=_hidden_because(raw, table),
    )


def _dlsym_finds(raw: _RawSymbol) -> bool:
    """The dynamic linker resolves a dynamic-table entry by name only if it is global (or
    weak, or GNU unique) and neither hidden nor internal."""
    return raw.bind in ("GLOBAL", "WEAK", "GNU_UNIQUE") and raw.visibility in (
        "DEFAULT",
        "PROTECTED",
    )


def _hidden_because(raw: _RawSymbol, table: SymbolTable) -> str:
    if table is SymbolTable.STATIC:
        return "only in .symtab, not in the dynamic symbol table"
    return f"{raw.bind} binding and {raw.visibility} visibility"


def _locate(
    symbol: Symbol, shndx: object, sections: list, segments: list | None, size: int
) -> Location | None:
    """File bytes behind a defined data symbol (a blob; functions are never read): through
    PT_LOAD segments, or its section in an object; None unless they start inside the image's
    `size` bytes, and never more than the image holds."""
    found = _located(symbol, shndx, sections, segments)
    if found is None or not 0 <= found.file_offset < size:
        return None
    return Location(found.file_offset, min(found.available, size - found.file_offset))


def _located(
    symbol: Symbol, shndx: object, sections: list, segments: list | None
) -> Location | None:
    """Where the headers say a symbol's bytes are, before checking the file holds them."""
    if not symbol.defined or symbol.nobits or symbol.type == "FUNC" or not isinstance(shndx, int):
        return None
    if segments is not None:
        for segment in segments:
            delta = symbol.address - segment["p_vaddr"]
            if 0 <= delta < segment["p_filesz"]:
                return Location(segment["p_offset"] + delta, segment["p_filesz"] - delta)
        return None
    if not 0 <= shndx < len(sections):
        return None
    section = sections[shndx]
    if 0 <= symbol.address < section["sh_size"]:
        return Location(section["sh_offset"] + symbol.address, section["sh_size"] - symbol.address)
    return None
