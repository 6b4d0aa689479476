"""Give an ELF shared library a dynamically exported `__tvm_ffi__library_bin`, moving nothing.

The output is the input byte for byte, plus one read-only PT_LOAD appended past the end of the
file and past every segment's memory, plus a few fields patched in place: the ELF header, the
program header table (grown by one entry where it stands), the DT_* entries that name the
dynamic tables, and relocation symbol indices when the new symbol shifts them. No section,
symbol value, code or data byte of the input moves; virtual addresses stay what they were.

The new segment holds, in order: the sections that stood right after the program header table
(notes, typically) when the table needs room for its new entry, as patchelf does for
libraries; new copies of `.dynsym`, `.gnu.version`, `.gnu.hash`, `.hash` and `.dynstr` with the
symbol added; the blob. The superseded tables' section headers are re-pointed at the copies and
a `.tvm_ffi_blob` section is added, so that `strip` and `objcopy` carry everything along.

Repacking a library whose blob is the tail of the segment ffitool appended reuses that segment:
the old blob is cut off and the new one written in its place.

Everything is decided from the input's headers and dynamic tables before a byte is written
(`plan_edit`); `write_edit` then copies the input with `copy_file_range` and applies the edit.
Neither reads the whole input into memory.
"""

from __future__ import annotations

import os
import struct
from array import array
from dataclasses import dataclass, field
from typing import Any, BinaryIO, Literal, NoReturn

from elftools.construct.lib import Container

from ffitool.edit.fileedit import BlobWriter, FileEdit
from ffitool.edit.plan import align
from ffitool.errors import InputError
from ffitool.formats.elf.dynamic import (
    DT,
    DynamicError,
    is_address_tag,
    read_dynamic,
    sysv_entry_format,
    unmapped_segments,
    wide_hash_machine,
)
from ffitool.formats.elf.reader import ElfFile, SectionNames, program_headers, section_headers
from ffitool.formats.elf.tables import (
    NATIVE_LITTLE,
    GnuHashTable,
    SysvHashTable,
    entry_chunks,
    relocation_symbol_end,
    renumbered_relocations,
)
from ffitool.symbols import LIBRARY_BIN

BLOB_SECTION = ".tvm_ffi_blob"
_BLOB_ALIGN = 16
_MIN_PAGE = 0x1000
_NAME = LIBRARY_BIN.encode()

_DT_NULL = DT["DT_NULL"]
_DT_HASH = DT["DT_HASH"]
_DT_STRTAB = DT["DT_STRTAB"]
_DT_SYMTAB = DT["DT_SYMTAB"]
_DT_STRSZ = DT["DT_STRSZ"]
_DT_SYMENT = DT["DT_SYMENT"]
_DT_SYMTAB_SHNDX = DT["DT_SYMTAB_SHNDX"]
_DT_ANDROID_REL = DT["DT_ANDROID_REL"]
_DT_ANDROID_RELA = DT["DT_ANDROID_RELA"]
_DT_GNU_HASH = DT["DT_GNU_HASH"]
_DT_VERSYM = DT["DT_VERSYM"]
_DT_VERDEF = DT["DT_VERDEF"]
_DT_VERNEED = DT["DT_VERNEED"]
# Tables the loader finds only through these tags: they may move, with the tag re-pointed.
_MOVABLE_TAGS = (
    _DT_SYMTAB,
    _DT_STRTAB,
    _DT_HASH,
    _DT_GNU_HASH,
    _DT_VERSYM,
    _DT_VERDEF,
    _DT_VERNEED,
)
RETAGGED = frozenset({*_MOVABLE_TAGS, _DT_STRSZ})
"""The only dynamic tags whose values an edit changes (DT_STRSZ grows with .dynstr)."""
# Program headers that name a range of bytes without mapping it: they follow a moved range.
_FOLLOWING_SEGMENTS = ("PT_NOTE", "PT_GNU_PROPERTY", "PT_INTERP")

_SHF_ALLOC = 0x2
_PF_R = 0x4
_STB_GLOBAL_STT_OBJECT = 0x11
_VER_NDX_GLOBAL = 1
_VERSYM_HIDDEN = 0x8000

_Header = dict[str, Any]
"""A section or program header being rewritten: a copy of pyelftools' parsed fields."""


@dataclass(frozen=True)
class Placement:
    """Where the blob goes: file offset and virtual address of its first byte, and its size."""

    file_offset: int
    address: int
    size: int


@dataclass(frozen=True)
class RelocationTable:
    """A REL or RELA table in the output whose symbol indices shift by one from `position`."""

    file_offset: int
    size: int
    entry_size: int
    bits: int
    little: bool


