"""Hostile Mach-O and PE inputs whose cost used to grow faster than their size.

Each input is built here, byte by byte, and read by ffitool in a child process: the test
asserts the exit code, what the output says, and bounds the child's CPU time (from rusage,
not the clock) and its peak RSS. The bounds are far below what the same inputs cost before
(20 to 30 s of CPU, or gigabytes, or a failure) and far above what they cost now (a tenth
of a second to a second, 20 to 60 MB; four times that under coverage), so that neither a
busy machine nor coverage fails them. Where a refusal is the outcome, the exit code and the
message are what a regression would change. The child also runs under RLIMIT_CPU and
RLIMIT_AS, so that a regression fails fast instead of taking the machine.
"""

from __future__ import annotations

import io
import json
import struct
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import run_measured

from ffitool.formats.macho.trie import regular_export
from ffitool.formats.strtab import NAME_LIMIT

# Inputs built large enough to tell linear from worse, each read by a measured child.
pytestmark = pytest.mark.slow

CPU_SECONDS = 10.0
MEGABYTES = 200
_LIMITED = (
    "import os, resource, sys;"
    " resource.setrlimit(resource.RLIMIT_CPU, (60, 60));"
    " resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30));"
    " os.execv(sys.executable, [sys.executable, *sys.argv[1:]])"
)


@dataclass(frozen=True)
class Run:
    code: int
    stdout: str
    stderr: str
    cpu: float
    """User and system seconds of the child, from rusage (see conftest.CPU_SCALE)."""
    megabytes: float
    """Its peak RSS."""

    def bounded(self) -> None:
        assert self.cpu < CPU_SECONDS and self.megabytes < MEGABYTES, (self.cpu, self.megabytes)

    def json(self) -> dict:
        return json.loads(self.stdout)


def run(tmp_path: Path, *args: str | Path) -> Run:
    """Run `python ARGS` (under the limits above) and measure it."""
    command = [sys.executable, "-c", _LIMITED, *map(str, args)]
    code, cpu, megabytes = run_measured(command, tmp_path)
    stdout = (tmp_path / "stdout").read_text(errors="replace")
    stderr = (tmp_path / "stderr").read_text(errors="replace")
    return Run(code, stdout, stderr, cpu, megabytes)


def inspect(tmp_path: Path, name: str, data: bytes) -> tuple[Path, Run]:
    path = tmp_path / name
    path.write_bytes(data)
    return path, run(tmp_path, "-m", "ffitool", "inspect", "--json", path)


def refused(result: Run, path: Path, message: str) -> None:
    """Exit 3, the error in the JSON document and as the one line on stderr."""
    assert result.code == 3, result
    error = f"{path}: {message}"
    assert result.json()["files"] == [{"path": str(path), "error": error}]
    assert result.stderr == f"ffitool: error: {error}\n"


def library(result: Run) -> dict:
    assert (result.code, result.stderr) == (0, ""), result
    (entry,) = result.json()["files"][0]["libraries"]
    return entry


def functions(entry: dict) -> list[tuple[str, bool]]:
    return [(function["name"], function["exported"]) for function in entry["functions"]]


class FailingStream(io.BytesIO):
    """A stream that fails to read past its first `good` bytes, as a failing disk does."""

    def __init__(self, data: bytes, good: int) -> None:
        super().__init__(data)
        self._good = good

    def read(self, size: int | None = -1) -> bytes:
        if self.tell() >= self._good:
            raise OSError(5, "Input/output error")
        return super().read(size)


def names_spent(strings: bytes, offsets: list[int]) -> int:
    """How many distinct offsets the reader decodes before their names spell more than four
    times the table plus 64 KiB: the count its refusal names."""
    left = 4 * len(strings) + NAME_LIMIT
    for count, offset in enumerate(dict.fromkeys(offsets), 1):
        left -= strings.index(b"\0", offset) - offset
        if left < 0:
            return count
    raise AssertionError("the names fit")


# --- Mach-O ------------------------------------------------------------------------------

