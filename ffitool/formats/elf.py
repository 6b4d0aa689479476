"""ELF reader: FFI symbols of shared libraries, executables and relocatable objects.

pyelftools parses the structure (headers, sections, segments). Symbol tables are scanned
without building an object per symbol: the string table is searched for the FFI marker in C,
and only the symbols whose name offset falls inside a matching string are decoded.

The string tables of a libtorch-sized library hold 80 MB of names. They are read through the
file descriptor a window at a time (at most 1 MiB) and searched with the C library's `memmem`
(through ctypes), which skips over mangled names four times faster than `bytes.find` does with
a needle ending in `_`, their most frequent byte. Memory stays bounded whatever the table's
size, and nothing is mapped: a mapped page of a file that another process truncates raises
SIGBUS, which no Python code can catch, where a short read here is an ordinary error.
"""

from __future__ import annotations

import bisect
import functools
import os
import struct
import sys
from array import array
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import BinaryIO, NamedTuple, Protocol

from elftools.common.exceptions import ELFError, ELFParseError
from elftools.common.utils import struct_parse
from elftools.elf import enums as elf_enums
from elftools.elf.structs import ELFStructs

from ffitool.errors import InputError
from ffitool.formats.base import Image, Location, Symbol, SymbolTable
from ffitool.symbols import FFI_PREFIX, LEGACY_BIN, LEGACY_CTX

MAGIC = b"\x7fELF"

_MARKERS = (FFI_PREFIX.encode(), LEGACY_BIN.encode() + b"\0", LEGACY_CTX.encode() + b"\0")
_COMMON_MARKER = b"__tvm_"  # the prefix all markers share: one pass over the string table
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
_INDEX_SEARCH_LIMIT = 64
_EXPANSION_LIMIT = 1 << 16
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

    Given `fd`, a descriptor of that file, the string and symbol tables are memory-mapped
    instead of read (the fast path `inspect` takes).
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
        return _c_string(self._table, offset) if offset < len(self._table) else f"#{index}"


def _ffi_symbols(
    source: _TableSource,
    index: int,
    table: SymbolTable,
    sections: list,
    names: SectionNames,
    loadable: bool,
) -> list[tuple[Symbol, object]]:
    """Decode only the symbols whose names carry an FFI marker, with their raw section index.

    The table is walked in slices of `_SYMBOL_SLICE` entries, so memory stays flat whatever
    size the header claims, and the matching entries are unpacked with `struct` (pyelftools'
    parser costs 100 us a symbol: a minute for 500k functions).
    """
    header = sections[index]
    link = header["sh_link"]
    if not 0 < link < len(sections):
        raise ELFError(f"{names[index]}: string table index {link} is out of range")
    elf = source.elf
    with source.open(sections[link]) as strings:
        ranges = _candidate_ranges(strings)
        if not ranges:
            return []
        layout = _symbol_layout(elf.elfclass, elf.little_endian)
        entry_size = header["sh_entsize"] or layout.size
        if entry_size < layout.size:
            raise ELFError(f"{names[index]}: entry size {entry_size} is too small")
        wanted = _offset_filter(ranges)
        result = []
        with source.open(header) as entries:
            count = len(entries) // entry_size
            for first in range(0, count, _SYMBOL_SLICE):
                last = min(count, first + _SYMBOL_SLICE)
                data = entries[first * entry_size : last * entry_size]
                fields = _st_name_column(data, entry_size, elf.little_endian)
                for number, offset in _matching_entries(fields, wanted(fields)):
                    raw = _unpack_symbol(layout, data, number * entry_size)
                    symbol = _symbol(
                        _c_string(strings, offset), raw, table, sections, names, loadable
                    )
                    result.append((symbol, raw.shndx))
        return result


_SHF_EXECINSTR = 0x4
"""sh_flags bit of sections that hold machine code."""

