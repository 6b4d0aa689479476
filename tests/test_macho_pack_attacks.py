"""Hostile Mach-O inputs to `pack`: each one once made the writer crash, or write a file that dyld
would misread while the verifier passed it.

A refused input must end in exit 3 with one line `ffitool: error: PATH: ...`, the input
byte-identical and nothing left next to it. Inputs that the inspecting reader already refuses
are driven through `plan_macho_edit` directly, which must refuse them on its own.
"""

from __future__ import annotations

import os
import struct
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import FIXTURES, ffitool

from ffitool.errors import InputError
from ffitool.pack.macho_trie import decode_trie, encode_trie
from ffitool.pack.macho_writer import plan_macho_edit

MACHO = FIXTURES / "macho"
X86 = "libffi_macho.x86_64.dylib"
LLD = "libffi_macho.lld.arm64.dylib"
PAYLOAD = bytes(range(256)) * 37 + b"tail"

Commands = list[bytes]


def _commands(data: bytes) -> Commands:
    """The raw load commands of a thin image."""
    ncmds = struct.unpack_from("<I", data, 16)[0]
    found, at = [], 32
    for _ in range(ncmds):
        size = struct.unpack_from("<I", data, at + 4)[0]
        found.append(data[at : at + size])
        at += size
    return found


def _with_commands(data: bytes, edit: Callable[[Commands], None]) -> bytes:
    """`data` with its load commands edited in place (they may shrink or grow into the pad)."""
    commands = _commands(data)
    edit(commands)
    body = b"".join(commands)
    old = struct.unpack_from("<I", data, 20)[0]
    out = bytearray(data)
    out[32 : 32 + max(old, len(body))] = body.ljust(old, b"\0")
    struct.pack_into("<II", out, 16, len(commands), len(body))
    return bytes(out)


def _index(commands: Commands, cmd: int, segment: bytes | None = None) -> int:
    return next(
        n
        for n, c in enumerate(commands)
        if struct.unpack_from("<I", c)[0] == cmd
        and (segment is None or c[8:24].rstrip(b"\0") == segment)
    )


def _set(commands: Commands, index: int, offset: int, fmt: str, *values: int) -> None:
    command = bytearray(commands[index])
    struct.pack_into(fmt, command, offset, *values)
    commands[index] = bytes(command)


def _pack_in_place(tmp_path: Path, data: bytes, *options: str):
    path = tmp_path / "lib.dylib"
    path.write_bytes(data)
    payload = tmp_path / "payload.bin"
    payload.write_bytes(PAYLOAD)
    add = ["--add", f"cuda_ptx:{payload}"] if "--manifest" not in options else []
    result = ffitool("pack", str(path), *add, "--signature", "remove", *options)
    return path, result


def _refused(tmp_path: Path, data: bytes, message: str, *options: str) -> None:
    path, result = _pack_in_place(tmp_path, data, *options)
    assert result.returncode == 3, result.stderr
    assert result.stderr == f"ffitool: error: {path}: cannot pack this Mach-O file: {message}\n"
    assert path.read_bytes() == data
    assert sorted(p.name for p in tmp_path.iterdir() if p.suffix != ".json") == [
        "lib.dylib",
        "payload.bin",
    ]


def _plan_refuses(tmp_path: Path, data: bytes, message: str, blob_size: int = 4096) -> None:
    path = tmp_path / "lib.dylib"
    path.write_bytes(data)
    fd = os.open(path, os.O_RDONLY)
    try:
        with pytest.raises(InputError) as caught:
            plan_macho_edit(fd, len(data), str(path), blob_size, remove_signature=True)
    finally:
        os.close(fd)
    assert str(caught.value) == f"{path}: cannot pack this Mach-O file: {message}"


# --- load commands shorter than the fields the writer reads ----------------------------------


def test_a_short_two_level_hints_command_is_refused(tmp_path):
    def add_hints(commands: Commands) -> None:  # the reader does not look at LC_TWOLEVEL_HINTS
        commands.insert(5, struct.pack("<II", 0x16, 8))

    data = _with_commands((MACHO / X86).read_bytes(), add_hints)
    _refused(tmp_path, data, "load command 5 is too short")


@pytest.mark.parametrize("size", [8, 16])
def test_a_short_symtab_command_is_refused_by_the_writer_too(tmp_path, size):
    def shorten(commands: Commands) -> None:
        index = _index(commands, 0x2)
        commands[index] = struct.pack("<II", 0x2, size) + commands[index][8:size]

    data = _with_commands((MACHO / X86).read_bytes(), shorten)
    _plan_refuses(tmp_path, data, "load command 7 is too short")