@dataclass(kw_only=True)
class ElfEdit(FileEdit):
    """Everything the writer does to the input, decided before a byte is written: the file
    edit (its first copy is the input's start, verbatim; the others carry input bytes past
    it), then the relocations renumbered in the copied bytes."""

    placement: Placement
    relocations: list[RelocationTable] = field(default_factory=list)
    inserted_at: int = 0
    """Index of the added dynamic symbol, when relocation indices from it on shift."""


class _Host:
    """The input as the writer needs it: headers, the dynamic segment, the symbol tables."""

    def __init__(self, handle: BinaryIO, size: int, display: str) -> None:
        self.handle = handle
        self.size = size
        self.display = display
        self.elf = elf = ElfFile(handle)
        if elf["e_type"] != "ET_DYN":
            self.fail("only shared libraries (ET_DYN) can be packed")
        if elf["e_machine"] in ("EM_MIPS", "EM_MIPS_RS3_LE"):
            self.fail("MIPS libraries are not supported (their GOT fixes the .dynsym order)")
        if elf["e_phnum"] == 0xFFFF:
            self.fail("more than 65534 program headers")
        self.little = elf.little_endian
        self.bits = elf.elfclass
        self.end = "<" if self.little else ">"
        self.word = "Q" if self.bits == 64 else "I"
        self.phdrs = program_headers(elf, size)
        self.sections = section_headers(elf, size)
        if not self.sections:
            self.fail("no section headers; ffitool needs them to place a new segment")
        self.names = SectionNames(elf, self.sections, size)
        self.loads = [p for p in self.phdrs if p["p_type"] == "PT_LOAD"]
        if not self.loads:
            self.fail("no PT_LOAD segment")
        self.page = max([_MIN_PAGE, *(p["p_align"] for p in self.loads)])
        if self.page & (self.page - 1):
            self.fail(f"a PT_LOAD alignment of {self.page:#x} is not a power of two")
        self._check_extents()
        self.dynamic = self._dynamic()
        self.symbol_layout = struct.Struct(self.end + ("IBBHQQ" if self.bits == 64 else "IIIBBH"))

    def _check_extents(self) -> None:
        """Every section and segment with file bytes lies inside the file; refuse otherwise.

        A header pointing past the end is a damaged file (or one truncated in transit), and
        everything the writer and its verification compare would be guesswork.
        """
        for number, header in enumerate(self.sections):
            if header["sh_type"] in ("SHT_NOBITS", "SHT_NULL") or not header["sh_size"]:
                continue
            if header["sh_offset"] + header["sh_size"] > self.size:
                self.fail(f"section {self.names[number]} extends past the end of the file")
        for phdr in self.phdrs:
            if phdr["p_filesz"] and phdr["p_offset"] + phdr["p_filesz"] > self.size:
                self.fail(f"a {phdr['p_type']} segment extends past the end of the file")
            if phdr["p_type"] == "PT_LOAD" and phdr["p_filesz"] > phdr["p_memsz"]:
                self.fail(f"the PT_LOAD at {phdr['p_vaddr']:#x} has more file than memory bytes")
        for problem in unmapped_segments(self.phdrs):
            self.fail(f"{problem}; the headers contradict each other")

    def fail(self, message: str) -> NoReturn:
        raise InputError(f"{self.display}: {message}")

    def read(self, offset: int, length: int) -> bytes:
        if offset < 0 or length < 0 or offset > self.size or length > self.size - offset:
            self.fail(f"{length} bytes at file offset {offset:#x} lie outside the file")
        return os.pread(self.handle.fileno(), length, offset)

    def file_offset(self, address: int, length: int, what: str) -> int:
        """Where the loader reads `length` bytes at `address`: through the PT_LOAD mapping them."""
        for load in self.loads:
            delta = address - load["p_vaddr"]
            if delta >= 0 and delta + length <= load["p_filesz"]:
                return load["p_offset"] + delta
        return self.fail(f"{what} ({length} bytes at {address:#x}) is not mapped from the file")

    def _dynamic(self) -> list[tuple[int, int, int]]:
        """(tag, value, file offset of the entry) up to DT_NULL, read where ld.so reads it."""
        found = [p for p in self.phdrs if p["p_type"] == "PT_DYNAMIC"]
        if not found:
            self.fail("no dynamic section, so dlsym could never find a blob")
        segment = found[0]
        # Read where ld.so reads it, at its address (unmapped_segments has checked that its
        # offset agrees).
        at = self.file_offset(segment["p_vaddr"], segment["p_filesz"], "PT_DYNAMIC")
        entry = struct.Struct(self.end + self.word * 2)
        raw = self.read(at, segment["p_filesz"])
        entries: list[tuple[int, int, int]] = []
        for offset in range(0, len(raw) - entry.size + 1, entry.size):
            tag, value = entry.unpack_from(raw, offset)
            if tag == _DT_NULL:
                return entries
            entries.append((tag, value, at + offset))
        return self.fail("the dynamic section has no DT_NULL terminator")

    def tag(self, tag: int) -> int | None:
        values = [value for t, value, _ in self.dynamic if t == tag]
        if len(values) > 1:
            self.fail(f"the dynamic section has {len(values)} entries with tag {tag:#x}")
        return values[0] if values else None

    def section_at(self, address: int, kinds: tuple[str, ...]) -> int | None:
        """Index of the allocated section of one of `kinds` that starts at `address`."""
        found = [
            i
            for i, h in enumerate(self.sections)
            if h["sh_addr"] == address and h["sh_type"] in kinds and h["sh_flags"] & _SHF_ALLOC
        ]
        return found[0] if found else None


