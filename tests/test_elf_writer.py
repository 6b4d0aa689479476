"""The append-only ELF writer: exact structures, hosts it must refuse, readelf's view of the result.

Hosts are built here with gcc, so that the layouts are the ones a user's toolchain makes: notes
right after the program header table, a PIE with `.interp`, exported data that code reaches
through GOT relocations (which the inserted symbol renumbers).
"""

from __future__ import annotations

import hashlib
import io
import os
import random
import re
import shutil
import struct
import subprocess
import sys
from array import array
from pathlib import Path

import pytest
from conftest import FIXTURES, ffitool, require_tool

from ffitool.errors import InputError
from ffitool.formats.elf.dynamic import gnu_hash, is_address_tag, sysv_entry_format, sysv_hash
from ffitool.formats.elf.reader import ElfFile
from ffitool.formats.elf.tables import GnuHashTable, SysvHashTable, shifted
from ffitool.formats.elf.writer import plan_edit

PAYLOAD = b"\x00writer payload\xff" * 3


def build(directory: Path, name: str, source: str, *flags: str) -> Path:
    gcc = require_tool("gcc")
    src = directory / f"{name}.c"
    src.write_text(source)
    out = directory / name
    subprocess.run([gcc, "-O1", "-o", str(out), str(src), *flags], check=True)
    return out


# 200 exported variables, each read through the GOT (R_X86_64_GLOB_DAT): the blob symbol is
# inserted among them, so most of these relocations must be renumbered.
DATA_HOST = (
    "".join(f"int var_{i:03d} = {i};\n" for i in range(200))
    + "long total(void) { long s = 0;\n"
    + "".join(f"  s += var_{i:03d};\n" for i in range(200))
    + "  return s; }\n"
)


@pytest.fixture(scope="module")
def hosts(tmp_path_factory):
    directory = tmp_path_factory.mktemp("hosts")
    payload = directory / "payload.bin"
    payload.write_bytes(PAYLOAD)
    return {
        "data": build(directory, "libdata.so", DATA_HOST, "-shared", "-fPIC", "-Wl,--build-id"),
        "pie": build(
            directory,
            "pie",
            '#include <stdio.h>\nint main(void) { puts("pie runs"); return 7; }\n',
            "-fPIE",
            "-pie",
            "-Wl,--build-id",
        ),
        "payload": payload,
    }


def readelf(*args: str) -> str:
    return subprocess.run(
        [require_tool("readelf"), "-W", *args], capture_output=True, text=True, check=True
    ).stdout


def relocations(path: Path) -> list[tuple[str, str, str]]:
    """(offset, type, symbol) of every dynamic relocation, as readelf names them."""
    rows = []
    for line in readelf("-r", str(path)).splitlines():
        fields = line.split()
        if len(fields) >= 3 and re.fullmatch(r"[0-9a-f]{16}", fields[0]):
            rows.append((fields[0], fields[2], fields[4] if len(fields) > 4 else ""))
    return rows


def dynamic_symbols(path: Path) -> tuple[dict[str, tuple[str, ...]], dict[str, int]]:
    """Dynamic symbols by name: value, size, type, bind, visibility; and each one's index."""
    table, order = {}, {}
    for line in readelf("--dyn-syms", str(path)).splitlines():
        fields = line.split()
        if len(fields) == 8 and fields[0][:-1].isdigit() and fields[6] != "UND":
            table[fields[7]] = tuple(fields[1:6])
            order[fields[7]] = int(fields[0][:-1])
    return table, order


@pytest.mark.slow
def test_inserted_symbol_renumbers_relocations_and_keeps_everything_else(hosts, tmp_path):
    host, out = hosts["data"], tmp_path / "libdata.so"
    result = ffitool("pack", str(host), "--add", f"test_alpha:{hosts['payload']}", "-o", str(out))
    assert result.returncode == 0, result.stderr
    before, _ = dynamic_symbols(host)
    after, order = dynamic_symbols(out)
    blob = after.pop("__tvm_ffi__library_bin")
    assert after == before
    assert blob[2:] == ("OBJECT", "GLOBAL", "DEFAULT")
    # nbytes, indptr [0, 1, 1], children [1], "_lib", "test_alpha" and its payload
    assert int(blob[1]) == 8 + 32 + 16 + (8 + 4) + (8 + 10) + (8 + len(PAYLOAD))
    # The symbol went into the middle of .dynsym: relocations after it were renumbered.
    assert order["__tvm_ffi__library_bin"] < max(order.values()) - 100
    assert relocations(out) == relocations(host)
    assert len([r for r in relocations(host) if r[2].startswith("var_")]) == 200
    # Every section the writer did not re-place is where it was (readelf's view).
    kept = {".text", ".data", ".rela.dyn", ".dynamic", ".got", ".bss", ".symtab", ".strtab"}
    sections_before = {s[0]: s for s in _sections(host) if s[0] in kept}
    sections_after = {s[0]: s for s in _sections(out) if s[0] in kept}
    assert sections_after == sections_before
    # The code still reads all 200 variables through the renumbered relocations.
    code = (
        "import ctypes, sys\n"
        "lib = ctypes.CDLL(sys.argv[1])\n"
        "lib.total.restype = ctypes.c_long\n"
        "blob = (ctypes.c_ubyte * 8).in_dll(lib, '__tvm_ffi__library_bin')\n"
        "print(lib.total(), int.from_bytes(bytes(blob), 'little'))\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", code, str(out)], capture_output=True, text=True, check=True
    )
    assert run.stdout.split() == [str(sum(range(200))), str(int(blob[1]) - 8)]