# --- __LINKEDIT tables the writer did not know --------------------------------------------------


def test_function_variants_tables_move_with_linkedit(tmp_path):
    """LC_FUNCTION_VARIANTS (0x37) points into __LINKEDIT like LC_FUNCTION_STARTS: left alone, it
    would name bytes of the blob once __LINKEDIT moves, and the verifier, which compares the
    commands it does not own byte for byte, would pass it."""
    original = (MACHO / LLD).read_bytes()
    commands = _commands(original)
    starts = _index(commands, 0x26)
    offset, size = struct.unpack_from("<II", commands[starts], 8)
    table = original[offset : offset + size]
    assert len(table) == 8

    data = _with_commands(original, lambda c: _set(c, starts, 0, "<I", 0x37))
    path, result = _pack_in_place(tmp_path, data)
    assert result.returncode == 0, result.stderr
    packed = path.read_bytes()
    variants = _commands(packed)[_index(_commands(packed), 0x37)]
    new_offset, new_size = struct.unpack_from("<II", variants, 8)
    assert new_size == size
    assert new_offset >= offset + 0x4000  # __LINKEDIT moved one 16 KiB page for the blob
    assert packed[new_offset : new_offset + new_size] == table


# --- the symbol table ---------------------------------------------------------------------------


def _x86_with(offset: int, fmt: str, value: int, command: int | None = None) -> bytes:
    """The x86-64 fixture with `value` at `offset` of its LC_DYSYMTAB (`command` 0xB) or, with
    no command, at `offset` of the file."""
    data = (MACHO / X86).read_bytes()
    if command is None:
        out = bytearray(data)
        struct.pack_into(fmt, out, offset, value)
        return bytes(out)
    return _with_commands(data, lambda c: _set(c, _index(c, command), offset, fmt, value))


def _symbol_type_at(index: int) -> int:
    """The file offset of symbol `index`'s n_type in the x86-64 fixture."""
    commands = _commands((MACHO / X86).read_bytes())
    symoff = struct.unpack_from("<I", commands[_index(commands, 0x2)], 8)[0]
    return symoff + 16 * index + 4


@pytest.mark.parametrize(
    ("data", "message"),
    [
        # ___tvm_ffi__library_ctx (symbol 3, an external definition) made local
        (
            lambda: _x86_with(_symbol_type_at(3), "<B", 0x0E),
            "LC_DYSYMTAB's external definitions hold a symbol that is not one",
        ),
        # ...or undefined
        (
            lambda: _x86_with(_symbol_type_at(3), "<B", 0x01),
            "LC_DYSYMTAB's external definitions hold a symbol that is not one",
        ),
        # nlocalsym 1 of 2: a symbol in no range
        (
            lambda: _x86_with(12, "<I", 1, 0xB),
            "LC_DYSYMTAB's symbol ranges do not fit the symbol table",
        ),
        # nundefsym 1 of 2: the last symbol in no range
        (
            lambda: _x86_with(28, "<I", 1, 0xB),
            "LC_DYSYMTAB's symbol ranges do not fit the symbol table",
        ),
    ],
)
def test_symbol_ranges_the_verifier_would_refuse_are_refused_when_planning(tmp_path, data, message):
    """Before, the planner accepted these and the verifier refused its own output
    ("packed file failed verification")."""
    _refused(tmp_path, data(), message)


@pytest.mark.parametrize("offset_at", [56, 64], ids=["indirect symbols", "external relocations"])
def test_an_empty_table_at_any_offset_packs(tmp_path, offset_at):
    """An empty table's offset names nothing, so an input may leave any value there; the
    verifier read zero bytes at it, past the end of the file, and refused the output."""
    original = (MACHO / X86).read_bytes()
    data = _with_commands(
        original, lambda c: _set(c, _index(c, 0xB), offset_at, "<II", 0xC40000, 0)
    )
    path, result = _pack_in_place(tmp_path, data)
    assert (result.returncode, result.stderr) == (0, "")
    dysymtab = _commands(path.read_bytes())[_index(_commands(path.read_bytes()), 0xB)]
    assert struct.unpack_from("<II", dysymtab, offset_at) == (0xC40000, 0)


# --- the export trie ----------------------------------------------------------------------------


def _with_trie(data: bytes, trie: bytes) -> bytes:
    """The x86-64 fixture with `trie` over its export trie (LC_DYLD_INFO_ONLY), zero-padded."""
    commands = _commands(data)
    offset, size = struct.unpack_from("<II", commands[_index(commands, 0x80000022)], 40)
    assert len(trie) <= size
    return data[:offset] + trie.ljust(size, b"\0") + data[offset + size :]