_MH_DYLIB = 6
_CODE = b"\xc3" * 16
_TEXT_ADDRESS = 0x1000
_NLIST = struct.Struct("<IBBHQ")
_EXTERNAL_IN_SECTION = 0x0F  # N_SECT | N_EXT


def macho(strings: bytes, offsets: list[int], trie: bytes | None = None, symtabs: int = 1) -> bytes:
    """A 64-bit x86-64 dylib whose symbol table holds one external code symbol per entry of
    `offsets` (each an offset into `strings`), with `trie` as its export trie and `symtabs`
    LC_SYMTAB commands that all describe that one table."""
    nsyms = len(offsets)
    commands_size = 72 + 80 + 24 * symtabs + (16 if trie is not None else 0)
    code_at = 32 + commands_size
    symoff = code_at + len(_CODE)
    stroff = symoff + nsyms * _NLIST.size
    trie_at = stroff + len(strings)
    end = trie_at + len(trie or b"")
    segment = struct.pack("<II16sQQQQiiII", 0x19, 72 + 80, b"__TEXT", 0, end, 0, end, 5, 5, 1, 0)
    text = (b"__text", b"__TEXT", _TEXT_ADDRESS, len(_CODE), code_at, 0, 0, 0, 0x80000400, 0, 0, 0)
    commands = segment + struct.pack("<16s16sQQIIIIIIII", *text)
    commands += struct.pack("<6I", 0x2, 24, symoff, nsyms, stroff, len(strings)) * symtabs
    if trie is not None:
        commands += struct.pack("<4I", 0x80000033, 16, trie_at, len(trie))
    ncmds = 1 + symtabs + (trie is not None)
    header = struct.pack(
        "<IiiIIIII", 0xFEEDFACF, 0x01000007, 3, _MH_DYLIB, ncmds, len(commands), 0, 0
    )
    symbol = _EXTERNAL_IN_SECTION, 1, 0, _TEXT_ADDRESS
    table = b"".join(_NLIST.pack(offset, *symbol) for offset in offsets)
    data = header + commands + _CODE + table + strings + (trie or b"")
    assert len(data) == end
    return data


def universal(image: bytes, slices: int) -> bytes:
    """A universal file whose `slices` architecture entries all name the one `image`."""
    arch = struct.pack(">iiIII", 0x01000007, 3, 4096, len(image), 12)
    return (struct.pack(">II", 0xCAFEBABE, slices) + arch * slices).ljust(4096, b"\0") + image


def trie(decoys: list[bytes], name: bytes) -> bytes:
    """An export trie whose root has an edge for each of `decoys`, then one for `name`, all
    to one leaf that exports an address; child offsets take 3 bytes, as ld64 writes large
    ones."""
    labels = [*decoys, name]
    leaf = 2 + sum(len(label) + 1 + 3 for label in labels)
    offset = bytes([leaf & 0x7F | 0x80, leaf >> 7 & 0x7F | 0x80, leaf >> 14 & 0x7F])
    root = bytes([0, len(labels)]) + b"".join(label + b"\0" + offset for label in labels)
    terminal = regular_export(_TEXT_ADDRESS)
    return root + bytes([len(terminal)]) + terminal + b"\0"


def string_table(names: list[bytes]) -> tuple[bytes, list[int]]:
    """A string table holding `names` (after the customary empty name) and their offsets."""
    offsets, at = [], 1
    for name in names:
        offsets.append(at)
        at += len(name) + 1
    return b"\0" + b"".join(name + b"\0" for name in names), offsets


def test_thousands_of_symbols_naming_one_long_name_read_it_once(tmp_path):
    """30,000 entries name one 60 KB string (before: 2.4 s of CPU and 3.4 GB, 1.8 GB of
    copies of one name)."""
    name = b"___tvm_ffi_" + b"a" * 60_000
    _, result = inspect(tmp_path, "one.dylib", macho(b"\0" + name + b"\0", [1] * 30_000))
    entry = library(result)
    assert functions(entry) == [("a" * 60_000, True)]
    assert [s["symbol"] for s in entry["symbols"]] == [name.decode()]
    result.bounded()