def _sections(path: Path) -> list[tuple[str, ...]]:
    rows = []
    for line in readelf("-S", str(path)).splitlines():
        match = re.match(
            r"\s*\[\s*\d+\]\s+(\S+)\s+(\S+)\s+([0-9a-f]+)\s+([0-9a-f]+)\s+([0-9a-f]+)", line
        )
        if match:
            rows.append(match.groups())
    return rows


@pytest.mark.slow
def test_notes_and_interp_move_with_their_program_headers_and_the_pie_still_runs(hosts, tmp_path):
    host, out = hosts["pie"], tmp_path / "pie"
    assert subprocess.run([str(host)], capture_output=True).returncode == 7
    result = ffitool("pack", str(host), "--add", f"test_alpha:{hosts['payload']}", "-o", str(out))
    assert result.returncode == 0, result.stderr
    run = subprocess.run([str(out)], capture_output=True, text=True)
    assert (run.returncode, run.stdout) == (7, "pie runs\n")
    assert readelf("-n", str(out)) == readelf("-n", str(host))  # build-id and properties kept
    assert "Requesting program interpreter: /lib64/ld-linux-x86-64.so.2" in readelf("-l", str(out))
    moved = {s[0]: s for s in _sections(out)}
    original = {s[0]: s for s in _sections(host)}
    assert moved[".interp"][2] != original[".interp"][2]  # re-placed past the old segments
    assert moved[".text"] == original[".text"]
    # One more program header, the table where it was.
    count = len(re.findall(r"^  [A-Z_]+ ", readelf("-l", str(host)), re.M))
    assert len(re.findall(r"^  [A-Z_]+ ", readelf("-l", str(out)), re.M)) == count + 1
    assert "starting at offset 64" in readelf("-l", str(out))


@pytest.mark.parametrize("style", ["gnu", "both"])
@pytest.mark.slow
def test_a_32_bit_library_packs_with_its_relocations_renumbered(tmp_path, style):
    """ELFCLASS32 (i386): 16-byte symbols, 8-byte REL entries whose r_info holds the symbol
    index above 8 bits. Built without libc (no 32-bit one here), so not loaded: readelf's
    view of the symbols and relocations is the judge, and pack's own verification ran."""
    source = tmp_path / "lib32.c"
    source.write_text(DATA_HOST)
    host, out = tmp_path / "lib32.so", tmp_path / "lib32.packed.so"
    subprocess.run(
        [require_tool("gcc"), "-m32", "-shared", "-fPIC", "-nostdlib", "-O1",
         f"-Wl,--hash-style={style}", "-o", str(host), str(source)],
        check=True,
    )  # fmt: skip
    payload = tmp_path / "payload.bin"
    payload.write_bytes(PAYLOAD)
    result = ffitool("pack", str(host), "--add", f"test_alpha:{payload}", "-o", str(out))
    assert result.returncode == 0, result.stderr
    assert "ELF32" in readelf("-h", str(out))
    before, _ = dynamic_symbols(host)
    after, order = dynamic_symbols(out)
    assert after.pop("__tvm_ffi__library_bin")[2:] == ("OBJECT", "GLOBAL", "DEFAULT")
    assert after == before
    assert order["__tvm_ffi__library_bin"] < max(order.values()) - 100  # in the middle

    def rows(path: Path) -> list[list[str]]:  # offset, info, type, value, symbol
        lines = [line.split() for line in readelf("-r", str(path)).splitlines()]
        return [f for f in lines if len(f) == 5 and re.fullmatch(r"[0-9a-f]{8}", f[0])]

    was, now = rows(host), rows(out)
    assert len(was) == 200
    assert [(r[0], r[2], r[4]) for r in now] == [(r[0], r[2], r[4]) for r in was]
    renumbered = [w for w, n in zip(was, now, strict=True) if w[1] != n[1]]
    assert len(renumbered) > 100
    assert all(int(n[1], 16) >> 8 == order[n[4]] for n in now)


