"""Packing Mach-O dylibs, checked by parsers that are not ffitool's.

Every zig-built fixture (thin x86-64 and arm64, universal, 2,000 exports) is packed; then
llvm-nm, llvm-objdump, llvm-readobj and macholib must agree that everything the input had is
still there at the same address (exports, symbols, segments, sections, indirect symbols), that
`___tvm_ffi__library_bin` is an external defined symbol in the export trie, and that the bytes
at the blob section's file offset decode to the planned tree. Then each promise of the
verifier is broken on purpose, one at a time, and must be caught.
"""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest
from conftest import FIXTURES, ffitool, require_tool
from macholib.mach_o import LC_DYSYMTAB, LC_SEGMENT_64, LC_SYMTAB
from macholib.MachO import MachO
from macholib.SymbolTable import SymbolTable

from ffitool.blob import decode
from ffitool.edit.plan import Edits, plan_edits
from ffitool.edit.stream import blob_size, write_blob
from ffitool.edit.verification import VerificationError
from ffitool.formats.macho.packer import MachoPacker
from ffitool.formats.macho.trie import regular_export
from ffitool.formats.macho.writer import RAW_NAME, plan_macho_edit, write_macho_edit
from ffitool.pack import existing_modules, pack_library, payload_source, verify_output

# Packs fixtures/bin/macho files themselves: one worker runs them (see conftest.py).
pytestmark = pytest.mark.xdist_group("packs-macho-fixtures")

MACHO = FIXTURES / "macho"
THIN = ["libffi_macho.x86_64.dylib", "libffi_macho.arm64.dylib", "libffi_macho.lld.arm64.dylib"]
LLD = "libffi_macho.lld.arm64.dylib"
"""Linked by ld64.lld: chained fixups and LC_DYLD_EXPORTS_TRIE, as Apple's current ld."""
MANY = ["libmany.x86_64.dylib", "libmany.arm64.dylib"]
UNIVERSAL = "libffi_macho.universal.dylib"
ARCHES = {"libffi_macho.universal.dylib": ["x86_64", "arm64"]}
PAYLOAD = bytes(range(256)) * 37 + b"tail"
BLOB_NAME = "___tvm_ffi__library_bin"
ORIGINAL_BLOB = (FIXTURES / "ffi_c.blob").read_bytes()
"""The blob the ffi_macho fixtures were built with."""


def llvm(tool: str, *args: str) -> str:
    return subprocess.run(
        [require_tool(tool), *args], check=True, capture_output=True, text=True
    ).stdout


def arches_of(name: str) -> list[str | None]:
    return ARCHES.get(name, [None])


def _arch(arch: str | None) -> list[str]:
    return [f"--arch={arch}"] if arch else []


def nm_defined(path: Path, arch: str | None) -> set[tuple[str, str, int]]:
    """Every defined symbol as llvm-nm prints it: (name, type letter, address)."""
    found = set()
    for line in llvm("llvm-nm", "--defined-only", *_arch(arch), str(path)).splitlines():
        parts = line.split()
        if len(parts) == 3:
            found.add((parts[2], parts[1], int(parts[0], 16)))
    return found


def nm_undefined(path: Path, arch: str | None) -> set[str]:
    return set(llvm("llvm-nm", "--undefined-only", "-j", *_arch(arch), str(path)).split())


def trie(path: Path, arch: str | None) -> set[tuple[str, int]]:
    # LLVM 14 does not read LC_DYLD_EXPORTS_TRIE (ld64.lld's and Apple's current ld's).
    listing = llvm("llvm-objdump-16", "--macho", "--exports-trie", *_arch(arch), str(path))
    return {
        (parts[1], int(parts[0], 16))
        for parts in (line.split() for line in listing.splitlines())
        if len(parts) >= 2 and parts[0].startswith("0x")
    }


def indirect(path: Path, arch: str | None) -> list[tuple[str, str]]:
    """(address, name) of every indirect symbol entry, as llvm-objdump resolves them."""
    listing = llvm("llvm-objdump", "--macho", "--indirect-symbols", *_arch(arch), str(path))
    return [
        (parts[0], parts[-1])
        for parts in (line.split() for line in listing.splitlines())
        if parts and parts[0].startswith("0x")
    ]


def segments(path: Path) -> list[dict]:
    """Every segment and section of every slice, from macholib."""
    found = []
    for header in MachO(str(path)).headers:
        for command, body, sections in header.commands:
            if command.cmd == LC_SEGMENT_64:
                found.append(
                    {
                        "slice": header.header.cputype,
                        "name": body.segname.rstrip(b"\0"),
                        "vmaddr": body.vmaddr,
                        "vmsize": body.vmsize,
                        "fileoff": body.fileoff,
                        "filesize": body.filesize,
                        "sections": [
                            (s.sectname.rstrip(b"\0"), s.addr, s.size, s.offset) for s in sections
                        ],
                    }
                )
    return found