@dataclass
class _Table:
    """One dynamic table: where the input has it, and its bytes as the output will have them."""

    tag: int
    address: int
    data: bytes
    section: int | None
    length: int = 0
    """Its size in the input."""
    changed: bool = False

    def __post_init__(self) -> None:
        self.length = len(self.data)


class _SymbolTables:
    """`.dynsym`, `.dynstr`, the hash tables and `.gnu.version` of the input."""

    def __init__(self, host: _Host) -> None:
        self.host = host
        symtab = host.tag(_DT_SYMTAB)
        strtab, strsz = host.tag(_DT_STRTAB), host.tag(_DT_STRSZ)
        if symtab is None or strtab is None or strsz is None:
            host.fail("the dynamic section lacks DT_SYMTAB, DT_STRTAB or DT_STRSZ")
        if host.tag(_DT_SYMTAB_SHNDX) is not None:
            host.fail("DT_SYMTAB_SHNDX is not supported")
        entry = host.symbol_layout.size
        if (host.tag(_DT_SYMENT) or entry) != entry:
            host.fail(f"DT_SYMENT is not {entry}")
        section = host.section_at(symtab, ("SHT_DYNSYM",))
        if section is None:
            host.fail("no .dynsym section header at DT_SYMTAB")
        self.count = host.sections[section]["sh_size"] // entry
        self.tables: dict[int, _Table] = {}
        self._add(_DT_SYMTAB, symtab, self.count * entry, section)
        self._add(_DT_STRTAB, strtab, strsz, host.section_at(strtab, ("SHT_STRTAB",)))
        gnu = host.tag(_DT_GNU_HASH)
        self.gnu = self.sysv = None
        where = host.display
        if gnu is not None:
            head = self._memory(gnu, 16, "DT_GNU_HASH")
            front = GnuHashTable.front_size(head, host.bits, host.little)
            front_bytes = self._memory(gnu, front, "DT_GNU_HASH")
            length = GnuHashTable.size(front_bytes, self.count, host.bits, host.little)
            table = self._add(_DT_GNU_HASH, gnu, length, host.section_at(gnu, ("SHT_GNU_HASH",)))
            self.gnu = GnuHashTable.parse(table.data, self.count, host.bits, host.little, where)
        sysv = host.tag(_DT_HASH)
        if sysv is not None:
            self.sysv_code = sysv_entry_format(host.elf, self._memory(sysv, 8, "DT_HASH"))
            word = array(self.sysv_code).itemsize
            head = self._memory(sysv, 2 * word, "DT_HASH")
            length = SysvHashTable.size(head, self.sysv_code, host.little)
            table = self._add(_DT_HASH, sysv, length, host.section_at(sysv, ("SHT_HASH",)))
            self.sysv = SysvHashTable.parse(
                table.data, self.count, self.sysv_code, host.little, where
            )
        if self.gnu is None and self.sysv is None:
            host.fail("no DT_GNU_HASH or DT_HASH: dlsym could find nothing in it")
        versym = host.tag(_DT_VERSYM)
        if versym is not None:
            section = host.section_at(versym, ("SHT_GNU_versym",))
            self._add(_DT_VERSYM, versym, 2 * self.count, section)
        for tag, kind in ((_DT_VERDEF, "SHT_GNU_verdef"), (_DT_VERNEED, "SHT_GNU_verneed")):
            address = host.tag(tag)
            if address is not None:
                index = host.section_at(address, (kind,))
                if index is not None:  # moved only to make room, and then with its header size
                    self._add(tag, address, host.sections[index]["sh_size"], index)

    def _memory(self, address: int, length: int, what: str) -> bytes:
        return self.host.read(self.host.file_offset(address, length, what), length)

    def _add(self, tag: int, address: int, length: int, section: int | None) -> _Table:
        table = _Table(tag, address, self._memory(address, length, f"tag {tag:#x}"), section)
        self.tables[tag] = table
        return table

    def name_of(self, index: int) -> bytes:
        raw = self.tables[_DT_SYMTAB].data
        entry = self.host.symbol_layout
        st_name = entry.unpack_from(raw, index * entry.size)[0]
        strings = self.tables[_DT_STRTAB].data
        end = strings.find(b"\0", st_name)
        return strings[st_name : end if end != -1 else len(strings)]

    def find_defined(self) -> int | None:
        """Index of a defined `__tvm_ffi__library_bin` that every hash table finds, if any."""
        found = [
            table.lookup(_NAME, self.name_of)
            for table in (self.gnu, self.sysv)
            if table is not None
        ]
        index = found[0] if len(set(found)) == 1 else None
        if index is None:  # a table misses it, or the tables disagree
            return None
        fields = self.fields(index)
        return index if fields["shndx"] != 0 else None

    def fields(self, index: int) -> dict[str, int]:
        layout = self.host.symbol_layout
        values = layout.unpack_from(self.tables[_DT_SYMTAB].data, index * layout.size)
        if self.host.bits == 64:
            name, info, other, shndx, value, size = values
        else:
            name, value, size, info, other, shndx = values
        return dict(name=name, info=info, other=other, shndx=shndx, value=value, size=size)

    def symbol_bytes(self, **fields: int) -> bytes:
        f = fields
        if self.host.bits == 64:
            order = (f["name"], f["info"], f["other"], f["shndx"], f["value"], f["size"])
        else:
            order = (f["name"], f["value"], f["size"], f["info"], f["other"], f["shndx"])
        return self.host.symbol_layout.pack(*order)

    def add_symbol(self, shndx: int, placement: Placement) -> int:
        """Insert the blob symbol where the GNU hash table wants it (or last); its index."""
        strings = self.tables[_DT_STRTAB]
        at = strings.data.find(_NAME + b"\0")
        if at == -1:
            at = len(strings.data)
            strings.data += _NAME + b"\0"
            strings.changed = True
        position = self.gnu.insert_position(_NAME) if self.gnu else self.count
        symbols = self.tables[_DT_SYMTAB]
        entry = self.host.symbol_layout.size
        new = self.symbol_bytes(
            name=at, info=_STB_GLOBAL_STT_OBJECT, other=0, shndx=shndx,
            value=placement.address, size=placement.size,
        )  # fmt: skip
        symbols.data = symbols.data[: position * entry] + new + symbols.data[position * entry :]
        symbols.changed = True
        if self.sysv is not None and wide_hash_machine(self.host.elf):
            # lld writes 32-bit DT_HASH entries even where glibc and libelf read 64-bit ones
            # (64-bit s390 and Alpha); the rebuilt table takes the width the ABI gives.
            self.sysv.widen()
        for table, tag in ((self.gnu, _DT_GNU_HASH), (self.sysv, _DT_HASH)):
            if table is not None:
                table.insert(position, _NAME)
                self.tables[tag].data = table.to_bytes()
                self.tables[tag].changed = True
        versions = self.tables.get(_DT_VERSYM)
        if versions is not None:
            word = _VER_NDX_GLOBAL.to_bytes(2, "little" if self.host.little else "big")
            versions.data = versions.data[: 2 * position] + word + versions.data[2 * position :]
            versions.changed = True
        return position

    def repoint_symbol(self, index: int, shndx: int, placement: Placement) -> None:
        """Make the existing entry name the new blob: global, default visibility, in our section."""
        symbols = self.tables[_DT_SYMTAB]
        entry = self.host.symbol_layout.size
        fields = self.fields(index)
        fields.update(
            info=_STB_GLOBAL_STT_OBJECT, other=fields["other"] & ~0x3, shndx=shndx,
            value=placement.address, size=placement.size,
        )  # fmt: skip
        new = self.symbol_bytes(**fields)
        symbols.data = symbols.data[: index * entry] + new + symbols.data[(index + 1) * entry :]
        symbols.changed = True
        versions = self.tables.get(_DT_VERSYM)
        if versions is None:
            return
        order: Literal["little", "big"] = "little" if self.host.little else "big"
        value = int.from_bytes(versions.data[2 * index : 2 * index + 2], order)
        if value & 0x7FFF == 0 or value & _VERSYM_HIDDEN:  # local or hidden: dlsym misses it
            word = ((value & 0x7FFF) or _VER_NDX_GLOBAL).to_bytes(2, order)
            versions.data = versions.data[: 2 * index] + word + versions.data[2 * index + 2 :]
            versions.changed = True


