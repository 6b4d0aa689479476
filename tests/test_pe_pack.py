"""Packing Windows DLLs, checked by parsers that are not ffitool's and by a Windows loader.

Every zig-built DLL (x86-64, arm64, x86, 2,000 exports, forwarders and exports by ordinal only;
the FFI DLLs already export a blob, which is re-pointed) is packed; then pefile and
`llvm-readobj --coff-exports --sections` must agree that every export of the input is in the
output with its ordinal, name and address or forwarder, that no section header or section byte
changed, and that the checksum is right. Under wine, pe_loader.exe (fixtures/src/pe) loads the
original and packed x86-64 DLLs with LoadLibrary and GetProcAddress and prints the blob it
finds, which must be the planned bytes, and an ABI function's result. Then each promise of the
verifier is broken on purpose, one at a time, and must be caught.
"""

from __future__ import annotations

import os
import struct
import subprocess
import time
from pathlib import Path

import pefile
import pytest
from conftest import FIXTURES, ffitool, require_tool
from test_pe_reader import readobj as llvm_readobj

from ffitool.blob import decode
from ffitool.edit.plan import Edits, Plan, plan_edits
from ffitool.edit.stream import blob_size, write_blob
from ffitool.edit.verification import VerificationError
from ffitool.formats.pe.packer import PePacker
from ffitool.formats.pe.writer import plan_pe_edit, write_pe_edit
from ffitool.pack import existing_modules, pack_library, payload_source, verify_output

# Packs fixtures/bin/pe files themselves: one worker runs them (see conftest.py).
pytestmark = pytest.mark.xdist_group("packs-pe-fixtures")

PE = FIXTURES / "pe"
FFI = ["ffi_pe.x86_64.dll", "ffi_pe.arm64.dll", "ffi_pe.x86.dll"]
"""They export the blob of ffi_c.c already: packing re-points it."""
ADDED = ["pe_many.dll", "pe_forward.dll"]
"""They have no blob: packing adds the export at a new ordinal."""
ALL = [*FFI, *ADDED]
LOADER = PE / "pe_loader.exe"
PAYLOAD = bytes(range(256)) * 37 + b"tail"
BLOB = b"__tvm_ffi__library_bin"
ORIGINAL_BLOB = (FIXTURES / "ffi_c.blob").read_bytes()


def readobj(path: Path) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    """(exports, sections) as llvm-readobj prints them: the fields of each block, for a
    section its header fields and its characteristics' value."""
    text = llvm_readobj(path)
    exports = [_fields(block) for block in text.split("Export {")[1:]]
    sections = [_fields(block.split("\n  }")[0]) for block in text.split("Section {")[1:]]
    return exports, sections


def _fields(block: str) -> dict[str, str]:
    found = {}
    for line in block.split("}")[0].splitlines():
        key, _, value = line.strip().partition(": ")
        if value:
            found[key] = value
        elif key.startswith("Characteristics [ ("):
            found["Characteristics"] = key.split("(")[1].rstrip(")")
    return found


def pe_exports(path: Path) -> dict[int, tuple[bytes | None, int | bytes]]:
    """Ordinal -> (name, forwarder string or RVA) of every export, as pefile reads them."""
    pe = pefile.PE(str(path))
    return {
        e.ordinal: (e.name, e.forwarder if e.forwarder is not None else e.address)
        for e in pe.DIRECTORY_ENTRY_EXPORT.symbols
    }


def pack(source: Path, out: Path, *options: str) -> subprocess.CompletedProcess[str]:
    payload = out.parent / "payload.bin"
    payload.write_bytes(PAYLOAD)
    return ffitool("pack", str(source), "--add", f"cuda_ptx:{payload}", "-o", str(out), *options)


def planned_blob(source: Path, tmp_path: Path) -> bytes:
    """The blob a pack of `source` with PAYLOAD plans, written by the blob writer alone."""
    payload = tmp_path / "planned-payload.bin"
    payload.write_bytes(PAYLOAD)
    plan = plan_edits(
        existing_modules(source), Edits(add=(("cuda_ptx", payload_source(str(payload))),))
    )
    out = tmp_path / "planned.blob"
    with open(out, "w+b") as handle:
        write_blob(handle.fileno(), 0, plan)
    return out.read_bytes()


@pytest.fixture(scope="module")
def packed(tmp_path_factory) -> dict[str, Path]:
    """Every DLL packed once through the command line."""
    out = tmp_path_factory.mktemp("packed")
    results = {}
    for name in ALL:
        result = pack(PE / name, out / name)
        assert result.returncode == 0, result.stderr
        assert result.stderr == ""
        results[name] = out / name
    return results