class Elf64:
    """Offsets of a little-endian ELF64 file's headers, for the damage the refusals need."""

    def __init__(self, data: bytearray) -> None:
        self.data = data
        self.phoff, self.shoff = struct.unpack_from("<QQ", data, 0x20)
        self.phnum, self.shnum, self.shstrndx = struct.unpack_from("<HxxHH", data, 0x38)
        names_at = struct.unpack_from("<Q", data, self.shoff + 64 * self.shstrndx + 24)[0]
        self.sections = {}
        for index in range(self.shnum):
            at = self.shoff + 64 * index
            name = struct.unpack_from("<I", data, at)[0]
            end = data.index(b"\0", names_at + name)
            self.sections[bytes(data[names_at + name : end]).decode()] = at

    def phdr(self, kind: int, nth: int = 0) -> int:
        found = [
            self.phoff + 56 * i
            for i in range(self.phnum)
            if struct.unpack_from("<I", self.data, self.phoff + 56 * i)[0] == kind
        ]
        return found[nth]

    def dynamic_entry(self, tag: int) -> int:
        dynamic = self.phdr(2)
        offset = struct.unpack_from("<Q", self.data, dynamic + 8)[0]
        while True:
            found = struct.unpack_from("<q", self.data, offset)[0]
            if found == tag:
                return offset
            assert found != 0, f"no tag {tag:#x}"
            offset += 16


DT_FINI, DT_INIT, DT_RELAENT, DT_SYMENT, DT_GNU_HASH = 13, 12, 9, 11, 0x6FFFFEF5
DT_PLTRELSZ, DT_SYMTAB, DT_RELA, DT_REL, DT_PLTREL, DT_JMPREL = 2, 6, 7, 17, 20, 23
DT_FINI_ARRAYSZ = 28


def _set(fmt: str, at_of, value):
    def change(elf: Elf64) -> None:
        struct.pack_into(fmt, elf.data, at_of(elf), value(elf) if callable(value) else value)

    return change


