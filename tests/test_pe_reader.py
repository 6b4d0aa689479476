"""The PE reader against pefile and llvm-readobj, on zig-built Windows DLLs.

pefile and `llvm-readobj --coff-exports --sections` parse PE independently of ffitool: the
exports (names, ordinals, RVAs, forwarders), the sections and the machine they report must
be what ffitool reports, and the blob must be at the file offset ffitool gives. Then hostile
edits of the headers and the export directory end in a result or one clean error.
"""

from __future__ import annotations

import io
import json
import re
import struct
import subprocess
import sys
import time
import tracemalloc
import zipfile
from importlib import resources

import jsonschema
import pefile
import pytest
from conftest import FIXTURES, ROOT, ffitool, require_tool
from test_linear_macho_pe import FailingStream, dll

from ffitool.errors import InputError
from ffitool.formats import read_object
from ffitool.formats.pe import reader as pe
from ffitool.library import inspect_path

PE = FIXTURES / "pe"
FFI_DLLS = {"x86-64": "ffi_pe.x86_64.dll", "aarch64": "ffi_pe.arm64.dll", "x86": "ffi_pe.x86.dll"}
DLLS = [*FFI_DLLS.values(), "pe_many.dll", "pe_forward.dll"]
LLVM_ARCH = {"x86-64": "x86_64", "aarch64": "aarch64", "x86": "i386"}
BLOB = (FIXTURES / "ffi_c.blob").read_bytes()
FFI_EXPORTS = {
    "__tvm_ffi__library_bin",
    "__tvm_ffi__library_ctx",
    "__tvm_ffi__metadata_add_one",
    "__tvm_ffi_add_one",
    "__tvm_ffi_main",
}


def read_exports(data: bytes) -> list[pe.Export]:
    """ffitool's full export list of a PE file held in memory."""
    parsed = pe.open_pe(io.BytesIO(data), len(data), "x")
    return pe.exports(parsed, "x")


def pefile_exports(path) -> set[tuple[int, str | None, int, str | None]]:
    parsed = pefile.PE(str(path))
    return {
        (
            entry.ordinal,
            entry.name.decode() if entry.name else None,
            entry.address,
            entry.forwarder.decode() if entry.forwarder else None,
        )
        for entry in parsed.DIRECTORY_ENTRY_EXPORT.symbols
        if entry.address
    }