def plan_edit(handle: BinaryIO, size: int, display: str, blob_size: int) -> ElfEdit:
    """Decide the whole edit that gives the library a `blob_size`-byte blob."""
    host = _Host(handle, size, display)
    tables = _SymbolTables(host)
    try:  # checked before anything is planned: the verifier reads them whatever the edit
        relocations = read_dynamic(handle, size).relocation_tables()
    except DynamicError as exc:
        host.fail(str(exc))
    _check_relocated_symbols(host, tables.count, relocations)
    existing = tables.find_defined()
    if existing is not None:
        reused = _reuse_own_segment(host, tables, existing, blob_size)
        if reused is not None:
            return reused
    return _append_segment(host, tables, existing, blob_size, relocations)


def _check_relocated_symbols(
    host: _Host, count: int, relocations: list[tuple[int, int, int]]
) -> None:
    """Refuse a relocation that names a symbol past the end of `.dynsym`: what it names is
    not a symbol, and renumbering could not keep it what it is."""
    for address, size, entry in relocations:
        at = host.file_offset(address, size, "relocations")
        for start, length in entry_chunks(size, entry):
            raw = host.read(at + start, length)
            end = relocation_symbol_end(raw, entry, host.bits, host.little)
            if end > count:
                host.fail(
                    f"a relocation at {address + start:#x} or after names symbol {end - 1},"
                    f" past the {count} entries of .dynsym"
                )