REFUSALS = {
    "contradicting PT_DYNAMIC": (
        _set(
            "<Q",
            lambda e: e.phdr(2) + 8,
            lambda e: struct.unpack_from("<Q", e.data, e.phdr(2) + 8)[0] + 16,
        ),
        "is not mapped from its file offset; the headers contradict each other",
    ),
    "RELRO past the segments": (
        _set("<Q", lambda e: e.phdr(0x6474E552) + 40, 1 << 32),  # PT_GNU_RELRO's p_memsz
        "lies outside every PT_LOAD; the headers contradict each other",
    ),
    "EH_FRAME address off its offset": (
        _set("<Q", lambda e: e.phdr(0x6474E550) + 16, lambda e: 0x10_0000),  # p_vaddr
        "PT_GNU_EH_FRAME at 0x100000 is not mapped from its file offset",
    ),
    "section past the end": (
        _set("<Q", lambda e: e.sections[".comment"] + 32, 1 << 40),
        "section .comment extends past the end of the file",
    ),
    "segment past the end": (
        _set("<Q", lambda e: e.phdr(4) + 32, 1 << 40),  # PT_NOTE's p_filesz
        "a PT_NOTE segment extends past the end of the file",
    ),
    "more file than memory": (
        _set("<Q", lambda e: e.phdr(1, 3) + 40, 8),  # the RW PT_LOAD's p_memsz
        "has more file than memory bytes",
    ),
    "MIPS": (_set("<H", lambda e: 18, 8), "MIPS libraries are not supported"),
    "no section headers": (
        lambda e: (
            struct.pack_into("<Q", e.data, 0x28, 0),
            struct.pack_into("<H", e.data, 0x3C, 0),
        ),
        "no section headers",
    ),
    "duplicate tag": (
        _set("<q", lambda e: e.dynamic_entry(DT_FINI), 6),
        "the dynamic section has 2 entries with tag 0x6",
    ),
    "odd DT_SYMENT": (
        _set("<Q", lambda e: e.dynamic_entry(DT_SYMENT) + 8, 16),
        "DT_SYMENT is not 24",
    ),
    "odd DT_RELAENT": (
        _set("<Q", lambda e: e.dynamic_entry(DT_RELAENT) + 8, 16),
        "DT_RELAENT is 16, not 24",
    ),
    "DT_SYMTAB_SHNDX": (
        _set("<q", lambda e: e.dynamic_entry(DT_FINI), 34),
        "DT_SYMTAB_SHNDX is not supported",
    ),
    "no hash table": (
        _set("<q", lambda e: e.dynamic_entry(DT_GNU_HASH), 21),  # now DT_DEBUG
        "no DT_GNU_HASH or DT_HASH",
    ),
    "no .dynsym header": (
        _set("<I", lambda e: e.sections[".dynsym"] + 4, 1),
        "no .dynsym section header at DT_SYMTAB",
    ),
    "unmovable section after the program headers": (
        _set("<I", lambda e: e.sections[".note.gnu.build-id"] + 4, 1),  # NOTE -> PROGBITS
        "section .note.gnu.build-id follows the table and cannot be moved",
    ),
    "a tag pointing right after the program headers": (
        _set(
            "<Q",
            lambda e: e.dynamic_entry(DT_INIT) + 8,
            lambda e: struct.unpack_from("<Q", e.data, e.sections[".note.gnu.build-id"] + 16)[0],
        ),
        "dynamic tag 0xc points right after the table",
    ),
    "65535 program headers": (
        _set("<H", lambda e: 0x38, 0xFFFF),
        "more than 65534 program headers",
    ),
    "no PT_LOAD": (
        lambda e: [
            struct.pack_into("<I", e.data, e.phoff + 56 * i, 0x6474E600)  # an unknown OS type
            for i in range(e.phnum)
            if struct.unpack_from("<I", e.data, e.phoff + 56 * i)[0] == 1
        ],
        "no PT_LOAD segment",
    ),
    "PT_LOAD alignment not a power of two": (
        _set("<Q", lambda e: e.phdr(1) + 48, 0x3000),
        "a PT_LOAD alignment of 0x3000 is not a power of two",
    ),
    "no PT_DYNAMIC": (
        _set("<I", lambda e: e.phdr(2), 0),  # PT_DYNAMIC -> PT_NULL
        "no dynamic section, so dlsym could never find a blob",
    ),
    "no DT_NULL": (
        _set("<Q", lambda e: e.phdr(2) + 32, 16),  # PT_DYNAMIC's p_filesz: one entry
        "the dynamic section has no DT_NULL terminator",
    ),
    "no DT_SYMTAB": (
        _set("<q", lambda e: e.dynamic_entry(DT_SYMTAB), 21),  # now DT_DEBUG
        "the dynamic section lacks DT_SYMTAB, DT_STRTAB or DT_STRSZ",
    ),
    "DT_GNU_HASH unmapped": (
        _set("<Q", lambda e: e.dynamic_entry(DT_GNU_HASH) + 8, 1 << 40),
        "DT_GNU_HASH (16 bytes at 0x10000000000) is not mapped from the file",
    ),
    "section names past the end, as SHT_NOBITS": (
        lambda e: (
            struct.pack_into("<I", e.data, e.shoff + 64 * e.shstrndx + 4, 8),  # SHT_NOBITS
            struct.pack_into("<Q", e.data, e.shoff + 64 * e.shstrndx + 32, 1 << 40),
        ),
        "1099511627776 bytes at file offset",
    ),
    "extended section numbering": (
        _set("<H", lambda e: 0x3E, 0xFFFF),  # e_shstrndx = SHN_XINDEX
        "extended section numbering is not supported",
    ),
    "overlapping REL and RELA tables": (
        lambda e: (  # a DT_JMPREL over the RELA table, read as REL entries (DT_PLTREL = DT_REL)
            struct.pack_into(
                "<qQ",
                e.data,
                e.dynamic_entry(DT_FINI),
                DT_JMPREL,
                struct.unpack_from("<Q", e.data, e.dynamic_entry(DT_RELA) + 8)[0],
            ),
            struct.pack_into("<qQ", e.data, e.dynamic_entry(DT_INIT), DT_PLTREL, DT_REL),
            struct.pack_into("<qQ", e.data, e.dynamic_entry(DT_FINI_ARRAYSZ), DT_PLTRELSZ, 48),
        ),
        "relocation tables of different entry sizes overlap",
    ),
    "a relocation naming no symbol": (
        _set(  # the first .rela.dyn entry's r_info: symbol 5000, R_X86_64_64
            "<Q",
            lambda e: struct.unpack_from("<Q", e.data, e.sections[".rela.dyn"] + 24)[0] + 8,
            5000 << 32 | 1,
        ),
        "or after names symbol 5000, past the",
    ),
    "Android packed relocations": (
        _set("<q", lambda e: e.dynamic_entry(DT_FINI), 0x6000000F),
        "Android packed relocations are not supported",
    ),
}


@pytest.mark.parametrize("case", sorted(REFUSALS))
def test_hosts_the_writer_cannot_handle_are_refused_untouched(hosts, tmp_path, case):
    change, message = REFUSALS[case]
    data = bytearray(hosts["data"].read_bytes())
    change(Elf64(data))
    host = tmp_path / "libhost.so"
    host.write_bytes(bytes(data))
    result = ffitool("pack", str(host), "--add", f"test_alpha:{hosts['payload']}")
    assert (result.returncode, result.stdout) == (3, "")
    assert result.stderr == f"ffitool: error: {host}: {message}\n" or (
        result.stderr.startswith(f"ffitool: error: {host}: ") and message in result.stderr
    ), result.stderr
    assert len(result.stderr.splitlines()) == 1
    assert host.read_bytes() == bytes(data)
    assert sorted(os.listdir(tmp_path)) == ["libhost.so"]