@pytest.mark.parametrize("name", ALL)
def test_pefile_finds_every_export_of_the_input_plus_the_blob(packed, name):
    before, after = pe_exports(PE / name), pe_exports(packed[name])
    pe = pefile.PE(str(packed[name]))
    ours = pe.sections[-1]
    blob = {o for o, (n, _) in after.items() if n == BLOB}
    assert len(blob) == 1
    (ordinal,) = blob
    assert after[ordinal] == (BLOB, ours.VirtualAddress)
    if name in FFI:  # re-pointed: same ordinal, no new entry
        assert before[ordinal][0] == BLOB
        assert set(after) == set(before)
    else:  # the ordinal after the last
        original = pefile.PE(str(PE / name)).DIRECTORY_ENTRY_EXPORT.struct
        assert ordinal == max(before) + 1 == original.Base + original.NumberOfFunctions
    assert {o: e for o, e in before.items() if o != ordinal} == {
        o: e for o, e in after.items() if o != ordinal
    }
    names = [e.name for e in pe.DIRECTORY_ENTRY_EXPORT.symbols if e.name]
    assert len(names) == len({e[0] for e in after.values() if e[0]})
    raw = pe.DIRECTORY_ENTRY_EXPORT.struct
    table = pe.get_data(raw.AddressOfNames, 4 * raw.NumberOfNames)
    sorted_names = [pe.get_string_at_rva(r) for (r,) in struct.iter_unpack("<I", table)]
    assert sorted_names == sorted(sorted_names)  # GetProcAddress binary-searches them


@pytest.mark.parametrize("name", ALL)
def test_llvm_readobj_sees_the_same_exports_and_sections(packed, name):
    forwarders = {
        o for o, (_, target) in pe_exports(PE / name).items() if isinstance(target, bytes)
    }
    (old_exports, old_sections), (new_exports, new_sections) = (
        readobj(PE / name),
        readobj(packed[name]),
    )

    def key(entries: list[dict[str, str]]) -> dict[int, tuple[str, str | None]]:
        return {
            int(e["Ordinal"]): (
                e.get("Name", ""),
                None if int(e["Ordinal"]) in forwarders else e["RVA"],
            )
            for e in entries
        }

    old, new = key(old_exports), key(new_exports)
    blob = next(o for o, (n, _) in new.items() if n == BLOB.decode())
    assert {o: e for o, e in old.items() if o != blob}.items() <= new.items()
    assert set(new) - set(old) <= {blob}
    assert new_sections[: len(old_sections)] == old_sections
    (section,) = new_sections[len(old_sections) :]
    assert section["Name"].split()[0] == ".tvmffi"
    assert int(section["VirtualAddress"], 16) == int(new[blob][1], 16)
    assert int(section["Characteristics"].split()[0], 16) == 0x40000040


