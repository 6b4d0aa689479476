"""Mach-O reader: FFI symbols of 64-bit dylibs, bundles and objects, thin or universal.

Every count and offset the file states is checked against the size of its image before
anything is read, and tables are read through the file descriptor in windows, so a lying
header ends in a one-line error, never in a huge allocation. The symbol table is scanned the
way the ELF reader scans its tables (the string table is searched for the FFI marker, and only
the entries that name a marked string are decoded); the export trie is walked once, with a
visited set, so a trie whose edges form a cycle terminates.

Work stays linear in the size of the file (see `strtab.Names` and `_Trie`): each distinct
name offset is decoded once, at most `NAME_LIMIT` bytes, and all names together at most a few
times the string table; each trie node is parsed once, and each distinct name is looked up
once, with work proportional to its length.

Mach-O has no dynamic symbol table: dyld resolves names through the export trie. A symbol is
exported when it is external (N_EXT), not private extern (N_PEXT), defined, and, if the image
has a trie, listed in it. C names carry a leading underscore in the file; `Symbol.name` is the
C name and `Symbol.raw_name` keeps the spelling of the file.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import struct
from dataclasses import dataclass
from typing import BinaryIO

from ffitool.errors import InputError
from ffitool.formats.base import Image, Location, Slice, Symbol, SymbolTable
from ffitool.formats.macho.codesign import LC_CODE_SIGNATURE, SignatureError, signature_state
from ffitool.formats.sniff import FAT_64, MACHO_32, MACHO_64, UNIVERSAL_FILE, sniff
from ffitool.formats.strtab import (
    SYMBOL_SLICE,
    Names,
    WindowedTable,
    candidate_ranges,
    matching_entries,
    offset_filter,
    st_name_column,
)

HEADER = struct.Struct("<IiiIIIII")
_LOAD_COMMAND = struct.Struct("<II")
_SEGMENT = struct.Struct("<16sQQQQiiII")
SECTION = struct.Struct("<16s16sQQIIIIIIII")
NLIST = struct.Struct("<IBBHQ")
FAT_HEADER = struct.Struct(">II")
FAT_ARCH = struct.Struct(">iiIII")
FAT_ARCH_64 = struct.Struct(">iiQQII")

LC_SYMTAB = 0x2
LC_SEGMENT_64 = 0x19
LC_DYLD_INFO = 0x22
LC_DYLD_INFO_ONLY = 0x80000022
LC_DYLD_EXPORTS_TRIE = 0x80000033

_MH_DSYM = 10
_KINDS = {
    1: ("relocatable object", False),
    2: ("executable", True),
    6: ("shared library", True),
    8: ("bundle", True),
    _MH_DSYM: ("debug companion (dSYM)", False),
}
_MACHINES = {0x01000007: "x86-64", 0x0100000C: "aarch64", 7: "x86", 12: "arm"}
_ARCH_NAMES = {
    (0x01000007, 3): "x86_64",
    (0x01000007, 8): "x86_64h",
    (0x0100000C, 0): "arm64",
    (0x0100000C, 1): "arm64",  # CPU_SUBTYPE_ARM64_V8
    (0x0100000C, 2): "arm64e",
}
"""(cputype, cpusubtype without its capability bits) to the name lipo gives the slice."""

N_STAB = 0xE0
N_PEXT = 0x10
N_TYPE = 0x0E
N_EXT = 0x01
N_SECT = 0x0E
_N_WEAK_DEF = 0x80
_TYPE_NAMES = {0x0: "UNDF", 0x2: "ABS", 0xE: "SECT", 0xC: "PBUD", 0xA: "INDR"}

_SECTION_TYPE = 0xFF
_ZEROFILL_TYPES = {0x1, 0xC, 0x12}  # S_ZEROFILL, S_GB_ZEROFILL, S_THREAD_LOCAL_ZEROFILL
_CODE_ATTRIBUTES = 0x80000400  # S_ATTR_PURE_INSTRUCTIONS | S_ATTR_SOME_INSTRUCTIONS

MAX_COMMANDS_SIZE = 16 << 20
_MAX_SLICES = 64
_EXPORT_REEXPORT = 0x08


class _Malformed(Exception):
    """A structural problem, turned into one InputError naming the file (and member)."""


def read_macho(
    stream: BinaryIO,
    size: int,
    display_name: str,
    member: str | None = None,
    base: int = 0,
    fd: int | None = None,
) -> tuple[Image, ...]:
    """Read a thin Mach-O image, or every slice of a universal file, of `size` bytes.

    `base` is where `stream` starts in the file behind `fd` (an archive member); locations
    are absolute file offsets, a slice's offset included.
    """
    where = f"{display_name}({member})" if member else display_name
    source = _Source(stream, fd, base, size)
    try:
        head = source.read(0, 4)
        if sniff(head) == UNIVERSAL_FILE:
            return _read_slices(source, member)
        return (_read_thin(source, member),)
    except _Malformed as exc:
        raise InputError(f"{where}: malformed Mach-O: {exc}") from None
    except OSError as exc:
        raise InputError(f"{where}: read error: {exc.strerror or exc}") from None


class _Source:
    """Bytes of one image (a file, a member, a slice), read by offset relative to its start
    with every range checked against its size: a slice's tables must lie inside the slice."""

    def __init__(
        self,
        stream: BinaryIO,
        fd: int | None,
        base: int,
        size: int,
        origin: int = 0,
        label: str = "file",
    ) -> None:
        self.stream = stream
        self.fd = fd
        self.base = base
        """Where `stream` starts in the file behind `fd`."""
        self.size = size
        self.origin = origin
        """Where this image starts in `stream`."""
        self.label = label

    def slice(self, offset: int, size: int) -> _Source:
        label = f"slice at offset {offset}"
        return _Source(self.stream, self.fd, self.base, size, self.origin + offset, label)

    def file_offset(self, offset: int) -> int:
        """An offset in this image as an absolute offset in the file."""
        return self.base + self.origin + offset

    def check(self, offset: int, count: int, what: str) -> None:
        if offset < 0 or count < 0 or offset + count > self.size:
            raise _Malformed(
                f"{what} ({count} bytes at offset {offset}) extends past the end of the"
                f" {self.label} ({self.size} bytes)"
            )

    def read(self, offset: int, count: int, what: str = "header") -> bytes:
        self.check(offset, count, what)
        if self.fd is not None:
            data = os.pread(self.fd, count, self.file_offset(offset))
        else:
            self.stream.seek(self.origin + offset)
            data = self.stream.read(count)
        if len(data) != count:
            raise _Malformed("the file shrank while it was being read")
        return data

    def table(self, offset: int, count: int, what: str) -> WindowedTable | bytes:
        """A searchable view of a table (string table, trie): windowed through the fd."""
        self.check(offset, count, what)
        if self.fd is not None:
            return WindowedTable(self.fd, self.file_offset(offset), count)
        return self.read(offset, count, what)