# Each class of dynamic tag, with what its value is (gABI "Dynamic Section", glibc's and
# bionic's <elf.h>): True for an address (d_ptr), False for a size, count, flag or string.
TAG_CLASSES = {
    "generic addresses": ({3: True, 4: True, 5: True, 6: True, 7: True, 12: True, 13: True,
                           17: True, 21: True, 23: True, 25: True, 26: True}, "EM_X86_64"),
    "generic values": ({0: False, 1: False, 2: False, 8: False, 9: False, 10: False, 11: False,
                        14: False, 15: False, 16: False, 18: False, 19: False, 20: False,
                        22: False, 24: False, 27: False, 28: False, 29: False, 30: False},
                       "EM_X86_64"),
    "reserved below DT_ENCODING": ({31: False}, "EM_X86_64"),
    "encoding rule": ({32: True, 33: False, 34: True, 35: False, 36: True, 37: False, 38: True,
                       39: False, 0x5FFFFFFE: True, 0x5FFFFFFF: False}, "EM_X86_64"),
    "OS range by the rule": ({0x6000000D: False, 0x6000000E: True, 0x6FFFF000: True,
                              0x6FFFE001: False}, "EM_X86_64"),
    "Android against the rule": ({0x6000000F: True, 0x60000010: False, 0x60000011: True,
                                  0x60000012: False}, "EM_X86_64"),
    "DT_VALRNGLO..HI": ({0x6FFFFD00: False, 0x6FFFFDF8: False, 0x6FFFFDFF: False}, "EM_X86_64"),
    "DT_ADDRRNGLO..HI": ({0x6FFFFE00: True, 0x6FFFFEF5: True, 0x6FFFFEF9: True,
                          0x6FFFFEFF: True}, "EM_X86_64"),
    "GNU versions and counts": ({0x6FFFFFF0: True, 0x6FFFFFF9: False, 0x6FFFFFFA: False,
                                 0x6FFFFFFB: False, 0x6FFFFFFC: True, 0x6FFFFFFD: False,
                                 0x6FFFFFFE: True, 0x6FFFFFFF: False}, "EM_X86_64"),
    "processor range by the rule": ({0x70000000: True, 0x70000001: False, 0x70000002: True,
                                     0x7000000C: True, 0x7000000D: False}, "EM_X86_64"),
    "PPC64 against the rule": ({0x70000000: True, 0x70000001: True, 0x70000002: False,
                                0x70000003: False}, "EM_PPC64"),
    "AArch64 against the rule": ({0x70000009: False, 0x7000000C: False, 0x7000000D: True,
                                  0x7000000F: False}, "EM_AARCH64"),
    "Sun's filters": ({0x7FFFFFFD: False, 0x7FFFFFFE: False, 0x7FFFFFFF: False}, "EM_X86_64"),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(TAG_CLASSES))
def test_dynamic_tags_are_addresses_or_values_by_the_gabi_rules(case):
    expected, machine = TAG_CLASSES[case]
    assert {tag: is_address_tag(tag, machine) for tag in expected} == expected


# A tag of each class put in DT_FINI's place, its value the address of the note that follows
# the program header table (which grows into it): only an address there stops the writer.
PINNING = {
    21: True, 32: True, 38: True, 0x6000000E: True, 0x6FFFFEF9: True, 0x6FFFFFFC: True,
    0x70000000: True,
    33: False, 39: False, 0x6000000D: False, 0x6FFFFDF8: False, 0x6FFFFFF9: False,
    0x6FFFFFFA: False, 0x6FFFFFFB: False, 0x70000001: False, 0x7FFFFFFF: False,
}  # fmt: skip


@pytest.mark.parametrize(
    ("tag", "address"),
    [pytest.param(t, a, id=f"{t:#x}-{'address' if a else 'value'}") for t, a in PINNING.items()],
)
def test_only_an_address_tag_pins_the_bytes_after_the_program_headers(
    hosts, tmp_path, tag, address
):
    data = bytearray(hosts["data"].read_bytes())
    elf = Elf64(data)
    note = struct.unpack_from("<Q", data, elf.sections[".note.gnu.build-id"] + 16)[0]
    struct.pack_into("<qQ", data, elf.dynamic_entry(DT_FINI), tag, note)
    host = tmp_path / "libhost.so"
    host.write_bytes(bytes(data))
    result = ffitool("pack", str(host), "--add", f"test_alpha:{hosts['payload']}")
    if address:
        assert (result.returncode, result.stderr) == (
            3,
            f"ffitool: error: {host}: no room for another program header: dynamic tag"
            f" {tag:#x} points right after the table\n",
        )
    else:
        assert result.returncode == 0, result.stderr


