"""The Mach-O reader against LLVM's own Mach-O tools, on zig-built macOS fixtures.

llvm-nm and llvm-objdump parse Mach-O independently of ffitool: what they list as external
defined symbols and as the export trie must be what ffitool reports, for each architecture of
the universal file and each member of the archive. Then hostile edits of the load commands,
the universal header and the export trie end in a result or one clean error.
"""

from __future__ import annotations

import io
import json
import re
import struct
import subprocess
import sys
from importlib import resources

import jsonschema
import pytest
from conftest import FIXTURES, ROOT, ffitool, require_tool
from macholib import mach_o
from macholib.MachO import MachO
from macholib.SymbolTable import SymbolTable
from test_linear_macho_pe import FailingStream, macho, universal
from test_linear_macho_pe import trie as export_trie

from ffitool.errors import InputError
from ffitool.formats import read_object
from ffitool.formats.macho.commands import LC_CODE_SIGNATURE
from ffitool.formats.sniff import MACHO_32 as MAGIC_32
from ffitool.library import inspect_path

MACHO = FIXTURES / "macho"
THIN = {"x86-64": "libffi_macho.x86_64.dylib", "aarch64": "libffi_macho.arm64.dylib"}
LLVM_ARCH = {"x86-64": "x86_64", "aarch64": "arm64"}
BLOB = (FIXTURES / "ffi_c.blob").read_bytes()
FFI_EXTERNALS = {
    "___tvm_ffi__library_bin",
    "___tvm_ffi__library_ctx",
    "___tvm_ffi__metadata_add_one",
    "___tvm_ffi_add_one",
    "___tvm_ffi_main",
}


def images(path):
    with open(path, "rb") as handle:
        return read_object(handle, path.stat().st_size, str(path)).images


def llvm(tool: str, *args: str) -> str:
    return subprocess.run(
        [require_tool(tool), *args], check=True, capture_output=True, text=True
    ).stdout


def nm_externals(path, arch: str) -> dict[str | None, set[tuple[str, int]]]:
    """`llvm-nm --extern-only --defined-only` per archive member (None for a whole file)."""
    listing = llvm("llvm-nm", "--extern-only", "--defined-only", *_arch(path, arch), str(path))
    found: dict[str | None, set[tuple[str, int]]] = {}
    member = None
    for line in listing.splitlines():
        header = re.fullmatch(r".*\((.+)\):", line)
        if header:
            member = header.group(1)
        elif "__tvm_" in line:
            address, _, name = line.split()
            found.setdefault(member, set()).add((name, int(address, 16)))
    return found


def _arch(path, arch: str) -> list[str]:
    """The slice option for a universal file (llvm-nm rejects it for anything else)."""
    return [f"--arch={arch}"] if "universal" in path.name else []


def trie_exports(path, arch: str) -> set[str]:
    listing = llvm("llvm-objdump", "--macho", "--exports-trie", *_arch(path, arch), str(path))
    return {line.split()[1] for line in listing.splitlines() if "__tvm_" in line}


def reader_externals(image) -> set[tuple[str, int]]:
    return {(s.file_name, s.address) for s in image.symbols if s.defined and s.binding != "LOCAL"}


@pytest.mark.parametrize(
    "name",
    [*THIN.values(), "libffi_macho.universal.dylib", "ffi_macho.arm64.o", "libffi_macho.a"],
)
def test_symbols_and_exports_agree_with_llvm(name):
    path = MACHO / name
    found = images(path)
    assert found
    for image in found:
        arch = LLVM_ARCH[image.machine]
        expected = nm_externals(path, arch)
        key = image.member if name.endswith(".a") else None
        assert reader_externals(image) == expected[key]
        names = {n for n, _ in expected[key]}
        if image.kind == "relocatable object":
            # The hidden function is private extern: external to nm, not a linkable export.
            assert names == FFI_EXTERNALS | {"___tvm_ffi_hidden"}
            assert {s.file_name for s in image.symbols if s.external} == FFI_EXTERNALS
            assert not any(s.exported for s in image.symbols)
        else:
            assert names == FFI_EXTERNALS
            assert {s.file_name for s in image.symbols if s.exported} == trie_exports(path, arch)
            hidden = [s for s in image.symbols if s.name == "__tvm_ffi_hidden"]
            assert [(s.binding, s.exported) for s in hidden] == [("LOCAL", False)]