def test_a_name_longer_than_64_kib_is_refused(tmp_path):
    """3,000 entries naming one 1 MiB string (before: a MemoryError traceback and exit 1,
    after 2.4 s of CPU, at a 4 GiB address-space limit)."""
    strings = b"\0___tvm_ffi_" + b"a" * (1 << 20) + b"\0"
    path, result = inspect(tmp_path, "long.dylib", macho(strings, [1] * 3000))
    message = "symbol name at offset 1 is longer than 65536 bytes"
    refused(result, path, f"malformed Mach-O: {message}")
    result.bounded()


def test_a_name_of_64_kib_is_read(tmp_path):
    """The bound itself: a name of exactly NAME_LIMIT bytes, unterminated at the end of the
    table, is still a name; one byte more is not."""
    name = b"___tvm_ffi_" + b"b" * (NAME_LIMIT - 11)
    _, result = inspect(tmp_path, "edge.dylib", macho(b"\0" + name, [1]))
    assert functions(library(result)) == [(name[11:].decode(), True)]
    path, result = inspect(tmp_path, "over.dylib", macho(b"\0" + name + b"b", [1]))
    message = "symbol name at offset 1 is longer than 65536 bytes"
    refused(result, path, f"malformed Mach-O: {message}")


def test_symbols_at_successive_offsets_of_one_string_are_bounded(tmp_path):
    """30,000 entries at successive offsets of a 60 KB string spell 1.8 GB of distinct names
    (before: 1.3 s of CPU and 1.3 GB, exit 0)."""
    strings = b"\0" + b"a" * 60_000 + b"___tvm_ffi_f\0"
    offsets = list(range(1, 30_001))
    path, result = inspect(tmp_path, "tails.dylib", macho(strings, offsets))
    count = names_spent(strings, offsets)
    message = (
        f"{count} symbol names at distinct offsets spell more than 4 times"
        f" their {len(strings)}-byte table (overlapping names?)"
    )
    refused(result, path, f"malformed Mach-O: {message}")
    result.bounded()


def test_a_trie_with_long_labels_is_searched_once_per_name(tmp_path):
    """The root's 254 decoy edges of 4 KB come before the one that spells the name, and
    120,000 symbols name it (before: 28 s of CPU, each symbol copying every decoy label)."""
    decoys = [bytes([first]) + b"y" * 4000 for first in range(1, 256) if first != ord("_")]
    name = b"___tvm_ffi_f"
    data = macho(b"\0" + name + b"\0", [1] * 120_000, trie(decoys, name))
    entry = library(inspect(tmp_path, "labels.dylib", data)[1])
    assert functions(entry) == [("f", True)]
    inspect(tmp_path, "labels.dylib", data)[1].bounded()


def test_a_trie_whose_edges_share_a_first_byte_is_refused(tmp_path):
    """254 edges of 4 KB all start with `_`: each of 60,000 distinct names would compare
    them all (before: 16 s of CPU, and 44 MB of JSON saying none is exported)."""
    decoys = [b"___tvm_ffi_" + b"y" * 4000 + bytes([last]) for last in range(1, 255)]
    strings, offsets = string_table([b"___tvm_ffi_%d" % k for k in range(60_000)])
    data = macho(strings, offsets, trie(decoys, b"___tvm_ffi_zzz"))
    path, result = inspect(tmp_path, "shared.dylib", data)
    message = (
        "export trie: looking up 1 name(s) compares more than 26 bytes"
        " (edges of a node share their first byte)"
    )
    refused(result, path, f"malformed Mach-O: {message}")
    result.bounded()


def test_trie_nodes_that_overlap_are_refused(tmp_path):
    """The root's edge leads into the root itself, at a byte that parses as another node
    (no terminal, no children): nodes that overlap could make the parse cost the trie's
    size once per node."""
    name = b"___tvm_ffi_f"
    root = bytes([2, 0, 0, 1]) + name + b"\0" + bytes([1])  # the node at 1: [0, 0]
    path, result = inspect(tmp_path, "overlap.dylib", macho(b"\0" + name + b"\0", [1], root))
    message = f"export trie nodes overlap: 2 nodes span more than its {len(root)} bytes"
    refused(result, path, f"malformed Mach-O: {message}")