def tree(data: bytes) -> list[tuple[str, tuple[int, ...], bytes | None]]:
    """(kind, imports, payload) of each module of the blob at the start of `data`."""
    return [
        (m.kind, m.imports, None if m.payload is None else bytes(m.payload))
        for m in decode(data).blob.modules
    ]


def readobj_segments(path: Path) -> list[dict[str, str]]:
    """Every segment of every slice as `llvm-readobj --macho-segment` prints it."""
    found: list[dict[str, str]] = []
    for line in llvm("llvm-readobj", "--macho-segment", str(path)).splitlines():
        line = line.strip()
        if line.startswith("Segment {"):
            found.append({})
        elif found and ": " in line:
            key, value = line.split(": ", 1)
            found[-1][key] = value
    return found


def pack(source: Path, out: Path, *options: str) -> subprocess.CompletedProcess[str]:
    payload = out.parent / "payload.bin"
    payload.write_bytes(PAYLOAD)
    return ffitool("pack", str(source), "--add", f"cuda_ptx:{payload}", "-o", str(out), *options)


@pytest.fixture(scope="module")
def packed(tmp_path_factory) -> dict[str, Path]:
    """Every fixture packed once with the default options."""
    out = tmp_path_factory.mktemp("packed")
    results = {}
    for name in [*THIN, *MANY, UNIVERSAL]:
        result = pack(MACHO / name, out / name)
        assert result.returncode == 0, result.stderr
        assert result.stderr == ""
        results[name] = out / name
    return results


@pytest.mark.parametrize("name", [*THIN, *MANY, UNIVERSAL])
@pytest.mark.slow
def test_llvm_sees_everything_at_the_same_address_plus_the_blob(packed, name):
    for arch in arches_of(name):
        before, after = MACHO / name, packed[name]
        new = nm_defined(after, arch)
        blob = {s for s in new if s[0] == BLOB_NAME}
        assert len(blob) == 1, blob
        (_, letter, address) = blob.pop()
        assert letter == "S"  # external, in a section that is neither text nor data
        old = {s for s in nm_defined(before, arch) if s[0] != BLOB_NAME}
        assert old <= new and len(new - old) == 1
        assert nm_undefined(after, arch) == nm_undefined(before, arch)
        old_trie = {e for e in trie(before, arch) if e[0] != BLOB_NAME}
        assert trie(after, arch) == old_trie | {(BLOB_NAME, address)}
        assert indirect(after, arch) == indirect(before, arch)
        if "many" in name:
            assert len(old_trie) == 2000 + 6  # plain functions, data and the header symbols


@pytest.mark.parametrize("name", [*THIN, *MANY, UNIVERSAL])
def test_no_segment_or_section_moves(packed, name):
    before, after = segments(MACHO / name), segments(packed[name])
    kept = [s for s in after if s["name"] not in (b"__TVM_FFI", b"__LINKEDIT")]
    assert kept == [s for s in before if s["name"] != b"__LINKEDIT"]
    readobj_after = readobj_segments(packed[name])
    readobj_kept = [s for s in readobj_after if s["Name"] not in ("__TVM_FFI", "__LINKEDIT")]
    assert readobj_kept == [s for s in readobj_segments(MACHO / name) if s["Name"] != "__LINKEDIT"]
    assert next(s for s in readobj_after if s["Name"] == "__TVM_FFI")["maxprot"] == "r--"
    added = [s for s in after if s["name"] == b"__TVM_FFI"]
    assert len(added) == len(arches_of(name))
    for segment in added:
        (section,) = segment["sections"]
        assert section[0] == b"__tvm_ffi_blob"
        assert (section[1], section[3]) == (segment["vmaddr"], segment["fileoff"])


@pytest.mark.parametrize("name", [*THIN, *MANY, UNIVERSAL])
def test_macholib_reads_the_symbol_tables_consistently(packed, name):
    for header in MachO(str(packed[name])).headers:
        table = SymbolTable(MachO(str(packed[name])), header)
        ext = [name for _, name in table.extdefsyms]
        assert ext.count(BLOB_NAME.encode()) == 1
        counts = {c[0].cmd: c[1] for c in header.commands if c[0].cmd in (LC_SYMTAB, LC_DYSYMTAB)}
        symtab, dysymtab = counts[LC_SYMTAB], counts[LC_DYSYMTAB]
        assert dysymtab.iundefsym + dysymtab.nundefsym == symtab.nsyms
        assert dysymtab.iextdefsym + dysymtab.nextdefsym == dysymtab.iundefsym