@pytest.mark.parametrize(
    "name", [*THIN.values(), "libffi_macho.universal.dylib", "ffi_macho.arm64.o", "libffi_macho.a"]
)
def test_blob_at_the_reported_offset_is_the_oracle_blob(name):
    path = MACHO / name
    data = path.read_bytes()
    inspected = inspect_path(path)
    assert inspected.libraries
    for library in inspected.libraries:
        blob = library.library_bin
        assert blob is not None and blob.nbytes == len(BLOB) - 8
        assert data[blob.file_offset : blob.file_offset + len(BLOB)] == BLOB
        assert blob.findings == ()
        assert [f.name for f in library.functions] == ["add_one", "main"]
        assert [f.has_metadata for f in library.functions] == [True, False]
        assert blob.symbol.symbol.file_name == "___tvm_ffi__library_bin"
        assert blob.symbol.symbol.name == "__tvm_ffi__library_bin"


@pytest.mark.parametrize("name", sorted(p.name for p in MACHO.iterdir()))
def test_inspect_json_of_every_fixture_follows_the_schema(name):
    result = subprocess.run(
        [sys.executable, "-m", "ffitool", "inspect", "--json", f"fixtures/bin/macho/{name}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert (result.returncode, result.stderr) == (0, "")
    document = json.loads(result.stdout)
    schema = resources.files("ffitool").joinpath("schemas", "inspect-3.json").read_text()
    jsonschema.validate(document, json.loads(schema))
    (entry,) = document["files"]
    expected = MANY_FUNCTIONS if name.startswith("libmany.") else ["add_one", "main"]
    for library in entry["libraries"]:
        # JSON names symbols as the file spells them; function names are the FFI names.
        assert [(f["name"], f["symbol"]) for f in library["functions"]] == [
            (n, f"___tvm_ffi_{n}") for n in expected
        ]


MANY_FUNCTIONS = [f"many_{n:04d}" for n in range(2000)]


@pytest.mark.parametrize("arch", ["x86_64", "arm64"])
def test_all_2000_exports_of_a_large_dylib_agree_with_llvm(arch):
    """libmany: 2,000 FFI functions, two plain functions and two data symbols. Every FFI
    function is read, at the address llvm-nm gives and exported as the trie says; the plain
    names are in nm's list but none is an FFI function."""
    path = MACHO / f"libmany.{arch}.dylib"
    (image,) = images(path)
    assert reader_externals(image) == nm_externals(path, arch)[None]
    exported = {s.file_name for s in image.symbols if s.exported}
    assert exported == trie_exports(path, arch)
    assert exported == {f"___tvm_ffi_{n}" for n in MANY_FUNCTIONS}
    listing = llvm("llvm-nm", "--extern-only", "--defined-only", str(path))
    plain = {line.split()[2] for line in listing.splitlines() if "_many_" in line}
    assert plain - exported == {
        "_many_plain_first",
        "_many_plain_second",
        "_many_table",
        "_many_counter",
    }
    (library,) = inspect_path(path).libraries
    assert [f.name for f in library.functions] == MANY_FUNCTIONS
    assert library.library_bin is None


def test_universal_file_gives_one_library_per_slice_at_absolute_offsets():
    path = MACHO / "libffi_macho.universal.dylib"
    inspected = inspect_path(path)
    assert inspected.format == "Mach-O universal"
    assert [lib.machine for lib in inspected.libraries] == ["x86-64", "aarch64"]
    headers = llvm("llvm-objdump", "--macho", "--universal-headers", str(path))
    offsets = [int(v) for v in re.findall(r"^\s*offset (\d+)$", headers, re.MULTILINE)]
    assert len(offsets) == 2
    for library, offset in zip(inspected.libraries, offsets, strict=True):
        thin = inspect_path(MACHO / THIN[library.machine]).libraries[0]
        assert library.kind == "shared library" and library.loadable
        assert library.library_bin.file_offset == offset + thin.library_bin.file_offset
        assert [f.symbol.symbol.address for f in library.functions] == [
            f.symbol.symbol.address for f in thin.functions
        ]


def test_code_signature_state_per_slice():
    # zig signs arm64 output ad hoc as the platform linker does (linker-signed); x86-64 not.
    assert [i.signature for i in images(MACHO / "libffi_macho.universal.dylib")] == [
        "none",
        "linker-signed",
    ]
    assert [i.signature for i in images(MACHO / THIN["aarch64"])] == ["linker-signed"]
    assert [i.signature for i in images(MACHO / "ffi_macho.arm64.o")] == ["none"]


# --- hostile inputs ----------------------------------------------------------------------


def _header(data: bytes) -> tuple[int, int]:
    """(ncmds, sizeofcmds) of a thin 64-bit image."""
    return struct.unpack_from("<II", data, 16)


def _load_command(data: bytes, wanted: set[int]) -> int:
    """Offset of the first load command whose cmd is in `wanted`."""
    ncmds, _ = _header(data)
    at = 32
    for _ in range(ncmds):
        cmd, size = struct.unpack_from("<II", data, at)
        if cmd in wanted:
            return at
        at += size
    raise AssertionError(f"no load command in {wanted}")


def _outcome(tmp_path, data: bytes, name: str = "mutant.dylib"):
    """inspect's result, or its error message, which must be one line naming the file."""
    path = tmp_path / name
    path.write_bytes(data)
    try:
        return inspect_path(path)
    except InputError as exc:
        message = str(exc)
        assert message.startswith(f"{path}: ") and "\n" not in message, message
        return message


def test_truncated_load_commands_are_one_line_errors(tmp_path):
    data = (MACHO / THIN["aarch64"]).read_bytes()
    _, sizeofcmds = _header(data)
    for end in range(0, 32 + sizeofcmds, 7):
        outcome = _outcome(tmp_path, data[:end])
        assert isinstance(outcome, str), end


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        (16, 0xFFFFFFFF, "4294967295 load commands cannot fit in"),
        (20, 0xFFFFFFF0, "load commands claim 4294967280 bytes"),
        (20, 64, "15 load commands cannot fit in 64 bytes"),
        (36, 0, "load command 0 has a bad size 0"),
        (36, 0xFFFF, "load command 0 has a bad size 65535"),
    ],
)
def test_lying_command_counts_are_one_line_errors(tmp_path, field, value, message):
    data = bytearray((MACHO / THIN["x86-64"]).read_bytes())
    struct.pack_into("<I", data, field, value)
    outcome = _outcome(tmp_path, bytes(data))
    assert isinstance(outcome, str) and message in outcome, outcome