def test_repeated_symbol_table_commands_cost_once(tmp_path):
    """100,000 LC_SYMTAB commands (2.4 MB) all describe one table of 1,000 FFI names."""
    strings, offsets = string_table([b"___tvm_ffi_f%d" % k for k in range(1000)])
    data = macho(strings, offsets, symtabs=100_000)
    entry = library(inspect(tmp_path, "symtabs.dylib", data)[1])
    assert sorted(functions(entry)) == sorted((f"f{k}", True) for k in range(1000))
    inspect(tmp_path, "symtabs.dylib", data)[1].bounded()


def test_a_universal_file_naming_one_image_64_times_reads_it_once(tmp_path):
    """64 architecture entries name one image of 100,000 symbols, which was read 64 times
    (before: 33 s of CPU and 2.3 GB)."""
    image = macho(b"\0___tvm_ffi_f\0", [1] * 100_000)
    _, result = inspect(tmp_path, "fat.dylib", universal(image, 64))
    assert (result.code, result.stderr) == (0, ""), result
    libraries = result.json()["files"][0]["libraries"]
    assert [functions(entry) for entry in libraries] == [[("f", True)]] * 64
    assert {entry["slice"]["offset"] for entry in libraries} == {4096}
    result.bounded()


def test_a_universal_file_whose_slices_overlap_is_refused(tmp_path):
    """The second slice starts inside the first: its bytes would be read twice."""
    image = macho(b"\0___tvm_ffi_f\0", [1])
    data = bytearray(universal(image, 2))
    struct.pack_into(">II", data, 8 + 20 + 8, 4096 + 16, len(image) - 16)
    path, result = inspect(tmp_path, "fat.dylib", bytes(data))
    refused(result, path, "malformed Mach-O: slices 0 and 1 overlap")


# --- PE ----------------------------------------------------------------------------------

_TEXT_RVA = 0x1000
_EXPORTS_RVA = 0x2000
_EXPORT_DIRECTORY = struct.Struct("<IIHHIIIIIII")


