"""The dynamic view of an ELF file: what the dynamic loader reads, found the way it finds it.

Only program headers and the dynamic segment are used here, never section headers, so that a
stale or stripped section table cannot make a lookup succeed where `dlsym` would fail. The
packer verifies its output with this.
"""

from __future__ import annotations

import dataclasses
import struct
from dataclasses import dataclass
from typing import BinaryIO

from elftools.construct.lib.container import Container

from ffitool.errors import InputError
from ffitool.formats.elf.reader import ElfFile, program_headers

_SHN_UNDEF = 0

# Every dynamic tag ffitool knows by name, and whether its d_un is an address (d_ptr) or not
# (d_val: a size, count, flag or string offset). From the System V gABI's "Dynamic Section"
# table, glibc's <elf.h> (GNU and Sun extensions) and bionic's (Android's packed relocations).
# Tags not named here are classified by `is_address_tag`'s rules.
_TAGS: tuple[tuple[str, int, bool], ...] = (
    ("DT_NULL", 0, False), ("DT_NEEDED", 1, False), ("DT_PLTRELSZ", 2, False),
    ("DT_PLTGOT", 3, True), ("DT_HASH", 4, True), ("DT_STRTAB", 5, True),
    ("DT_SYMTAB", 6, True), ("DT_RELA", 7, True), ("DT_RELASZ", 8, False),
    ("DT_RELAENT", 9, False), ("DT_STRSZ", 10, False), ("DT_SYMENT", 11, False),
    ("DT_INIT", 12, True), ("DT_FINI", 13, True), ("DT_SONAME", 14, False),
    ("DT_RPATH", 15, False), ("DT_SYMBOLIC", 16, False), ("DT_REL", 17, True),
    ("DT_RELSZ", 18, False), ("DT_RELENT", 19, False), ("DT_PLTREL", 20, False),
    ("DT_DEBUG", 21, True), ("DT_TEXTREL", 22, False), ("DT_JMPREL", 23, True),
    ("DT_BIND_NOW", 24, False), ("DT_INIT_ARRAY", 25, True), ("DT_FINI_ARRAY", 26, True),
    ("DT_INIT_ARRAYSZ", 27, False), ("DT_FINI_ARRAYSZ", 28, False), ("DT_RUNPATH", 29, False),
    ("DT_FLAGS", 30, False), ("DT_PREINIT_ARRAY", 32, True), ("DT_PREINIT_ARRAYSZ", 33, False),
    ("DT_SYMTAB_SHNDX", 34, True), ("DT_RELRSZ", 35, False), ("DT_RELR", 36, True),
    ("DT_RELRENT", 37, False),
    # Android: DT_LOOS + 2..5, addresses at odd numbers against the encoding rule.
    ("DT_ANDROID_REL", 0x6000000F, True), ("DT_ANDROID_RELSZ", 0x60000010, False),
    ("DT_ANDROID_RELA", 0x60000011, True), ("DT_ANDROID_RELASZ", 0x60000012, False),
    ("DT_GNU_HASH", 0x6FFFFEF5, True),
    ("DT_VERSYM", 0x6FFFFFF0, True), ("DT_RELACOUNT", 0x6FFFFFF9, False),
    ("DT_RELCOUNT", 0x6FFFFFFA, False),  # a count at an even number, against the rule
    ("DT_FLAGS_1", 0x6FFFFFFB, False), ("DT_VERDEF", 0x6FFFFFFC, True),
    ("DT_VERDEFNUM", 0x6FFFFFFD, False), ("DT_VERNEED", 0x6FFFFFFE, True),
    ("DT_VERNEEDNUM", 0x6FFFFFFF, False),
    # Sun's machine-independent tags in the processor range (string offsets; DT_USED even).
    ("DT_AUXILIARY", 0x7FFFFFFD, False), ("DT_USED", 0x7FFFFFFE, False),
    ("DT_FILTER", 0x7FFFFFFF, False),
)  # fmt: skip
DT = {name: tag for name, tag, _ in _TAGS}
"""Dynamic tag numbers by name."""
_ADDRESS = {tag: address for _, tag, address in _TAGS}
# Processor-specific tags that break the encoding rule, per e_machine (glibc's and bionic's
# <elf.h>): on other machines the same numbers mean other things.
_PROCESSOR_ADDRESS = {
    "EM_PPC64": {0x70000001: True, 0x70000002: False},  # DT_PPC64_OPD, DT_PPC64_OPDSZ
    "EM_AARCH64": {0x7000000C: False, 0x7000000D: True},  # DT_AARCH64_MEMTAG_STACK, _GLOBALS
}
_DT_ENCODING = 32
_DT_VALRNGLO, _DT_VALRNGHI = 0x6FFFFD00, 0x6FFFFDFF
_DT_ADDRRNGLO, _DT_ADDRRNGHI = 0x6FFFFE00, 0x6FFFFEFF
_DT_LOPROC = 0x70000000