def _slices(source: _Source) -> list[tuple[int, int, str]]:
    """(offset, size, architecture name) of each slice of a universal file, checked against
    the file."""
    magic, count = FAT_HEADER.unpack(source.read(0, FAT_HEADER.size))
    layout = FAT_ARCH_64 if magic == int.from_bytes(FAT_64, "big") else FAT_ARCH
    if count == 0 or count > _MAX_SLICES:
        raise _Malformed(f"universal header claims {count} architectures (at most {_MAX_SLICES})")
    table = source.read(FAT_HEADER.size, count * layout.size, "universal header")
    slices = []
    for index in range(count):
        fields = layout.unpack_from(table, index * layout.size)
        cputype, cpusubtype, offset, length = fields[:4]
        source.check(offset, length, f"slice {index}")
        subtype = cpusubtype & 0x00FFFFFF
        arch = _ARCH_NAMES.get((cputype, subtype), f"cputype {cputype:#x} subtype {subtype}")
        slices.append((offset, length, arch))
    _check_disjoint(slices)
    return slices


def _check_disjoint(slices: list[tuple[int, int, str]]) -> None:
    """lipo lays slices side by side. Entries that name the same bytes are read once (see
    `_read_slices`); slices that overlap otherwise would make shared bytes read once per
    slice, and are refused."""
    order = sorted(range(len(slices)), key=lambda index: slices[index][:2])
    for before, after in itertools.pairwise(order):
        if slices[before][:2] == slices[after][:2]:
            continue
        if slices[before][0] + slices[before][1] > slices[after][0]:
            first, second = sorted((before, after))
            raise _Malformed(f"slices {first} and {second} overlap")