@pytest.mark.parametrize("name", [*THIN, UNIVERSAL])
def test_bytes_at_the_blob_section_decode_to_the_planned_tree(packed, name):
    data = packed[name].read_bytes()
    machos = MachO(str(packed[name]))
    for header in machos.headers:
        sections = [s for c in header.commands if c[0].cmd == LC_SEGMENT_64 for s in c[2]]
        (blob,) = [s for s in sections if s.sectname.rstrip(b"\0") == b"__tvm_ffi_blob"]
        start = header.offset + blob.offset
        modules = tree(data[start : start + blob.size])
        assert [(kind, imports) for kind, imports, _ in modules] == [
            ("_lib", (1, 2, 3)),
            ("test_alpha", (2,)),
            ("test_beta", ()),
            ("cuda_ptx", ()),
        ]
        assert modules[-1][2] == PAYLOAD
        original = tree(ORIGINAL_BLOB)
        assert modules[1:3] == original[1:3]


def test_chained_fixups_gain_an_empty_entry_for_the_new_segment(packed):
    # LLVM 16's objdump decodes chained fixups (LLVM 14's cannot).
    def listing(path: Path, option: str) -> list[str]:
        return llvm("llvm-objdump-16", "--macho", option, str(path)).splitlines()[1:]

    before, after = MACHO / LLD, packed[LLD]
    assert listing(after, "--dyld-info") == listing(before, "--dyld-info")
    old, new = listing(before, "--chained-fixups"), listing(after, "--chained-fixups")
    assert "  seg_count = 4" in old and "  seg_count = 5" in new
    assert "    seg_offset[3] = 0 (__LINKEDIT)" in old
    assert "    seg_offset[3] = 0 (__TVM_FFI)" in new
    assert "    seg_offset[4] = 0 (__LINKEDIT)" in new
    assert "    seg_offset[1] = 24 (__DATA_CONST)" in old
    assert "    seg_offset[1] = 32 (__DATA_CONST)" in new


def test_packing_without_a_signature_removes_it(tmp_path):
    out = tmp_path / "out.dylib"
    assert pack(MACHO / "libffi_macho.arm64.dylib", out, "--signature", "remove").returncode == 0
    listing = llvm("llvm-objdump", "--macho", "--private-headers", str(out))
    assert "LC_CODE_SIGNATURE" not in listing
    assert "LC_CODE_SIGNATURE" in llvm(
        "llvm-objdump", "--macho", "--private-headers", str(MACHO / "libffi_macho.arm64.dylib")
    )


@pytest.mark.slow
def test_repacking_reuses_the_segment(tmp_path):
    once, twice = tmp_path / "once.dylib", tmp_path / "twice.dylib"
    assert pack(MACHO / "libmany.arm64.dylib", once).returncode == 0
    assert pack(once, twice).returncode == 0
    names = [s["name"] for s in segments(twice)]
    assert names.count(b"__TVM_FFI") == 1
    assert names[-2:] == [b"__TVM_FFI", b"__LINKEDIT"]
    assert twice.stat().st_size - once.stat().st_size < 2 * len(PAYLOAD) + 0x4000
    assert tree(_slice_blob(twice, 0)) == [
        ("_lib", (1, 2), None),
        ("cuda_ptx", (), PAYLOAD),
        ("cuda_ptx", (), PAYLOAD),
    ]


@pytest.mark.slow
def test_one_slice_of_a_universal_file(tmp_path):
    out = tmp_path / "out.dylib"
    assert pack(MACHO / UNIVERSAL, out, "--arch", "arm64").returncode == 0
    names = [(s["slice"], s["name"]) for s in segments(out)]
    assert names.count((0x0100000C, b"__TVM_FFI")) == 1
    assert names.count((0x01000007, b"__TVM_FFI")) == 0
    # The x86-64 slice is the original's, byte for byte, at the same offset.
    before = MachO(str(MACHO / UNIVERSAL)).headers[0]
    after = MachO(str(out)).headers[0]
    assert before.offset == after.offset
    assert (
        out.read_bytes()[after.offset : after.offset + before.size]
        == (MACHO / UNIVERSAL).read_bytes()[before.offset : before.offset + before.size]
    )


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--arch", "ppc"], "no ppc slice (it has x86_64, arm64)"),
        (["--signature", "keep"], "--signature must be one of adhoc, remove"),
    ],
)
def test_bad_options_are_usage_errors(tmp_path, options, message):
    result = pack(MACHO / UNIVERSAL, tmp_path / "out.dylib", *options)
    assert result.returncode == 2
    assert result.stderr == f"ffitool: error: {MACHO / UNIVERSAL}: {message}\n"
    assert not (tmp_path / "out.dylib").exists()


def _mutant(tmp_path: Path, name: str, edit) -> Path:
    data = bytearray((MACHO / name).read_bytes())
    edit(data)
    path = tmp_path / name
    path.write_bytes(bytes(data))
    return path