def is_address_tag(tag: int, machine: str) -> bool:
    """Whether the value of a dynamic entry with `tag` is an address in the image (d_ptr).

    An address names bytes that must stay where it says (or be re-pointed with them); any
    other value is a size, count, flag or string offset, whatever number it happens to be.
    Named tags answer from the table above. Otherwise, by the gABI's rules: below DT_ENCODING
    a tag the table lacks is reserved and holds no address; glibc's DT_VALRNGLO..DT_VALRNGHI
    are values and DT_ADDRRNGLO..DT_ADDRRNGHI addresses; every other tag, including the OS-
    and processor-specific ranges, follows the encoding rule: even numbers are addresses,
    odd numbers values. `machine` (pyelftools' e_machine name) selects the processor-specific
    tags known to break the rule.
    """
    if tag in _ADDRESS:
        return _ADDRESS[tag]
    if tag < _DT_ENCODING:
        return False
    if _DT_VALRNGLO <= tag <= _DT_VALRNGHI:
        return False
    if _DT_ADDRRNGLO <= tag <= _DT_ADDRRNGHI:
        return True
    known = _PROCESSOR_ADDRESS.get(machine, {}).get(tag) if tag >= _DT_LOPROC else None
    return tag % 2 == 0 if known is None else known


@dataclass(frozen=True)
class DynamicSymbol:
    """A symbol as a hash-table lookup returns it."""

    value: int
    size: int
    defined: bool
    version: int | None
    """The `.gnu.version` entry (DT_VERSYM): 0 local, 1 global, 0x8000 set = hidden."""
    info: int = 0
    """st_info: binding and type."""
    other: int = 0
    """st_other: visibility."""
    shndx: int = 0
    index: int = dataclasses.field(default=0, compare=False)
    """Its index in DT_SYMTAB (not compared: the same symbol may have another index)."""


@dataclass(frozen=True)
class DynamicView:
    """DT_NEEDED, SONAME, RPATH/RUNPATH and hash-table lookups of one loadable ELF file."""

    needed: tuple[str, ...]
    soname: str | None
    rpath: str | None
    runpath: str | None
    has_gnu_hash: bool
    has_sysv_hash: bool
    _reader: _LoaderReader

    def lookup_gnu(self, name: str) -> DynamicSymbol | None:
        """Find `name` through DT_GNU_HASH (bloom filter, bucket, chain), as glibc does."""
        return self._reader.lookup_gnu(name)

    def lookup_sysv(self, name: str) -> DynamicSymbol | None:
        """Find `name` through DT_HASH (bucket, chain)."""
        return self._reader.lookup_sysv(name)

    @property
    def endian(self) -> str:
        """The struct byte-order character of the file: '<' or '>'."""
        return self._reader.endian

    @property
    def word_format(self) -> str:
        """The struct code of an address-sized word: 'Q' (ELFCLASS64) or 'I'."""
        return self._reader.word

    @property
    def entries(self) -> tuple[tuple[int, int], ...]:
        """The dynamic section's (tag, value) pairs up to DT_NULL."""
        return tuple(self._reader.tags)

    def relocation_tables(self) -> list[tuple[int, int, int]]:
        """(address, size, entry size) of the DT_RELA, DT_REL and DT_JMPREL tables.

        DynamicError for an entry size other than the ABI's, which ld.so would not load either
        (and which no decoder could step through).
        """
        reader = self._reader
        word = reader.elf.elfclass // 8
        found = []
        for table, size, entry, default in (
            ("DT_RELA", "DT_RELASZ", "DT_RELAENT", 3 * word),
            ("DT_REL", "DT_RELSZ", "DT_RELENT", 2 * word),
        ):
            step = reader.first(entry)
            if step is not None and step != default:
                raise DynamicError(f"{entry} is {step}, not {default}")
            address = reader.first(table)
            if address is not None:
                found.append((address, reader.first(size) or 0, default))
        plt = reader.first("DT_JMPREL")
        if plt is not None:
            kind = 3 if reader.first("DT_PLTREL") == DT["DT_RELA"] else 2
            found.append((plt, reader.first("DT_PLTRELSZ") or 0, kind * word))
        return found

    def memory(self, address: int, length: int) -> bytes:
        """Bytes of the loaded image at `address`, read through the PT_LOAD mapping them."""
        return self._reader.memory(address, length)

    def raw_table(self, tag: str, entry_size: int, count: int) -> bytes:
        """The bytes of `count` entries of DT_SYMTAB or DT_VERSYM."""
        address = self._reader.first(tag)
        if address is None:
            return b""
        return self._reader.memory(address, entry_size * count)

    @property
    def symbol_count(self) -> int:
        """Entries of DT_SYMTAB, counted from the hash tables as the loader can."""
        return self._reader.symbol_count()

    @property
    def symbol_entry_size(self) -> int:
        return self._reader._sym.size

    @property
    def string_table(self) -> tuple[int, int]:
        """DT_STRTAB and DT_STRSZ."""
        return self._reader.first("DT_STRTAB") or 0, self._reader.first("DT_STRSZ") or 0

    def symbol(self, index: int) -> tuple[bytes, DynamicSymbol]:
        """Name and entry of DT_SYMTAB entry `index`."""
        return self._reader.symbol(index)

    def symbols(self) -> list[tuple[str, DynamicSymbol]]:
        """Every dynamic symbol, counted the way the loader can: from the hash tables.

        A list, not a mapping: a versioned name (foo@V1, foo@@V2) appears once per version.
        """
        return [
            (name.decode("utf-8", "backslashreplace"), symbol)
            for name, symbol in self._reader.all_symbols()
        ]