def _read_slices(source: _Source, member: str | None) -> tuple[Image, ...]:
    """Every slice's image, each distinct range of the file read once: 64 entries that name
    one image cost one read (the writer refuses to pack such a file)."""
    read: dict[tuple[int, int], Image] = {}
    images = []
    for offset, size, arch in _slices(source):
        place = Slice(arch, source.file_offset(offset), size)
        image = read.get((offset, size))
        if image is None:
            image = read[offset, size] = _read_thin(source.slice(offset, size), member, place)
        images.append(dataclasses.replace(image, slice=place))
    return tuple(images)


@dataclass(frozen=True)
class _Section:
    segment: str
    name: str
    address: int
    size: int
    offset: int
    flags: int
    in_file: bool
    """Whether the file holds the section's bytes: inside its segment's file range. A dSYM
    keeps its library's section headers with the bytes left out (offset 0, or a segment
    with no file size)."""

    @property
    def label(self) -> str:
        return f"{self.segment},{self.name}"

    @property
    def zerofill(self) -> bool:
        return self.flags & _SECTION_TYPE in _ZEROFILL_TYPES


@dataclass
class _Commands:
    """What the reader needs from the load commands of one slice."""

    sections: list[_Section]
    symtab: tuple[int, int, int, int] | None = None
    trie: tuple[int, int] | None = None
    signature: tuple[int, int] | None = None


def _read_thin(source: _Source, member: str | None, place: Slice | None = None) -> Image:
    header = source.read(0, HEADER.size)
    if header[:4] != MACHO_64:
        what = "a 32-bit Mach-O image" if header[:4] == MACHO_32 else "not a 64-bit Mach-O image"
        raise _Malformed(f"the {source.label} is {what}, which is not supported")
    _, cputype, _, filetype, ncmds, sizeofcmds, _, _ = HEADER.unpack(header)
    if filetype not in _KINDS:
        raise _Malformed(f"unsupported Mach-O file type {filetype}")
    kind, loadable = _KINDS[filetype]
    if sizeofcmds > min(source.size - HEADER.size, MAX_COMMANDS_SIZE):
        raise _Malformed(f"load commands claim {sizeofcmds} bytes, the image has {source.size}")
    if ncmds * _LOAD_COMMAND.size > sizeofcmds:
        raise _Malformed(f"{ncmds} load commands cannot fit in {sizeofcmds} bytes")
    commands = _load_commands(source.read(HEADER.size, sizeofcmds), ncmds)
    symbols, locations = _symbols(source, commands, kind, loadable)
    return Image(
        member=member,
        format="Mach-O",
        kind=kind,
        loadable=loadable,
        machine=_MACHINES.get(cputype, f"cputype {cputype:#x}"),
        bits=64,
        endianness="little",
        symbols=tuple(symbols),
        tables=(SymbolTable.STATIC,) if commands.symtab else (),
        locations=locations,
        signature=_signature(source, commands.signature),
        slice=place,
        debug_only=filetype == _MH_DSYM,
    )