def test_export_trie_with_a_cycle_terminates(tmp_path):
    data = bytearray((MACHO / THIN["aarch64"]).read_bytes())
    at = _load_command(data, {0x80000033, 0x22, 0x80000022})
    cmd = struct.unpack_from("<I", data, at)[0]
    offset, size = struct.unpack_from("<II", data, at + (8 if cmd == 0x80000033 else 40))
    # Root: not terminal, two children: "___tvm_ffi_add_one" at node 0 (itself, a cycle) and
    # "_x" at node 3, whose only child is the root again.
    head = b"\x00\x02" + b"___tvm_ffi_add_one\0" + b"\x00" + b"_x\0"
    root = head + bytes([len(head) + 1])
    trie = root + b"\x00\x01" + b"y\0" + b"\x00"
    assert len(trie) <= size
    data[offset : offset + size] = trie.ljust(size, b"\0")
    outcome = _outcome(tmp_path, bytes(data))
    assert not isinstance(outcome, str), outcome
    (library,) = outcome.libraries
    # No terminal node: nothing is exported, so the runtime finds no function.
    assert library.functions == ()
    exported = {s.symbol.file_name: s.dynamic for s in library.symbols if s.symbol.external}
    assert exported == dict.fromkeys(FFI_EXTERNALS, False)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        (4, 0xFFFFFFFF, "universal header claims 4294967295 architectures"),
        (8 + 8, 1 << 30, "slice 0 (17087 bytes at offset 1073741824) extends past the end"),
        (8 + 12, 1 << 30, "slice 0 (1073741824 bytes at offset"),
    ],
)
def test_universal_header_pointing_past_the_end_is_an_error(tmp_path, field, value, message):
    data = bytearray((MACHO / "libffi_macho.universal.dylib").read_bytes())
    struct.pack_into(">I", data, field, value)
    outcome = _outcome(tmp_path, bytes(data))
    assert isinstance(outcome, str) and message in outcome, outcome