def _commands(data: bytes) -> list[tuple[int, int, int]]:
    """(offset, cmd, cmdsize) of each load command of a thin image."""
    ncmds = struct.unpack_from("<I", data, 16)[0]
    found, at = [], 32
    for _ in range(ncmds):
        cmd, size = struct.unpack_from("<II", data, at)
        found.append((at, cmd, size))
        at += size
    return found


def _first_section_offset(data: bytearray, value: int) -> None:
    """Make __text (the first section of __TEXT) start right after the load commands."""
    at = next(a for a, cmd, _ in _commands(data) if cmd == 0x19)
    struct.pack_into("<I", data, at + 72 + 48, value)


@pytest.mark.parametrize(
    ("name", "edit", "message"),
    [
        (
            "libffi_macho.x86_64.dylib",
            lambda d: _first_section_offset(d, 32 + struct.unpack_from("<I", d, 20)[0] + 8),
            "no room for 152 more bytes of load commands (8 free before the first section);"
            " relink it with -headerpad_max_install_names",
        ),
        (
            "libffi_macho.x86_64.dylib",
            lambda d: struct.pack_into(
                "<I", d, next(a for a, c, _ in _commands(d) if c == 0x26), 0x31
            ),
            "it has an LC_NOTE, whose data ffitool does not relocate",
        ),
        (
            LLD,
            lambda d: struct.pack_into(
                "<I", d, next(a for a, c, _ in _commands(d) if c == 0x80000034) + 12, 8
            ),
            "its chained fixups header is truncated",
        ),
        (
            "libffi_macho.x86_64.dylib",
            lambda d: d.extend(b"trailing"),
            "8 bytes follow __LINKEDIT, which ffitool would not carry",
        ),
    ],
)
def test_unpackable_inputs_are_one_line_errors_and_left_intact(tmp_path, name, edit, message):
    path = _mutant(tmp_path, name, edit)
    before = path.read_bytes()
    result = pack(path, path)  # in place
    assert result.returncode == 3
    assert result.stderr == f"ffitool: error: {path}: cannot pack this Mach-O file: {message}\n"
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([name, "payload.bin"])


# --- the verifier: each promise broken on purpose -------------------------------------------


def _write(tmp_path: Path, name: str | Path):
    """A packed copy written by the writer, with what verify_macho needs to judge it; `name`
    is a fixture's, or any path."""
    source = MACHO / name
    payload = tmp_path / "payload.bin"
    payload.write_bytes(PAYLOAD)
    plan = plan_edits(
        existing_modules(source), Edits(add=(("cuda_ptx", payload_source(str(payload))),))
    )
    out = tmp_path / f"staged-{source.name}"
    with open(source, "rb") as handle, open(out, "w+b") as staged:
        edit = plan_macho_edit(
            handle.fileno(), os.fstat(handle.fileno()).st_size, str(source), blob_size(plan)
        )
        write_macho_edit(
            str(source), staged.fileno(), edit, lambda fd, offset: write_blob(fd, offset, plan)
        )
    verify_output(MachoPacker((), False), out, source, plan, edit)  # the unbroken file passes
    return source, out, plan, edit


def _at(path: Path, offset: int, data: bytes) -> None:
    with open(path, "r+b") as handle:
        handle.seek(offset)
        handle.write(data)


def _segment(path: Path, name: bytes, slice_index: int = 0):
    header = MachO(str(path)).headers[slice_index]
    for command, body, sections in header.commands:
        if command.cmd == LC_SEGMENT_64 and body.segname.rstrip(b"\0") == name:
            return header, body, sections
    raise AssertionError(name)


def _flip(path: Path, offset: int) -> None:
    with open(path, "r+b") as handle:
        handle.seek(offset)
        byte = handle.read(1)
        handle.seek(offset)
        handle.write(bytes([byte[0] ^ 0x55]))


def _break_code(path: Path) -> None:
    header, _, sections = _segment(path, b"__TEXT")
    _flip(path, header.offset + sections[0].offset + 3)


def _break_payload(path: Path) -> None:
    header, body, _ = _segment(path, b"__TVM_FFI")
    _flip(path, header.offset + body.fileoff + body.filesize - 1)


def _break_dysymtab(path: Path) -> None:
    data = path.read_bytes()
    at = next(a for a, c, _ in _commands(data) if c == 0xB)
    iundef = struct.unpack_from("<I", data, at + 24)[0]
    _at(path, at + 24, struct.pack("<I", iundef - 1))


def _break_indirect(path: Path) -> None:
    data = path.read_bytes()
    at = next(a for a, c, _ in _commands(data) if c == 0xB)
    offset = struct.unpack_from("<I", data, at + 56)[0]
    value = struct.unpack_from("<I", data, offset)[0]
    _at(path, offset, struct.pack("<I", value - 1))