def _load_commands(data: bytes, ncmds: int) -> _Commands:
    commands = _Commands([])
    at = 0
    for index in range(ncmds):
        if at + _LOAD_COMMAND.size > len(data):
            raise _Malformed(f"load command {index} starts past the end of the load commands")
        cmd, cmdsize = _LOAD_COMMAND.unpack_from(data, at)
        if cmdsize < _LOAD_COMMAND.size or at + cmdsize > len(data):
            raise _Malformed(f"load command {index} has a bad size {cmdsize}")
        body = data[at : at + cmdsize]
        if cmd == LC_SEGMENT_64:
            commands.sections.extend(_segment_sections(body, index))
        elif cmd == LC_SYMTAB:
            symoff, nsyms, stroff, strsize = _fields(body, "<4I", index)
            commands.symtab = (symoff, nsyms, stroff, strsize)
        elif cmd in (LC_DYLD_INFO, LC_DYLD_INFO_ONLY):
            info = _fields(body, "<10I", index)
            if info[9]:
                commands.trie = (info[8], info[9])
        elif cmd == LC_DYLD_EXPORTS_TRIE:
            dataoff, datasize = _fields(body, "<2I", index)
            commands.trie = (dataoff, datasize)
        elif cmd == LC_CODE_SIGNATURE:
            dataoff, datasize = _fields(body, "<2I", index)
            commands.signature = (dataoff, datasize)
        at += cmdsize
    return commands


def _fields(body: bytes, layout: str, index: int) -> tuple[int, ...]:
    fields = struct.Struct(layout)
    if len(body) < 8 + fields.size:
        raise _Malformed(f"load command {index} is too short ({len(body)} bytes)")
    return fields.unpack_from(body, 8)


def _segment_sections(body: bytes, index: int) -> list[_Section]:
    if len(body) < 8 + _SEGMENT.size:
        raise _Malformed(f"segment command {index} is too short ({len(body)} bytes)")
    _, _, _, fileoff, filesize, _, _, nsects, _ = _SEGMENT.unpack_from(body, 8)
    if 8 + _SEGMENT.size + nsects * SECTION.size > len(body):
        raise _Malformed(f"segment command {index} claims {nsects} sections it does not hold")
    sections = []
    for number in range(nsects):
        raw = SECTION.unpack_from(body, 8 + _SEGMENT.size + number * SECTION.size)
        size, offset = raw[3], raw[4]
        in_file = fileoff <= offset and offset + size <= fileoff + filesize
        names = _text(raw[1]), _text(raw[0])
        sections.append(_Section(*names, raw[2], size, offset, raw[8] & 0xFFFFFFFF, in_file))
    return sections


def _text(field: bytes) -> str:
    return field.split(b"\0", 1)[0].decode("utf-8", "backslashreplace")


def _symbols(
    source: _Source, commands: _Commands, kind: str, loadable: bool
) -> tuple[list[Symbol], dict[tuple[str, SymbolTable], Location]]:
    """The FFI-marked entries of the symbol table, with the file bytes behind data symbols."""
    if commands.symtab is None:
        return [], {}
    symoff, nsyms, stroff, strsize = commands.symtab
    source.check(symoff, nsyms * NLIST.size, "symbol table")
    strings = source.table(stroff, strsize, "string table")
    ranges = candidate_ranges(strings)
    if not ranges:
        return [], {}
    trie = _Trie(source, commands.trie) if loadable and commands.trie else None
    names = Names(strings, _Malformed, "symbol name")
    c_names: dict[int, str] = {}
    """The C name of each distinct offset (without the `_`), one copy however many symbols
    name it, as `names` keeps one copy of the file's spelling."""
    wanted = offset_filter(ranges)
    symbols: list[Symbol] = []
    locations: dict[tuple[str, SymbolTable], Location] = {}
    for first in range(0, nsyms, SYMBOL_SLICE):
        last = min(nsyms, first + SYMBOL_SLICE)
        data = source.read(symoff + first * NLIST.size, (last - first) * NLIST.size, "symbol table")
        fields = st_name_column(data, NLIST.size, True)
        for number, offset in matching_entries(fields, wanted(fields)):
            _, n_type, n_sect, n_desc, n_value = NLIST.unpack_from(data, number * NLIST.size)
            if n_type & N_STAB:
                continue
            raw, raw_name = names.raw(offset), names[offset]
            name = c_names.get(offset) or c_names.setdefault(offset, raw_name.removeprefix("_"))
            section = None
            if n_type & N_TYPE == N_SECT:
                if not 0 < n_sect <= len(commands.sections):
                    raise _Malformed(f"symbol {raw_name!r} names section {n_sect}, which is absent")
                section = commands.sections[n_sect - 1]
            exportable = n_type & (N_TYPE | N_EXT | N_PEXT) == N_SECT | N_EXT
            in_trie = None if trie is None else exportable and trie.exports(raw)
            spelled = name, raw_name
            symbol = _symbol(spelled, n_type, n_desc, n_value, section, kind, loadable, in_trie)
            symbols.append(symbol)
            location = _locate(source, symbol, section)
            if location is not None:
                locations[(symbol.name, SymbolTable.STATIC)] = location
    return symbols, locations