def test_blob_extent_is_bounded_by_the_end_of_its_section(tmp_path):
    """Mach-O has no symbol sizes: nbytes may reach the end of __const, not the next section."""
    path = MACHO / THIN["aarch64"]
    blob = inspect_path(path).libraries[0].library_bin
    (image,) = images(path)
    location = image.locations[("__tvm_ffi__library_bin", blob.symbol.symbol.table)]
    assert location.file_offset == blob.file_offset
    assert location.available == len(BLOB)  # the blob ends its section in this fixture
    data = bytearray(path.read_bytes())
    assert len(data) > blob.file_offset + len(BLOB) + 64  # other bytes follow the section
    struct.pack_into("<Q", data, blob.file_offset, len(BLOB) - 8 + 1)
    outcome = _outcome(tmp_path, bytes(data))
    mutated = outcome.libraries[0].library_bin
    assert mutated.nbytes is None
    assert [(f.code, f.message) for f in mutated.findings] == [
        ("B100", f"nbytes {len(BLOB) - 7} exceeds the {len(BLOB) - 8} bytes available")
    ]


@pytest.mark.parametrize("name", ["libffi_macho.universal.dylib", "libffi_macho.a"])
def test_a_stream_without_a_descriptor_reads_the_same(name):
    """Without a file descriptor tables are read through the stream, at the same offsets."""
    path = MACHO / name
    data = path.read_bytes()
    from_stream = read_object(io.BytesIO(data), len(data), str(path)).images
    assert from_stream == images(path)


def test_a_section_beyond_the_file_leaves_the_blob_unbacked(tmp_path):
    """A blob whose section claims an offset past the end is L104, the rest is still read."""
    data = bytearray((MACHO / THIN["x86-64"]).read_bytes())
    blob = inspect_path(MACHO / THIN["x86-64"]).libraries[0].library_bin
    at = _load_command(data, {0x19})  # the first LC_SEGMENT_64 holds __TEXT,__const
    sections = [at + 72 + 80 * n for n in range(struct.unpack_from("<I", data, at + 64)[0])]
    (const,) = [s for s in sections if data[s : s + 8] == b"__const\0"]
    struct.pack_into("<I", data, const + 48, len(data) + 4096)  # section_64.offset
    outcome = _outcome(tmp_path, bytes(data))
    (library,) = outcome.libraries
    assert library.library_bin.file_offset is None
    assert [f.code for f in library.library_bin.findings] == ["L104"]
    assert [f.name for f in library.functions] == ["add_one", "main"]
    assert blob.file_offset is not None and not blob.findings


def test_a_fat64_header_reads_like_the_fat_one(tmp_path):
    """fat64 (0xcafebabf) spells the same slices with 64-bit offsets and sizes."""
    path = MACHO / "libffi_macho.universal.dylib"
    data = bytearray(path.read_bytes())
    count = struct.unpack_from(">I", data, 4)[0]
    arches = [struct.unpack_from(">iiIII", data, 8 + 20 * n) for n in range(count)]
    header = struct.pack(">II", 0xCAFEBABF, count) + b"".join(
        struct.pack(">iiQQII", *arch, 0) for arch in arches
    )
    assert len(header) <= min(arch[2] for arch in arches)  # the slices stay where they are
    data[: len(header)] = header
    outcome = _outcome(tmp_path, bytes(data))
    original = inspect_path(path)
    assert outcome.format == "Mach-O universal"
    assert [(lib.machine, lib.library_bin.file_offset) for lib in outcome.libraries] == [
        (lib.machine, lib.library_bin.file_offset) for lib in original.libraries
    ]


# --- a second parser: macholib and llvm-readobj ------------------------------------------


def _name(field: bytes) -> str:
    return field.rstrip(b"\0").decode()