def dll(strings: bytes, pointers: list[int], sections: int = 1, names: int | None = None) -> bytes:
    """A PE32+ x86-64 DLL exporting one function (16 bytes of code in .text) under each name
    pointer of `pointers` (offsets into `strings`), its export directory in .edata;
    `sections` .edata headers that all describe the same bytes at distinct RVAs, and
    `names` as NumberOfNames (the length of `pointers` unless given)."""
    count = len(pointers)
    directory = _EXPORT_DIRECTORY.size
    table_at = directory
    pointers_at = table_at + 4
    ordinals_at = pointers_at + 4 * count
    strings_at = ordinals_at + 2 * count
    body = _EXPORT_DIRECTORY.pack(
        0,
        0,
        0,
        0,
        0,
        1,
        1,
        count if names is None else names,
        _EXPORTS_RVA + table_at,
        _EXPORTS_RVA + pointers_at,
        _EXPORTS_RVA + ordinals_at,
    )
    body += struct.pack("<I", _TEXT_RVA)
    body += struct.pack(f"<{count}I", *(_EXPORTS_RVA + strings_at + p for p in pointers))
    body += bytes(2 * count) + strings
    body += bytes(-len(body) % 0x200)
    span = -(-len(body) // 0x1000) * 0x1000
    raw = -(-(0x40 + 4 + 20 + 240 + 40 * (1 + sections)) // 0x200) * 0x200
    dos = b"MZ" + bytes(58) + struct.pack("<I", 0x40)
    coff = struct.pack("<HHIIIHH", 0x8664, 1 + sections, 0, 0, 0, 240, 0x2022)
    optional = bytearray(240)
    struct.pack_into("<H", optional, 0, 0x20B)
    struct.pack_into("<I", optional, 108, 16)
    struct.pack_into("<II", optional, 112, _EXPORTS_RVA, len(body))
    text = struct.pack("<8sIIIIIIHHI", b".text", 16, _TEXT_RVA, 0x200, raw, 0, 0, 0, 0, 0x60000020)
    table = text + b"".join(
        struct.pack(
            "<8sIIIIIIHHI",
            b".edata",
            len(body),
            _EXPORTS_RVA + n * span,
            len(body),
            raw + 0x200,
            0,
            0,
            0,
            0,
            0x40000040,
        )
        for n in range(sections)
    )
    head = dos + b"PE\0\0" + coff + bytes(optional) + table
    return head.ljust(raw, b"\0") + b"\xc3".ljust(0x200, b"\0") + body


def test_export_pointers_naming_one_long_string_read_it_once(tmp_path):
    """3,000,000 name pointers name one 60 KB string: one function; listing every export
    (what a writer keeps) reads the string once too (before: 21 s of CPU, copying 180 GB)."""
    name = b"__tvm_ffi_" + b"a" * 60_000
    path, result = inspect(tmp_path, "one.dll", dll(name + b"\0", [0] * 3_000_000))
    assert functions(library(result)) == [("a" * 60_000, True)]
    result.bounded()
    listing = (
        "import sys; from ffitool.formats.pe.reader import exports, open_pe\n"
        "with open(sys.argv[1], 'rb') as f:\n"
        "    pe = open_pe(f, len(f.read()), sys.argv[1], f.fileno())\n"
        "    print([(e.ordinal, len(e.name), e.rva) for e in exports(pe, sys.argv[1])])\n"
    )
    result = run(tmp_path, "-c", listing, path)
    assert (result.code, result.stdout, result.stderr) == (0, "[(1, 60010, 4096)]\n", "")
    result.bounded()


def test_an_export_name_longer_than_64_kib_is_refused(tmp_path):
    """Before: a function with a 1 MiB name, in 4 MB of JSON."""
    name = b"__tvm_ffi_" + b"a" * (1 << 20)
    path, result = inspect(tmp_path, "long.dll", dll(name + b"\0", [0] * 3000))
    at = _EXPORT_DIRECTORY.size + 4 + 6 * 3000  # the strings follow the three tables
    message = f".edata export name at offset {at} is longer than 65536 bytes"
    refused(result, path, f"malformed PE: {message}")
    result.bounded()


def test_export_names_at_successive_offsets_are_bounded(tmp_path):
    """50,000 pointers at successive offsets of a 60 KB string (before: 1.9 s of CPU and
    1.7 GB, exit 0)."""
    pointers = list(range(50_000))
    data = dll(b"a" * 60_000 + b"__tvm_ffi_f\0", pointers)
    path, result = inspect(tmp_path, "tails.dll", data)
    edata = data[0x400:]  # headers and .text take 0x200 bytes each; .edata is the rest
    at = _EXPORT_DIRECTORY.size + 4 + 6 * len(pointers)
    count = names_spent(edata, [at + p for p in pointers])
    message = (
        f"{count} .edata export names at distinct offsets spell more than 4 times"
        f" their {len(edata)}-byte table (overlapping names?)"
    )
    refused(result, path, f"malformed PE: {message}")
    result.bounded()


def test_a_name_count_the_file_cannot_hold_is_refused(tmp_path):
    """NumberOfNames 2^30 - 1 in a 1.5 KB file: refused before any table is read."""
    path, result = inspect(tmp_path, "count.dll", dll(b"__tvm_ffi_f\0", [0], names=0x3FFFFFFF))
    message = "export name pointer table at RVA 0x202c runs past the file bytes of .edata"
    refused(result, path, f"malformed PE: {message}")
    result.bounded()


def test_repeated_section_headers_cost_once(tmp_path):
    """95 .edata headers describe the same bytes at distinct RVAs, with 10,000 names."""
    strings, offsets = string_table([b"__tvm_ffi_f%d" % k for k in range(10_000)])
    data = dll(strings, offsets, sections=95)
    entry = library(inspect(tmp_path, "sections.dll", data)[1])
    assert sorted(functions(entry)) == sorted((f"f{k}", True) for k in range(10_000))
    inspect(tmp_path, "sections.dll", data)[1].bounded()
