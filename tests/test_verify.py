"""verify(): each check it makes, seen to fire on an output damaged in exactly that property.

The pack tests show that real outputs pass verify(); these show that every sentence it can
say is reachable. Each host is packed once; each case copies the good output, changes one
field or byte with `struct` at an offset found through the file's own headers, and expects
that check's exact message. Layout rules are judged against the input, so a second set shows
that a rule the input already broke is not charged to the output.
"""

from __future__ import annotations

import io
import re
import struct
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import pytest
from conftest import FIXTURES, require_tool

from ffitool.edit.plan import Edits, PayloadSource, Plan, plan_edits
from ffitool.edit.verification import VerificationError
from ffitool.formats.elf.dynamic import gnu_hash, read_dynamic, sysv_hash
from ffitool.formats.elf.packer import ElfPacker
from ffitool.formats.elf.reader import ElfFile, SectionNames, program_headers, section_headers
from ffitool.formats.elf.verify import _Headers, _violations
from ffitool.formats.elf.writer import Placement
from ffitool.pack import pack_library, verify_output
from ffitool.symbols import LIBRARY_BIN

# Packs fixtures/bin files themselves: one worker runs them (see conftest.py).
pytestmark = pytest.mark.xdist_group("packs-elf-fixtures")

PAYLOAD = bytes(range(256)) * 40
KIND = "test_alpha"
PREFIX = "packed file failed verification: "

DT_NULL, DT_NEEDED, DT_PLTRELSZ, DT_HASH, DT_STRTAB, DT_SYMTAB, DT_SYMENT = 0, 1, 2, 4, 5, 6, 11
DT_STRSZ = 10
DT_INIT, DT_FINI, DT_SONAME, DT_RPATH, DT_JMPREL = 12, 13, 14, 15, 23
DT_RUNPATH, DT_FLAGS, DT_GNU_HASH, DT_VERSYM = 29, 30, 0x6FFFFEF5, 0x6FFFFFF0
DT_FLAGS_1, DT_DEBUG = 0x6FFFFFFB, 21
PF_X, PF_W = 1, 2
SHF_WRITE, SHF_ALLOC = 1, 2

# A host that gold links with what the committed fixtures lack: PT_PHDR, a build-id note,
# DT_NEEDED, a SONAME, a run path, symbol versions, and a .bss large enough that the new
# segment's address-to-offset delta differs from the RW segment's.
RICH_SOURCE = """
#include <stdlib.h>
static unsigned char big[1 << 16];
__attribute__((visibility("default"))) int rich_parse(const char *s) { return atoi(s); }
__attribute__((visibility("default"))) int rich_add(int x) { big[x & 0xffff] = x; return x + 1; }
__attribute__((visibility("default"))) int rich_twice(int x) { return x * 2 + big[0]; }
"""
RICH_VERSIONS = "RICH_1 { global: rich_add; rich_twice; rich_parse; local: *; };\n"
RUN_PATH = "/opt/ffitool/verify/run/path"


def verify(output: Path, original: Path, plan, placement) -> None:
    """The pack flow's verification of an ELF output (its blob, then the ELF verifier), given
    where the blob was placed."""
    verify_output(ElfPacker(), output, original, plan, SimpleNamespace(placement=placement))


@dataclass(frozen=True)
class Packed:
    """A host, its verified output, and what the writer said it wrote."""

    original: Path
    output: Path
    plan: Plan
    placement: Placement


@pytest.fixture(scope="module")
def packed(tmp_path_factory) -> Callable[[str], Packed]:
    """Pack each host at most once per module: packing is what the cases start from."""
    directory = tmp_path_factory.mktemp("verify")
    payload = directory / "payload.bin"
    payload.write_bytes(PAYLOAD)
    done: dict[str, Packed] = {}

    def host(name: str) -> Path:
        if not name.startswith("gold"):
            return FIXTURES / {"ffi_c": "libffi_c.so"}.get(name, f"libpack_host_{name}.so")
        gcc = require_tool("gcc")
        require_tool("ld.gold")
        (directory / "rich.c").write_text(RICH_SOURCE)
        (directory / "rich.map").write_text(RICH_VERSIONS)
        tags = "--disable-new-dtags" if name == "gold_rpath" else "--enable-new-dtags"
        library = directory / f"lib{name}.so"
        subprocess.run(
            [gcc, "-shared", "-fPIC", "-O2", "-fuse-ld=gold", "-Wl,--build-id",
             "-Wl,-soname,librich.so", f"-Wl,{tags},-rpath,{RUN_PATH}",
             f"-Wl,--version-script={directory / 'rich.map'}",
             "-o", str(library), str(directory / "rich.c")],
            check=True,
        )  # fmt: skip
        return library

    def get(name: str) -> Packed:
        if name not in done:
            original = host(name)
            source = PayloadSource(str(payload), 0, len(PAYLOAD))
            plan = plan_edits(None, Edits(add=((KIND, source),)))
            output = directory / f"{name}.packed.so"
            placement = pack_library(original, plan, output).placement
            verify(output, original, plan, placement)  # the undamaged output passes
            done[name] = Packed(original, output, plan, placement)
        return done[name]

    return get