def _symbol(
    names: tuple[str, str],
    n_type: int,
    n_desc: int,
    n_value: int,
    section: _Section | None,
    image_kind: str,
    loadable: bool,
    in_trie: bool | None,
) -> Symbol:
    kind = n_type & N_TYPE
    external = bool(n_type & N_EXT)
    private = bool(n_type & N_PEXT)
    defined = kind != 0
    if not external:
        binding = "LOCAL"
        # The static linker turns private externs (hidden visibility) into locals.
        hidden = "a local symbol" + (" (hidden visibility)" if private else "")
    elif private:
        binding = "PRIVATE_EXTERNAL"
        hidden = "private extern (N_PEXT: hidden visibility)"
    else:
        binding = "WEAK" if n_desc & _N_WEAK_DEF else "EXTERNAL"
        hidden = "not in the export trie" if in_trie is False else ""
    exported = loadable and defined and external and not private and not hidden
    if not loadable:
        hidden = f"in a {image_kind}, which nothing loads"
    name, raw_name = names
    return Symbol(
        name=name,
        raw_name=raw_name,
        table=SymbolTable.STATIC,
        binding=binding,
        type=_symbol_type(kind, section),
        visibility="HIDDEN" if private else "DEFAULT",
        address=n_value,
        size=0,
        section=_section_name(kind, section),
        nobits=bool(section and section.zerofill),
        executable=bool(section.flags & _CODE_ATTRIBUTES) if section else None,
        exported=exported,
        external=external and not private,
        hidden_because="" if exported else hidden,
    )


def _symbol_type(kind: int, section: _Section | None) -> str:
    """Mach-O has no symbol types: a symbol in a code section is a function (FUNC), in any
    other section data (OBJECT), as `nm` tells T from D; otherwise the nlist type's name."""
    if section is not None:
        return "FUNC" if section.flags & _CODE_ATTRIBUTES else "OBJECT"
    return _TYPE_NAMES.get(kind, hex(kind))


def _section_name(kind: int, section: _Section | None) -> str | None:
    """ "segment,section" as the Mach-O tools print it; None when the symbol is undefined."""
    if section is not None:
        return section.label
    return None if kind == 0 else f"*{_TYPE_NAMES.get(kind, hex(kind))}*"


def _locate(source: _Source, symbol: Symbol, section: _Section | None) -> Location | None:
    """File bytes from a data symbol to the end of its section (Mach-O has no symbol sizes);
    None unless they start inside the image, and never more than the image holds (a blob
    the file does not back is then L104, as for ELF)."""
    if section is None or section.zerofill or not section.in_file or symbol.executable:
        return None
    delta = symbol.address - section.address
    start = section.offset + delta
    if not 0 <= delta < section.size or not 0 <= start < source.size:
        return None
    available = min(section.size - delta, source.size - start)
    return Location(source.file_offset(start), available)


@dataclass(frozen=True)
class _Node:
    """One parsed node of an export trie: where its terminal information is (size 0: none),
    and its edges by the first byte of their label, in the trie's order."""

    terminal: int
    terminal_at: int
    edges: dict[int, list[tuple[bytes, int]]]