class DynamicError(InputError):
    """The file has no usable dynamic segment (a static executable, an object...)."""


def read_dynamic(stream: BinaryIO, size: int) -> DynamicView:
    """Read the dynamic segment of an open ELF file; DynamicError when there is none."""
    reader = _LoaderReader(stream, size)
    tags = reader.tags
    return DynamicView(
        needed=tuple(reader.string(v) for t, v in tags if t == DT["DT_NEEDED"]),
        soname=reader.first_string("DT_SONAME"),
        rpath=reader.first_string("DT_RPATH"),
        runpath=reader.first_string("DT_RUNPATH"),
        has_gnu_hash=reader.first("DT_GNU_HASH") is not None,
        has_sysv_hash=reader.first("DT_HASH") is not None,
        _reader=reader,
    )


def gnu_hash(name: bytes) -> int:
    """The GNU symbol hash (Bernstein's h * 33 + c, 32-bit)."""
    h = 5381
    for c in name:
        h = (h * 33 + c) & 0xFFFFFFFF
    return h


# Segments the loader (or the kernel) reads at their address, with the bytes the file has there:
# each must lie in what a PT_LOAD maps, at the matching offset. PT_GNU_RELRO is a memory range.
_READ_AT_ADDRESS = (
    "PT_DYNAMIC", "PT_INTERP", "PT_NOTE", "PT_PHDR", "PT_TLS", "PT_GNU_EH_FRAME",
    "PT_GNU_PROPERTY",
)  # fmt: skip