class Image:
    """An ELF file's bytes, with its headers found afresh after every change."""

    def __init__(self, data: bytes) -> None:
        self.data = bytearray(data)

    @property
    def elf(self) -> ElfFile:
        return ElfFile(io.BytesIO(bytes(self.data)))

    @property
    def endian(self) -> str:
        return "<" if self.elf.little_endian else ">"

    @property
    def word(self) -> str:
        return "Q" if self.elf.elfclass == 64 else "I"

    def set_header(self, **fields: int) -> None:
        elf = self.elf
        header = elf.header
        header.update(fields)
        built = elf.structs.Elf_Ehdr.build(header)
        self.data[: len(built)] = built

    def sections(self) -> list[tuple[int, str, dict]]:
        """(header offset, name, header) of every section."""
        elf = self.elf
        headers = section_headers(elf, len(self.data))
        names = SectionNames(elf, headers, len(self.data))
        return [
            (elf["e_shoff"] + i * elf["e_shentsize"], names[i], h) for i, h in enumerate(headers)
        ]

    def section(self, name: str) -> dict:
        return next(h for _, n, h in self.sections() if n == name)

    def set_section(self, name: str, **fields: int) -> None:
        offset, _, header = next(s for s in self.sections() if s[1] == name)
        header.update(fields)
        built = self.elf.structs.Elf_Shdr.build(header)
        self.data[offset : offset + len(built)] = built

    def segments(self) -> list[tuple[int, dict]]:
        """(header offset, header) of every program header."""
        elf = self.elf
        headers = program_headers(elf, len(self.data))
        return [(elf["e_phoff"] + i * elf["e_phentsize"], h) for i, h in enumerate(headers)]

    def segment(self, kind: str, index: int = 0) -> dict:
        return [h for _, h in self.segments() if h["p_type"] == kind][index]

    def set_segment(self, kind: str, index: int = 0, **fields: int) -> None:
        offset, header = [s for s in self.segments() if s[1]["p_type"] == kind][index]
        header.update(fields)
        built = self.elf.structs.Elf_Phdr.build(header)
        self.data[offset : offset + len(built)] = built

    def dynamic(self) -> list[tuple[int, int, int]]:
        """(file offset, tag, value) of each dynamic entry, the terminating DT_NULL included."""
        start = self.segment("PT_DYNAMIC")["p_offset"]
        entry = struct.Struct(self.endian + self.word * 2)
        found = []
        for offset in range(start, start + self.segment("PT_DYNAMIC")["p_filesz"], entry.size):
            tag, value = entry.unpack_from(self.data, offset)
            found.append((offset, tag, value))
            if tag == DT_NULL:
                break
        return found

    def tag(self, tag: int) -> int:
        return next(v for _, t, v in self.dynamic() if t == tag)

    def set_entry(self, offset: int, tag: int, value: int) -> None:
        struct.pack_into(self.endian + self.word * 2, self.data, offset, tag, value)

    def file_offset(self, address: int) -> int:
        """Where the loader reads `address` from: through the PT_LOAD whose file part holds it."""
        for _, load in self.segments():
            delta = address - load["p_vaddr"]
            if load["p_type"] == "PT_LOAD" and 0 <= delta < load["p_filesz"]:
                return load["p_offset"] + delta
        raise AssertionError(f"{address:#x} is not mapped from the file")

    def dynamic_string(self, tag: int) -> int:
        """File offset of the string a dynamic entry names, read through DT_STRTAB."""
        return self.file_offset(self.tag(DT_STRTAB) + self.tag(tag))

    def symbol_index(self, name: str) -> int:
        """Index in DT_SYMTAB, counting the null entry, of the first entry called `name`."""
        view = read_dynamic(io.BytesIO(bytes(self.data)), len(self.data))
        return [n for n, _ in view.symbols()].index(name) + 1

    def symbol(self, name: str) -> tuple[int, dict]:
        """(file offset, fields) of the DT_SYMTAB entry the loader finds for `name`."""
        index = self.symbol_index(name)
        layout = self.elf.structs.Elf_Sym
        step = self.tag(DT_SYMENT)
        offset = self.file_offset(self.tag(DT_SYMTAB) + index * step)
        return offset, layout.parse(bytes(self.data[offset : offset + layout.sizeof()]))

    def set_symbol(self, name: str, **fields: object) -> None:
        offset, symbol = self.symbol(name)
        symbol.update(fields)
        built = self.elf.structs.Elf_Sym.build(symbol)
        self.data[offset : offset + len(built)] = built

    def defined_symbols(self) -> list[str]:
        view = read_dynamic(io.BytesIO(bytes(self.data)), len(self.data))
        return sorted({n for n, s in view.symbols() if s.defined and n != LIBRARY_BIN})

    def sysv_bucket(self, name: str) -> int:
        """File offset of the DT_HASH bucket that `name` hashes to."""
        table = self.file_offset(self.tag(DT_HASH))
        nbucket = struct.unpack_from(self.endian + "I", self.data, table)[0]
        return table + 4 * (2 + sysv_hash(name.encode()) % nbucket)

    def gnu_bucket(self, name: str) -> int:
        """File offset of the DT_GNU_HASH bucket that `name` hashes to."""
        table = self.file_offset(self.tag(DT_GNU_HASH))
        nbuckets, _, bloom_size, _ = struct.unpack_from(self.endian + "4I", self.data, table)
        words = bloom_size * self.elf.elfclass // 8
        return table + 16 + words + 4 * (gnu_hash(name.encode()) % nbuckets)


Damage = Callable[[Image, Packed], str]
"""Changes one property of the image; returns the regular expression of the check's message."""

CASES: list = []