def test_a_trie_whose_root_exports_an_empty_name_is_refused(tmp_path):
    # root: terminal (flags 0, address 0x10), one edge "_a" to a leaf at 8 (terminal at 0x20)
    trie = b"\x02\x00\x10\x01_a\0\x08\x02\x00\x20\x00"
    data = _with_trie((MACHO / X86).read_bytes(), trie)
    _refused(tmp_path, data, "its export trie root exports an empty name")


def _encoding_time(entries: dict[bytes, bytes]) -> float:
    """CPU seconds, which another process on the machine does not stretch."""
    start = time.process_time()
    encode_trie(entries)
    return time.process_time() - start


def test_a_deep_chain_trie_encodes_in_time_linear_in_its_size():
    """A chain of 2,000 one-letter edges, every node terminal (18 KB, within the decoder's
    expansion budget) spells 2 million name bytes. Inserting each name from the root made
    encoding quadratic: 3.4 s here, 30 times a flat trie of as many names; a 1 MB trie of such
    chains would have taken minutes."""
    nodes = bytearray(b"\0\x01_\0\x87\x80\x00")  # root: edge "_" to the chain at 7
    for index in range(2000):
        child = 7 + (index + 1) * 9
        wide = bytes([child & 0x7F | 0x80, child >> 7 & 0x7F | 0x80, child >> 14])
        nodes += b"\x02\x00\x01\x01a\0" + wide
    chain = decode_trie(bytes(nodes + b"\0\0"))
    assert len(chain) == 2000 and sum(map(len, chain)) == 2000 * 2001 // 2
    flat = {b"_%06d" % index: b"\x00\x01" for index in range(2000)}
    _encoding_time(flat)  # warm up
    assert _encoding_time(chain) < 5 * _encoding_time(flat)


# --- limits of the fields the writer fills in ---------------------------------------------------


def _junk_segment(sections: int) -> bytes:
    """An empty segment command with `sections` empty sections."""
    command = struct.pack(
        "<II16sQQQQiiII", 0x19, 72 + 80 * sections, b"__JUNK", 0, 0, 0, 0, 1, 1, sections, 0
    )
    section = struct.pack("<16s16sQQIIIIIIII", b"__s", b"__JUNK", 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)
    return command + section * sections


def test_an_image_with_255_sections_is_refused(tmp_path):
    """A symbol's n_sect is one byte: the blob's section cannot be number 256. (The added
    load commands cover __TEXT's bytes, which planning does not read.)"""
    original = (MACHO / LLD).read_bytes()
    have = sum(
        struct.unpack_from("<I", c, 64)[0] for c in _commands(original) if c[:4] == b"\x19\0\0\0"
    )
    data = _with_commands(original, lambda c: c.insert(3, _junk_segment(255 - have)))
    _plan_refuses(tmp_path, data, "it has 255 sections; a symbol cannot name a new one past 255")


def test_a_linkedit_at_the_top_of_the_address_space_is_refused(tmp_path):
    def move(commands: Commands) -> None:
        _set(commands, _index(commands, 0x19, b"__LINKEDIT"), 24, "<Q", 2**64 - 0x1000)

    data = _with_commands((MACHO / X86).read_bytes(), move)
    _refused(tmp_path, data, "the moved __LINKEDIT would end past the 64-bit address space")


def test_a_blob_that_pushes_linkedit_past_4_gib_is_refused(tmp_path):
    """Symbol, string and every other __LINKEDIT table offset is 32 bits."""
    _plan_refuses(
        tmp_path,
        (MACHO / X86).read_bytes(),
        "the packed image would pass 4 GiB, which 32-bit table offsets cannot reach",
        blob_size=1 << 32,
    )


def test_a_universal_magic_alone_is_refused(tmp_path):
    _plan_refuses(tmp_path, b"\xca\xfe\xba\xbe", "too short for a universal header")


# --- a __TVM_FFI segment the input brings along -------------------------------------------------


def _planted(commands: Commands, fields: tuple[int, int, int, int], nsects: int) -> None:
    """A __TVM_FFI segment (vmaddr, vmsize, fileoff, filesize) right before __LINKEDIT, where
    a repack reuses ffitool's own."""
    command = struct.pack(
        "<II16sQQQQiiII", 0x19, 72 + 80 * nsects, b"__TVM_FFI", *fields, 1, 1, nsects, 0
    )
    section = struct.pack("<16s16sQQIIIIIIII", b"__tvm_ffi_blob", b"__TVM_FFI", *[0] * 10)
    commands.insert(_index(commands, 0x19, b"__LINKEDIT"), command + section * nsects)