_SYMBOL_SLICE = 1 << 16
"""Symbol-table entries read at a time (1.5 MiB of a 64-bit table)."""


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
    fields = _st_name_column(section_bytes(elf, header, size), entry_size, elf.little_endian)
    return [number for number, _ in _matching_entries(fields, starts.intersection(fields))]


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


class _Searchable(Protocol):
    """What the string-table scan needs: bytes has it, and so has a mapped table."""

    def __len__(self) -> int: ...
    def find(self, sub: bytes, start: int = ..., end: int | None = ...) -> int: ...
    def rfind(self, sub: bytes, start: int = ..., end: int | None = ...) -> int: ...
    def __getitem__(self, key: slice) -> bytes: ...


class _TableSource:
    """Opens sections of one image as searchable tables: read in windows given a descriptor."""

    def __init__(self, elf: ElfFile, size: int, fd: int | None, base: int) -> None:
        self.elf = elf
        self._size = size
        self._fd = fd
        self._base = base

    @contextmanager
    def open(self, header) -> Iterator[_Searchable]:
        """The section's bytes, after checking that its extent lies inside the image."""
        offset, length = _extent(header, self._size)
        if self._fd is None:
            yield section_bytes(self.elf, header, self._size)
        else:
            yield _WindowedTable(self._fd, self._base + offset, length)


_FIRST_WINDOW = 4 << 10
_LAST_WINDOW = 1 << 20
_CACHED_WINDOW = 64 << 10


class _WindowedTable:
    """One section's bytes with `bytes`-like find, rfind and slicing, read as needed.

    A search reads windows that start small (a name's terminator is usually near) and double
    up to 1 MiB, overlapping by the needle's length so that no match is missed at a border.
    """

    def __init__(self, fd: int, start: int, length: int) -> None:
        self._fd = fd
        self._start = start
        self._length = length
        self._cached_at = 0
        self._cached = b""

    def __len__(self) -> int:
        return self._length

    def _read(self, at: int, count: int) -> bytes:
        """`count` bytes at `at`, from the last window read when it holds them: with many
        marked names close together (100k functions), each costs a slice, not a pread."""
        offset = at - self._cached_at
        if offset >= 0 and offset + count <= len(self._cached):
            return self._cached[offset : offset + count]
        span = min(max(count, _CACHED_WINDOW), self._length - at)
        data = os.pread(self._fd, span, self._start + at)
        if len(data) != span:
            raise ELFError("the file shrank while it was being read")
        self._cached_at, self._cached = at, data
        return data[:count]

    def _bounds(self, start: int, end: int | None) -> tuple[int, int]:
        end = self._length if end is None else min(end, self._length)
        return max(start, 0), end

    def find(self, sub: bytes, start: int = 0, end: int | None = None) -> int:
        start, end = self._bounds(start, end)
        window = _FIRST_WINDOW
        while end - start >= len(sub):
            high = min(end, start + window)
            at = _search(self._read(start, high - start), sub)
            if at != -1:
                return start + at
            if high == end:
                break
            start = high - len(sub) + 1
            window = min(2 * window, _LAST_WINDOW)
        return -1

    def rfind(self, sub: bytes, start: int = 0, end: int | None = None) -> int:
        start, end = self._bounds(start, end)
        window = _FIRST_WINDOW
        while end - start >= len(sub):
            low = max(start, end - window)
            at = self._read(low, end - low).rfind(sub)
            if at != -1:
                return low + at
            if low == start:
                break
            end = low + len(sub) - 1
            window = min(2 * window, _LAST_WINDOW)
        return -1

    def __getitem__(self, key: slice) -> bytes:
        begin, end, _ = key.indices(self._length)
        return self._read(begin, max(begin, end) - begin)


def _search(data: bytes, sub: bytes) -> int:
    """`data.find(sub)`, with the C library's memmem where there is one."""
    memmem = _memmem()
    if memmem is None or len(sub) < 2 or len(data) < len(sub):  # one byte: memchr is as fast
        return data.find(sub)
    import ctypes  # loaded by _memmem already; imported lazily to keep start-up small

    base = ctypes.cast(ctypes.c_char_p(data), ctypes.c_void_p).value
    found = memmem(data, len(data), sub, len(sub))
    return -1 if found is None or base is None else found - base