def case(host: str) -> Callable[[Damage], Damage]:
    """Register a damage as a test case on the output of packing `host`."""

    def register(damage: Damage) -> Damage:
        CASES.append(pytest.param(host, damage, id=damage.__name__))
        return damage

    return register


LAYOUT_CASES: list = []


def layout_case(host: str) -> Callable[[Damage], Damage]:
    """Register a damage to an existing PT_LOAD: verify() stops it as a changed PT_LOAD, so
    the layout rule it breaks is shown firing through the layout check itself."""

    def register(damage: Damage) -> Damage:
        LAYOUT_CASES.append(pytest.param(host, damage, id=damage.__name__))
        return damage

    return register


def exact(message: str) -> str:
    return re.escape(message)


# --- _check_blob ---------------------------------------------------------------------------


@case("gnu")
def blob_symbol_renamed(image: Image, packed: Packed) -> str:
    """One letter of the blob's name in the new .dynstr: no library_bin at all."""
    _, symbol = image.symbol(LIBRARY_BIN)
    name = image.file_offset(image.tag(DT_STRTAB) + symbol["st_name"])
    image.data[name + len(LIBRARY_BIN) - 1] ^= 0x20  # ..._bin -> ..._biN
    return exact(f"no {LIBRARY_BIN}")


@case("gnu")
def blob_symbol_hidden(image: Image, packed: Packed) -> str:
    """STV_HIDDEN on the blob's .dynsym entry: dlsym would not return it."""
    other = image.symbol(LIBRARY_BIN)[1]["st_other"]
    other["visibility"] = "STV_HIDDEN"
    image.set_symbol(LIBRARY_BIN, st_other=other)
    return exact(f"{LIBRARY_BIN} is not exported")


@case("gnu")
def blob_nbytes_too_large(image: Image, packed: Packed) -> str:
    """The blob's leading nbytes claims more than the file holds: the reader's B100 error."""
    struct.pack_into("<Q", image.data, packed.placement.file_offset, len(image.data))
    load = image.segment("PT_LOAD", -1)  # the new segment, which holds the blob
    available = load["p_vaddr"] + load["p_filesz"] - packed.placement.address - 8
    return exact(f"nbytes {len(image.data)} exceeds the {available} bytes available")


@case("ffi_c")
def blob_symbol_at_the_old_blob(image: Image, packed: Packed) -> str:
    """The .dynsym entry points back at the link-time blob, still intact in .rodata."""
    old = Image(packed.original.read_bytes())
    _, was = old.symbol(LIBRARY_BIN)
    image.set_symbol(LIBRARY_BIN, st_value=was["st_value"], st_size=was["st_size"])
    where = old.file_offset(was["st_value"])
    return exact(f"blob at file offset {where}, planned {packed.placement.file_offset}")


@case("gnu")
def module_kind_renamed(image: Image, packed: Packed) -> str:
    """One letter of the module's kind inside the blob: the tree differs from the plan."""
    at = image.data.index(KIND.encode(), packed.placement.file_offset)
    image.data[at + len(KIND) - 1] ^= 0x01  # test_alpha -> test_alph`
    want = [
        (m.kind, m.imports, None if m.source is None else m.source.size)
        for m in packed.plan.modules
    ]
    got = [(KIND[:-1] + "`" if kind == KIND else kind, *rest) for kind, *rest in want]
    return exact(f"modules {got} differ from the plan {want}")


@case("gnu")
def payload_byte_changed(image: Image, packed: Packed) -> str:
    """The payload's last byte: the blob decodes, its bytes are not the source's."""
    image.data[packed.placement.file_offset + packed.placement.size - 1] ^= 0xFF
    return exact(f"module 1 ({KIND}) payload bytes differ from the source")


# --- _check_lookup -------------------------------------------------------------------------


@case("gnu")
def no_hash_table(image: Image, packed: Packed) -> str:
    """DT_GNU_HASH, the only hash table, retagged DT_DEBUG: the loader finds nothing."""
    offset, _, value = next(e for e in image.dynamic() if e[1] == DT_GNU_HASH)
    image.set_entry(offset, DT_DEBUG, value)
    return exact("no DT_GNU_HASH or DT_HASH: dlsym could not find anything")


@case("gnu")
def gnu_bloom_empty(image: Image, packed: Packed) -> str:
    """The GNU bloom filter's first word zeroed: the blob's name is filtered out."""
    table = image.file_offset(image.tag(DT_GNU_HASH))
    struct.pack_into(image.endian + image.word, image.data, table + 16, 0)
    return exact(f"DT_GNU_HASH lookup of {LIBRARY_BIN} gives None, not the new blob")


@case("sysv")
def sysv_bucket_emptied(image: Image, packed: Packed) -> str:
    """The DT_HASH bucket of the blob's name emptied."""
    struct.pack_into(image.endian + "I", image.data, image.sysv_bucket(LIBRARY_BIN), 0)
    return exact(f"DT_HASH lookup of {LIBRARY_BIN} gives None, not the new blob")


@case("both")
def only_sysv_bucket_emptied(image: Image, packed: Packed) -> str:
    """With both tables, only DT_HASH broken: each table is checked, not just the first."""
    struct.pack_into(image.endian + "I", image.data, image.sysv_bucket(LIBRARY_BIN), 0)
    return exact(f"DT_HASH lookup of {LIBRARY_BIN} gives None, not the new blob")