def macholib_view(path, tmp_path) -> list[dict]:
    """Per image (slice of a universal file, member of an archive, or the file), what macholib
    reads: where the image starts, its segments, sections by number, FFI-marked nlist entries
    and whether it has a code signature. Archive members are extracted with llvm-ar first
    (macholib does not read archives) and found in the archive by their bytes."""
    if path.suffix == ".a":
        members = tmp_path / "members"
        members.mkdir()
        subprocess.run([require_tool("llvm-ar"), "x", str(path)], cwd=members, check=True)
        archive = path.read_bytes()
        files = [(m, archive.index(m.read_bytes())) for m in sorted(members.iterdir())]
        files.sort(key=lambda item: item[1])
    else:
        files = [(path, 0)]
    views = []
    for file, start in files:
        macho = MachO(str(file))
        for header in macho.headers:
            segments, sections, signed = [], [], False
            for load, command, data in header.commands:
                if load.cmd == mach_o.LC_SEGMENT_64:
                    name = _name(command.segname)
                    place = (command.vmaddr, command.vmsize, command.fileoff, command.filesize)
                    segments.append((name, *place))
                    sections += [
                        (_name(s.segname), _name(s.sectname), s.addr, s.size, s.offset)
                        for s in data
                    ]
                signed = signed or load.cmd == mach_o.LC_CODE_SIGNATURE
            nlists = SymbolTable(macho, header).nlists
            marked = {
                name.decode(): entry
                for entry, name in nlists
                if b"__tvm_" in name and not entry.n_type & 0xE0
            }
            member = file.name if path.suffix == ".a" else None
            views.append(
                dict(
                    member=member,
                    start=start + header.offset,
                    segments=segments,
                    sections=sections,
                    symbols=marked,
                    signed=signed,
                )
            )
    return views


def readobj_segments(path) -> list[list[tuple[str, int, int, int, int]]]:
    """`llvm-readobj --macho-segment`: per image, in file order, (name, vmaddr, vmsize,
    fileoff, filesize) of each segment."""
    listing = llvm("llvm-readobj", "--macho-segment", str(path))
    images_found: list[list[tuple[str, int, int, int, int]]] = []
    for block in re.split(r"^File: ", listing, flags=re.MULTILINE)[1:]:
        segments = []
        for segment in re.findall(r"Segment \{(.*?)\}", block, re.DOTALL):
            fields = dict(re.findall(r"^\s*(\w+): (.*)$", segment, re.MULTILINE))
            segments.append(
                (
                    fields["Name"].strip(),
                    int(fields["vmaddr"], 16),
                    int(fields["vmsize"], 16),
                    int(fields["fileoff"]),
                    int(fields["filesize"]),
                )
            )
        images_found.append(segments)
    return images_found


@pytest.mark.parametrize("name", sorted(p.name for p in MACHO.iterdir()))
def test_macholib_and_readobj_agree_with_the_reader(name, tmp_path):
    """Two parsers that share no code with ffitool: macholib for load commands and the symbol
    table, llvm-readobj for segments. Every FFI-marked symbol ffitool reads is the nlist
    entry macholib reads (address, section, external), no marked entry is missed, every blob
    location is the file offset macholib's section table gives, and each symbol lies in the
    segment its section belongs to, with the segments llvm-readobj lists."""
    path = MACHO / name
    found = images(path)
    views = macholib_view(path, tmp_path)
    segments = readobj_segments(path)
    assert len(found) == len(views) == len(segments)
    for image, view, readobj in zip(found, views, segments, strict=True):
        assert image.member == view["member"]
        assert view["segments"] == readobj
        assert (image.signature != "none") == view["signed"]
        symbols = {s.file_name: s for s in image.symbols}
        assert view["symbols"] and set(symbols) == set(view["symbols"])
        for raw_name, entry in view["symbols"].items():
            symbol = symbols[raw_name]
            assert symbol.address == entry.n_value, raw_name
            assert (symbol.binding == "LOCAL") == (not entry.n_type & 0x01), raw_name
            assert symbol.external == (entry.n_type & 0x11 == 0x01), raw_name
            if entry.n_type & 0x0E != 0x0E:
                assert symbol.section is None or symbol.section.startswith("*")
                continue
            segment, section, address, size, offset = view["sections"][entry.n_sect - 1]
            assert symbol.section == f"{segment},{section}", raw_name
            assert address <= entry.n_value <= address + size
            # A linked image's segment by name; an object has one unnamed segment.
            (home,) = [s for s in readobj if s[0] in (segment, "")]
            assert home[1] <= entry.n_value < home[1] + home[2], raw_name
            location = image.locations.get((symbol.name, symbol.table))
            if location is not None:
                expected = view["start"] + offset + entry.n_value - address
                assert location.file_offset == expected, raw_name
        assert (
            image.locations
            or image.debug_only
            or not any("__tvm_ffi__library_bin" in n for n in view["symbols"])
        )