@functools.cache
def _memmem() -> Callable[[int, int, bytes, int], int | None] | None:
    """The C library's memmem, or None where there is none to be had (Windows)."""
    try:
        import ctypes

        function = ctypes.CDLL(None).memmem
    except (ImportError, OSError, AttributeError, TypeError):
        return None
    function.restype = ctypes.c_void_p
    function.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_char_p, ctypes.c_size_t]
    return function


def _candidate_ranges(strings: _Searchable) -> list[tuple[int, int]]:
    """Ranges (first, last) of string-table offsets where a name with an FFI marker may start.

    Linkers merge string tails, so a symbol's name may start anywhere inside a stored string:
    every offset from the start of the string up to its last marker is a candidate.
    """
    ranges = []
    at = strings.find(_COMMON_MARKER)
    while at != -1:
        begin = strings.rfind(b"\0", 0, at) + 1
        end = strings.find(b"\0", at)
        end = len(strings) if end == -1 else end
        rest = strings[at : end + 1]  # one slice: 500k names are 4M searches otherwise
        last = max(rest.rfind(marker) for marker in _MARKERS)
        if last >= 0:
            ranges.append((begin, at + last))
        at = strings.find(_COMMON_MARKER, end)
    return ranges


def _st_name_column(data: bytes, entry_size: int, little: bool) -> array:
    """The st_name field (first 4 bytes of every entry, both classes) of each symbol."""
    count = len(data) // entry_size
    order = "little" if little else "big"
    if entry_size % 4:
        return array(
            "I",
            (
                int.from_bytes(data[i * entry_size : i * entry_size + 4], order)
                for i in range(count)
            ),
        )
    words = array("I")
    words.frombytes(data[: count * entry_size])
    if little != (sys.byteorder == "little"):
        words.byteswap()
    return words[:: entry_size // 4]


def _offset_filter(ranges: list[tuple[int, int]]) -> Callable[[array], set[int]]:
    """A function from st_name values to those that fall in a candidate range.

    Usually the ranges are a few short names and are expanded into a set once. A crafted table
    with megabyte-long names would make that set huge, so past a bound each distinct st_name
    is looked up in the ranges instead.
    """
    if sum(last - first + 1 for first, last in ranges) <= _EXPANSION_LIMIT:
        starts: set[int] = set()
        for first, last in ranges:
            starts.update(range(first, last + 1))
        return starts.intersection
    firsts = [first for first, _ in ranges]

    def in_ranges(fields: array) -> set[int]:
        wanted = set()
        for offset in set(fields):
            slot = bisect.bisect_right(firsts, offset) - 1
            if slot >= 0 and offset <= ranges[slot][1]:
                wanted.add(offset)
        return wanted

    return in_ranges


def _matching_entries(fields: array, hits: set[int]) -> list[tuple[int, int]]:
    """(index, st_name) of the entries whose st_name is one of `hits`.

    A few hits are located by byte search in the column, in C; many with one pass in Python.
    """
    if len(hits) > _INDEX_SEARCH_LIMIT:
        return [(number, offset) for number, offset in enumerate(fields) if offset in hits]
    column = fields.tobytes()  # 4 bytes an entry, in native order like the patterns below
    found = []
    for offset in hits:
        pattern = array("I", [offset]).tobytes()
        at = column.find(pattern)
        while at != -1:
            if at % 4 == 0:
                found.append((at // 4, offset))
            at = column.find(pattern, at + 1)
    return sorted(found)


def _c_string(strings: _Searchable, offset: int) -> str:
    end = strings.find(b"\0", offset)
    raw = strings[offset : end if end != -1 else len(strings)]
    return raw.decode("utf-8", "backslashreplace")


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