def _break_segment_address(path: Path) -> None:
    data = path.read_bytes()
    at = next(a for a, c, _ in _commands(data) if c == 0x19 and b"__DATA\0" in data[a + 8 : a + 24])
    _at(path, at + 24, struct.pack("<Q", struct.unpack_from("<Q", data, at + 24)[0] + 0x1000))


def _break_symbol_value(path: Path) -> None:
    data = path.read_bytes()
    at = next(a for a, c, _ in _commands(data) if c == 0x2)
    symoff = struct.unpack_from("<I", data, at + 8)[0]
    _at(path, symoff + 8, struct.pack("<Q", 0x1234))  # the first symbol's n_value


def _break_trie(path: Path) -> None:
    """Move one export's address by one in the packed trie (still a well-formed trie)."""
    from ffitool.formats.macho.trie import decode_trie

    data = path.read_bytes()
    at = next(a for a, c, _ in _commands(data) if c == 0x80000022)
    offset, size = struct.unpack_from("<II", data, at + 40)
    trie_bytes = data[offset : offset + size]
    terminal = decode_trie(trie_bytes)[b"_many_plain_first"]
    position = trie_bytes.find(bytes([len(terminal)]) + terminal)
    assert position > 0 and trie_bytes.count(bytes([len(terminal)]) + terminal) == 1
    _at(path, offset + position + 2, bytes([trie_bytes[position + 2] ^ 1]))


def _bind(path: Path) -> tuple[int, int, int]:
    """(command offset, bind opcodes' offset, their size) of LC_DYLD_INFO_ONLY."""
    data = path.read_bytes()
    at = next(a for a, c, _ in _commands(data) if c == 0x80000022)
    offset, size = struct.unpack_from("<II", data, at + 16)
    assert size  # libmany.x86_64.dylib binds dyld_stub_binder
    return at, offset, size


def _break_bind(path: Path) -> None:
    """A table the writer copies: its bytes must be the original's."""
    _, offset, size = _bind(path)
    _flip(path, offset + size - 2)


def _break_bind_size(path: Path) -> None:
    at, _, size = _bind(path)
    _at(path, at + 20, struct.pack("<I", size - 8))


def _command_at(path: Path, cmd: int, segment: bytes | None = None) -> int:
    """The file offset of the first load command `cmd` (of the segment named `segment`)."""
    data = path.read_bytes()
    return next(
        a
        for a, c, _ in _commands(data)
        if c == cmd and (segment is None or data[a + 8 : a + 24].rstrip(b"\0") == segment)
    )


def _field(path: Path, offset: int, fmt: str = "<I") -> int:
    return struct.unpack_from(fmt, path.read_bytes(), offset)[0]


def _break_symbol_offset(path: Path) -> None:
    """A symbol table past the end of the file: the reader, run first, refuses it."""
    _at(path, _command_at(path, 0x2) + 8, struct.pack("<I", 0x7FFFFF00))


def _break_file_size(path: Path) -> None:
    with open(path, "ab") as handle:
        handle.write(b"\0")


def _break_table_of_contents(path: Path) -> None:
    """A table of contents (ntoc 1), which the writer refuses to carry: so must its verifier."""
    _at(path, _command_at(path, 0xB) + 36, struct.pack("<I", 1))


def _break_header_flags(path: Path) -> None:
    _at(path, 24, struct.pack("<I", _field(path, 24) ^ 0x10))


def _break_segment_order(path: Path) -> None:
    """__LINKEDIT's command before __TVM_FFI's."""
    data = bytearray(path.read_bytes())
    ours, linkedit = _command_at(path, 0x19, b"__TVM_FFI"), _command_at(path, 0x19, b"__LINKEDIT")
    end = linkedit + _field(path, linkedit + 4)
    assert ours + _field(path, ours + 4) == linkedit
    data[ours:end] = data[linkedit:end] + data[ours:linkedit]
    path.write_bytes(bytes(data))


def _segment_field(offset: int, change):
    """A breaker applying `change` to the 64-bit (or, at 56, 32-bit) field of a segment."""

    def breaker(path: Path, segment: bytes = b"__TVM_FFI") -> None:
        at = _command_at(path, 0x19, segment) + offset
        fmt = "<i" if offset == 56 else "<Q"
        _at(path, at, struct.pack(fmt, change(_field(path, at, fmt))))

    return breaker


_break_protection = _segment_field(56, lambda value: 3)  # maxprot read-write
_break_blob_file_size = _segment_field(48, lambda value: value + 1)
_break_blob_vm_size = _segment_field(32, lambda value: 1 << 40)


def _break_linkedit_end(path: Path) -> None:
    _segment_field(48, lambda value: value - 8)(path, b"__LINKEDIT")


def _break_string_table(path: Path) -> None:
    _flip(path, _field(path, _command_at(path, 0x2) + 16) + 1)