class _Trie:
    """The export trie of one image, read whole (it is bounded by the file) and searched
    name by name: a library with 75k exports and a few FFI functions costs a few lookups,
    not a walk over every node.

    Each node is parsed once, and the nodes parsed may not add up to more bytes than the
    trie (the nodes of a real trie do not overlap), so parsing costs the trie's size at
    most. Each distinct name is looked up once. In a real trie the edges of a node start
    with distinct bytes, so a lookup compares one edge per step, in all at most twice the
    name's length; the comparisons of all lookups are held to that, so that a crafted trie
    whose long edges share a first byte cannot cost its size again for every name.
    """

    def __init__(self, source: _Source, where: tuple[int, int]) -> None:
        offset, size = where
        self._data = source.read(offset, size, "export trie")
        self._nodes: dict[int, _Node] = {}
        self._parsed = 0
        self._found: dict[bytes, bool] = {}
        self._work = 0
        self._allowance = 0

    def exports(self, name: bytes) -> bool:
        """Whether the trie exports `name` from this image (a re-export does not count)."""
        found = self._found.get(name)
        if found is None:
            self._allowance += 2 * len(name) + 2
            found = self._found[name] = self._lookup(name)
        return found

    def _lookup(self, name: bytes) -> bool:
        """dyld's walk: at each node the first edge whose label continues the name is taken.

        Every edge followed must consume part of the name and no node is visited twice, so
        a trie whose child offsets loop back, or whose labels are empty, still terminates.
        """
        node = position = 0
        visited: set[int] = set()
        nodes = self._nodes
        while node not in visited:
            visited.add(node)
            parsed = nodes.get(node) or self._parse(node)
            if position == len(name):
                if not parsed.terminal:
                    return False
                return not _uleb(self._data, parsed.terminal_at)[0] & _EXPORT_REEXPORT
            for label, child in parsed.edges.get(name[position], ()):
                # A label longer than the rest of the name is rejected without a comparison.
                self._work += 1 + (len(label) if position + len(label) <= len(name) else 0)
                if self._work > self._allowance:
                    raise _Malformed(
                        f"export trie: looking up {len(self._found) + 1} name(s) compares more"
                        f" than {self._allowance} bytes (edges of a node share their first byte)"
                    )
                if name.startswith(label, position):
                    node, position = child, position + len(label)
                    break
            else:
                return False
        return False

    def _parse(self, node: int) -> _Node:
        """The node at `node`, parsed and kept: `_lookup` asks for each node once."""
        data = self._data
        if node >= len(data):
            raise _Malformed(f"export trie node at {node} is past the trie")
        terminal, at = _uleb(data, node)
        terminal_at = at
        at += terminal
        if at >= len(data):
            raise _Malformed(f"export trie node at {node} runs past the trie")
        count, at = data[at], at + 1
        edges: dict[int, list[tuple[bytes, int]]] = {}
        for _ in range(count):
            end = data.find(b"\0", at)
            if end == -1:
                raise _Malformed(f"export trie edge at {at} is not terminated")
            label = data[at:end]
            child, at = _uleb(data, end + 1)
            if label:
                edges.setdefault(label[0], []).append((label, child))
        self._parsed += at - node
        if self._parsed > len(data):
            raise _Malformed(
                f"export trie nodes overlap: {len(self._nodes) + 1} nodes span more than"
                f" its {len(data)} bytes"
            )
        parsed = self._nodes[node] = _Node(terminal, terminal_at, edges)
        return parsed


class TrieError(ValueError):
    """An export trie is malformed; the message says where."""


def read_uleb(data: bytes, at: int) -> tuple[int, int]:
    """The ULEB128 number at `at` of an export trie and the offset after it (at most 10
    bytes: 64 bits). Shared with the writer's trie codec."""
    value = shift = 0
    for index in range(at, min(at + 10, len(data))):
        byte = data[index]
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, index + 1
        shift += 7
    raise TrieError(f"bad ULEB128 number at trie offset {at}")


def _uleb(data: bytes, at: int) -> tuple[int, int]:
    try:
        return read_uleb(data, at)
    except TrieError as exc:
        raise _Malformed(str(exc)) from None


def _signature(source: _Source, where: tuple[int, int] | None) -> str:
    """none, ad-hoc, linker-signed or certificate, from the embedded code signature."""
    if where is None:
        return "none"
    try:
        return signature_state(source.read(where[0], where[1], "code signature"))
    except SignatureError as exc:
        raise _Malformed(f"code signature: {exc}") from None