@case("gold")
def blob_version_hidden(image: Image, packed: Packed) -> str:
    """The blob's .gnu.version entry becomes VER_NDX_GLOBAL with the hidden bit, which the
    verifier refuses. (With a version index of 2 or more, dlsym skips it and the reader
    already calls the blob not exported, which check_blob says first.)"""
    versym = image.file_offset(image.tag(DT_VERSYM) + 2 * image.symbol_index(LIBRARY_BIN))
    version = 0x8001
    struct.pack_into(image.endian + "H", image.data, versym, version)
    return exact(f"{LIBRARY_BIN} has symbol version {version:#x}: local or hidden")


# --- the loader's view of the output (read_dynamic), which ld.so could not read either ----


@case("gnu")
def no_dynamic_segment(image: Image, packed: Packed) -> str:
    """PT_DYNAMIC retagged PT_NULL: nothing tells the loader where the dynamic section is."""
    image.set_segment("PT_DYNAMIC", p_type="PT_NULL")
    return exact("no PT_DYNAMIC segment")


@case("gnu")
def dynamic_segment_past_the_end(image: Image, packed: Packed) -> str:
    """PT_DYNAMIC's file offset beyond the end of the file."""
    size = image.segment("PT_DYNAMIC")["p_filesz"]
    image.set_segment("PT_DYNAMIC", p_offset=len(image.data))
    return exact(f"{size} bytes at file offset {len(image.data)} lie outside the file")


@case("gnu")
def strtab_unmapped(image: Image, packed: Packed) -> str:
    """DT_STRTAB names an address no PT_LOAD maps from the file."""
    offset, _, _ = next(e for e in image.dynamic() if e[1] == DT_STRTAB)
    image.set_entry(offset, DT_STRTAB, 1 << 40)
    size = image.tag(DT_STRSZ)
    return exact(f"{size} bytes at address 0x10000000000 are not mapped from the file")


@case("gnu")
def no_symbol_table(image: Image, packed: Packed) -> str:
    """DT_SYMTAB retagged DT_DEBUG: a hash table's lookup has no symbols to compare."""
    offset, _, value = next(e for e in image.dynamic() if e[1] == DT_SYMTAB)
    image.set_entry(offset, DT_DEBUG, value)
    return exact("no DT_SYMTAB")


@case("gnu")
def symbol_entry_too_small(image: Image, packed: Packed) -> str:
    """DT_SYMENT 8: entries would overlap; the loader's lookup cannot step through them."""
    offset, _, _ = next(e for e in image.dynamic() if e[1] == DT_SYMENT)
    image.set_entry(offset, DT_SYMENT, 8)
    return exact("DT_SYMENT 8 is smaller than a symbol")


@case("gnu")
def gnu_hash_without_buckets(image: Image, packed: Packed) -> str:
    """The output's GNU hash table says 0 buckets: no name can be looked up."""
    table = image.file_offset(image.tag(DT_GNU_HASH))
    bloom = struct.unpack_from(image.endian + "I", image.data, table + 8)[0]
    struct.pack_into(image.endian + "I", image.data, table, 0)
    return exact(f"DT_GNU_HASH with 0 buckets and {bloom} bloom words")


@case("sysv")
def sysv_hash_without_buckets(image: Image, packed: Packed) -> str:
    """The output's DT_HASH says 0 buckets."""
    struct.pack_into(image.endian + "I", image.data, image.file_offset(image.tag(DT_HASH)), 0)
    return exact("DT_HASH with no buckets")


@case("sysv")
def sysv_hash_unmapped(image: Image, packed: Packed) -> str:
    """DT_HASH names an unmapped address: read when the blob is looked up through it."""
    offset, _, _ = next(e for e in image.dynamic() if e[1] == DT_HASH)
    image.set_entry(offset, DT_HASH, 1 << 40)
    return exact("8 bytes at address 0x10000000000 are not mapped from the file")


@case("sysv")
def sysv_chain_loops(image: Image, packed: Packed) -> str:
    """The blob's DT_HASH bucket names a symbol whose chain names itself: the lookup gives up
    after as many steps as there are symbols."""
    table = image.file_offset(image.tag(DT_HASH))
    nbucket = struct.unpack_from(image.endian + "I", image.data, table)[0]
    other = image.symbol_index(image.defined_symbols()[0])
    struct.pack_into(image.endian + "I", image.data, image.sysv_bucket(LIBRARY_BIN), other)
    struct.pack_into(image.endian + "I", image.data, table + 4 * (2 + nbucket + other), other)
    return exact(f"DT_HASH lookup of {LIBRARY_BIN} gives None, not the new blob")


@case("gnu")
def gnu_chain_ends_before_the_blob(image: Image, packed: Packed) -> str:
    """The blob's GNU chain entry ends its chain with another hash: not found."""
    table = image.file_offset(image.tag(DT_GNU_HASH))
    nbuckets, symoffset, bloom_size, _ = struct.unpack_from(image.endian + "4I", image.data, table)
    chains = table + 16 + bloom_size * 8 + 4 * nbuckets
    at = chains + 4 * (image.symbol_index(LIBRARY_BIN) - symoffset)
    struct.pack_into(image.endian + "I", image.data, at, (gnu_hash(LIBRARY_BIN.encode()) ^ 2) | 1)
    return exact(f"DT_GNU_HASH lookup of {LIBRARY_BIN} gives None, not the new blob")


# --- _check_preserved ----------------------------------------------------------------------