def _page_end(address: int, load: Container) -> int:
    page = max(load["p_align"], 0x1000)
    return -(-address // page) * page


def unmapped_segments(phdrs: list[Container]) -> list[str]:
    """The program headers whose bytes no PT_LOAD maps where they say they are, described.

    ld.so reads PT_DYNAMIC, PT_TLS's template, notes and PT_PHDR at their addresses and
    protects PT_GNU_RELRO's range: a header whose address and offset disagree, or that points
    outside every loaded segment, makes a library that maps wrongly or not at all.
    """
    loads = [p for p in phdrs if p["p_type"] == "PT_LOAD"]
    found = []
    for phdr in phdrs:
        kind, start = phdr["p_type"], phdr["p_vaddr"]
        if kind == "PT_GNU_RELRO" and phdr["p_memsz"]:
            end = start + phdr["p_memsz"]
            # lld rounds the range up to a page: ld.so protects whole pages, and the loaded
            # segment's last page is mapped to its end.
            if not any(
                p["p_vaddr"] <= start and end <= _page_end(p["p_vaddr"] + p["p_memsz"], p)
                for p in loads
            ):
                found.append(f"{kind} at {start:#x} lies outside every PT_LOAD")
        elif kind in _READ_AT_ADDRESS and phdr["p_filesz"]:
            end = start + phdr["p_filesz"]
            if not any(
                p["p_vaddr"] <= start
                and end <= p["p_vaddr"] + p["p_filesz"]
                and start - p["p_vaddr"] == phdr["p_offset"] - p["p_offset"]
                for p in loads
            ):
                found.append(f"{kind} at {start:#x} is not mapped from its file offset")
    return found


def wide_hash_machine(elf: ElfFile) -> bool:
    """64-bit s390 and Alpha: where glibc and libelf read DT_HASH as 64-bit words."""
    return elf.elfclass == 64 and elf["e_machine"] in ("EM_S390", "EM_ALPHA")


def sysv_entry_format(elf: ElfFile, head: bytes) -> str:
    """The struct code of DT_HASH entries, from the machine and the table's first 8 bytes.

    32-bit ('I') everywhere except where glibc reads 64-bit ones ('Q'), 64-bit s390 and Alpha,
    as binutils writes them there; lld writes 32-bit entries even there. Read as two 32-bit
    words, a 64-bit nbucket shows a zero half, which a real nbucket or nchain never is.
    """
    if not wide_hash_machine(elf) or len(head) < 8:
        return "I"
    halves = struct.unpack(("<" if elf.little_endian else ">") + "2I", head[:8])
    return "Q" if 0 in halves else "I"


def sysv_hash(name: bytes) -> int:
    """The System V ABI symbol hash."""
    h = 0
    for c in name:
        h = ((h << 4) + c) & 0xFFFFFFFF
        g = h & 0xF0000000
        if g:
            h ^= g >> 24
        h &= ~g & 0xFFFFFFFF
    return h


class _LoaderReader:
    """Reads memory of the loaded image through PT_LOAD segments, like the loader maps it."""

    def __init__(self, stream: BinaryIO, size: int) -> None:
        self.elf = ElfFile(stream)
        self.stream = stream
        self.size = size
        phdrs = program_headers(self.elf, size)
        self.loads = [p for p in phdrs if p["p_type"] == "PT_LOAD"]
        dynamic = [p for p in phdrs if p["p_type"] == "PT_DYNAMIC"]
        if not dynamic:
            raise DynamicError("no PT_DYNAMIC segment")
        self.endian = "<" if self.elf.little_endian else ">"
        self.word = "Q" if self.elf.elfclass == 64 else "I"
        # Elf64_Sym: name, info, other, shndx, value, size; Elf32_Sym: name, value, size,
        # info, other, shndx.
        self._sym = struct.Struct(self.endian + ("IBBHQQ" if self.elf.elfclass == 64 else "IIIBBH"))
        entry = struct.Struct(self.endian + self.word * 2)
        raw = self.file_bytes(dynamic[0]["p_offset"], dynamic[0]["p_filesz"])
        tags = []
        for offset in range(0, len(raw) - entry.size + 1, entry.size):
            tag, value = entry.unpack_from(raw, offset)
            if tag == DT["DT_NULL"]:
                break
            tags.append((tag, value))
        self.tags = tags
        strtab = self.first("DT_STRTAB")
        strsz = self.first("DT_STRSZ") or 0
        self.strings = self.memory(strtab, strsz) if strtab is not None else b""
        sysv = self.first("DT_HASH")
        try:
            head = self.memory(sysv, 8) if sysv is not None else b""
        except DynamicError:
            head = b""
        self.hash_word = sysv_entry_format(self.elf, head)

    def first(self, name: str) -> int | None:
        return next((v for t, v in self.tags if t == DT[name]), None)

    def first_string(self, name: str) -> str | None:
        value = self.first(name)
        return None if value is None else self.string(value)

    def string(self, offset: int) -> str:
        end = self.strings.find(b"\0", offset)
        return self.strings[offset : end if end != -1 else None].decode("utf-8", "backslashreplace")

    def file_bytes(self, offset: int, length: int) -> bytes:
        if offset > self.size or length > self.size - offset:
            raise DynamicError(f"{length} bytes at file offset {offset} lie outside the file")
        self.stream.seek(offset)
        return self.stream.read(length)

    def memory(self, address: int, length: int) -> bytes:
        """Bytes at a virtual address, read through the PT_LOAD that maps them."""
        for load in self.loads:
            delta = address - load["p_vaddr"]
            if delta >= 0 and delta + length <= load["p_filesz"]:
                return self.file_bytes(load["p_offset"] + delta, length)
        raise DynamicError(f"{length} bytes at address {address:#x} are not mapped from the file")

    def words(self, address: int, count: int, fmt: str = "I") -> tuple[int, ...]:
        layout = struct.Struct(f"{self.endian}{count}{fmt}")
        return layout.unpack(self.memory(address, layout.size))

    def symbol(self, index: int) -> tuple[bytes, DynamicSymbol]:
        """One entry of DT_SYMTAB, decoded with `struct`: lookups call this in loops."""
        raw = self.memory(self._symtab() + index * self._entry_size(), self._sym.size)
        versym = self.first("DT_VERSYM")
        version = None if versym is None else self.words(versym + 2 * index, 1, "H")[0]
        name, symbol = self._decode(raw, version)
        return name, dataclasses.replace(symbol, index=index)

    def all_symbols(self) -> list[tuple[bytes, DynamicSymbol]]:
        """Every entry but the null one, read in one piece (the hash tables give the count)."""
        count = self.symbol_count()
        if count <= 1:
            return []
        step = self._entry_size()
        table = self.memory(self._symtab(), step * count)
        versym = self.first("DT_VERSYM")
        versions = [None] * count if versym is None else self.words(versym, count, "H")
        return [
            self._decode(table[i * step : i * step + self._sym.size], versions[i])
            for i in range(1, count)
        ]

    def _symtab(self) -> int:
        address = self.first("DT_SYMTAB")
        if address is None:
            raise DynamicError("no DT_SYMTAB")
        return address

    def _entry_size(self) -> int:
        step = self.first("DT_SYMENT") or self._sym.size
        if step < self._sym.size:
            raise DynamicError(f"DT_SYMENT {step} is smaller than a symbol")
        return step

    def _decode(self, raw: bytes, version: int | None) -> tuple[bytes, DynamicSymbol]:
        if self.elf.elfclass == 64:
            st_name, info, other, st_shndx, st_value, st_size = self._sym.unpack(raw)
        else:
            st_name, st_value, st_size, info, other, st_shndx = self._sym.unpack(raw)
        end = self.strings.find(b"\0", st_name)
        name = self.strings[st_name : end if end != -1 else None]
        defined = st_shndx != _SHN_UNDEF
        return name, DynamicSymbol(st_value, st_size, defined, version, info, other, st_shndx)

    def symbol_count(self) -> int:
        """nchain of DT_HASH, or one past the last chain entry of DT_GNU_HASH."""
        sysv = self.first("DT_HASH")
        if sysv is not None:
            return self.words(sysv, 2, self.hash_word)[1]
        table = self.first("DT_GNU_HASH")
        if table is None:
            return 0
        nbuckets, symoffset, bloom_size, _ = self.words(table, 4)
        buckets_at = table + 16 + bloom_size * (self.elf.elfclass // 8)
        last = max(self.words(buckets_at, nbuckets), default=0) if nbuckets else 0
        if last < symoffset:
            return symoffset
        chains_at = buckets_at + nbuckets * 4
        while not self.words(chains_at + (last - symoffset) * 4, 1)[0] & 1:
            last += 1
        return last + 1

    def lookup_gnu(self, name: str) -> DynamicSymbol | None:
        table = self.first("DT_GNU_HASH")
        if table is None:
            return None
        wanted = name.encode("utf-8", "surrogateescape")
        h = gnu_hash(wanted)
        nbuckets, symoffset, bloom_size, bloom_shift = self.words(table, 4)
        if not nbuckets or not bloom_size:
            raise DynamicError(f"DT_GNU_HASH with {nbuckets} buckets and {bloom_size} bloom words")
        bits = self.elf.elfclass
        bloom_at = table + 16
        word = self.words(bloom_at + ((h // bits) % bloom_size) * (bits // 8), 1, self.word)[0]
        mask = (1 << (h % bits)) | (1 << ((h >> bloom_shift) % bits))
        if word & mask != mask:
            return None
        buckets_at = bloom_at + bloom_size * (bits // 8)
        index = self.words(buckets_at + (h % nbuckets) * 4, 1)[0]
        if index < symoffset:
            return None
        chains_at = buckets_at + nbuckets * 4
        while True:
            chain = self.words(chains_at + (index - symoffset) * 4, 1)[0]
            if chain | 1 == h | 1:
                found, symbol = self.symbol(index)
                if found == wanted:
                    return symbol
            if chain & 1:
                return None
            index += 1

    def lookup_sysv(self, name: str) -> DynamicSymbol | None:
        table = self.first("DT_HASH")
        if table is None:
            return None
        wanted = name.encode("utf-8", "surrogateescape")
        code = self.hash_word
        step = struct.calcsize(code)
        nbucket, nchain = self.words(table, 2, code)
        if not nbucket:
            raise DynamicError("DT_HASH with no buckets")
        self.memory(table, step * (2 + nbucket + nchain))  # the whole table must be in the file
        index = self.words(table + step * (2 + sysv_hash(wanted) % nbucket), 1, code)[0]
        for _ in range(nchain):
            if index == 0:
                return None
            found, symbol = self.symbol(index)
            if found == wanted:
                return symbol
            index = self.words(table + step * (2 + nbucket + index), 1, code)[0]
        return None