def _break_symbol_count(path: Path) -> None:
    at = _command_at(path, 0x2) + 12
    _at(path, at, struct.pack("<I", _field(path, at) + 1))


def _break_external_range(path: Path) -> None:
    """The local symbol dyld_private counted as the first external definition."""
    at = _command_at(path, 0xB) + 8
    ilocal, nlocal, iextdef, nextdef = struct.unpack_from("<IIII", path.read_bytes(), at)
    _at(path, at, struct.pack("<IIII", ilocal, nlocal - 1, iextdef - 1, nextdef + 1))


def _break_indirect_count(path: Path) -> None:
    at = _command_at(path, 0xB) + 60
    _at(path, at, struct.pack("<I", _field(path, at) - 1))


@pytest.mark.parametrize(
    ("breaker", "message"),
    [
        (_break_bind, "^packed file failed verification: the bytes of its bind changed$"),
        (
            _break_bind_size,
            "^packed file failed verification: its bind changed size or disappeared$",
        ),
        (_break_trie, "the export trie is not the original's plus the blob's entry"),
        (_break_code, "the bytes of segment __TEXT changed"),
        (_break_payload, "payload bytes differ from the source"),
        (_break_dysymtab, "LC_DYSYMTAB's ranges do not cover the symbol table"),
        (_break_indirect, "its indirect symbols name other symbols than before"),
        (_break_segment_address, "load commands other than the writer's differ"),
        (_break_symbol_value, "symbols other than the blob's changed"),
        (
            _break_symbol_offset,
            "malformed Mach-O: symbol table .32144 bytes at offset 2147483392. extends past",
        ),
        (_break_file_size, "the file has 186535 bytes, planned 186534"),
        (
            _break_table_of_contents,
            "x86_64 slice: it has a table of contents, which only old static linkers wrote",
        ),
        (_break_header_flags, "the Mach-O header changed beyond its command count and size"),
        (_break_segment_order, "__TVM_FFI is not the segment right before a last __LINKEDIT"),
        (_break_protection, "__TVM_FFI is not one read-only section holding the blob"),
        (_break_blob_file_size, "x86_64: __TVM_FFI does not map the blob"),
        (_break_blob_vm_size, "x86_64: __LINKEDIT overlaps __TVM_FFI"),
        (_break_linkedit_end, "x86_64: __LINKEDIT does not end the slice"),
        (_break_string_table, "the string table is not the original's with names appended"),
        (_break_symbol_count, "x86_64: 2 symbols were added"),
        (
            _break_external_range,
            "x86_64: b'dyld_private' is in the external definitions but is not one",
        ),
        (_break_indirect_count, "the number of indirect symbols changed"),
    ],
)
def test_the_verifier_catches_each_broken_promise(tmp_path, breaker, message):
    source, out, plan, edit = _write(tmp_path, "libmany.x86_64.dylib")
    breaker(out)
    with pytest.raises(VerificationError, match=message):
        verify_output(MachoPacker((), False), out, source, plan, edit)


def _break_signature(path: Path) -> None:
    """Flip a byte of the first page hash of the new signature."""
    data = path.read_bytes()
    at = next(a for a, c, _ in _commands(data) if c == 0x1D)
    offset = struct.unpack_from("<I", data, at + 8)[0]
    directory = offset + struct.unpack_from(">I", data, offset + 16)[0]
    hashes = directory + struct.unpack_from(">I", data, directory + 16)[0]
    _flip(path, hashes)


def _break_chained_fixups(path: Path) -> None:
    """Give the new segment's chained-fixups starts entry a value."""
    data = path.read_bytes()
    at = next(a for a, c, _ in _commands(data) if c == 0x80000034)
    offset = struct.unpack_from("<I", data, at + 8)[0]
    starts = offset + struct.unpack_from("<I", data, offset + 4)[0]
    count = struct.unpack_from("<I", data, starts)[0]
    _at(path, starts + 4 + 4 * (count - 2), struct.pack("<I", 4))


def _break_chained_fixups_command(path: Path) -> None:
    """LC_DYLD_CHAINED_FIXUPS turned into a second (empty-named) LC_DATA_IN_CODE."""
    _at(path, _command_at(path, 0x80000034), struct.pack("<I", 0x29))


def _break_slice_count(path: Path) -> None:
    _at(path, 4, struct.pack(">I", 1))


