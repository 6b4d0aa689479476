"""ELF reader: FFI symbols of shared libraries, executables and relocatable objects.

pyelftools parses the structure (headers, sections, segments). Symbol tables are scanned
without building an object per symbol: the string table is searched for the FFI marker in C,
and only the symbols whose name offset falls inside a matching string are decoded. On a
library with 75k dynamic symbols that keeps the scan to a few milliseconds.
"""

from __future__ import annotations

import struct
import sys
from array import array
from typing import BinaryIO

from elftools.common.exceptions import ELFError, ELFParseError
from elftools.elf.elffile import ELFFile
from elftools.elf.sections import Section, SymbolTableSection

from ffitool.errors import InputError
from ffitool.formats.base import Image, Location, Symbol, SymbolTable
from ffitool.symbols import FFI_PREFIX, LEGACY_BIN, LEGACY_CTX

MAGIC = b"\x7fELF"

_MARKERS = (FFI_PREFIX.encode(), LEGACY_BIN.encode() + b"\0", LEGACY_CTX.encode() + b"\0")
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
    stream: BinaryIO, size: int, display_name: str, member: str | None = None, base: int = 0
) -> Image:
    """Read one ELF image of `size` bytes from `stream`; `base` is where it starts in the file."""
    try:
        return _read(ELFFile(stream), size, member, base)
    except PARSE_ERRORS as exc:
        where = f"{display_name}({member})" if member else display_name
        raise InputError(f"{where}: malformed ELF: {exc}") from None


def _read(elf: ELFFile, size: int, member: str | None, base: int) -> Image:
    e_type = elf.header["e_type"]
    if e_type not in _KINDS:
        raise ELFError(f"unsupported ELF type {e_type}")
    sections = list(elf.iter_sections())
    loadable = e_type != "ET_REL"
    segments = [s for s in elf.iter_segments() if s["p_type"] == "PT_LOAD"] if loadable else []
    symbols: list[Symbol] = []
    tables: list[SymbolTable] = []
    locations: dict[tuple[str, SymbolTable], Location] = {}
    for section in sections:
        table = _TABLES.get(section["sh_type"])
        if table is None or not isinstance(section, SymbolTableSection):
            continue
        tables.append(table)
        for symbol, shndx in _ffi_symbols(elf, size, section, table, sections):
            symbols.append(symbol)
            where = _locate(symbol, shndx, sections, segments if loadable else None)
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


def _ffi_symbols(
    elf: ELFFile,
    size: int,
    table_section: SymbolTableSection,
    table: SymbolTable,
    sections: list[Section],
) -> list[tuple[Symbol, object]]:
    """Decode only the symbols whose names carry an FFI marker, with their raw section index."""
    link = table_section["sh_link"]
    if not 0 < link < len(sections):
        raise ELFError(f"{table_section.name}: string table index {link} is out of range")
    strings = _section_bytes(sections[link], size)
    starts = _candidate_name_offsets(strings)
    if not starts:
        return []
    entry_size = table_section["sh_entsize"] or (24 if elf.elfclass == 64 else 16)
    data = _section_bytes(table_section, size)
    count = len(data) // entry_size
    name_offsets = _name_offsets(data, entry_size, count, elf.little_endian)
    wanted = [i for i, offset in enumerate(name_offsets) if offset in starts]
    result = []
    for index in wanted:
        raw = table_section.get_symbol(index)
        name = _c_string(strings, raw["st_name"])
        result.append((_symbol(name, raw, table, sections), raw["st_shndx"]))
    return result


def _section_bytes(section: Section, size: int) -> bytes:
    """A section's contents, after checking that the header's extent lies inside the file.

    pyelftools would otherwise allocate whatever `sh_size` (or a compression header) claims.
    """
    if section["sh_flags"] & SHF_COMPRESSED:
        raise ELFError(f"section {section.name} is compressed; symbol tables never are")
    offset, length = section["sh_offset"], section["sh_size"]
    if offset > size or length > size - offset:
        raise ELFError(
            f"section {section.name} ({length} bytes at offset {offset}) extends past the end"
            f" of the {size}-byte file"
        )
    return section.data()


def _candidate_name_offsets(strings: bytes) -> set[int]:
    """String-table offsets at which a name containing an FFI marker may start.

    Linkers merge string tails, so a symbol's name may start anywhere inside a stored string;
    every offset from the start of the string up to the marker is a candidate.
    """
    starts: set[int] = set()
    for marker in _MARKERS:
        at = strings.find(marker)
        while at != -1:
            begin = strings.rfind(b"\0", 0, at) + 1
            end = strings.find(b"\0", at)
            end = len(strings) if end == -1 else end
            # Once per string, up to its last marker: the set never outgrows the table.
            starts.update(range(begin, strings.rfind(marker, at, end + 1) + 1))
            at = strings.find(marker, end)
    return starts


def _name_offsets(data: bytes, entry_size: int, count: int, little: bool) -> array:
    """The st_name field (first 4 bytes of every entry, both classes) of each symbol."""
    if entry_size % 4:
        return array(
            "I",
            (
                struct.unpack_from("<I" if little else ">I", data, i * entry_size)[0]
                for i in range(count)
            ),
        )
    words = array("I")
    words.frombytes(data[: count * entry_size])
    if little != (sys.byteorder == "little"):
        words.byteswap()
    return words[:: entry_size // 4]


def _c_string(strings: bytes, offset: int) -> str:
    end = strings.find(b"\0", offset)
    raw = strings[offset : end if end != -1 else len(strings)]
    return raw.decode("utf-8", "backslashreplace")


def _symbol(name: str, raw, table: SymbolTable, sections: list[Section]) -> Symbol:
    shndx = raw["st_shndx"]
    section_name: str | None
    nobits = False
    if shndx == "SHN_UNDEF":
        section_name = None
    elif isinstance(shndx, str):
        section_name = _SHN_NAMES.get(shndx, shndx)
    elif 0 <= shndx < len(sections):
        section_name = sections[shndx].name
        nobits = sections[shndx]["sh_type"] == "SHT_NOBITS"
    else:
        section_name = f"#{shndx}"
    info = raw["st_info"]
    return Symbol(
        name=name,
        table=table,
        binding=str(info["bind"]).removeprefix("STB_"),
        type=str(info["type"]).removeprefix("STT_"),
        visibility=str(raw["st_other"]["visibility"]).removeprefix("STV_"),
        address=raw["st_value"],
        size=raw["st_size"],
        section=section_name,
        nobits=nobits,
    )


def _locate(
    symbol: Symbol, shndx: object, sections: list[Section], segments: list | None
) -> Location | None:
    """File bytes behind a defined symbol: through PT_LOAD segments, or its section in an object."""
    if not symbol.defined or symbol.nobits or not isinstance(shndx, int):
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