@pytest.mark.parametrize(
    ("fields", "nsects"),
    [
        ((0x3000, 0x1000, 0x3000, 0x10), 1),  # over __DATA: the blob would overwrite it
        ((0, 0x1000, 0, 0x10), 1),  # over the Mach-O header
        ((0x4000, 0, 0x4000, 0), 0),  # no section: the blob's symbol would name __DATA's last
    ],
)
def test_a_planted_tvm_ffi_segment_is_not_reused(tmp_path, fields, nsects):
    """The planner refuses them: before, the writer reused the segment, and only the verifier
    caught the damage (\"packed file failed verification\")."""
    data = _with_commands((MACHO / X86).read_bytes(), lambda c: _planted(c, fields, nsects))
    _refused(tmp_path, data, "its __TVM_FFI segment is not one that ffitool wrote")


# --- chained fixups -----------------------------------------------------------------------------


def _with_fixups_field(field: str, value: int) -> bytes:
    """The ld64.lld fixture with one uint32 of its chained fixups set to `value`: a header field,
    or `seg_count` or the third `seg_info_offset` of its starts."""
    data = bytearray((MACHO / LLD).read_bytes())
    commands = _commands(bytes(data))
    fixups = struct.unpack_from("<I", commands[_index(commands, 0x80000034)], 8)[0]
    starts = fixups + struct.unpack_from("<I", data, fixups + 4)[0]
    at = {
        "starts_offset": fixups + 4,
        "imports_offset": fixups + 8,
        "symbols_offset": fixups + 12,
        "seg_count": starts,
        "seg_info_offset": starts + 4 + 2 * 4,
    }[field]
    struct.pack_into("<I", data, at, value)
    return bytes(data)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        # dyld refuses a seg_count other than the number of segments; the entry for the new
        # segment went in at the wrong place, among entries that named no segment.
        ("seg_count", 10, "its chained fixups list 10 segments, not 4"),
        ("seg_count", 2, "its chained fixups list 2 segments, not 4"),
        # starts_offset inside the fixups header: the header was written over the starts.
        ("starts_offset", 8, "its chained fixups starts lie outside the fixups"),
        ("starts_offset", 0xFFFFFFF0, "its chained fixups starts lie outside the fixups"),
        # offsets past the fixups: moving them by 8 overflowed 32 bits (a struct.error)
        ("imports_offset", 0xFFFFFFFF, "its chained fixups point past their end"),
        ("symbols_offset", 0xFFFFFFFC, "its chained fixups point past their end"),
        ("seg_info_offset", 0xFFFFFFFF, "its chained fixups point past their end"),
    ],
)
def test_chained_fixups_that_lie_are_refused(tmp_path, field, value, message):
    _refused(tmp_path, _with_fixups_field(field, value), message)


# --- universal headers --------------------------------------------------------------------------


@pytest.mark.parametrize("count", [2, 64])
def test_a_universal_file_listing_one_slice_twice_is_refused(tmp_path, count):
    """Every entry naming the same x86-64 image: each copy got the blob, so a 21 KB file
    turned a 100 MB payload into a 6.4 GB output."""
    entry = struct.pack(">iiIII", 0x01000007, 3, 4096, (MACHO / X86).stat().st_size, 12)
    table = struct.pack(">II", 0xCAFEBABE, count) + entry * count
    data = table.ljust(4096, b"\0") + (MACHO / X86).read_bytes()
    _refused(tmp_path, data, "its universal header lists the x86_64 slice twice")


def test_a_segment_name_with_bytes_after_its_nul_is_cut_there_by_the_signer_too(tmp_path):
    # dyld, the writer and the signature checks all read a segment name up to its first NUL.
    source = (FIXTURES / "macho" / "libffi_macho.arm64.dylib").read_bytes()

    def junk_after_nul(commands: Commands) -> None:
        index = _index(commands, 0x19, b"__LINKEDIT")
        command = bytearray(commands[index])
        command[8:24] = b"__LINKEDIT\0\0\0$\0\0"
        commands[index] = bytes(command)

    path = tmp_path / "lib.dylib"
    path.write_bytes(_with_commands(source, junk_after_nul))
    payload = tmp_path / "payload.bin"
    payload.write_bytes(PAYLOAD)
    result = ffitool("pack", str(path), "--add", f"cuda_ptx:{payload}", "--quiet")
    assert (result.returncode, result.stderr) == (0, "")
