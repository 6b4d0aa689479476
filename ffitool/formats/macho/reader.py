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
from collections.abc import Iterable
from dataclasses import dataclass
from typing import BinaryIO

from ffitool.errors import InputError
from ffitool.formats.base import Image, Location, Slice, Symbol, SymbolTable
from ffitool.formats.macho.codesign import SignatureError, signature_state
from ffitool.formats.macho.commands import (
    CPU_ARM64,
    CPU_X86_64,
    FAT_HEADER,
    HEADER,
    LC_CODE_SIGNATURE,
    LC_SEGMENT_64,
    LC_SYMTAB,
    LINKEDIT_DATA,
    N_EXT,
    N_PEXT,
    N_SECT,
    N_STAB,
    N_TYPE,
    NLIST,
    SYMTAB,
    Command,
    MachoError,
    Section,
    check_commands_size,
    parse_commands,
    parse_fat_header,
    parse_header,
    parse_segment,
    trie_field,
)
from ffitool.formats.macho.trie import TrieError, parse_node, read_uleb
from ffitool.formats.sniff import UNIVERSAL_FILE, sniff
from ffitool.formats.strtab import (
    SYMBOL_SLICE,
    Names,
    WindowedTable,
    candidate_ranges,
    matching_entries,
    offset_filter,
    st_name_column,
)

_MH_DSYM = 10
_KINDS = {
    1: ("relocatable object", False),
    2: ("executable", True),
    6: ("shared library", True),
    8: ("bundle", True),
    _MH_DSYM: ("debug companion (dSYM)", False),
}
_MACHINES = {CPU_X86_64: "x86-64", CPU_ARM64: "aarch64", 7: "x86", 12: "arm"}
_ARCH_NAMES = {
    (CPU_X86_64, 3): "x86_64",
    (CPU_X86_64, 8): "x86_64h",
    (CPU_ARM64, 0): "arm64",
    (CPU_ARM64, 1): "arm64",  # CPU_SUBTYPE_ARM64_V8
    (CPU_ARM64, 2): "arm64e",
}
"""(cputype, cpusubtype without its capability bits) to the name lipo gives the slice."""

_N_WEAK_DEF = 0x80
_TYPE_NAMES = {0x0: "UNDF", 0x2: "ABS", 0xE: "SECT", 0xC: "PBUD", 0xA: "INDR"}
_CODE_ATTRIBUTES = 0x80000400  # S_ATTR_PURE_INSTRUCTIONS | S_ATTR_SOME_INSTRUCTIONS
_EXPORT_REEXPORT = 0x08


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
    except (MachoError, TrieError) as exc:
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
            raise MachoError(
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
            raise MachoError("the file shrank while it was being read")
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
    count, layout = parse_fat_header(source.read(0, FAT_HEADER.size))
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
            raise MachoError(f"slices {first} and {second} overlap")


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


@dataclass
class _Commands:
    """What the reader needs from the load commands of one slice."""

    sections: list[Section]
    symtab: tuple[int, ...] | None = None
    trie: tuple[int, ...] | None = None
    signature: tuple[int, ...] | None = None


def _read_thin(source: _Source, member: str | None, place: Slice | None = None) -> Image:
    header = parse_header(source.read(0, HEADER.size), source.label)
    if header.filetype not in _KINDS:
        raise MachoError(f"unsupported Mach-O file type {header.filetype}")
    kind, loadable = _KINDS[header.filetype]
    check_commands_size(header, source.size)
    commands = _load_commands(
        parse_commands(source.read(HEADER.size, header.sizeofcmds), header.ncmds)
    )
    symbols, locations = _symbols(source, commands, kind, loadable)
    return Image(
        member=member,
        format="Mach-O",
        kind=kind,
        loadable=loadable,
        machine=_MACHINES.get(header.cputype, f"cputype {header.cputype:#x}"),
        bits=64,
        endianness="little",
        symbols=tuple(symbols),
        tables=(SymbolTable.STATIC,) if commands.symtab else (),
        locations=locations,
        signature=_signature(source, commands.signature),
        slice=place,
        debug_only=header.filetype == _MH_DSYM,
    )


def _load_commands(commands: Iterable[Command]) -> _Commands:
    found = _Commands([])
    for command in commands:
        cmd = command.cmd
        if cmd == LC_SEGMENT_64:
            found.sections.extend(parse_segment(command).sections)
        elif cmd == LC_SYMTAB:
            found.symtab = command.fields(SYMTAB)
        elif (at := trie_field(command)) is not None:
            found.trie = command.field(at), command.field(at + 4)
        elif cmd == LC_CODE_SIGNATURE:
            found.signature = command.fields(LINKEDIT_DATA)
    return found


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
    names = Names(strings, MachoError, "symbol name")
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
                    raise MachoError(f"symbol {raw_name!r} names section {n_sect}, which is absent")
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
    section: Section | None,
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


def _symbol_type(kind: int, section: Section | None) -> str:
    """Mach-O has no symbol types: a symbol in a code section is a function (FUNC), in any
    other section data (OBJECT), as `nm` tells T from D; otherwise the nlist type's name."""
    if section is not None:
        return "FUNC" if section.flags & _CODE_ATTRIBUTES else "OBJECT"
    return _TYPE_NAMES.get(kind, hex(kind))


def _section_name(kind: int, section: Section | None) -> str | None:
    """ "segment,section" as the Mach-O tools print it; None when the symbol is undefined."""
    if section is not None:
        return section.label
    return None if kind == 0 else f"*{_TYPE_NAMES.get(kind, hex(kind))}*"


def _locate(source: _Source, symbol: Symbol, section: Section | None) -> Location | None:
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
    and its edges by the first byte of their label, in the trie's order (an empty label,
    which consumes nothing, is passed by)."""

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

    def __init__(self, source: _Source, where: tuple[int, ...]) -> None:
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
                return not read_uleb(self._data, parsed.terminal_at)[0] & _EXPORT_REEXPORT
            for label, child in parsed.edges.get(name[position], ()):
                # A label longer than the rest of the name is rejected without a comparison.
                self._work += 1 + (len(label) if position + len(label) <= len(name) else 0)
                if self._work > self._allowance:
                    raise MachoError(
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
        parsed = parse_node(data, node)
        edges: dict[int, list[tuple[bytes, int]]] = {}
        for label, child in parsed.edges:
            if label:
                edges.setdefault(label[0], []).append((label, child))
        self._parsed += parsed.end - node
        if self._parsed > len(data):
            raise MachoError(
                f"export trie nodes overlap: {len(self._nodes) + 1} nodes span more than"
                f" its {len(data)} bytes"
            )
        kept = self._nodes[node] = _Node(parsed.terminal_size, parsed.terminal_at, edges)
        return kept


def _signature(source: _Source, where: tuple[int, ...] | None) -> str:
    """none, ad-hoc, linker-signed or certificate, from the embedded code signature."""
    if where is None:
        return "none"
    try:
        return signature_state(source.read(where[0], where[1], "code signature"))
    except SignatureError as exc:
        raise MachoError(f"code signature: {exc}") from None