def _blob_section(host: _Host) -> int | None:
    found = [i for i in range(len(host.sections)) if host.names[i] == BLOB_SECTION]
    return found[-1] if found else None


def _reuse_own_segment(
    host: _Host, tables: _SymbolTables, index: int, blob_size: int
) -> ElfEdit | None:
    """Cut off an old blob that ends the last segment and the file's loaded bytes, if it does."""
    ours = _blob_section(host)
    symbol = tables.fields(index)
    if ours is None or symbol["shndx"] != ours:
        return None
    section = host.sections[ours]
    last = max(host.loads, key=lambda p: p["p_vaddr"])
    start = section["sh_offset"]
    if (
        section["sh_addr"] != symbol["value"]
        or section["sh_type"] != "SHT_PROGBITS"
        or last["p_filesz"] != last["p_memsz"]
        or section["sh_addr"] - last["p_vaddr"] != start - last["p_offset"]
        or last["p_offset"] + last["p_filesz"] != start + section["sh_size"]
        or last["p_vaddr"] + last["p_memsz"] != section["sh_addr"] + section["sh_size"]
    ):
        return None
    # Nothing the loader or a section header needs may lie past the old blob's start, except
    # non-allocated sections, which are carried past the new blob.
    if any(
        p["p_filesz"] and p["p_offset"] + p["p_filesz"] > start
        for p in host.phdrs
        if p is not last and p["p_type"] != "PT_NULL"
    ):
        return None
    carried_sections = []
    for number, header in enumerate(host.sections):
        if number == ours or header["sh_type"] == "SHT_NOBITS" or not header["sh_size"]:
            continue
        end = header["sh_offset"] + header["sh_size"]
        if end <= start:
            continue
        if header["sh_flags"] & _SHF_ALLOC or header["sh_offset"] < start:
            return None
        carried_sections.append(number)
    placement = Placement(start, section["sh_addr"], blob_size)
    edit = ElfEdit(copies=[(0, start, 0)], placement=placement, blobs=[placement.file_offset])
    headers = [dict(h) for h in host.sections]
    cursor = start + blob_size
    for number in carried_sections:
        moved = headers[number]
        cursor = align(cursor, max(moved["sh_addralign"], 1))
        edit.copies.append((moved["sh_offset"], moved["sh_size"], cursor))
        moved["sh_offset"] = cursor
        cursor += moved["sh_size"]
    headers[ours]["sh_size"] = blob_size
    grown = last["p_filesz"] - section["sh_size"] + blob_size
    phdrs = [dict(p) for p in host.phdrs]
    phdrs[host.phdrs.index(last)].update(p_filesz=grown, p_memsz=grown)
    tables.repoint_symbol(index, ours, placement)
    for table in tables.tables.values():
        if table.changed:
            where = host.file_offset(table.address, len(table.data), "a dynamic table")
            edit.patches.append((where, table.data))
    _finish(host, edit, phdrs, headers, cursor, None)
    return edit