@pytest.mark.parametrize("name", ALL)
def test_sections_checksum_and_image_size_are_consistent(packed, name):
    before, after = pefile.PE(str(PE / name)), pefile.PE(str(packed[name]))
    old, new = before.OPTIONAL_HEADER, after.OPTIONAL_HEADER
    assert len(after.sections) == len(before.sections) + 1
    for a, b in zip(before.sections, after.sections, strict=False):
        assert a.__pack__() == b.__pack__()
        assert a.get_data() == b.get_data()
    ours = after.sections[-1]
    assert after.verify_checksum() and new.CheckSum != 0
    assert new.SizeOfImage == -(-(ours.VirtualAddress + ours.Misc_VirtualSize) // 0x1000) * 0x1000
    assert new.SizeOfInitializedData == old.SizeOfInitializedData + ours.SizeOfRawData
    assert ours.PointerToRawData + ours.SizeOfRawData == len(packed[name].read_bytes())
    assert ours.PointerToRawData % new.FileAlignment == 0
    assert after.FILE_HEADER.NumberOfSections == len(after.sections)
    # Every header byte outside the fields the writer owns is the original's.
    assert after.DOS_HEADER.__pack__() == before.DOS_HEADER.__pack__()
    for field in (
        "SizeOfCode",
        "AddressOfEntryPoint",
        "ImageBase",
        "SizeOfHeaders",
        "DllCharacteristics",
    ):
        assert getattr(new, field) == getattr(old, field)
    for index, (a, b) in enumerate(zip(old.DATA_DIRECTORY, new.DATA_DIRECTORY, strict=True)):
        if index != 0:
            assert (a.VirtualAddress, a.Size) == (b.VirtualAddress, b.Size)


@pytest.mark.parametrize("name", ALL)
def test_bytes_at_the_new_section_are_the_planned_blob(packed, name, tmp_path):
    pe = pefile.PE(str(packed[name]))
    ours = pe.sections[-1]
    data = packed[name].read_bytes()[ours.PointerToRawData :]
    expected = planned_blob(PE / name, tmp_path)
    assert data[: len(expected)] == expected
    modules = decode(expected).blob.modules
    assert (modules[-1].kind, bytes(modules[-1].payload)) == ("cuda_ptx", PAYLOAD)
    if name in FFI:
        assert [m.kind for m in modules[:-1]] == [
            m.kind for m in decode(ORIGINAL_BLOB).blob.modules
        ]


def test_repacking_rewrites_the_section_in_place(packed, tmp_path):
    once = packed["pe_forward.dll"]
    twice = tmp_path / "twice.dll"
    result = pack(once, twice)
    assert result.returncode == 0, result.stderr
    a, b = pefile.PE(str(once)), pefile.PE(str(twice))
    assert [s.Name for s in b.sections] == [s.Name for s in a.sections]
    assert b.sections[-1].VirtualAddress == a.sections[-1].VirtualAddress
    assert pe_exports(twice) == pe_exports(once) | {11: (BLOB, b.sections[-1].VirtualAddress)}
    kinds = [
        m.kind for m in decode(twice.read_bytes()[b.sections[-1].PointerToRawData :]).blob.modules
    ]
    assert kinds.count("cuda_ptx") == 2
    assert b.verify_checksum()


def _with_overlay(source: Path, path: Path) -> bytes:
    """`source` with 100 bytes of data after its last section (as a COFF symbol table)."""
    overlay = b"overlay!" * 12 + b"tail"
    path.write_bytes(source.read_bytes() + overlay)
    return overlay


def test_an_overlay_is_carried_at_its_offset(tmp_path):
    source = tmp_path / "overlay.dll"
    overlay = _with_overlay(PE / "ffi_pe.x86_64.dll", source)
    size = len((PE / "ffi_pe.x86_64.dll").read_bytes())
    out = tmp_path / "out.dll"
    result = pack(source, out)
    assert result.returncode == 0, result.stderr
    data = out.read_bytes()
    assert data[size : size + len(overlay)] == overlay
    pe = pefile.PE(str(out))
    assert pe.sections[-1].PointerToRawData == -(-(size + len(overlay)) // 0x200) * 0x200
    assert pe.verify_checksum()


def _with_certificate(source: Path, path: Path) -> int:
    """`source` with a WIN_CERTIFICATE entry (revision 2, PKCS#7 type) appended and declared in
    the security data directory, as signtool leaves it; returns its file offset."""
    data = bytearray(source.read_bytes())
    offset = len(data)
    entry = struct.pack("<IHH", 24, 0x200, 2) + b"not-pkcs7-data\0\0"
    data += entry
    pe = pefile.PE(data=bytes(data))
    at = pe.OPTIONAL_HEADER.DATA_DIRECTORY[4].get_file_offset()
    struct.pack_into("<II", data, at, offset, len(entry))
    path.write_bytes(bytes(data))
    return offset


@pytest.mark.slow
def test_a_certificate_is_removed_with_a_warning(tmp_path):
    source = tmp_path / "signed.dll"
    offset = _with_certificate(PE / "ffi_pe.x86_64.dll", source)
    assert ffitool("inspect", str(source)).returncode == 0
    out = tmp_path / "out.dll"
    result = pack(source, out)
    assert result.returncode == 0, result.stderr
    assert result.stderr == (
        f"ffitool: warning: {source}: its Authenticode certificate was removed: it signed the"
        " unpacked file; sign the output again to ship a signed DLL\n"
    )
    pe = pefile.PE(str(out))
    security = pe.OPTIONAL_HEADER.DATA_DIRECTORY[4]
    assert (security.VirtualAddress, security.Size) == (0, 0)
    assert pe.sections[-1].PointerToRawData == offset  # the certificate's bytes are gone
    assert b"not-pkcs7-data" not in out.read_bytes()
    assert pe.verify_checksum()


def test_a_force_integrity_dll_losing_its_certificate_says_it_will_not_load(tmp_path):
    source = tmp_path / "signed.dll"
    _with_certificate(PE / "ffi_pe.x86_64.dll", source)
    data = bytearray(source.read_bytes())
    at = pefile.PE(data=bytes(data)).OPTIONAL_HEADER.get_file_offset() + 70
    struct.pack_into("<H", data, at, struct.unpack_from("<H", data, at)[0] | 0x80)
    source.write_bytes(bytes(data))
    result = pack(source, tmp_path / "out.dll")
    assert result.returncode == 0, result.stderr
    assert result.stderr == (
        f"ffitool: warning: {source}: its Authenticode certificate was removed: it signed the"
        " unpacked file; sign the output again to ship a signed DLL (it is flagged"
        " FORCE_INTEGRITY: Windows loads it only once signed)\n"
    )


@pytest.mark.slow
def test_a_dll_without_exports_gets_an_export_directory(tmp_path, wine):
    """With the export data directory emptied, the DLL exports nothing; packed, it exports
    the blob alone, at ordinal 1, and Windows finds it."""
    source = tmp_path / "no_exports.dll"
    data = bytearray((PE / "ffi_pe.x86_64.dll").read_bytes())
    entry = _pe(data).OPTIONAL_HEADER.DATA_DIRECTORY[0]
    struct.pack_into("<II", data, entry.get_file_offset(), 0, 0)
    source.write_bytes(bytes(data))
    out = tmp_path / "out.dll"
    result = pack(source, out)
    assert result.returncode == 0, result.stderr
    pe = pefile.PE(str(out))
    assert pe_exports(out) == {1: (BLOB, pe.sections[-1].VirtualAddress)}
    assert pe.DIRECTORY_ENTRY_EXPORT.struct.Name == 0
    assert pe.verify_checksum()
    result = wine(str(LOADER), str(out))
    assert result.returncode == 0, result.stdout + result.stderr
    expected = planned_blob(source, tmp_path)
    assert result.stdout == f"blob {len(expected)} {expected.hex()}\n"


@pytest.mark.slow
def test_a_name_that_is_not_utf8_is_copied_byte_for_byte(tmp_path):
    source = tmp_path / "latin1.dll"
    data = (PE / "pe_many.dll").read_bytes()
    assert data.count(b"export_1999\0") == 1  # the last name in byte order: it stays last
    source.write_bytes(data.replace(b"export_1999\0", b"export_199\xff\0"))
    out = tmp_path / "out.dll"
    assert pack(source, out).returncode == 0

    def listing(path: Path) -> bytes:  # pefile drops such a name; llvm-readobj prints it
        readobj = require_tool("llvm-readobj")
        return subprocess.run(
            [readobj, "--coff-exports", str(path)], check=True, capture_output=True
        ).stdout

    entry = b"Ordinal: 2002\n  Name: export_199\xff\n  RVA: 0x3F3C\n"
    assert entry in listing(source)
    assert entry in listing(out)


def test_python_api_reports_the_placement(tmp_path):
    path = tmp_path / "in_place.dll"
    path.write_bytes((PE / "pe_many.dll").read_bytes())
    payload = tmp_path / "p.bin"
    payload.write_bytes(PAYLOAD)
    plan = plan_edits(
        existing_modules(path), Edits(add=(("cuda_ptx", payload_source(str(payload))),))
    )
    result = pack_library(path, plan)
    assert result.destination == path
    assert result.warnings == ()
    section = pefile.PE(str(path)).sections[-1]
    assert (result.placement.file_offset, result.placement.address, result.placement.size) == (
        section.PointerToRawData,
        section.VirtualAddress,
        blob_size(plan),
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in_place.dll", "p.bin"]


# --- under wine -------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def wine(tmp_path_factory):
    """A function running a Windows program under wine in a prefix made once per session."""
    command = require_tool("wine")
    env = {
        **os.environ,
        "WINEDEBUG": "-all",
        "WINEPREFIX": str(tmp_path_factory.mktemp("wineprefix")),
        "WINEDLLOVERRIDES": "mscoree,mshtml=",  # no Mono or Gecko installer prompts
    }

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [command, *args], env=env, capture_output=True, text=True, timeout=300
        )

    # A persistent server, and wineboot's background processes started with no pipes to
    # inherit: else each run's output stays open until they exit, seconds after the program.
    quiet = {"env": env, "stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    server = require_tool("wineserver")
    subprocess.run([server, "-p"], **quiet, timeout=60, check=True)
    started = time.monotonic()
    subprocess.run([command, "wineboot", "-i"], **quiet, timeout=300, check=True)
    print(f"wineboot: {time.monotonic() - started:.1f} s")
    yield run
    subprocess.run([server, "-k"], **quiet, timeout=60)


def _loaded(wine, dll: Path, function: str) -> tuple[bytes | None, str]:
    result = wine(str(LOADER), str(dll), function)
    assert result.returncode == 0, result.stdout + result.stderr
    blob_line, call_line = result.stdout.splitlines()
    fields = blob_line.split()
    if fields == ["blob", "none"]:
        return None, call_line
    assert fields[0] == "blob"
    data = bytes.fromhex(fields[2])
    assert len(data) == int(fields[1])
    return data, call_line


@pytest.mark.parametrize(
    ("name", "function"),
    [
        ("ffi_pe.x86_64.dll", "__tvm_ffi_add_one"),
        ("pe_many.dll", "__tvm_ffi_add_one"),
        ("pe_forward.dll", "__tvm_ffi_main"),
    ],
)
@pytest.mark.slow
def test_windows_loads_the_packed_blob_and_the_functions(wine, packed, tmp_path, name, function):
    original, call = _loaded(wine, PE / name, function)
    expected_call = f"call {function} 0 1 {42}"
    assert call == expected_call
    assert original == (ORIGINAL_BLOB if name in FFI else None)
    blob, call = _loaded(wine, packed[name], function)
    assert call == expected_call
    assert blob == planned_blob(PE / name, tmp_path)


@pytest.mark.slow
def test_windows_loads_repacked_and_overlay_dlls(wine, packed, tmp_path):
    twice = tmp_path / "twice.dll"
    assert pack(packed["ffi_pe.x86_64.dll"], twice).returncode == 0
    blob, call = _loaded(wine, twice, "__tvm_ffi_add_one")
    assert call == "call __tvm_ffi_add_one 0 1 42"
    assert blob == planned_blob(packed["ffi_pe.x86_64.dll"], tmp_path)
    source = tmp_path / "overlay.dll"
    _with_overlay(PE / "ffi_pe.x86_64.dll", source)
    out = tmp_path / "overlay-packed.dll"
    assert pack(source, out).returncode == 0
    blob, call = _loaded(wine, out, "__tvm_ffi_add_one")
    assert call == "call __tvm_ffi_add_one 0 1 42"
    assert blob == planned_blob(source, tmp_path)


# --- inputs that cannot be packed -------------------------------------------------------------


def _mutant(tmp_path: Path, name: str, edit) -> Path:
    data = bytearray((PE / name).read_bytes())
    edit(data)
    path = tmp_path / name
    path.write_bytes(bytes(data))
    return path


def _pe(data: bytearray) -> pefile.PE:
    return pefile.PE(data=bytes(data), fast_load=True)


def _set(data: bytearray, structure, field: str, value: int) -> None:
    """Set one header field, where pefile says its structure is."""
    setattr(structure, field, value)
    raw = structure.__pack__()
    data[structure.get_file_offset() : structure.get_file_offset() + len(raw)] = raw


def _table_end(data: bytearray) -> int:
    pe = _pe(data)
    return pe.sections[-1].get_file_offset() + 40


def _headers_end(data: bytearray) -> None:
    _set(data, _pe(data).OPTIONAL_HEADER, "SizeOfHeaders", _table_end(data))


def _slot_in_use(data: bytearray) -> None:
    data[_table_end(data) + 12] = 1


def _trailing_certificate(data: bytearray) -> None:
    offset = len(data)
    data += struct.pack("<IHH", 16, 0x200, 2) + b"12345678" + b"trailing"
    at = _pe(data).OPTIONAL_HEADER.DATA_DIRECTORY[4].get_file_offset()
    struct.pack_into("<II", data, at, offset, 16)


def _last_ordinal(data: bytearray) -> None:
    pe = pefile.PE(data=bytes(data))
    export = pe.DIRECTORY_ENTRY_EXPORT.struct
    _set(data, export, "Base", 0x10000 - export.NumberOfFunctions)


def _not_a_dll(data: bytearray) -> None:
    pe = _pe(data)
    _set(data, pe.FILE_HEADER, "Characteristics", pe.FILE_HEADER.Characteristics & ~0x2000)


@pytest.mark.parametrize(
    ("name", "edit", "message"),
    [
        (
            "ffi_pe.x86_64.dll",
            _headers_end,
            "cannot pack this PE file: no room for another section header before the first"
            " section's data (624 > 584)",
        ),
        (
            "ffi_pe.x86_64.dll",
            _slot_in_use,
            "cannot pack this PE file: the bytes after the section table are in use",
        ),
        (
            "ffi_pe.x86_64.dll",
            _trailing_certificate,
            "cannot pack this PE file: 8 bytes follow the certificate table",
        ),
        ("pe_many.dll", _last_ordinal, "cannot pack this PE file: no ordinal is free after 65535"),
        (
            "ffi_pe.x86_64.dll",
            _not_a_dll,
            "only ELF shared libraries, Mach-O dylibs and bundles and PE DLLs can be packed",
        ),
    ],
)
def test_unpackable_inputs_are_one_line_errors_and_left_intact(tmp_path, name, edit, message):
    path = _mutant(tmp_path, name, edit)
    before = path.read_bytes()
    result = pack(path, path)  # in place
    assert result.returncode == 3, result.stderr
    assert result.stderr == f"ffitool: error: {path}: {message}\n"
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([name, "payload.bin"])


def test_mach_o_options_are_usage_errors_for_a_dll(tmp_path):
    result = pack(PE / "pe_many.dll", tmp_path / "out.dll", "--arch=x86_64")
    assert result.returncode == 2
    assert result.stderr == (
        f"ffitool: error: {PE / 'pe_many.dll'}: --arch and --signature apply to Mach-O files only\n"
    )


# --- the verifier: each promise broken on purpose ---------------------------------------------


def _write(tmp_path: Path, source: Path):
    """A packed copy written by the writer, with what verify_pe needs to judge it."""
    payload = tmp_path / "payload.bin"
    payload.write_bytes(PAYLOAD)
    plan: Plan = plan_edits(
        existing_modules(source), Edits(add=(("cuda_ptx", payload_source(str(payload))),))
    )
    out = tmp_path / f"staged-{source.name}"
    with open(source, "rb") as handle, open(out, "w+b") as staged:
        edit = plan_pe_edit(
            handle.fileno(), os.fstat(handle.fileno()).st_size, str(source), blob_size(plan)
        )
        write_pe_edit(
            str(source), staged.fileno(), edit, lambda fd, offset: write_blob(fd, offset, plan)
        )
    verify_output(PePacker(), out, source, plan, edit)  # the unbroken file passes
    return out, plan, edit


def _edit(path: Path, change) -> None:
    data = bytearray(path.read_bytes())
    change(data)
    path.write_bytes(bytes(data))


def _flip(data: bytearray, offset: int) -> None:
    data[offset] ^= 0x55


def _section(data: bytearray, name: bytes):
    return next(s for s in _pe(data).sections if s.Name.rstrip(b"\0") == name)


def _export_tables(data: bytearray):
    pe = pefile.PE(data=bytes(data))
    return pe, pe.DIRECTORY_ENTRY_EXPORT.struct


def _rva_offset(data: bytearray, rva: int) -> int:
    return _pe(data).get_offset_from_rva(rva)


def _break_code(data: bytearray) -> None:
    _flip(data, _section(data, b".text").PointerToRawData + 3)


def _break_payload(data: bytearray) -> None:
    section = _section(data, b".tvmffi")
    blob = data[section.PointerToRawData :]
    _flip(data, section.PointerToRawData + blob.index(PAYLOAD) + len(PAYLOAD) - 1)


def _break_section_header(data: bytearray) -> None:
    section = _section(data, b".rdata")
    _set(data, section, "Characteristics", section.Characteristics | 0x80000000)


def _break_size_of_image(data: bytearray) -> None:
    header = _pe(data).OPTIONAL_HEADER
    _set(data, header, "SizeOfImage", header.SizeOfImage + 0x1000)


def _break_initialized_data(data: bytearray) -> None:
    header = _pe(data).OPTIONAL_HEADER
    _set(data, header, "SizeOfInitializedData", header.SizeOfInitializedData + 0x200)


def _break_import_directory(data: bytearray) -> None:
    entry = _pe(data).OPTIONAL_HEADER.DATA_DIRECTORY[2]  # resources: unused, any change counts
    struct.pack_into("<I", data, entry.get_file_offset(), 0x1234)


def _break_forwarder(data: bytearray) -> None:
    _, export = _export_tables(data)
    (rva,) = struct.unpack_from("<I", data, _rva_offset(data, export.AddressOfFunctions + 4 * 1))
    _flip(data, _rva_offset(data, rva))  # ordinal 3's forwarder string, first byte


def _name_slots(data: bytearray) -> tuple[int, int, list[bytes]]:
    pe, export = _export_tables(data)
    names_at = _rva_offset(data, export.AddressOfNames)
    ordinals_at = _rva_offset(data, export.AddressOfNameOrdinals)
    names = [
        pe.get_string_at_rva(struct.unpack_from("<I", data, names_at + 4 * n)[0])
        for n in range(export.NumberOfNames)
    ]
    return names_at, ordinals_at, names


def _break_name_ordinal(data: bytearray) -> None:
    _, ordinals_at, names = _name_slots(data)
    index = names.index(b"plain_data")
    struct.pack_into("<H", data, ordinals_at + 2 * index, 0)


def _break_sorting(data: bytearray) -> None:
    names_at, ordinals_at, _ = _name_slots(data)
    for at, width in ((names_at, 4), (ordinals_at, 2)):
        first, second = data[at : at + width], data[at + width : at + 2 * width]
        data[at : at + 2 * width] = second + first


def _break_added_name(data: bytearray) -> None:
    names_at, _, names = _name_slots(data)
    index = names.index(b"plain_data")
    (rva,) = struct.unpack_from("<I", data, names_at + 4 * index)
    data[_rva_offset(data, rva) + len(b"plain_dat")] = ord("b")


def _break_base(data: bytearray) -> None:
    _, export = _export_tables(data)
    _set(data, export, "Base", export.Base + 1)


def _break_function_count(data: bytearray) -> None:
    _, export = _export_tables(data)
    _set(data, export, "NumberOfFunctions", export.NumberOfFunctions + 1)


def _break_blob_export(data: bytearray) -> None:
    """Point the blob's export back at the blob the DLL was linked with (in .rdata)."""
    original = pefile.PE(str(PE / "ffi_pe.x86_64.dll"))
    (old,) = [e.address for e in original.DIRECTORY_ENTRY_EXPORT.symbols if e.name == BLOB]
    pe, export = _export_tables(data)
    ordinal = next(e.ordinal for e in pe.DIRECTORY_ENTRY_EXPORT.symbols if e.name == BLOB)
    at = _rva_offset(data, export.AddressOfFunctions + 4 * (ordinal - export.Base))
    struct.pack_into("<I", data, at, old)


def _break_export_range(data: bytearray) -> None:
    entry = _pe(data).OPTIONAL_HEADER.DATA_DIRECTORY[0]
    struct.pack_into("<I", data, entry.get_file_offset() + 4, entry.Size + 0x1000)


def _break_section_flags(data: bytearray) -> None:
    section = _section(data, b".tvmffi")
    _set(data, section, "Characteristics", section.Characteristics | 0x80000000)


def _break_virtual_size(data: bytearray) -> None:
    """VirtualSize past the section's file bytes: the loader would map zeros after them.
    (A VirtualSize short of the blob is caught before, by the reader: the export directory,
    after the blob, would lie past the section's mapped bytes.)"""
    section = _section(data, b".tvmffi")
    _set(data, section, "Misc_VirtualSize", section.SizeOfRawData + 1)


def _break_mapping(data: bytearray) -> None:
    """VirtualSize short of the export directory: the reader, run first, refuses the file."""
    _set(data, _section(data, b".tvmffi"), "Misc_VirtualSize", 16)


def _break_ordinal_index(data: bytearray) -> None:
    """A name's ordinal index past the address table, which the reader does not look at (the
    name is not an FFI one) but the export comparison does."""
    _, ordinals_at, _ = _name_slots(data)
    struct.pack_into("<H", data, ordinals_at, _export_tables(data)[1].NumberOfFunctions + 5)


def _break_header_position(data: bytearray) -> None:
    """The PE headers, whole, 8 bytes earlier (over the DOS stub): consistent, but moved."""
    pe = _pe(data)
    lfanew, end = pe.DOS_HEADER.e_lfanew, _table_end(data)
    data[lfanew - 8 : end - 8] = data[lfanew:end]
    data[end - 8 : end] = bytes(8)
    struct.pack_into("<I", data, 60, lfanew - 8)


def _break_section_count(data: bytearray) -> None:
    """One more (all-zero) section header counted after .tvmffi's."""
    header = _pe(data).FILE_HEADER
    _set(data, header, "NumberOfSections", header.NumberOfSections + 1)


def _break_section_address(data: bytearray) -> None:
    """.tvmffi one page higher, with every RVA in its export directory moved along: the blob
    is still found at its file offset, through a consistent export directory."""
    pe = pefile.PE(data=bytes(data))
    section = pe.sections[-1]
    low, high = section.VirtualAddress, section.VirtualAddress + section.Misc_VirtualSize
    export = pe.DIRECTORY_ENTRY_EXPORT.struct
    for table, count in ((export.AddressOfFunctions, export.NumberOfFunctions),
                         (export.AddressOfNames, export.NumberOfNames)):  # fmt: skip
        at = pe.get_offset_from_rva(table)
        for index in range(count):
            (rva,) = struct.unpack_from("<I", data, at + 4 * index)
            if low <= rva < high:
                struct.pack_into("<I", data, at + 4 * index, rva + 0x1000)
    for name in ("Name", "AddressOfFunctions", "AddressOfNames", "AddressOfNameOrdinals"):
        _set(data, export, name, getattr(export, name) + 0x1000)
    entry = pe.OPTIONAL_HEADER.DATA_DIRECTORY[0]
    struct.pack_into("<I", data, entry.get_file_offset(), entry.VirtualAddress + 0x1000)
    _set(data, _section(data, b".tvmffi"), "VirtualAddress", low + 0x1000)


def _break_raw_alignment(data: bytearray) -> None:
    section = _section(data, b".tvmffi")
    _set(data, section, "SizeOfRawData", section.SizeOfRawData + 1)


def _break_raw_end(data: bytearray) -> None:
    section = _section(data, b".tvmffi")
    _set(data, section, "SizeOfRawData", section.SizeOfRawData + 0x200)


def _break_export_stamp(data: bytearray) -> None:
    _, export = _export_tables(data)
    _set(data, export, "TimeDateStamp", export.TimeDateStamp + 1)


def _break_size(data: bytearray) -> None:
    data += b"\0"


def _break_checksum(data: bytearray) -> None:
    header = _pe(data).OPTIONAL_HEADER
    _set(data, header, "CheckSum", header.CheckSum ^ 1)


def _break_certificate(data: bytearray) -> None:
    section = _section(data, b".tvmffi")
    offset = section.PointerToRawData + section.SizeOfRawData - 16
    data[offset : offset + 16] = struct.pack("<IHH", 16, 0x200, 2) + b"12345678"
    entry = _pe(data).OPTIONAL_HEADER.DATA_DIRECTORY[4]
    struct.pack_into("<II", data, entry.get_file_offset(), offset, 16)


@pytest.mark.parametrize(
    ("breaker", "message"),
    [
        (_break_code, "the bytes of section .text changed"),
        (_break_payload, "payload bytes differ from the source"),
        (_break_section_header, r"section header 1 \(.rdata\) changed"),
        (_break_size_of_image, "SizeOfImage is 0x9000, the sections end at 0x8000"),
        (_break_initialized_data, "SizeOfInitializedData is"),
        (_break_import_directory, "the headers changed between offsets"),
        (_break_forwarder, "ordinal 3 resolves to"),
        (_break_name_ordinal, "export 'plain_data' names another ordinal than before"),
        (_break_sorting, "the export name table is not sorted"),
        (_break_added_name, "exports other than the blob's were added or dropped"),
        (_break_base, "the ordinal base changed from 2 to 3"),
        (_break_function_count, "the export address table gained or lost entries"),
        (_break_export_range, "the export directory is not in .tvmffi after the blob"),
        (_break_section_flags, "the last section is not a read-only .tvmffi"),
        (_break_mapping, "malformed PE: export directory at RVA 0x7560 runs past the file bytes"),
        (_break_ordinal_index, "verification: export name 0 has ordinal index 15, past the"),
        (_break_header_position, "the PE header moved or changed kind"),
        (_break_section_count, "6 sections, expected 5"),
        (_break_section_address, ".tvmffi is not at the blob's RVA and file offset"),
        (_break_raw_alignment, ".tvmffi's file bytes are not aligned to FileAlignment"),
        (_break_raw_end, ".tvmffi's file bytes do not follow the original's and end the file"),
        (_break_export_stamp, "the export directory's name, time stamp or version changed"),
        (
            _break_virtual_size,
            r"^packed file failed verification: .tvmffi's VirtualSize 10241 is not between the"
            r" blob's 9568 bytes and the section's 10240 file bytes$",
        ),
        (_break_size, "the file has"),
        (_break_checksum, "the optional header's CheckSum is"),
        (_break_certificate, "a certificate table is still declared"),
    ],
)
def test_the_verifier_catches_each_broken_promise(tmp_path, breaker, message):
    source = PE / "pe_forward.dll"
    out, plan, edit = _write(tmp_path, source)
    _edit(out, breaker)
    with pytest.raises(VerificationError, match=message):
        verify_output(PePacker(), out, source, plan, edit)


def test_the_verifier_catches_a_blob_export_pointing_elsewhere(tmp_path):
    source = PE / "ffi_pe.x86_64.dll"
    out, plan, edit = _write(tmp_path, source)
    _edit(out, _break_blob_export)
    with pytest.raises(VerificationError, match="blob at file offset 1568, planned 3584"):
        verify_output(PePacker(), out, source, plan, edit)


def test_the_verifier_catches_a_changed_overlay(tmp_path):
    source = tmp_path / "overlay.dll"
    _with_overlay(PE / "ffi_pe.x86_64.dll", source)
    out, plan, edit = _write(tmp_path, source)
    _edit(out, lambda data: _flip(data, edit.kept - 1))
    with pytest.raises(VerificationError, match="the bytes outside the sections changed"):
        verify_output(PePacker(), out, source, plan, edit)


@pytest.mark.slow
def test_packing_is_deterministic(tmp_path):
    first, second = tmp_path / "first.dll", tmp_path / "second.dll"
    assert pack(PE / "ffi_pe.x86_64.dll", first).returncode == 0
    assert pack(PE / "ffi_pe.x86_64.dll", second).returncode == 0
    assert first.read_bytes() == second.read_bytes()