@pytest.mark.parametrize(
    ("name", "breaker", "message"),
    [
        ("libmany.arm64.dylib", _break_signature, "the new code signature does not verify"),
        (LLD, _break_chained_fixups, "its chained fixups are not the original's with one empty"),
        (LLD, _break_chained_fixups_command, "its chained fixups disappeared"),
        (
            "libffi_macho.x86_64.dylib",  # it has the blob: the symbol is re-pointed, not added
            _break_symbol_value,
            "x86_64: symbols other than the blob's changed",
        ),
        (UNIVERSAL, _break_slice_count, "1 images, expected 2"),
    ],
)
def test_the_verifier_catches_broken_promises_of_other_fixtures(tmp_path, name, breaker, message):
    source, out, plan, edit = _write(tmp_path, name)
    breaker(out)
    with pytest.raises(VerificationError, match=message):
        verify_output(MachoPacker((), False), out, source, plan, edit)


def _unsigned_in_the_plan(edit) -> None:
    (start, size, at, length, placement), *rest = edit.slices
    edit.slices = [(start, size, at, length, replace(placement, signature="none")), *rest]


def _blob_export_elsewhere_in_the_plan(edit) -> None:
    (exports,) = edit.exports.values()
    exports[RAW_NAME] = regular_export(0x10)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (_unsigned_in_the_plan, "arm64: an LC_CODE_SIGNATURE remains though the slice is unsigned"),
        (_blob_export_elsewhere_in_the_plan, "arm64: the planned export of the blob does not"),
    ],
)
def test_the_verifier_holds_the_file_to_the_plan(tmp_path, change, message):
    """The verifier compares the file with what the planner decided, not only with the input:
    a file right for another plan (here, a signed slice the plan wanted unsigned, a blob export
    the plan put elsewhere) fails."""
    source, out, plan, edit = _write(tmp_path, "libmany.arm64.dylib")
    change(edit)
    with pytest.raises(VerificationError, match=message):
        verify_output(MachoPacker((), False), out, source, plan, edit)


def test_the_verifier_catches_a_changed_unpacked_slice(tmp_path):
    source = tmp_path / "u.dylib"
    shutil.copy(MACHO / UNIVERSAL, source)
    payload = tmp_path / "payload.bin"
    payload.write_bytes(PAYLOAD)
    plan = plan_edits(
        existing_modules(source, ("arm64",)),
        Edits(add=(("cuda_ptx", payload_source(str(payload))),)),
    )
    out = tmp_path / "out.dylib"
    with open(source, "rb") as handle, open(out, "w+b") as staged:
        edit = plan_macho_edit(
            handle.fileno(), source.stat().st_size, str(source), blob_size(plan), ("arm64",)
        )
        write_macho_edit(
            str(source), staged.fileno(), edit, lambda fd, offset: write_blob(fd, offset, plan)
        )
    verify_output(MachoPacker((), False), out, source, plan, edit)
    header = MachO(str(out)).headers[0]
    _flip(out, header.offset + 100)
    with pytest.raises(VerificationError, match="a slice that was not packed changed"):
        verify_output(MachoPacker((), False), out, source, plan, edit)


def test_python_api_packs_in_place_and_reports_each_slice(tmp_path):
    library = tmp_path / "lib.dylib"
    shutil.copy(MACHO / UNIVERSAL, library)
    payload = tmp_path / "payload.bin"
    payload.write_bytes(PAYLOAD)
    plan = plan_edits(
        existing_modules(library), Edits(add=(("cuda_ptx", payload_source(str(payload))),))
    )
    result = pack_library(library, plan, signature="remove")
    assert [(p.arch, p.signature) for p in result.placement] == [
        ("x86_64", "none"),
        ("arm64", "none"),
    ]
    assert result.warnings == ()
    data = library.read_bytes()
    for placement in result.placement:
        blob = data[placement.file_offset : placement.file_offset + placement.size]
        assert tree(blob)[-1] == ("cuda_ptx", (), PAYLOAD)


def _with_certificate_slot(data: bytearray) -> None:
    """Give the arm64 dylib's signature a CMS blob slot, as `codesign -s IDENTITY` leaves: the
    superblob grows at the end of __LINKEDIT, with the file."""
    commands = _commands(data)
    at = next(a for a, c, _ in commands if c == 0x1D)
    offset, _size = struct.unpack_from("<II", data, at + 8)
    magic, _, count = struct.unpack_from(">III", data, offset)
    assert (magic, count) == (0xFADE0CC0, 1)
    _slot, start = struct.unpack_from(">II", data, offset + 12)
    length = struct.unpack_from(">I", data, offset + start + 4)[0]
    directory = bytes(data[offset + start : offset + start + length])
    cms = struct.pack(">II", 0xFADE0B01, 8 + 64) + bytes(range(64))
    head = 12 + 2 * 8
    blob = (
        struct.pack(">III", 0xFADE0CC0, head + len(directory) + len(cms), 2)
        + struct.pack(">II", 0, head)
        + struct.pack(">II", 0x10000, head + len(directory))
        + directory
        + cms
    )
    blob += bytes(-len(blob) % 16)
    del data[offset:]
    data += blob
    struct.pack_into("<I", data, at + 12, len(blob))
    linkedit = next(
        a for a, c, _ in commands if c == 0x19 and data[a + 8 : a + 18] == b"__LINKEDIT"
    )
    fileoff = struct.unpack_from("<Q", data, linkedit + 40)[0]
    struct.pack_into("<Q", data, linkedit + 48, len(data) - fileoff)