def _append_segment(
    host: _Host,
    tables: _SymbolTables,
    existing: int | None,
    blob_size: int,
    relocations: list[tuple[int, int, int]],
) -> ElfEdit:
    """The general case: a new PT_LOAD past everything, holding new tables and the blob."""
    headers = [dict(h) for h in host.sections]
    phdrs = [dict(p) for p in host.phdrs]
    ours = _blob_section(host)
    added = None
    if ours is None:
        ours = added = _new_section_index(host, tables)
        blob_header = dict(
            sh_name=0, sh_type="SHT_PROGBITS", sh_flags=_SHF_ALLOC, sh_addr=0, sh_offset=0,
            sh_size=0, sh_link=0, sh_info=0, sh_addralign=_BLOB_ALIGN, sh_entsize=0,
        )  # fmt: skip
    else:
        blob_header = headers[ours]
    offset = align(host.size, _MIN_PAGE)
    top = max(p["p_vaddr"] + p["p_memsz"] for p in host.loads)
    address = align(top, host.page) + offset % host.page
    # Tables change size (adding) or content (re-pointing); the blob's place is only known
    # once the tables are laid out, so lay out with a provisional placement, then patch it.
    provisional = Placement(0, 0, blob_size)
    index = tables.add_symbol(ours, provisional) if existing is None else existing
    tables.repoint_symbol(index, ours, provisional)
    slot = _make_phdr_slot(host, phdrs)
    moved_blocks = _blocks_to_move(host, tables, slot)
    edit = ElfEdit(copies=[(0, host.size, 0)], placement=provisional)
    cursor = offset
    for first, last in moved_blocks:
        cursor = align(cursor, 16) + (first % 16)
        delta = cursor - first
        edit.copies.append((first, last - first, cursor))
        _follow_move(host, phdrs, headers, first, last, delta, address - offset)
        cursor += last - first
    region: list[tuple[int, _Table]] = []
    for tag in _MOVABLE_TAGS:
        table = tables.tables.get(tag)
        if table is None:
            continue
        in_place = host.file_offset(table.address, table.length, "a dynamic table")
        if len(table.data) == table.length and not _overlaps(in_place, table.length, *slot.growth):
            if table.changed:
                region.append((in_place, table))  # same size: patched where it is
            continue
        cursor = align(cursor, 8)
        region.append((cursor, table))
        new_address = address + cursor - offset
        edit.patches.extend(_retag(host, table.tag, new_address))
        if table.tag == _DT_STRTAB and len(table.data) != host.tag(_DT_STRSZ):
            edit.patches.extend(_retag(host, _DT_STRSZ, len(table.data)))
        if table.section is not None:
            headers[table.section].update(
                sh_offset=cursor, sh_addr=new_address, sh_size=len(table.data)
            )
            if table.tag == _DT_HASH and tables.sysv is not None:
                headers[table.section]["sh_entsize"] = tables.sysv.chains.itemsize
        table.address = new_address
        cursor += len(table.data)
    cursor = align(cursor, _BLOB_ALIGN)
    placement = Placement(cursor, address + cursor - offset, blob_size)
    edit.placement = placement
    edit.blobs.append(placement.file_offset)
    tables.repoint_symbol(index, ours, placement)  # now that the blob's address is known
    edit.patches.extend((at, table.data) for at, table in region)
    blob_header.update(sh_addr=placement.address, sh_offset=cursor, sh_size=blob_size)
    cursor += blob_size
    segment = dict(
        p_type="PT_LOAD", p_flags=_PF_R, p_offset=offset, p_vaddr=address, p_paddr=address,
        p_filesz=cursor - offset, p_memsz=cursor - offset, p_align=host.page,
    )  # fmt: skip
    slot.place(phdrs, segment)
    if existing is None and index < tables.count:  # symbols from `index` on moved up by one
        edit.relocations = _relocation_tables(host, relocations)
        edit.inserted_at = index
    if added is not None:
        _insert_section(headers, added, blob_header)
    _finish(host, edit, phdrs, headers, cursor, added)
    return edit


def _new_section_index(host: _Host, tables: _SymbolTables) -> int:
    """Where the blob's section header goes: right after the last allocated section.

    `strip` and `objcopy` renumber the sections they drop and the ones after them, but never
    rewrite `.dynsym`: the symbol's section index stays right only among the allocated
    sections at the front. Where a symbol names a section from there on (which would have to
    be renumbered), the header goes last instead.
    """
    if len(host.sections) >= 0xFF00 - 1:
        host.fail("too many sections to add one")
    position = 1 + max(
        (i for i, h in enumerate(host.sections) if h["sh_flags"] & _SHF_ALLOC), default=0
    )
    symbol_tables = [
        (h["sh_offset"], h["sh_size"])
        for h in host.sections
        if h["sh_type"] in ("SHT_SYMTAB", "SHT_DYNSYM")
    ]
    for offset, length in symbol_tables:
        if _names_sections_from(host, offset, length, position):
            return len(host.sections)
    return position


def _names_sections_from(host: _Host, offset: int, length: int, position: int) -> bool:
    """Whether a symbol table has an entry whose st_shndx is `position` or a later section."""
    entry = host.symbol_layout.size
    per_entry, at = (12, 3) if host.bits == 64 else (8, 7)  # st_shndx as the n-th u16
    for start, part in entry_chunks(length, entry):
        words = array("H", host.read(offset + start, part))
        if host.little != NATIVE_LITTLE:
            words.byteswap()
        if any(position <= index < 0xFF00 for index in set(words[at::per_entry])):
            return True
    return False


