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
from test_macho_pack import _write

from ffitool.edit.verification import VerificationError
from ffitool.errors import InputError
from ffitool.formats.macho.packer import MachoPacker
from ffitool.formats.macho.trie import decode_trie, encode_trie
from ffitool.formats.macho.writer import plan_macho_edit
from ffitool.pack import verify_output

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


def _plan_refuses(
    tmp_path: Path,
    data: bytes,
    message: str,
    blob_size: int = 4096,
    *,
    arches: tuple[str, ...] = (),
    remove_signature: bool = True,
    size: int | None = None,
) -> None:
    """`plan_macho_edit` refuses `data` with `message`; `size` is the size the caller states
    (more than the file has: it shrank since)."""
    path = tmp_path / "lib.dylib"
    path.write_bytes(data)
    fd = os.open(path, os.O_RDONLY)
    try:
        with pytest.raises(InputError) as caught:
            stated = len(data) if size is None else size
            plan_macho_edit(fd, stated, str(path), blob_size, arches, remove_signature)
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
    """CPU seconds of this process to encode `entries`: what another process on a busy machine
    takes from it is not counted, as wall-clock time would count it."""
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


# --- every other refusal of the planner ---------------------------------------------------------

X86_DATA = (MACHO / X86).read_bytes()
ARM64_DATA = (MACHO / "libmany.arm64.dylib").read_bytes()
"""Signed (ad hoc, by the linker)."""
UNIVERSAL_DATA = (MACHO / "libffi_macho.universal.dylib").read_bytes()


def _patched(data: bytes, offset: int, fmt: str, value: int) -> bytes:
    out = bytearray(data)
    struct.pack_into(fmt, out, offset, value)
    return bytes(out)


def _edited(data: bytes, edit: Callable[[Commands], None]) -> Callable[[], bytes]:
    return lambda: _with_commands(data, edit)


def _shortened(cmd: int, size: int, segment: bytes | None = None):
    """A command edit cutting command `cmd` to `size` bytes (its cmdsize says so)."""

    def edit(commands: Commands) -> None:
        index = _index(commands, cmd, segment)
        commands[index] = struct.pack("<II", cmd, size) + commands[index][8:size]

    return edit


def _signature_offset(data: bytes) -> tuple[int, int]:
    commands = _commands(data)
    offset, size = struct.unpack_from("<II", commands[_index(commands, 0x1D)], 8)
    return offset, size


def _certificate_alone() -> bytes:
    """The arm64 fixture whose signature is a CMS wrapper with content and no code directory:
    a certificate, by what it holds, that leaves nothing to renew an ad hoc signature from."""
    offset, size = _signature_offset(ARM64_DATA)
    wrapper = struct.pack(">II", 0xFADE0B01, 16) + b"cms-data"
    blob = struct.pack(">III", 0xFADE0CC0, 20 + len(wrapper), 1) + struct.pack(">II", 0x10000, 20)
    out = bytearray(ARM64_DATA)
    out[offset : offset + size] = (blob + wrapper).ljust(size, b"\0")
    return bytes(out)


def _signature_short_of_linkedit() -> bytes:
    """16 bytes after the signature, inside __LINKEDIT (which grows to keep them)."""

    def grow(commands: Commands) -> None:
        index = _index(commands, 0x19, b"__LINKEDIT")
        filesize = struct.unpack_from("<Q", commands[index], 48)[0]
        _set(commands, index, 48, "<Q", filesize + 16)

    return _with_commands(ARM64_DATA, grow) + bytes(16)


def _uni(offset: int, value: int) -> Callable[[], bytes]:
    return lambda: _patched(UNIVERSAL_DATA, offset, ">I", value)


def _slices_swapped() -> bytes:
    first, second = (
        struct.unpack_from(">I", UNIVERSAL_DATA, 8),
        struct.unpack_from(">I", UNIVERSAL_DATA, 28),
    )
    return _patched(_patched(UNIVERSAL_DATA, 8, ">I", *second), 28, ">I", *first)


def _segment_moved(segment: bytes, offset: int, change: Callable[[int], int]):
    def edit(commands: Commands) -> None:
        index = _index(commands, 0x19, segment)
        _set(
            commands,
            index,
            offset,
            "<Q",
            change(struct.unpack_from("<Q", commands[index], offset)[0]),
        )

    return edit


def _linkedit_first(commands: Commands) -> None:
    commands.insert(
        _index(commands, 0x19, b"__DATA"), commands.pop(_index(commands, 0x19, b"__LINKEDIT"))
    )


def _strings_over_symbols(commands: Commands) -> None:
    index = _index(commands, 0x2)
    stroff = struct.unpack_from("<I", commands[index], 16)[0]
    _set(commands, index, 16, "<I", stroff - 8)