def _last_letter_changed(image: Image, tag: int) -> tuple[str, str]:
    """Change the last character of the string a dynamic entry names; (was, now)."""
    start = image.dynamic_string(tag)
    end = image.data.index(b"\0", start)
    was = image.data[start:end].decode()
    image.data[end - 1] ^= 0x01
    return was, image.data[start:end].decode()


@case("gold")
def needed_changed(image: Image, packed: Packed) -> str:
    """The DT_NEEDED string in the new .dynstr: libc.so.6 becomes libc.so.7."""
    was, now = _last_letter_changed(image, DT_NEEDED)
    return exact(f"needed changed from ('{was}',) to ('{now}',)")


@case("gold")
def soname_changed(image: Image, packed: Packed) -> str:
    """The SONAME string in the new .dynstr."""
    was, now = _last_letter_changed(image, DT_SONAME)
    return exact(f"soname changed from {was} to {now}")


@case("gold")
def runpath_changed(image: Image, packed: Packed) -> str:
    """The DT_RUNPATH string in the new .dynstr."""
    was, now = _last_letter_changed(image, DT_RUNPATH)
    return exact(f"runpath changed from {was} to {now}")


@case("gold_rpath")
def rpath_changed(image: Image, packed: Packed) -> str:
    """The DT_RPATH string in the new .dynstr."""
    was, now = _last_letter_changed(image, DT_RPATH)
    return exact(f"rpath changed from {was} to {now}")


@case("gnu")
def dynamic_entries_swapped(image: Image, packed: Packed) -> str:
    """DT_INIT and DT_FINI trade places: same values, another order of tags."""
    entries = {t: (o, v) for o, t, v in image.dynamic()}
    (init, init_value), (fini, fini_value) = entries[DT_INIT], entries[DT_FINI]
    image.set_entry(init, DT_FINI, fini_value)
    image.set_entry(fini, DT_INIT, init_value)
    return exact("the dynamic section's tags changed")


@case("now")
def flags_changed(image: Image, packed: Packed) -> str:
    """DT_FLAGS loses DF_BIND_NOW."""
    offset, _, value = next(e for e in image.dynamic() if e[1] == DT_FLAGS)
    image.set_entry(offset, DT_FLAGS, 0)
    return exact(f"dynamic entry {DT_FLAGS:#x} changed from {value:#x} to 0x0")


@case("now")
def flags_1_changed(image: Image, packed: Packed) -> str:
    """DT_FLAGS_1 loses DF_1_NOW."""
    offset, _, value = next(e for e in image.dynamic() if e[1] == DT_FLAGS_1)
    image.set_entry(offset, DT_FLAGS_1, 0)
    return exact(f"dynamic entry {DT_FLAGS_1:#x} changed from {value:#x} to 0x0")


@case("gnu")
def symbol_size_changed(image: Image, packed: Packed) -> str:
    """One exported function's st_size grows by one: it is no longer the original symbol."""
    name = image.defined_symbols()[0]
    _, symbol = image.symbol(name)
    image.set_symbol(name, st_size=symbol["st_size"] + 1)
    return exact("DT_SYMTAB holds other symbols than the original's and the blob's")


@case("gold")
def symbol_version_changed(image: Image, packed: Packed) -> str:
    """An exported function's .gnu.version entry gets the hidden bit."""
    versym = image.file_offset(
        image.tag(DT_VERSYM) + 2 * image.symbol_index(image.defined_symbols()[0])
    )
    version = struct.unpack_from(image.endian + "H", image.data, versym)[0]
    struct.pack_into(image.endian + "H", image.data, versym, version | 0x8000)
    return exact("DT_VERSYM holds other symbols than the original's and the blob's")


@case("gnu")
def symbol_name_changed(image: Image, packed: Packed) -> str:
    """One letter of an exported function's name in the new .dynstr."""
    _, symbol = image.symbol(image.defined_symbols()[0])
    image.data[image.file_offset(image.tag(DT_STRTAB) + symbol["st_name"])] ^= 0x01
    return exact(".dynstr does not start with the original's strings")


@case("sysv")
def symbol_count_grown(image: Image, packed: Packed) -> str:
    """DT_HASH's nchain one larger: one more dynamic symbol, read past the table's end."""
    table = image.file_offset(image.tag(DT_HASH))
    nchain = struct.unpack_from(image.endian + "I", image.data, table + 4)[0]
    struct.pack_into(image.endian + "I", image.data, table + 4, nchain + 1)
    return exact("DT_SYMTAB holds other symbols than the original's and the blob's")


@case("sysv")
def symbol_bucket_emptied(image: Image, packed: Packed) -> str:
    """The DT_HASH bucket of an exported function (not the blob's) emptied."""
    blob = image.sysv_bucket(LIBRARY_BIN)
    name = next(n for n in image.defined_symbols() if image.sysv_bucket(n) != blob)
    struct.pack_into(image.endian + "I", image.data, image.sysv_bucket(name), 0)
    return exact(f"dynamic symbol {name} is no longer found through the hash table")


# --- _check_relocations --------------------------------------------------------------------


@case("gnu")
def relocation_symbol_changed(image: Image, packed: Packed) -> str:
    """The first PLT relocation names the next symbol: the remap went wrong."""
    address = image.tag(DT_JMPREL)
    offset = image.file_offset(address) + struct.calcsize(image.word)
    info = struct.unpack_from(image.endian + image.word, image.data, offset)[0]
    struct.pack_into(image.endian + image.word, image.data, offset, info + (1 << 32))
    size = image.tag(DT_PLTRELSZ)  # one chunk: far below the 1 MiB verify() reads at once
    return exact(f"a relocation in [{address:#x}, +{size:#x}) changed")