@pytest.mark.slow
def test_a_certificate_signature_is_replaced_with_a_warning(tmp_path):
    from ffitool.library import inspect_path

    source = _mutant(tmp_path, "libffi_macho.arm64.dylib", _with_certificate_slot)
    assert [lib.signature for lib in inspect_path(source).libraries] == ["certificate"]
    out = tmp_path / "out.dylib"
    result = pack(source, out)
    assert result.returncode == 0, result.stderr
    assert result.stderr == (
        f"ffitool: warning: {source}: arm64: its certificate signature was replaced by an ad"
        " hoc signature; sign it again to distribute it\n"
    )
    assert [lib.signature for lib in inspect_path(out).libraries] == ["ad-hoc"]
    removed = tmp_path / "removed.dylib"
    result = pack(source, removed, "--signature", "remove")
    assert result.stderr == (
        f"ffitool: warning: {source}: arm64: its certificate signature was removed; sign it"
        " again to distribute it\n"
    )
    assert [lib.signature for lib in inspect_path(removed).libraries] == ["none"]


@pytest.mark.slow
def test_slices_with_different_blobs_are_packed_one_at_a_time(tmp_path):
    once = tmp_path / "once.dylib"
    assert (
        pack(MACHO / UNIVERSAL, once, "--arch", "x86_64", "--signature", "remove").returncode == 0
    )
    result = pack(once, tmp_path / "twice.dylib", "--signature", "remove")
    assert result.returncode == 3
    assert result.stderr == (
        f"ffitool: error: {once}: its slices carry different blobs; pack them one at a time"
        " with --arch\n"
    )
    arm = tmp_path / "arm.dylib"
    assert pack(once, arm, "--arch", "arm64", "--signature", "remove").returncode == 0
    trees = [tree(_slice_blob(arm, index)) for index in range(2)]
    assert trees[0] == trees[1]  # each slice: the original blob plus one added payload


def _slice_blob(path: Path, index: int) -> bytes:
    header = MachO(str(path)).headers[index]
    (blob,) = [
        s
        for c in header.commands
        if c[0].cmd == LC_SEGMENT_64
        for s in c[2]
        if s.sectname.rstrip(b"\0") == b"__tvm_ffi_blob"
    ]
    start = header.offset + blob.offset
    return path.read_bytes()[start : start + blob.size]


@pytest.mark.parametrize(
    "name", ["libffi_macho.arm64.dylib", LLD, "libmany.arm64.dylib", UNIVERSAL]
)
def test_every_page_hash_of_a_resigned_slice_recomputed_independently(packed, name):
    from test_macho_sign import check_independently, existing_signature

    from ffitool.formats.macho.codesign import blobs, primary_code_directory

    original, data = (MACHO / name).read_bytes(), packed[name].read_bytes()
    after_headers = MachO(str(packed[name])).headers
    for index, header in enumerate(MachO(str(MACHO / name)).headers):
        if header.header.cputype != 0x0100000C:
            continue  # an unsigned x86-64 slice stays unsigned
        old = original[header.offset : header.offset + header.size]
        new_header = after_headers[index]
        new = data[new_header.offset : new_header.offset + new_header.size]
        before = existing_signature(old)
        directory = primary_code_directory(before, blobs(before))
        after = existing_signature(new)
        # The linker's identifier, flags (linker-signed) and page size are kept.
        check_independently(
            new, after, directory.identifier, directory.flags, 1 << directory.page_shift
        )
        assert directory.flags == 0x20002


@pytest.mark.parametrize("options", [["--arch", "arm64"], ["--signature", "remove"]])
@pytest.mark.parametrize("host", ["pe/ffi_pe.x86_64.dll", "libpack_host_gnu.so"])
def test_mach_o_options_on_other_formats_are_usage_errors(tmp_path, host, options):
    result = pack(FIXTURES / host, tmp_path / "out", *options)
    assert result.returncode == 2
    assert result.stderr == (
        f"ffitool: error: {FIXTURES / host}: --arch and --signature apply to Mach-O files only\n"
    )


@pytest.mark.slow
def test_packing_is_deterministic(tmp_path):
    # Same input, same payload: the same bytes, signatures included.
    first, second = tmp_path / "first.dylib", tmp_path / "second.dylib"
    assert pack(MACHO / UNIVERSAL, first).returncode == 0
    assert pack(MACHO / UNIVERSAL, second).returncode == 0
    assert first.read_bytes() == second.read_bytes()
