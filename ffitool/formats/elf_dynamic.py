"""The dynamic view of an ELF file: what the dynamic loader reads, found the way it finds it.

Only program headers and the dynamic segment are used here, never section headers, so that a
stale or stripped section table cannot make a lookup succeed where `dlsym` would fail. The
packer verifies its output with this.
"""

from __future__ import annotations

import io
import struct
from dataclasses import dataclass
from typing import BinaryIO

from elftools.common.utils import struct_parse

from ffitool.errors import InputError
from ffitool.formats.elf import ElfFile, program_headers

_DT = {
    "DT_NULL": 0,
    "DT_NEEDED": 1,
    "DT_HASH": 4,
    "DT_STRTAB": 5,
    "DT_SYMTAB": 6,
    "DT_STRSZ": 10,
    "DT_SYMENT": 11,
    "DT_SONAME": 14,
    "DT_RPATH": 15,
    "DT_RUNPATH": 29,
    "DT_GNU_HASH": 0x6FFFFEF5,
    "DT_VERSYM": 0x6FFFFFF0,
}


@dataclass(frozen=True)
class DynamicSymbol:
    """A symbol as a hash-table lookup returns it."""

    value: int
    size: int
    defined: bool
    version: int | None
    """The `.gnu.version` entry (DT_VERSYM): 0 local, 1 global, 0x8000 set = hidden."""


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

    def symbols(self) -> dict[str, DynamicSymbol]:
        """Every dynamic symbol by name, counted the way the loader can: from the hash tables."""
        reader = self._reader
        result = {}
        for index in range(1, reader.symbol_count()):
            name, symbol = reader.symbol(index)
            result[name.decode("utf-8", "backslashreplace")] = symbol
        return result


class DynamicError(InputError):
    """The file has no usable dynamic segment (a static executable, an object...)."""


def read_dynamic(stream: BinaryIO, size: int) -> DynamicView:
    """Read the dynamic segment of an open ELF file; DynamicError when there is none."""
    reader = _LoaderReader(stream, size)
    tags = reader.tags
    return DynamicView(
        needed=tuple(reader.string(v) for t, v in tags if t == _DT["DT_NEEDED"]),
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
        entry = struct.Struct(self.endian + self.word * 2)
        raw = self.file_bytes(dynamic[0]["p_offset"], dynamic[0]["p_filesz"])
        tags = []
        for offset in range(0, len(raw) - entry.size + 1, entry.size):
            tag, value = entry.unpack_from(raw, offset)
            if tag == _DT["DT_NULL"]:
                break
            tags.append((tag, value))
        self.tags = tags
        strtab = self.first("DT_STRTAB")
        strsz = self.first("DT_STRSZ") or 0
        self.strings = self.memory(strtab, strsz) if strtab is not None else b""

    def first(self, name: str) -> int | None:
        return next((v for t, v in self.tags if t == _DT[name]), None)

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
        layout = self.elf.structs.Elf_Sym
        entry_size = self.first("DT_SYMENT") or layout.sizeof()
        address = self.first("DT_SYMTAB")
        if address is None:
            raise DynamicError("no DT_SYMTAB")
        raw = self.memory(address + index * entry_size, layout.sizeof())
        sym = struct_parse(layout, io.BytesIO(raw), 0)
        end = self.strings.find(b"\0", sym["st_name"])
        name = self.strings[sym["st_name"] : end if end != -1 else None]
        defined = sym["st_shndx"] != "SHN_UNDEF"
        versym = self.first("DT_VERSYM")
        version = None if versym is None else self.words(versym + 2 * index, 1, "H")[0]
        return name, DynamicSymbol(sym["st_value"], sym["st_size"], defined, version)

    def symbol_count(self) -> int:
        """nchain of DT_HASH, or one past the last chain entry of DT_GNU_HASH."""
        sysv = self.first("DT_HASH")
        if sysv is not None:
            return self.words(sysv, 2)[1]
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
        wanted = name.encode()
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
        wanted = name.encode()
        nbucket, nchain = self.words(table, 2)
        if not nbucket:
            raise DynamicError("DT_HASH with no buckets")
        self.memory(table, 8 + 4 * (nbucket + nchain))  # the whole table must be in the file
        index = self.words(table + 8 + (sysv_hash(wanted) % nbucket) * 4, 1)[0]
        for _ in range(nchain):
            if index == 0:
                return None
            found, symbol = self.symbol(index)
            if found == wanted:
                return symbol
            index = self.words(table + 8 + nbucket * 4 + index * 4, 1)[0]
        return None