# --- _section_map and _check_sections ------------------------------------------------------


@case("gnu")
def section_header_added(image: Image, packed: Packed) -> str:
    """One more (null) section header: the table is copied to the end with one entry more."""
    elf = image.elf
    start, count, size = elf["e_shoff"], elf["e_shnum"], elf["e_shentsize"]
    table = bytes(image.data[start : start + count * size])
    image.data += bytes(-len(image.data) % 8)
    at = len(image.data)
    image.data += table + bytes(size)
    image.set_header(e_shoff=at, e_shnum=count + 1)
    return exact("2 sections were added")


@case("gnu")
def section_renamed(image: Image, packed: Packed) -> str:
    """.comment's sh_name one byte later: it is now called "comment"."""
    image.set_section(".comment", sh_name=image.section(".comment")["sh_name"] + 1)
    return exact("section .comment became comment")


@case("gnu")
def section_flags_changed(image: Image, packed: Packed) -> str:
    """.text gains SHF_WRITE."""
    image.set_section(".text", sh_flags=image.section(".text")["sh_flags"] | SHF_WRITE)
    return exact("section .text changed its type or flags")


@case("gnu")
def bss_header_in_new_segment(image: Image, packed: Packed) -> str:
    """.bss's header left at an address inside the new segment (the libtorch defect)."""
    image.set_section(".bss", sh_addr=packed.placement.address)
    return exact("section .bss moved or changed size")


@case("gnu")
def section_moved(image: Image, packed: Packed) -> str:
    """.rodata's header moved 8 bytes on, in memory and in the file alike."""
    header = image.section(".rodata")
    image.set_section(".rodata", sh_addr=header["sh_addr"] + 8, sh_offset=header["sh_offset"] + 8)
    return exact(
        f"section .rodata moved from {header['sh_addr']:#x}, offset {header['sh_offset']:#x}"
    )


@case("gnu")
def symtab_shrunk(image: Image, packed: Packed) -> str:
    """.symtab loses its last entry."""
    header = image.section(".symtab")
    image.set_section(".symtab", sh_size=header["sh_size"] - header["sh_entsize"])
    return exact("section .symtab changed size")


@case("gnu")
def text_byte_changed(image: Image, packed: Packed) -> str:
    """One byte of .text."""
    image.data[image.section(".text")["sh_offset"]] ^= 0xFF
    return exact("section .text has different bytes")


@case("gnu")
def symtab_value_changed(image: Image, packed: Packed) -> str:
    """The st_value of .symtab's last entry, one higher."""
    header = image.section(".symtab")
    value = header["sh_offset"] + header["sh_size"] - header["sh_entsize"] + 8  # Elf64_Sym
    old = struct.unpack_from(image.endian + "Q", image.data, value)[0]
    struct.pack_into(image.endian + "Q", image.data, value, old + 1)
    return exact("section .symtab has different bytes")


# --- _check_segments -----------------------------------------------------------------------


@case("gnu")
def stack_header_lost(image: Image, packed: Packed) -> str:
    """PT_GNU_STACK becomes PT_NULL."""
    image.set_segment("PT_GNU_STACK", p_type="PT_NULL")
    return exact("program header PT_GNU_STACK at 0x0 was lost")


@case("gold")
def phdr_not_grown(image: Image, packed: Packed) -> str:
    """PT_PHDR keeps the input's size although the table has one entry more."""
    old = Image(packed.original.read_bytes()).segment("PT_PHDR")
    image.set_segment("PT_PHDR", p_filesz=old["p_filesz"], p_memsz=old["p_memsz"])
    return exact("PT_PHDR does not describe the grown program header table")


@case("gnu")
def first_load_writable(image: Image, packed: Packed) -> str:
    """The first PT_LOAD gains PF_W."""
    image.set_segment("PT_LOAD", 0, p_flags=image.segment("PT_LOAD", 0)["p_flags"] | PF_W)
    return exact(f"PT_LOAD at {image.segment('PT_LOAD', 0)['p_vaddr']:#x} changed")


@case("gold")
def moved_note_byte_changed(image: Image, packed: Packed) -> str:
    """The last byte of the build-id in the note's new copy."""
    note = image.segment("PT_NOTE")
    image.data[note["p_offset"] + note["p_filesz"] - 1] ^= 0xFF
    return exact("PT_NOTE does not hold the bytes it held")


@case("gnu")
def relro_grown(image: Image, packed: Packed) -> str:
    """PT_GNU_RELRO covers 8 bytes more."""
    relro = image.segment("PT_GNU_RELRO")
    image.set_segment("PT_GNU_RELRO", p_memsz=relro["p_memsz"] + 8)
    return exact(f"program header PT_GNU_RELRO at {relro['p_vaddr']:#x} changed")


@case("gnu")
def program_header_added(image: Image, packed: Packed) -> str:
    """A second PT_GNU_STACK: the table is copied to the end with the duplicate appended."""
    elf = image.elf
    start, count, size = elf["e_phoff"], elf["e_phnum"], elf["e_phentsize"]
    stack = next(o for o, h in image.segments() if h["p_type"] == "PT_GNU_STACK")
    table = bytes(image.data[start : start + count * size])
    image.data += bytes(-len(image.data) % 8)
    at = len(image.data)
    image.data += table + image.data[stack : stack + size]
    image.set_header(e_phoff=at, e_phnum=count + 1)
    return exact("program headers added: ['PT_LOAD', 'PT_GNU_STACK']")