def _insert_section(headers: list[_Header], position: int, header: _Header) -> None:
    """Insert a section header, renumbering the links of the sections that follow it."""
    for other in headers:
        if other["sh_link"] >= position:
            other["sh_link"] += 1
        info_is_index = other["sh_type"] in ("SHT_REL", "SHT_RELA") or other["sh_flags"] & 0x40
        if info_is_index and other["sh_info"] >= position:
            other["sh_info"] += 1
    headers.insert(position, header)


def _overlaps(start: int, length: int, first: int, last: int) -> bool:
    return start < last and first < start + length


@dataclass
class _PhdrSlot:
    """Where the new PT_LOAD entry goes: a PT_NULL entry, or a new entry that grows the table."""

    growth: tuple[int, int]
    """File range the grown table newly covers (empty when a PT_NULL entry is reused)."""
    reuse_null: bool

    def place(self, phdrs: list[_Header], segment: _Header) -> None:
        """Insert `segment` after the last PT_LOAD: the loader wants them in address order."""
        if self.reuse_null:
            phdrs.remove(next(p for p in phdrs if p["p_type"] == "PT_NULL"))
        last = max(i for i, p in enumerate(phdrs) if p["p_type"] == "PT_LOAD")
        phdrs.insert(last + 1, segment)


def _make_phdr_slot(host: _Host, phdrs: list[_Header]) -> _PhdrSlot:
    if any(p["p_type"] == "PT_NULL" for p in phdrs):
        return _PhdrSlot((0, 0), reuse_null=True)
    step = host.elf["e_phentsize"]
    start = host.elf["e_phoff"] + len(phdrs) * step
    for phdr in phdrs:
        if phdr["p_type"] == "PT_PHDR":
            phdr["p_filesz"] += step
            phdr["p_memsz"] += step
    holder = [
        p
        for p in host.loads
        if p["p_offset"] <= host.elf["e_phoff"] < p["p_offset"] + p["p_filesz"]
    ]
    if holder and start + step > holder[0]["p_offset"] + holder[0]["p_filesz"]:
        host.fail("no room for another program header inside the first segment")
    return _PhdrSlot((start, start + step), reuse_null=False)


def _blocks_to_move(host: _Host, tables: _SymbolTables, slot: _PhdrSlot) -> list[tuple[int, int]]:
    """File ranges that must move out of the way of the grown program header table.

    A section in the way moves if the loader finds it only through a program header that can be
    re-pointed (notes, `.interp`); a PT_NOTE or PT_INTERP range moves whole, with every section
    in it. Dynamic tables in the way are re-placed with the tables (their tags re-pointed), and
    anything else a dynamic tag points into cannot move.
    """
    first, last = slot.growth
    if first == last:
        return []
    _refuse_tagged_bytes(host, tables, first, last)
    handled = {t.section for t in tables.tables.values()}
    blocks: list[list[int]] = []
    pending = [(first, last)]
    while pending:
        low, high = pending.pop()
        for number, header in enumerate(host.sections):
            if number in handled or header["sh_type"] == "SHT_NOBITS" or not header["sh_size"]:
                continue
            start, end = header["sh_offset"], header["sh_offset"] + header["sh_size"]
            if not _overlaps(start, end - start, low, high):
                continue
            name = host.names[number]
            movable = header["sh_type"] == "SHT_NOTE" or name == ".interp"
            if not movable or not header["sh_flags"] & _SHF_ALLOC:
                host.fail(
                    f"no room for another program header: section {name} follows the table"
                    " and cannot be moved"
                )
            if _absorb(blocks, start, end):
                pending.append((start, end))
        for phdr in host.phdrs:
            if phdr["p_type"] not in _FOLLOWING_SEGMENTS or not phdr["p_filesz"]:
                continue
            start, end = phdr["p_offset"], phdr["p_offset"] + phdr["p_filesz"]
            if _overlaps(start, end - start, low, high) and _absorb(blocks, start, end):
                pending.append((start, end))
    return sorted((low, high) for low, high in blocks)


def _refuse_tagged_bytes(host: _Host, tables: _SymbolTables, first: int, last: int) -> None:
    """Fail if a dynamic tag other than the re-placed tables' points into [first, last)."""
    handled = {t.tag for t in tables.tables.values()}
    machine = host.elf["e_machine"]
    for tag, value, _ in host.dynamic:
        if tag in handled or not is_address_tag(tag, machine):
            continue
        for load in host.loads:
            delta = value - load["p_vaddr"]
            if 0 <= delta < load["p_filesz"] and first <= load["p_offset"] + delta < last:
                host.fail(
                    f"no room for another program header: dynamic tag {tag:#x} points right"
                    " after the table"
                )


def _absorb(blocks: list[list[int]], start: int, end: int) -> bool:
    """Merge [start, end) into the blocks; True if that grew them."""
    for block in blocks:
        if start < block[1] and block[0] < end:
            if block[0] <= start and end <= block[1]:
                return False
            block[0], block[1] = min(block[0], start), max(block[1], end)
            return True
    blocks.append([start, end])
    return True