def test_a_program_header_table_ending_its_segment_cannot_grow(hosts, tmp_path):
    """The table is moved (a copy) to the very end of the first PT_LOAD's file bytes."""
    data = bytearray(hosts["data"].read_bytes())
    elf = Elf64(data)
    first_load = elf.phdr(1)
    filesz = struct.unpack_from("<Q", data, first_load + 32)[0]
    table = bytes(data[elf.phoff : elf.phoff + 56 * elf.phnum])
    at = (filesz - len(table)) // 8 * 8
    assert at >= elf.phoff + len(table)  # lands on relocations, which are read later
    data[at : at + len(table)] = table
    struct.pack_into("<Q", data, 0x20, at)
    host = tmp_path / "libhost.so"
    host.write_bytes(bytes(data))
    result = ffitool("pack", str(host), "--add", f"test_alpha:{hosts['payload']}")
    assert result.returncode == 3
    assert "no room for another program header inside the first segment" in result.stderr


@pytest.mark.slow
def test_a_section_header_table_that_cannot_take_one_more_is_refused(hosts, tmp_path):
    """65,279 section headers (the table moved past the end, padded with SHT_NULL entries):
    one more would reach SHN_LORESERVE, where section indices stop being indices."""
    data = bytearray(hosts["data"].read_bytes())
    elf = Elf64(data)
    table = bytes(data[elf.shoff : elf.shoff + 64 * elf.shnum])
    at = -(-len(data) // 8) * 8
    data += bytes(at - len(data)) + table + bytes(64 * (0xFEFF - elf.shnum))
    struct.pack_into("<Q", data, 0x28, at)
    struct.pack_into("<H", data, 0x3C, 0xFEFF)
    host = tmp_path / "libhost.so"
    host.write_bytes(bytes(data))
    result = ffitool("pack", str(host), "--add", f"test_alpha:{hosts['payload']}")
    assert (result.returncode, result.stderr) == (
        3,
        f"ffitool: error: {host}: too many sections to add one\n",
    )


def test_a_pt_null_entry_takes_the_new_segment_and_nothing_moves(hosts, tmp_path):
    """A spare PT_NULL program header (PT_GNU_STACK blanked here) is reused: the table keeps
    its size, so the notes after it stay where they are."""
    data = bytearray(hosts["data"].read_bytes())
    elf = Elf64(data)
    struct.pack_into("<I", data, elf.phdr(0x6474E551), 0)  # PT_GNU_STACK -> PT_NULL
    host, out = tmp_path / "libhost.so", tmp_path / "out.so"
    host.write_bytes(bytes(data))
    result = ffitool("pack", str(host), "--add", f"test_alpha:{hosts['payload']}", "-o", str(out))
    assert result.returncode == 0, result.stderr
    packed = Elf64(bytearray(out.read_bytes()))
    types = [
        struct.unpack_from("<I", packed.data, packed.phoff + 56 * i)[0] for i in range(elf.phnum)
    ]
    assert packed.phnum == elf.phnum
    assert (
        0 not in types
        and types.count(1)
        == [struct.unpack_from("<I", data, elf.phoff + 56 * i)[0] for i in range(elf.phnum)].count(
            1
        )
        + 1
    )
    notes = {s[0]: s for s in _sections(out) if s[0].startswith(".note")}
    assert notes == {s[0]: s for s in _sections(host) if s[0].startswith(".note")}


def test_the_writer_refuses_what_is_not_a_shared_library_itself():
    """`pack` refuses executables before the writer sees them; the writer's API does too."""
    data = bytearray((FIXTURES / "libffi_c.so").read_bytes())
    struct.pack_into("<H", data, 16, 2)  # ET_EXEC
    with pytest.raises(InputError, match=r"^lib: only shared libraries \(ET_DYN\) can be packed$"):
        plan_edit(io.BytesIO(bytes(data)), len(data), "lib", 64)


def _build_gnu(names: list[bytes], nbuckets: int, symoffset: int, bloom_size: int, shift: int):
    """A from-scratch GNU hash table of names sorted by bucket, as a linker writes it."""
    order = sorted(names, key=lambda n: gnu_hash(n) % nbuckets)  # stable within a bucket
    buckets = [0] * nbuckets
    chains = []
    bloom = [0] * bloom_size
    for number, name in enumerate(order):
        h = gnu_hash(name)
        index = symoffset + number
        if not buckets[h % nbuckets]:
            buckets[h % nbuckets] = index
        last = number + 1 == len(order) or gnu_hash(order[number + 1]) % nbuckets != h % nbuckets
        chains.append((h & ~1) | int(last))
        bloom[(h // 64) % bloom_size] |= (1 << (h % 64)) | (1 << ((h >> shift) % 64))
    raw = struct.pack("<4I", nbuckets, symoffset, bloom_size, shift)
    raw += struct.pack(f"<{bloom_size}Q", *bloom) + struct.pack(f"<{nbuckets}I", *buckets)
    return order, raw + struct.pack(f"<{len(chains)}I", *chains)


@pytest.mark.parametrize("seed", range(20))
def test_gnu_hash_insertion_equals_a_table_built_from_scratch(seed):
    rng = random.Random(seed)
    names = [f"sym_{rng.getrandbits(40):x}".encode() for _ in range(rng.randrange(0, 300))]
    nbuckets, symoffset, bloom_size, shift = rng.choice([1, 3, 17, 64]), 3, rng.choice([1, 4]), 6
    order, raw = _build_gnu(names, nbuckets, symoffset, bloom_size, shift)
    table = GnuHashTable.parse(raw, symoffset + len(order), 64, True, "test")
    new = b"__tvm_ffi__library_bin"
    position = table.insert_position(new)
    table.insert(position, new)
    expected_order, expected = _build_gnu([*names, new], nbuckets, symoffset, bloom_size, shift)
    assert table.to_bytes() == expected
    assert expected_order.index(new) + symoffset == position
    lookup = dict(enumerate(expected_order, symoffset))
    for name in [*names, new]:
        assert lookup[table.lookup(name, lookup.__getitem__)] == name
    assert table.lookup(b"absent", lookup.__getitem__) is None


@pytest.mark.parametrize(("seed", "code"), [(s, c) for s in range(10) for c in "IQ"])
def test_sysv_hash_insertion_keeps_every_lookup(seed, code):
    rng = random.Random(seed)
    names = [b""] + [f"s{rng.getrandbits(32):x}".encode() for _ in range(rng.randrange(1, 200))]
    nbucket = rng.choice([1, 7, 31])
    buckets, chains = [0] * nbucket, [0] * len(names)
    for index in range(1, len(names)):  # ld's way: each new symbol heads its bucket's chain
        bucket = sysv_hash(names[index]) % nbucket
        chains[index], buckets[bucket] = buckets[bucket], index
    raw = array(code, [nbucket, len(names), *buckets, *chains]).tobytes()
    table = SysvHashTable.parse(raw, len(names), code, sys.byteorder == "little", "test")
    position = rng.randrange(1, len(names) + 1)
    new = b"__tvm_ffi__library_bin"
    table.insert(position, new)
    after = [*names[:position], new, *names[position:]]
    for index, name in enumerate(after[1:], 1):
        assert table.lookup(name, after.__getitem__) == index
    assert shifted(position - 1, position) == position - 1
    reparsed = SysvHashTable.parse(
        table.to_bytes(), len(after), code, sys.byteorder == "little", "t"
    )
    assert reparsed.lookup(new, after.__getitem__) == position


def test_a_gnu_hash_table_hashing_nothing_gets_the_blob_symbol_last():
    """bfd's table for a library exporting nothing: empty buckets, symoffset 1, no chains."""
    front = struct.pack("<4I", 1, 1, 1, 0) + b"\0" * 8 + struct.pack("<I", 0)
    assert GnuHashTable.front_size(front[:16], 64, True) == 28
    assert GnuHashTable.size(front, 5, 64, True) == 28  # not 28 + 4 chains past its end
    table = GnuHashTable.parse(front, 5, 64, True, "lib")
    assert (table.symoffset, list(table.chains)) == (5, [])
    new = b"__tvm_ffi__library_bin"
    assert table.insert_position(new) == 5
    table.insert(5, new)
    h = gnu_hash(new)
    bloom = (1 << (h % 64)) | (1 << (h % 64))  # bloom_shift 0: both bits are one
    assert table.to_bytes() == struct.pack("<4IQII", 1, 5, 1, 0, bloom, 5, h | 1)
    assert table.lookup(new, {5: new}.__getitem__) == 5


def test_hash_tables_that_cannot_be_hash_tables_are_input_errors():
    with pytest.raises(InputError, match="DT_GNU_HASH is truncated"):
        GnuHashTable.parse(b"\x01" * 8, 4, 64, True, "lib")
    header = struct.pack("<4I", 1, 1, 1, 6) + b"\0" * 8 + struct.pack("<I", 9)
    with pytest.raises(InputError, match="bucket past its 4 symbols"):
        GnuHashTable.parse(header + b"\0" * 12, 4, 64, True, "lib")
    with pytest.raises(InputError, match="DT_GNU_HASH is shorter than its 1 buckets"):
        GnuHashTable.parse(header[:-4], 4, 64, True, "lib")
    with pytest.raises(InputError, match="shorter than its 4 symbols need"):
        GnuHashTable.parse(header[:-4] + struct.pack("<I", 1), 4, 64, True, "lib")
    with pytest.raises(InputError, match="DT_GNU_HASH with 0 buckets, 1 bloom words and symoffset"):
        GnuHashTable.parse(struct.pack("<4I", 0, 1, 1, 6) + b"\0" * 8, 4, 64, True, "lib")
    with pytest.raises(InputError, match="and symoffset 0 for 4 symbols"):
        GnuHashTable.parse(struct.pack("<4I", 1, 0, 1, 6) + b"\0" * 12, 4, 64, True, "lib")
    with pytest.raises(InputError, match="DT_HASH is truncated"):
        SysvHashTable.parse(struct.pack("<I", 2), 4, "I", True, "lib")
    with pytest.raises(InputError, match="DT_HASH has 2 buckets and 5 chains for 4 symbols"):
        SysvHashTable.parse(struct.pack("<2I", 2, 5) + b"\0" * 28, 4, "I", True, "lib")
    with pytest.raises(InputError, match="DT_HASH is shorter than its header says"):
        SysvHashTable.parse(struct.pack("<2I", 2, 4), 4, "I", True, "lib")


def test_lookups_stop_where_a_damaged_table_would_run_on():
    """A GNU chain without its end bit stops at the table's end; a SysV chain that loops
    stops after as many steps as there are symbols."""
    name = b"wanted"
    h = gnu_hash(name)
    # one bucket -> symbol 1, whose chain entry neither matches nor ends the chain
    table = struct.pack("<4I", 1, 1, 1, 6) + struct.pack("<Q", ~0 & (1 << 64) - 1)
    table += struct.pack("<II", 1, (h ^ 2) & ~1)
    gnu = GnuHashTable.parse(table, 2, 64, True, "lib")
    assert gnu.lookup(name, {1: b"other"}.__getitem__) is None
    # bucket -> 1 -> 2 -> 1 ...: never the wanted name
    looping = struct.pack("<6I", 1, 3, 1, 0, 2, 1)
    sysv = SysvHashTable.parse(looping, 3, "I", True, "lib")
    assert sysv.lookup(name, {1: b"a", 2: b"b"}.__getitem__) is None


@pytest.mark.parametrize("code", ["I", "Q"])
def test_big_endian_hash_tables_read_and_write_their_own_byte_order(code):
    """s390x's byte order, and its 64-bit DT_HASH entries (lld writes 32-bit ones there)."""
    names = [b"", b"alpha", b"beta"]
    nbucket = 3
    buckets, chains = [0] * nbucket, [0] * 3
    for index in (1, 2):
        bucket = sysv_hash(names[index]) % nbucket
        chains[index], buckets[bucket] = buckets[bucket], index
    raw = struct.pack(f">{2 + nbucket + 3}{code}", nbucket, 3, *buckets, *chains)
    table = SysvHashTable.parse(raw, 3, code, False, "lib")
    assert table.to_bytes() == raw
    assert [table.lookup(n, names.__getitem__) for n in names[1:]] == [1, 2]
    table.widen()  # what the writer does on s390x whatever the input's width
    assert table.to_bytes() == struct.pack(f">{2 + nbucket + 3}Q", nbucket, 3, *buckets, *chains)
    order, gnu_raw = _build_gnu(names[1:], 2, 1, 1, 6)
    swapped = struct.pack(">4I", *struct.unpack_from("<4I", gnu_raw))
    swapped += struct.pack(">Q", *struct.unpack_from("<Q", gnu_raw, 16))
    words = len(gnu_raw[24:]) // 4
    swapped += struct.pack(f">{words}I", *struct.unpack_from(f"<{words}I", gnu_raw, 24))
    gnu = GnuHashTable.parse(swapped, 3, 64, False, "lib")
    assert gnu.to_bytes() == swapped
    lookup = dict(enumerate(order, 1))
    assert [lookup[gnu.lookup(n, lookup.__getitem__)] for n in order] == order


@pytest.mark.parametrize(
    ("machine", "head", "code"),
    [
        (22, struct.pack("<QQ", 3, 9), "Q"),  # EM_S390: binutils' 64-bit nbucket, nchain
        (22, struct.pack("<II", 3, 9), "I"),  # lld's 32-bit entries there: no zero half
        (22, struct.pack("<I", 3), "I"),  # too short to tell: the ABI's 32 bits
        (41, struct.pack("<QQ", 3, 9), "Q"),  # EM_ALPHA
        (62, struct.pack("<QQ", 3, 9), "I"),  # EM_X86_64: always 32-bit
    ],
)
def test_dt_hash_entry_width_follows_the_machine_and_the_table(hosts, machine, head, code):
    data = bytearray(hosts["data"].read_bytes())
    struct.pack_into("<H", data, 18, machine)
    assert sysv_entry_format(ElfFile(io.BytesIO(bytes(data))), head) == code


def test_in_place_keeps_owner_group_and_mode(hosts, tmp_path):
    lib = tmp_path / "libowned.so"
    shutil.copyfile(hosts["data"], lib)
    os.chown(lib, 12345, 23456)
    os.chmod(lib, 0o4751)
    link = tmp_path / "hardlink.so"
    os.link(lib, link)
    result = ffitool("pack", str(lib), "--add", f"test_alpha:{hosts['payload']}")
    assert result.returncode == 0, result.stderr
    info = lib.stat()
    assert (info.st_uid, info.st_gid, info.st_mode & 0o7777) == (12345, 23456, 0o4751)
    # The rename leaves other hard links with the unpacked bytes, as documented.
    assert link.read_bytes() == hosts["data"].read_bytes()
    assert hashlib.sha256(lib.read_bytes()).digest() != hashlib.sha256(link.read_bytes()).digest()