@case("gnu")
def new_load_executable(image: Image, packed: Packed) -> str:
    """The new PT_LOAD gains PF_X."""
    image.set_segment("PT_LOAD", -1, p_flags=image.segment("PT_LOAD", -1)["p_flags"] | PF_X)
    return exact("the new PT_LOAD is writable or executable")


# --- _check_layout -------------------------------------------------------------------------


def _rw_load(image: Image) -> int:
    """Index among PT_LOADs of the RW one, the input's last."""
    loads = [h for _, h in image.segments() if h["p_type"] == "PT_LOAD"]
    return max(
        (i for i, h in enumerate(loads) if h["p_flags"] & PF_W), key=lambda i: loads[i]["p_vaddr"]
    )


@case("gnu")
def loads_out_of_order(image: Image, packed: Packed) -> str:
    """The first two PT_LOAD entries trade places in the table."""
    (first, _), (second, _) = [s for s in image.segments() if s[1]["p_type"] == "PT_LOAD"][:2]
    size = image.elf["e_phentsize"]
    a, b = bytes(image.data[first : first + size]), bytes(image.data[second : second + size])
    image.data[first : first + size], image.data[second : second + size] = b, a
    return exact("PT_LOAD entries are not in ascending address order")


@case("gnu")
def new_load_alignment_not_a_page(image: Image, packed: Packed) -> str:
    """The new PT_LOAD's p_align 0x800: below a page."""
    image.set_segment("PT_LOAD", -1, p_align=0x800)
    address = image.segment("PT_LOAD", -1)["p_vaddr"]
    return exact(f"PT_LOAD at {address:#x} is aligned to 2048, not a page")


@layout_case("gnu")
def rw_load_misaligned(image: Image, packed: Packed) -> str:
    """The RW PT_LOAD's p_align raised to the first power of two its offset and address
    disagree modulo."""
    index = _rw_load(image)
    load = image.segment("PT_LOAD", index)
    delta = load["p_vaddr"] - load["p_offset"]
    assert delta, "the RW segment's address and offset must differ for this damage"
    image.set_segment("PT_LOAD", index, p_align=(delta & -delta) << 1)
    return exact(f"PT_LOAD at {load['p_vaddr']:#x} is misaligned")


@case("gnu")
def new_load_more_file_than_memory(image: Image, packed: Packed) -> str:
    """The new PT_LOAD's p_filesz one more than its p_memsz."""
    load = image.segment("PT_LOAD", -1)
    image.set_segment("PT_LOAD", -1, p_filesz=load["p_memsz"] + 1)
    return exact(f"PT_LOAD at {load['p_vaddr']:#x} has more file than memory bytes")


@layout_case("gold")
def rw_load_file_reaches_new_load(image: Image, packed: Packed) -> str:
    """The RW PT_LOAD's file part grown 8 bytes into the new segment's file range; with a
    big .bss, its memory still ends below the new segment."""
    index = _rw_load(image)
    load, new = image.segment("PT_LOAD", index), image.segment("PT_LOAD", -1)
    image.set_segment("PT_LOAD", index, p_filesz=new["p_offset"] + 8 - load["p_offset"])
    assert image.segment("PT_LOAD", index)["p_filesz"] <= load["p_memsz"]
    return exact(f"PT_LOADs at {load['p_vaddr']:#x} and {new['p_vaddr']:#x} overlap in the file")


@layout_case("gnu")
def rw_load_memory_reaches_new_load(image: Image, packed: Packed) -> str:
    """The RW PT_LOAD's p_memsz grown 8 bytes into the new segment's addresses."""
    index = _rw_load(image)
    load, new = image.segment("PT_LOAD", index), image.segment("PT_LOAD", -1)
    image.set_segment("PT_LOAD", index, p_memsz=new["p_vaddr"] + 8 - load["p_vaddr"])
    return exact(f"PT_LOADs at {load['p_vaddr']:#x} and {new['p_vaddr']:#x} overlap in memory")


@case("gnu")
def section_offset_off_its_segment(image: Image, packed: Packed) -> str:
    """.gnu.hash's sh_offset 8 bytes on, its sh_addr kept: sh_addr - p_vaddr no longer equals
    sh_offset - p_offset."""
    header = image.section(".gnu.hash")
    image.set_section(".gnu.hash", sh_offset=header["sh_offset"] + 8)
    start, end = header["sh_addr"], header["sh_addr"] + header["sh_size"]
    return exact(f"section .gnu.hash [{start:#x}, {end:#x}) lies outside its segment")


@layout_case("gnu")
def bss_in_file_part(image: Image, packed: Packed) -> str:
    """The RW PT_LOAD's p_filesz grown to its p_memsz: .bss (NOBITS) is no longer in the
    memory-only tail."""
    index = _rw_load(image)
    load = image.segment("PT_LOAD", index)
    image.set_segment("PT_LOAD", index, p_filesz=load["p_memsz"])
    bss = image.section(".bss")
    start, end = bss["sh_addr"], bss["sh_addr"] + bss["sh_size"]
    return exact(f"section .bss [{start:#x}, {end:#x}) lies outside its segment")