@pytest.mark.parametrize(
    ("data", "message", "options"),
    [
        (
            lambda: _x86_with(36, "<I", 1, 0xB),
            "it has a table of contents, which only old static linkers wrote",
            {},
        ),
        (
            lambda: _x86_with(44, "<I", 1, 0xB),
            "it has a module table, which only old static linkers wrote",
            {},
        ),
        (_edited(X86_DATA, _shortened(0x80000022, 40)), "LC_DYLD_INFO is too short", {}),
        (_edited(X86_DATA, _shortened(0x26, 8)), "load command 5 is too short", {}),
        (lambda: X86_DATA, "it is a thin x86_64 file; --arch names arm64", {"arches": ("arm64",)}),
        (_uni(4, 0), "universal header claims 0 architectures (at most 64)", {}),
        (_uni(4, 65), "universal header claims 65 architectures (at most 64)", {}),
        (lambda: UNIVERSAL_DATA[:8], "the universal header claims 2 architectures", {}),
        (lambda: UNIVERSAL_DATA, "no ppc slice (it has x86_64, arm64)", {"arches": ("ppc",)}),
        (_uni(20, len(UNIVERSAL_DATA)), "the x86_64 slice lies outside the file", {}),
        (_slices_swapped, "the arm64 slice holds an image of cputype 0x1000007", {}),
        (
            lambda: UNIVERSAL_DATA,
            "the packed slices would pass 4 GiB, which a 32-bit universal header cannot address",
            {"blob_size": 0xF0000000},
        ),
        (
            lambda: _patched(X86_DATA, 12, "<I", 2),
            "only dylibs and bundles can be packed (file type 2)",
            {},
        ),
        (lambda: _patched(X86_DATA, 4, "<I", 0x12), "unsupported CPU type 0x12", {}),
        (
            _edited(X86_DATA, lambda c: _set(c, _index(c, 0x80000022), 40, "<II", 0, 0)),
            "it has no export trie to add the blob's name to",
            {},
        ),
        (_edited(X86_DATA, _linkedit_first), "__LINKEDIT is not its last segment", {}),
        (
            _edited(X86_DATA, _segment_moved(b"__DATA", 24, lambda _: 0x7000000)),
            "segment __DATA lies past __LINKEDIT",
            {},
        ),
        (
            _edited(X86_DATA, _segment_moved(b"__LINKEDIT", 24, lambda value: value + 8)),
            "__LINKEDIT is not page-aligned",
            {},
        ),
        (
            _edited(X86_DATA, lambda c: _set(c, _index(c, 0x19, b"__TEXT"), 8, "<16s", b"__TEXX")),
            "no __TEXT segment maps the Mach-O header",
            {},
        ),
        (
            lambda: _patched(ARM64_DATA, _signature_offset(ARM64_DATA)[0], ">I", 0x12345678),
            "its code signature is malformed: bad super blob magic 0x12345678",
            {"remove_signature": False},
        ),
        (
            _certificate_alone,
            "its code signature cannot be renewed: it has no code directory",
            {"remove_signature": False},
        ),
        (
            _edited(X86_DATA, _strings_over_symbols),
            "string table: overlaps another table or lies outside __LINKEDIT",
            {},
        ),
        (
            _signature_short_of_linkedit,
            "its code signature is not the last thing in __LINKEDIT",
            {"remove_signature": False},
        ),
        # the image itself (MachoSlice, through the parser it shares with the reader)
        (lambda: b"\xcf\xfa\xed\xfe" + bytes(20), "too short for a Mach-O header", {}),
        (
            lambda: _patched(X86_DATA, 0, "<I", 0xFEEDFACE),
            "the file is a 32-bit Mach-O image, which is not supported",
            {},
        ),
        (
            lambda: _patched(X86_DATA, 20, "<I", len(X86_DATA)),
            f"load commands claim {len(X86_DATA)} bytes, the image has {len(X86_DATA)}",
            {},
        ),
        (
            lambda: _patched(X86_DATA, 16, "<I", 16),
            "load command 15 starts past the end of the load commands",
            {},
        ),
        (
            lambda: _patched(X86_DATA, 16, "<I", 200),
            "200 load commands cannot fit in 1576 bytes",
            {},
        ),
        (lambda: _patched(X86_DATA, 36, "<I", 4), "load command 0 has a bad size 4", {}),
        (
            lambda: X86_DATA[:100],
            "the file shrank while it was being read",
            {"size": len(X86_DATA)},
        ),
        (
            lambda: X86_DATA[:-100],
            "the file shrank while it was being read",
            {"size": len(X86_DATA)},
        ),
        (
            _edited(X86_DATA, lambda c: _set(c, _index(c, 0x2), 8, "<I", 0x7FFFFF00)),
            "symbol table (192 bytes at 2147483392) extends past the end of the image",
            {},
        ),
        (
            _edited(X86_DATA, _shortened(0x19, 40, b"__DATA")),
            "segment command 2 is too short (40 bytes)",
            {},
        ),
        (
            _edited(X86_DATA, lambda c: _set(c, _index(c, 0x19, b"__DATA"), 64, "<I", 50)),
            "segment command 2 claims 50 sections it does not hold",
            {},
        ),
        (
            _edited(X86_DATA, lambda c: c.insert(3, c[_index(c, 0x2)])),
            "more than one load command 0x2",
            {},
        ),
        (
            _edited(X86_DATA, lambda c: _set(c, _index(c, 0x80000022), 44, "<I", 3)),
            "export trie edge at 2 is not terminated",
            {},
        ),
        (_edited(X86_DATA, lambda c: c.pop(_index(c, 0x2))), "no symbol table (LC_SYMTAB)", {}),
        (
            _edited(X86_DATA, lambda c: c.pop(_index(c, 0xB))),
            "no dynamic symbol table command (LC_DYSYMTAB)",
            {},
        ),
    ],
)
def test_every_refusal_of_the_planner(tmp_path, data, message, options):
    """Each input breaks one thing the planner checks (most are refused by the inspecting
    reader first on the command line: the planner must not rely on it)."""
    _plan_refuses(tmp_path, data(), message, **options)