def readobj(path) -> str:
    return subprocess.run(
        [require_tool("llvm-readobj"), "--coff-exports", "--sections", str(path)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout


def readobj_exports(listing: str) -> set[tuple[int, str | None, int]]:
    """(ordinal, name or None, RVA) of each used export slot llvm-readobj lists."""
    blocks = re.findall(r"Export \{\s*Ordinal: (\d+)\s*Name: (.*)\n\s*RVA: (0x[0-9A-F]+)", listing)
    return {
        (int(ordinal), name.strip() or None, int(rva, 16))
        for ordinal, name, rva in blocks
        if int(rva, 16)
    }


def readobj_sections(listing: str) -> list[tuple[str, int, int, int, int, int]]:
    pattern = (
        r"Name: (\S+) \(.*\)\s*VirtualSize: (0x[0-9A-F]+)\s*VirtualAddress: (0x[0-9A-F]+)\s*"
        r"RawDataSize: (\d+)\s*PointerToRawData: (0x[0-9A-F]+)"
        r"(?:.|\n)*?Characteristics \[ \((0x[0-9A-F]+)\)"
    )
    return [
        (name, int(vaddr, 16), int(vsize, 16), int(raw), int(pointer, 16), int(flags, 16))
        for name, vsize, vaddr, raw, pointer, flags in re.findall(pattern, listing)
    ]


def image_of(path):
    with open(path, "rb") as handle:
        found = read_object(handle, path.stat().st_size, str(path))
    assert found.format == "PE"
    (image,) = found.images
    return image


@pytest.mark.parametrize("name", DLLS)
def test_exports_agree_with_pefile_and_llvm_readobj(name):
    path = PE / name
    data = path.read_bytes()
    ours = read_exports(data)
    assert {(e.ordinal, e.name, e.rva, e.forwarder) for e in ours} == pefile_exports(path)
    listing = readobj(path)
    assert {(e.ordinal, e.name, e.rva) for e in ours} == readobj_exports(listing)
    parsed = pe.open_pe(io.BytesIO(data), len(data), name)
    sections = [
        (s.name, s.virtual_address, s.virtual_size, s.raw_size, s.raw_offset, s.flags)
        for s in parsed.headers.sections
    ]
    assert sections == readobj_sections(listing)
    assert sections  # the pattern matched something
    image = image_of(path)
    arch = re.search(r"^Arch: (\S+)$", listing, re.M).group(1)
    assert LLVM_ARCH[image.machine] == arch
    assert image.bits == (
        64 if pefile.PE(str(path)).PE_TYPE == pefile.OPTIONAL_HEADER_MAGIC_PE_PLUS else 32
    )
    assert (image.kind, image.loadable, image.signature) == ("shared library", True, "none")
    # The model holds exactly the marked exports, at the addresses the export table gives.
    marked = {(e.name, e.rva) for e in ours if e.name and "__tvm_" in e.name}
    assert {(s.name, s.address) for s in image.symbols} == marked


@pytest.mark.parametrize("machine", FFI_DLLS)
def test_ffi_dll_functions_and_blob_at_the_reported_offset(machine):
    path = PE / FFI_DLLS[machine]
    data = path.read_bytes()
    image = image_of(path)
    assert image.machine == machine
    assert {s.name for s in image.symbols} == FFI_EXPORTS  # not __tvm_ffi_hidden (no dllexport)
    parsed = pefile.PE(str(path))
    code = {
        s.Name.rstrip(b"\0").decode(): bool(s.Characteristics & 0x20000000) for s in parsed.sections
    }
    for symbol in image.symbols:
        assert symbol.executable is code[symbol.section]
        assert symbol.type == ("FUNC" if code[symbol.section] else "OBJECT")
    inspected = inspect_path(path)
    (library,) = inspected.libraries
    assert [f.name for f in library.functions] == ["add_one", "main"]
    assert [f.has_metadata for f in library.functions] == [True, False]
    blob = library.library_bin
    assert blob is not None and blob.nbytes == len(BLOB) - 8 and blob.findings == ()
    rva = next(s.address for s in image.symbols if s.name == "__tvm_ffi__library_bin")
    assert blob.file_offset == parsed.get_offset_from_rva(rva)
    assert data[blob.file_offset : blob.file_offset + len(BLOB)] == BLOB
    assert [m.kind for m in blob.modules] == ["_lib", "test_alpha", "test_beta"]


def test_many_exports_dll_keeps_every_ordinal():
    path = PE / "pe_many.dll"
    ours = read_exports(path.read_bytes())
    expected = ["__tvm_ffi_add_one", "__tvm_ffi_main", *(f"export_{n:04d}" for n in range(2000))]
    assert [e.name for e in ours] == expected  # in ordinal order, which is name order here
    assert [e.ordinal for e in ours] == list(range(1, 2003))
    library = inspect_path(path).libraries[0]
    assert [f.name for f in library.functions] == ["add_one", "main"]
    assert library.library_bin is None


def test_forwarders_and_ordinal_only_exports():
    path = PE / "pe_forward.dll"
    ours = {e.ordinal: e for e in read_exports(path.read_bytes())}
    assert ours[3].name == "__tvm_ffi_forwarded"
    assert ours[3].forwarder == "ffi_other.__tvm_ffi_add_one"
    assert (ours[5].name, ours[5].forwarder) == ("GetTickCount", "kernel32.GetTickCount")
    assert [(ours[n].name, ours[n].forwarder) for n in (9, 10)] == [(None, None), (None, None)]
    assert ours[2].name == "__tvm_ffi_main" and ours[6].name == "plain_data"
    image = image_of(path)
    forwarded = next(s for s in image.symbols if s.name == "__tvm_ffi_forwarded")
    assert (forwarded.type, forwarded.section, forwarded.exported) == (
        "FORWARDER to ffi_other.__tvm_ffi_add_one",
        None,
        True,
    )
    # Not followed into another file, so not counted as a function of this one.
    library = inspect_path(path).libraries[0]
    assert [f.name for f in library.functions] == ["main"]


def test_inspect_json_of_a_dll_matches_the_schema():
    result = subprocess.run(
        [sys.executable, "-m", "ffitool", "inspect", "--json", str(PE / "ffi_pe.arm64.dll")],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    schema = json.loads(resources.files("ffitool.schemas").joinpath("inspect-3.json").read_text())
    jsonschema.validate(document, schema)
    library = document["files"][0]["libraries"][0]
    assert (document["files"][0]["format"], library["machine"]) == ("PE", "aarch64")
    assert library["symbol_tables"] == ["exports"]


def test_function_outside_an_executable_section_is_l211(tmp_path):
    """IMAGE_SCN_MEM_EXECUTE decides whether an export is code: without it on .text, calling
    the functions would fault, and check says so."""
    data = bytearray(BASE)
    parsed = pefile.PE(data=BASE)
    text = next(s for s in parsed.sections if s.Name.startswith(b".text"))
    flags_at = text.get_file_offset() + 36
    struct.pack_into("<I", data, flags_at, text.Characteristics & ~0x20000000)
    path = tmp_path / "noexec.dll"
    path.write_bytes(bytes(data))
    (library,) = inspect_path(path).libraries
    l211 = sorted(f.message for f in library.findings if f.code == "L211")
    assert l211 == [
        "__tvm_ffi_add_one is a OBJECT symbol in .text, not a function: calling it crashes the"
        " caller",
        "__tvm_ffi_main is a OBJECT symbol in .text, not a function: calling it crashes the caller",
    ]


def test_coff_library_is_refused_with_a_clear_message():
    path = PE / "ffi_pe.x86_64.lib"
    with open(path, "rb") as handle, pytest.raises(InputError) as raised:
        read_object(handle, path.stat().st_size, "x.lib")
    assert str(raised.value) == (
        "x.lib: COFF libraries (.lib) are not supported (inspect the DLL instead)"
    )


@pytest.mark.slow
def test_libraries_beside_dlls_are_left_out_of_directories_and_wheels(tmp_path):
    """An MSVC build tree and a Windows wheel hold foo.lib beside foo.dll: the DLLs are read,
    the libraries are not inputs (only naming one explicitly is refused, above)."""
    folder = tmp_path / "build"
    folder.mkdir()
    for name in ("ffi_pe.x86_64.dll", "ffi_pe.x86_64.lib"):
        (folder / name).write_bytes((PE / name).read_bytes())
    wheel = tmp_path / "pkg-1.0-py3-none-win_amd64.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.write(PE / "ffi_pe.x86_64.dll", "pkg/ffi_pe.dll")
        archive.write(PE / "ffi_pe.x86_64.lib", "pkg/ffi_pe.lib", zipfile.ZIP_DEFLATED)
    for target, checked in (
        (folder, str(folder / "ffi_pe.x86_64.dll")),
        (wheel, f"{wheel}!pkg/ffi_pe.dll"),
    ):
        result = subprocess.run(
            [sys.executable, "-m", "ffitool", "check", "--format", "json", str(target)],
            cwd=ROOT,
            capture_output=True,
            text=True,
        )
        assert (result.returncode, result.stderr) == (0, "")
        assert [f["path"] for f in json.loads(result.stdout)["files"]] == [checked]


# ---------------------------------------------------------------------------------------
# Hostile input: edits of the x86-64 FFI DLL
# ---------------------------------------------------------------------------------------


def layout(data: bytes) -> dict[str, int]:
    """Offsets of the header fields the mutations edit, found with pefile."""
    parsed = pefile.PE(data=data)
    lfanew = parsed.DOS_HEADER.e_lfanew
    directory = parsed.OPTIONAL_HEADER.DATA_DIRECTORY[0]
    export_at = parsed.get_offset_from_rva(directory.VirtualAddress)
    return {
        "sections": lfanew + 6,
        "export_rva": directory.get_file_offset(),
        "security": parsed.OPTIONAL_HEADER.DATA_DIRECTORY[4].get_file_offset(),
        "functions": export_at + 20,
        "names": export_at + 24,
        "address_table": export_at + 28,
        "name_table": export_at + 32,
        "ordinal_table": export_at + 36,
        "export_dir_rva": directory.VirtualAddress,
        "export_dir_size": directory.Size,
    }


BASE = (PE / "ffi_pe.x86_64.dll").read_bytes()
FIELDS = layout(BASE)


def edited(*edits: tuple[str, str, int]) -> bytes:
    data = bytearray(BASE)
    for field, layout_char, value in edits:
        struct.pack_into("<" + layout_char, data, FIELDS[field], value)
    return bytes(data)


def outcome(data: bytes) -> str:
    """What the reader and the model make of `data`: "ok", or the one-line error."""
    try:
        read_object(io.BytesIO(data), len(data), "x")
        read_exports(data)
    except InputError as exc:
        message = str(exc)
        assert "\n" not in message and message.startswith("x: ")
        return message
    return "ok"


LYING = {
    "section count 65535": (
        edited(("sections", "H", 0xFFFF)),
        "x: malformed PE: COFF header claims 65535 sections (at most 96)",
    ),
    "section count past the headers": (edited(("sections", "H", 90)), "x: malformed PE: "),
    "export directory RVA past the image": (
        edited(("export_rva", "I", 0x7FFFFFF0)),
        "x: malformed PE: export directory at RVA 0x7ffffff0 is in no section",
    ),
    "export count past the file": (
        edited(("functions", "I", 0xFFFFFFFF)),
        "x: malformed PE: export address table at RVA",
    ),
    "name count past the file": (
        edited(("names", "I", 0x7FFFFFFF)),
        "x: malformed PE: export name pointer table at RVA 0x2262 runs past the file bytes of"
        " .rdata",
    ),
    "name and export counts past the file": (
        edited(("names", "I", 0x7FFFFFFF), ("functions", "I", 0x7FFFFFFF)),
        "x: malformed PE: export address table at RVA",
    ),
    "name table RVA past the image": (
        edited(("name_table", "I", 0xFFFFFFF0)),
        "x: malformed PE: export name pointer table at RVA 0xfffffff0 is in no section",
    ),
    "ordinal table in the headers": (
        edited(("ordinal_table", "I", 0x10)),
        "x: malformed PE: export ordinal table at RVA 0x10 is in no section",
    ),
    "certificate table past the end": (
        edited(("security", "Q", 0x100_FFFF_FF00)),
        "x: malformed PE: certificate table (256 bytes at offset 4294967040) extends past",
    ),
    "truncated before the PE header": (BASE[:100], "x: malformed PE: no PE header"),
    "truncated in the section table": (BASE[:0x200], "x: malformed PE: section table"),
}


@pytest.mark.parametrize("case", LYING)
def test_lying_headers_are_one_line_errors(case):
    data, message = LYING[case]
    assert outcome(data).startswith(message)


def test_export_directory_that_loops_gives_a_result():
    # Every address points back into the export directory (each export is a "forwarder"
    # whose string is the directory itself), and every name pointer at the same name.
    data = bytearray(BASE)
    parsed = pefile.PE(data=BASE)
    export = parsed.DIRECTORY_ENTRY_EXPORT.struct
    functions = parsed.get_offset_from_rva(export.AddressOfFunctions)
    names = parsed.get_offset_from_rva(export.AddressOfNames)
    for index in range(export.NumberOfFunctions):
        struct.pack_into("<I", data, functions + 4 * index, FIELDS["export_dir_rva"])
    first_name = struct.unpack_from("<I", data, names)[0]
    for index in range(export.NumberOfNames):
        struct.pack_into("<I", data, names + 4 * index, first_name)
    assert outcome(bytes(data)) == "ok"
    image = image_of_bytes(bytes(data))
    # One symbol for the many pointers to one name; its "forwarder" string is the directory's
    # first field, Characteristics, which is 0: an empty string.
    assert [(s.name, s.type) for s in image.symbols] == [
        ("__tvm_ffi__library_bin", "FORWARDER to ")
    ]
    exports = read_exports(bytes(data))
    assert len(exports) == export.NumberOfFunctions
    assert all(e.forwarder is not None for e in exports)


def test_certificate_table_is_reported():
    data = bytearray(BASE)
    certificate = struct.pack("<IHH", 16, 0x200, 2) + b"\x30\x82\0\0\0\0\0\0"
    struct.pack_into("<II", data, FIELDS["security"], len(data), len(certificate))
    data += certificate
    assert image_of_bytes(bytes(data)).signature == "certificate"


def image_of_bytes(data: bytes):
    (image,) = read_object(io.BytesIO(data), len(data), "x").images
    return image


def test_huge_name_count_stays_bounded():
    """A name count that the file cannot back is refused before anything is read."""
    data = edited(("names", "I", 0x3FFFFFFF), ("functions", "I", 0x3FFFFFFF))
    tracemalloc.start()
    started = time.process_time()  # CPU time, which a busy machine does not inflate
    assert outcome(data).startswith("x: malformed PE: ")
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 1 << 20 and time.process_time() - started < 1


def test_every_truncation_and_header_byte_edit_is_a_result_or_one_line_error():
    for length in range(0, len(BASE), 7):
        outcome(BASE[:length])
    header_end = FIELDS["sections"] + 20 + 240 + 40 * 4
    for at in range(0x80, header_end):
        for value in (0x00, 0xFF, 0x7F):
            data = bytearray(BASE)
            data[at] = value
            outcome(bytes(data))
    export_at = FIELDS["functions"] - 20
    for at in range(export_at, export_at + 40):
        data = bytearray(BASE)
        data[at] ^= 0xA5
        outcome(bytes(data))


def test_text_output_lists_a_forwarded_ffi_export_with_its_target():
    result = ffitool("inspect", str(PE / "pe_forward.dll"))
    assert result.returncode == 0
    lines = [line.rstrip() for line in result.stdout.splitlines()]  # titles are padded
    at = lines.index("Forwarded exports (1)")
    assert lines[at + 4] == "│ __tvm_ffi_forwarded │ ffi_other.__tvm_ffi_add_one │"
    assert "GetTickCount" not in result.stdout  # not an FFI name


# --- the refusals no fixture edit reaches, on a DLL built field by field -----------------

_EDATA_HEADER = 0x40 + 4 + 20 + 240 + 40  # after .text's header
_EDATA = 0x400  # its bytes: the export directory, then one address, pointer and ordinal
_NAME_POINTER = _EDATA + pe.EXPORT_DIRECTORY.size + 4
_ORDINAL = _NAME_POINTER + 4
_SECURITY = 0x40 + 4 + 20 + 112 + 8 * 4


def built(*edits: tuple[int, str, int]) -> bytes:
    data = bytearray(dll(b"__tvm_ffi_f\0", [0]))
    for at, layout_char, value in edits:
        struct.pack_into("<" + layout_char, data, at, value)
    return bytes(data)


def test_the_built_dll_is_read():
    assert [(s.name, s.address) for s in image_of_bytes(built()).symbols] == [
        ("__tvm_ffi_f", 0x1000)
    ]
    assert [(e.ordinal, e.name) for e in read_exports(built())] == [(1, "__tvm_ffi_f")]


BUILT_REFUSALS = {
    "no PE signature": (
        built((0x40, "I", 0x454E)),
        "no PE signature: an MS-DOS program or another MZ format",
    ),
    "certificate entry longer than its table": (
        built((_SECURITY, "I", 0x200), (_SECURITY + 4, "I", 16)),  # .text: c3 00 00 00
        "certificate entry of 195 bytes in a 16-byte table",
    ),
}


@pytest.mark.parametrize("case", BUILT_REFUSALS)
def test_refusals_of_a_built_dll(case):
    data, message = BUILT_REFUSALS[case]
    assert outcome(data) == f"x: malformed PE: {message}"


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        ((_NAME_POINTER, "I", 0x9000), "name at RVA 0x9000 is in no section"),
        ((_ORDINAL, "H", 5), "export name 0 has ordinal index 5, past the exports"),
    ],
)
def test_listing_every_export_checks_names_and_ordinals(edit, message):
    """What the full export listing (the writer's view) reads beyond the FFI exports."""
    with pytest.raises(InputError) as refused:
        read_exports(built(edit))
    assert str(refused.value) == f"x: malformed PE: {message}"


def test_a_stream_that_shrinks_or_fails_is_one_error():
    data = built()
    grown = bytearray(data)
    for field in (8, 16):  # VirtualSize, SizeOfRawData: 100 bytes past the end
        struct.pack_into("<I", grown, _EDATA_HEADER + field, len(data) - _EDATA + 100)
    with pytest.raises(InputError) as shrank:
        read_object(io.BytesIO(bytes(grown)), len(data) + 100, "x")
    assert str(shrank.value) == "x: malformed PE: the file shrank while it was being read"
    with pytest.raises(InputError) as failed:
        read_object(FailingStream(data, 0x200), len(data), "x")
    assert str(failed.value) == "x: read error: Input/output error"