@case("gnu")
def sections_overlap_in_memory(image: Image, packed: Packed) -> str:
    """.gnu.hash's sh_size reaches 8 bytes into the next allocated section."""
    header = image.section(".gnu.hash")
    following = min(
        (h["sh_addr"], n)
        for _, n, h in image.sections()
        if h["sh_flags"] & SHF_ALLOC and h["sh_size"] and h["sh_addr"] > header["sh_addr"]
    )
    image.set_section(".gnu.hash", sh_size=following[0] + 8 - header["sh_addr"])
    return exact(f"sections .gnu.hash and {following[1]} overlap in memory")


@pytest.mark.parametrize(("host", "damage"), CASES)
def test_each_check_fires_on_the_damage_it_is_for(packed, tmp_path, host, damage):
    good = packed(host)
    image = Image(good.output.read_bytes())
    expected = damage(image, good)
    damaged = tmp_path / "damaged.so"
    damaged.write_bytes(image.data)
    with pytest.raises(VerificationError, match=f"^{PREFIX}{expected}$"):
        verify(damaged, good.original, good.plan, good.placement)


# --- layout rules relative to the input ----------------------------------------------------


@pytest.mark.parametrize(("host", "damage"), LAYOUT_CASES)
def test_each_layout_rule_fires_on_the_damage_it_is_for(packed, tmp_path, host, damage):
    """The layout rule itself, on the damaged output; verify() stops the damage earlier, as a
    PT_LOAD of the input that changed."""
    good = packed(host)
    image = Image(good.output.read_bytes())
    load = image.segment("PT_LOAD", _rw_load(image))
    expected = damage(image, good)
    damaged = tmp_path / "damaged.so"
    damaged.write_bytes(image.data)
    with open(good.output, "rb") as before, open(damaged, "rb") as after:
        clean, broken = _violations(_Headers(before)), _violations(_Headers(after))
    assert [v for v in broken - clean if re.fullmatch(expected, v)], broken - clean
    changed = exact(f"PT_LOAD at {load['p_vaddr']:#x} changed")
    with pytest.raises(VerificationError, match=f"^{PREFIX}{changed}$"):
        verify(damaged, good.original, good.plan, good.placement)


@pytest.mark.parametrize("damage", [loads_out_of_order, rw_load_misaligned])
def test_a_layout_rule_the_input_already_broke_is_not_charged_to_the_output(
    packed, tmp_path, damage
):
    """The same damage to input and output: the layout check reports only what is new."""
    good = packed("gnu")
    output, original = Image(good.output.read_bytes()), Image(good.original.read_bytes())
    expected = damage(output, good)
    assert damage(original, good) == expected  # the input breaks the same rule the same way
    paths = {"output": output, "original": original}
    for name, image in paths.items():
        (tmp_path / name).write_bytes(image.data)
    if damage is loads_out_of_order:  # the others change a PT_LOAD, which is caught first
        with pytest.raises(VerificationError, match=f"^{PREFIX}{expected}$"):
            verify(tmp_path / "output", good.original, good.plan, good.placement)
    verify(tmp_path / "output", tmp_path / "original", good.plan, good.placement)


def test_sections_overlapping_in_the_file_behind_a_rule_the_input_broke(packed, tmp_path):
    """Two sections overlapping in the file is always reported after another layout sentence
    of the same output (they overlap in memory, their segments overlap, or one lies outside
    its segment); it comes first only when the input already had that other sentence.

    Here the input's .rela.plt header has a stale sh_offset: the output keeps it, and the
    writer's new .dynsym now lies at that offset.
    """
    good = packed("gnu")
    output, original = Image(good.output.read_bytes()), Image(good.original.read_bytes())
    dynsym = output.section(".dynsym")["sh_offset"]
    rela = output.section(".rela.plt")
    assert original.section(".rela.plt") == rela
    for image in (output, original):
        image.set_section(".rela.plt", sh_offset=dynsym)
        (tmp_path / ("output" if image is output else "original")).write_bytes(image.data)
    moved = exact(
        f"section .rela.plt moved from {rela['sh_addr']:#x}, offset {rela['sh_offset']:#x}"
    )
    with pytest.raises(VerificationError, match=f"^{PREFIX}{moved}$"):
        verify(tmp_path / "output", good.original, good.plan, good.placement)
    overlap = exact("sections .rela.plt and .dynsym overlap in the file")
    with pytest.raises(VerificationError, match=f"^{PREFIX}{overlap}$"):
        verify(tmp_path / "output", tmp_path / "original", good.plan, good.placement)


def test_a_segment_ld_so_reads_at_its_address_must_be_mapped_there(packed, tmp_path):
    """PT_GNU_EH_FRAME moved off its bytes: verify() stops it as a changed program header;
    the layout rule that ld.so would trip over is shown firing on its own."""
    good = packed("gnu")
    image = Image(good.output.read_bytes())
    frame = image.segment("PT_GNU_EH_FRAME", 0)
    image.set_segment("PT_GNU_EH_FRAME", 0, p_vaddr=frame["p_vaddr"] + 0x40_0000)
    damaged = tmp_path / "damaged.so"
    damaged.write_bytes(image.data)
    with open(good.output, "rb") as before, open(damaged, "rb") as after:
        new = _violations(_Headers(after)) - _violations(_Headers(before))
    where = frame["p_vaddr"] + 0x40_0000
    assert new == {f"PT_GNU_EH_FRAME at {where:#x} is not mapped from its file offset"}
    changed = exact(f"program header PT_GNU_EH_FRAME at {frame['p_vaddr']:#x} changed")
    with pytest.raises(VerificationError, match=f"^{PREFIX}{changed}$"):
        verify(damaged, good.original, good.plan, good.placement)