DSYM = MACHO / "libffi_macho.arm64.dylib.dwarf"


def test_a_dsym_is_a_debug_companion_never_loadable():
    """dsymutil's flat dSYM (MH_DSYM, file type 10) keeps the symbol table and section headers
    of its library but none of their bytes: the symbols are read, at nm's addresses, nothing
    is exported or located, and the blob, which lives in the library, is no finding."""
    assert MachO(str(DSYM)).headers[0].header.filetype == mach_o.MH_DSYM
    (image,) = images(DSYM)
    assert (image.kind, image.loadable, image.debug_only) == ("debug companion (dSYM)", False, True)
    assert image.locations == {}
    assert reader_externals(image) == nm_externals(DSYM, "arm64")[None]
    assert not any(s.exported for s in image.symbols)
    assert {s.hidden_because for s in image.symbols if s.external} == {
        "in a debug companion (dSYM), which nothing loads"
    }
    (library,) = inspect_path(DSYM).libraries
    assert [f.name for f in library.functions] == ["add_one", "main"]
    blob = library.library_bin
    assert (blob.file_offset, blob.nbytes, blob.findings) == (None, None, ())


@pytest.mark.slow
def test_check_does_not_report_a_dsym_as_a_broken_library():
    result = ffitool("check", f"fixtures/bin/macho/{DSYM.name}")
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout.splitlines()[-1] == "1 file checked: 0 errors, 0 warnings, 0 info; passed"
    document = json.loads(ffitool("inspect", "--json", f"fixtures/bin/macho/{DSYM.name}").stdout)
    (library,) = document["files"][0]["libraries"]
    assert (library["kind"], library["loadable"]) == ("debug companion (dSYM)", False)
    assert library["findings"] == [] and library["library_bin"]["findings"] == []


@pytest.mark.slow
def test_inspect_json_gives_each_slice_its_architecture_place_and_signature():
    """inspect/2: a universal file's slices as llvm-lipo names them, at the offsets and sizes
    of the universal header (llvm-objdump), each with its own code-signature state."""
    path = MACHO / "libffi_macho.universal.dylib"
    document = json.loads(ffitool("inspect", "--json", f"fixtures/bin/macho/{path.name}").stdout)
    assert document["schema"] == "ffitool.inspect/3"
    libraries = document["files"][0]["libraries"]
    headers = llvm("llvm-objdump", "--macho", "--universal-headers", str(path))
    places = re.findall(
        r"^architecture (\S+)\n(?:\s+.*\n)*?\s+offset (\d+)\n\s+size (\d+)$",
        headers,
        re.MULTILINE,
    )
    assert len(places) == 2
    assert [lib["slice"] for lib in libraries] == [
        {"arch": arch, "offset": int(offset), "size": int(size)} for arch, offset, size in places
    ]
    assert [(lib["machine"], lib["signature"], lib["loadable"]) for lib in libraries] == [
        ("x86-64", "none", True),
        ("aarch64", "linker-signed", True),
    ]
    thin = json.loads(ffitool("inspect", "--json", f"fixtures/bin/macho/{THIN['aarch64']}").stdout)
    (library,) = thin["files"][0]["libraries"]
    assert (library["slice"], library["signature"]) == (None, "linker-signed")
    text = ffitool("inspect", f"fixtures/bin/macho/{path.name}").stdout
    assert "slice arm64 at offset 0x8000 (49.0 KiB); code signature: linker-signed" in text


# --- every refusal of the reader, on a dylib built field by field ------------------------

_NAME = b"___tvm_ffi_f"
_SYMTAB_AT = 32 + 152  # after the header and the __TEXT segment with its one section
_TRIE_COMMAND_AT = _SYMTAB_AT + 24