# --- external relocations (old-style x86-64 images; no fixture has one) -------------------------

MANY_X86 = MACHO / "libmany.x86_64.dylib"
"""Symbols: 1 local, 2,006 external definitions, then 1 undefined (number 2007)."""


def _with_external_relocation(info: int, address: int = 0x2000) -> bytes:
    """libmany.x86_64.dylib with one external relocation (`address`, `info`) appended to
    __LINKEDIT, which grows by its 8 bytes (its vmsize has room)."""
    data = MANY_X86.read_bytes()

    def add(commands: Commands) -> None:
        linkedit = _index(commands, 0x19, b"__LINKEDIT")
        filesize = struct.unpack_from("<Q", commands[linkedit], 48)[0]
        _set(commands, linkedit, 48, "<Q", filesize + 8)
        _set(commands, _index(commands, 0xB), 64, "<II", len(data), 1)

    return _with_commands(data, add) + struct.pack("<iI", address, info)


_EXTERN = 1 << 27 | 3 << 25  # r_extern, r_length 3 (8 bytes), r_type 0 (X86_64_RELOC_UNSIGNED)


def _relocations(path: Path) -> list[tuple[int, int]]:
    data = path.read_bytes()
    dysymtab = _commands(data)[_index(_commands(data), 0xB)]
    offset, count = struct.unpack_from("<II", dysymtab, 64)
    return list(struct.iter_unpack("<iI", data[offset : offset + 8 * count]))


@pytest.mark.slow
def test_an_external_relocation_names_its_symbol_after_the_insertion(tmp_path):
    """The blob's symbol goes among the external definitions, before the undefined symbol:
    a relocation naming that symbol is renumbered with it, and the verifier checks it."""
    path, result = _pack_in_place(tmp_path, _with_external_relocation(_EXTERN | 2007))
    assert (result.returncode, result.stderr) == (0, "")
    assert _relocations(path) == [(0x2000, _EXTERN | 2008)]


@pytest.mark.slow
def test_an_external_relocation_whose_number_would_overflow_is_refused(tmp_path):
    _refused(
        tmp_path,
        _with_external_relocation(_EXTERN | 0xFFFFFF),
        "an external relocation's symbol number would overflow",
    )


def test_the_verifier_catches_a_moved_external_relocation(tmp_path):
    source = tmp_path / "with-relocation.dylib"
    source.write_bytes(_with_external_relocation(_EXTERN | 2007))
    _, staged, plan, edit = _write(tmp_path, source)
    data = bytearray(staged.read_bytes())
    dysymtab = _commands(bytes(data))[_index(_commands(bytes(data)), 0xB)]
    (offset,) = struct.unpack_from("<I", dysymtab, 64)
    struct.pack_into("<i", data, offset, 0x2008)
    staged.write_bytes(bytes(data))
    with pytest.raises(VerificationError, match="its external relocations changed addresses"):
        verify_output(MachoPacker((), False), staged, source, plan, edit)


@pytest.mark.slow
def test_an_unsigned_arm64_slice_is_signed(tmp_path):
    """arm64 macOS loads no unsigned code: packing an arm64 slice that has no signature adds
    LC_CODE_SIGNATURE and an ad hoc signature (which the verifier checks page by page)."""
    unsigned, result = _pack_in_place(tmp_path, (MACHO / "libmany.arm64.dylib").read_bytes())
    assert (result.returncode, result.stderr) == (0, "")  # --signature remove
    assert all(c[:4] != b"\x1d\0\0\0" for c in _commands(unsigned.read_bytes()))
    out = tmp_path / "signed.dylib"
    result = ffitool(
        "pack", str(unsigned), "--add", f"more:{tmp_path / 'payload.bin'}", "-o", str(out)
    )
    assert (result.returncode, result.stderr) == (0, "")
    commands = _commands(out.read_bytes())
    assert [c[:4] for c in commands].count(b"\x1d\0\0\0") == 1
    assert struct.unpack_from("<I", commands[-1])[0] == 0x1D  # added last