def _follow_move(
    host: _Host, phdrs: list[_Header], headers: list[_Header], first: int, last: int, delta: int,
    bias: int,
) -> None:  # fmt: skip
    """Re-point the sections and program headers inside the file range [first, last).

    They now start `delta` bytes further into the file; in the new segment, an address is its
    file offset plus `bias`.
    """
    for header in headers[: len(host.sections)]:
        if header["sh_type"] != "SHT_NOBITS" and first <= header["sh_offset"] < last:
            header["sh_offset"] += delta
            header["sh_addr"] = header["sh_offset"] + bias
    for phdr in phdrs:
        if phdr["p_type"] in _FOLLOWING_SEGMENTS and first <= phdr["p_offset"] < last:
            phdr["p_offset"] += delta
            moved = phdr["p_offset"] + bias - phdr["p_vaddr"]
            phdr["p_vaddr"] += moved
            phdr["p_paddr"] += moved


def _retag(host: _Host, tag: int, value: int) -> list[tuple[int, bytes]]:
    """Patches that set the value of every dynamic entry with `tag`."""
    word = struct.Struct(host.end + host.word)
    return [(at + word.size, word.pack(value)) for t, _, at in host.dynamic if t == tag]


def _relocation_tables(host: _Host, tables: list[tuple[int, int, int]]) -> list[RelocationTable]:
    """The file ranges of the REL/RELA `tables` (address, size, entry size), overlaps merged:
    their symbol indices must follow an inserted symbol."""
    if host.tag(_DT_ANDROID_REL) is not None or host.tag(_DT_ANDROID_RELA) is not None:
        host.fail("Android packed relocations are not supported")
    found = [
        (host.file_offset(address, length, "relocations"), length, step)
        for address, length, step in tables
    ]
    merged: list[list[int]] = []
    for start, length, step in sorted(found):
        if merged and start < merged[-1][0] + merged[-1][1]:
            if step != merged[-1][2]:
                host.fail("relocation tables of different entry sizes overlap")
            merged[-1][1] = max(merged[-1][1], start + length - merged[-1][0])
        else:
            merged.append([start, length, step])
    return [
        RelocationTable(start, length, step, host.bits, host.little)
        for start, length, step in merged
    ]


def _finish(
    host: _Host, edit: ElfEdit, phdrs: list[_Header], headers: list[_Header], cursor: int,
    added: int | None,
) -> None:  # fmt: skip
    """Section names, the section header table, the program header table and the ELF header.

    `added` is the index of a section header inserted into `headers`, which needs a name.
    """
    elf = host.elf
    names_index = elf["e_shstrndx"]
    if names_index == 0xFFFF:
        host.fail("extended section numbering is not supported")
    if added is not None and names_index >= added:
        names_index += 1
    if added is not None:
        strings_header = headers[names_index]
        strings = host.read(strings_header["sh_offset"], strings_header["sh_size"])
        at = strings.find(BLOB_SECTION.encode() + b"\0")
        if at == -1:
            at = len(strings)
            strings += BLOB_SECTION.encode() + b"\0"
            edit.patches.append((cursor, strings))
            strings_header.update(sh_offset=cursor, sh_size=len(strings))
            cursor += len(strings)
        headers[added]["sh_name"] = at
    cursor = align(cursor, 8)
    shdr = elf.structs.Elf_Shdr
    table = b"".join(shdr.build(Container(**header)) for header in headers)
    edit.patches.append((cursor, table))
    phdr = elf.structs.Elf_Phdr
    edit.patches.append((elf["e_phoff"], b"".join(phdr.build(Container(**p)) for p in phdrs)))
    header = Container(**elf.header)
    header.update(e_phnum=len(phdrs), e_shoff=cursor, e_shnum=len(headers), e_shstrndx=names_index)
    edit.patches.append((0, elf.structs.Elf_Ehdr.build(header)))
    edit.size = cursor + len(table)


def write_edit(source: str, out_fd: int, edit: ElfEdit, write_blob: BlobWriter) -> None:
    """Write the edited library to `out_fd`; `write_blob(fd, offset)` streams the blob in."""

    def shift(fd: int) -> None:
        for table in edit.relocations:
            _shift_relocations(fd, table, edit.inserted_at)

    edit.apply(source, out_fd, write_blob, rewrite_copied=shift)


def _shift_relocations(out_fd: int, table: RelocationTable, position: int) -> None:
    """Renumber r_info symbol indices at or past `position`, a bounded chunk at a time."""
    for start, length in entry_chunks(table.size, table.entry_size):
        at = table.file_offset + start
        raw = os.pread(out_fd, length, at)
        new = renumbered_relocations(raw, table.entry_size, table.bits, table.little, position)
        if new != raw:
            os.pwrite(out_fd, new, at)