def _built(trie: bytes | None = None) -> bytearray:
    return bytearray(macho(b"\0" + _NAME + b"\0", [1], trie or export_trie([], _NAME)))


def _edited(*edits: tuple[int, str, int], trie: bytes | None = None) -> bytes:
    data = _built(trie)
    for at, layout, value in edits:
        struct.pack_into(layout, data, at, value)
    return bytes(data)


def _symoff() -> int:
    return struct.unpack_from("<I", _built(), _SYMTAB_AT + 8)[0]


def _signed() -> bytes:
    """The trie's command turned into LC_CODE_SIGNATURE: the signature is the trie's bytes."""
    return _edited((_TRIE_COMMAND_AT, "<I", LC_CODE_SIGNATURE))


_TRIE_MAGIC = int.from_bytes(export_trie([], _NAME)[:4], "big")

REFUSALS = [
    ("file type", _edited((12, "<I", 3)), "unsupported Mach-O file type 3"),
    (
        "command past the end",
        _edited((36, "<I", 152 + 24 + 16)),
        "load command 1 starts past the end of the load commands",
    ),
    ("short symtab", _edited((_SYMTAB_AT + 4, "<I", 8)), "load command 1 is too short (8 bytes)"),
    ("short segment", _edited((36, "<I", 16)), "segment command 0 is too short (16 bytes)"),
    (
        "sections",
        _edited((32 + 64, "<I", 2)),
        "segment command 0 claims 2 sections it does not hold",
    ),
    (
        "absent section",
        _edited((_symoff() + 5, "<B", 5)),
        f"symbol {_NAME.decode()!r} names section 5, which is absent",
    ),
    (
        "node past the trie",
        _built(bytes([0, 1]) + _NAME + b"\0" + bytes([100]) + bytes(4)),
        "export trie node at 100 is past the trie",
    ),
    (
        "node runs past",
        _built(bytes([0x7F, 1]) + _NAME + b"\0\0"),
        "export trie node at 0 runs past the trie",
    ),
    (
        "unterminated edge",
        _built(bytes([0, 1]) + _NAME),
        "export trie edge at 2 is not terminated",
    ),
    ("bad ULEB128", _built(b"\x80" * 12), "bad ULEB128 number at trie offset 0"),
    ("signature", _signed(), f"code signature: bad super blob magic {_TRIE_MAGIC:#x}"),
    (
        "32-bit slice",
        universal(MAGIC_32 + bytes(60), 1),
        "the slice at offset 4096 is a 32-bit Mach-O image, which is not supported",
    ),
    (
        "junk slice",
        universal(bytes(64), 1),
        "the slice at offset 4096 is not a 64-bit Mach-O image, which is not supported",
    ),
]


@pytest.mark.parametrize(
    ("data", "message"), [r[1:] for r in REFUSALS], ids=[r[0] for r in REFUSALS]
)
def test_each_refusal_of_the_reader_is_one_line(tmp_path, data, message):
    outcome = _outcome(tmp_path, data)
    assert outcome == f"{tmp_path / 'mutant.dylib'}: malformed Mach-O: {message}"


def test_the_unedited_dylib_of_the_refusals_is_read(tmp_path):
    """What the refusals above edit is a dylib the reader takes, with the trie's command,
    or a signature there instead (the trie's bytes are then not one)."""
    (library,) = _outcome(tmp_path, bytes(_built())).libraries
    assert [(f.name, f.symbol.dynamic) for f in library.functions] == [("f", True)]


def test_a_stream_that_shrinks_or_fails_is_one_error():
    data = _built()
    strsize = struct.unpack_from("<I", data, _SYMTAB_AT + 20)[0]
    struct.pack_into("<I", data, _SYMTAB_AT + 20, strsize + 100)
    with pytest.raises(InputError) as shrank:
        read_object(io.BytesIO(bytes(data)), len(data) + 100, "x")
    assert str(shrank.value) == "x: malformed Mach-O: the file shrank while it was being read"
    with pytest.raises(InputError) as failed:
        read_object(FailingStream(bytes(_built()), 32), len(data), "x")
    assert str(failed.value) == "x: read error: Input/output error"
