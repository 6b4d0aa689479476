"""Packing DLLs whose headers lie: every value the writer sets must fit its field, alignments
the PE/COFF specification forbids are refused, and the output stays within its stated bound.

The hosts are the zig-built DLLs of fixtures/bin/pe, patched here with struct. A refusal is one
line naming the file and the field, exit 3, and no output file; an accepted hostile header
yields a DLL no larger than `pe_writer`'s bound:

    output <= input + blob + E + 2 x (FileAlignment - 1) + 7 <= 2 x input + blob + 131,150

where E is the rebuilt export directory.
"""

from __future__ import annotations

import os
import re
import resource
import struct
import subprocess
from pathlib import Path

import pefile
import pytest
from conftest import ffitool
from test_pe_pack import PAYLOAD, PE, _pe, _set, planned_blob

from ffitool.errors import InputError
from ffitool.formats.pe.writer import pe_checksum, plan_pe_edit

# Packs fixtures/bin/pe files themselves: one worker runs them (see conftest.py).
pytestmark = pytest.mark.xdist_group("packs-pe-fixtures")

HOST = PE / "ffi_pe.x86_64.dll"
BOUND = 2 * (0x10000 - 1) + 7 + 73
"""The most the output exceeds input + blob + the input's export tables and strings by."""


def _patched(tmp_path: Path, edit, name: str = "ffi_pe.x86_64.dll") -> Path:
    data = bytearray((PE / name).read_bytes())
    edit(data)
    path = tmp_path / f"hostile-{name}"
    path.write_bytes(bytes(data))
    return path


def _pack(source: Path, out: Path, payload: Path | None = None) -> subprocess.CompletedProcess:
    if payload is None:
        payload = out.parent / "payload.bin"
        payload.write_bytes(PAYLOAD)
    return ffitool("pack", str(source), "--add", f"cuda_ptx:{payload}", "-o", str(out))


def _optional(**fields: int):
    """An edit setting optional-header fields."""

    def edit(data: bytearray) -> None:
        for field, value in fields.items():
            _set(data, _pe(data).OPTIONAL_HEADER, field, value)

    return edit


def _last_section_at(rva: int):
    """An edit moving the last section (.pdata, 0x48 bytes at RVA 0x5000) to `rva`."""

    def edit(data: bytearray) -> None:
        _set(data, _pe(data).sections[-1], "VirtualAddress", rva)

    return edit


def _refused(tmp_path: Path, source: Path, message: str) -> None:
    out = tmp_path / "out.dll"
    result = _pack(source, out)
    assert (result.returncode, result.stderr) == (
        3,
        f"ffitool: error: {source}: cannot pack this PE file: {message}\n",
    )
    assert not out.exists()


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        (  # the case: a 3.5 KB DLL became a 2 GiB output
            {"FileAlignment": 0x40000000},
            "FileAlignment 0x40000000 is outside 0x200..0x10000",
        ),
        ({"FileAlignment": 0x100}, "FileAlignment 0x100 is outside 0x200..0x10000"),
        ({"FileAlignment": 0x300}, "FileAlignment 0x300 is not a power of 2"),
        ({"FileAlignment": 0}, "FileAlignment 0x0 is not a power of 2"),
        ({"SectionAlignment": 0}, "SectionAlignment 0x0 is not a power of 2"),
        ({"SectionAlignment": 0x3000}, "SectionAlignment 0x3000 is not a power of 2"),
        (
            {"SectionAlignment": 0x800},
            "FileAlignment 0x200 differs from SectionAlignment 0x800, which is below the page size",
        ),
        (
            {"FileAlignment": 0x10000},
            "SectionAlignment 0x1000 is below FileAlignment 0x10000",
        ),
    ],
)
def test_alignments_the_specification_forbids_are_refused(tmp_path, fields, message):
    _refused(tmp_path, _patched(tmp_path, _optional(**fields)), message)


def test_a_last_section_near_4_gib_is_refused(tmp_path):
    """The issue's case: .tvmffi would start at RVA 0xFFFFF000, its blob run past 4 GiB."""
    source = _patched(tmp_path, _last_section_at(0xFFFFE000))
    end = 0xFFFFF000 + -(-len(planned_blob(source, tmp_path)) // 8) * 8
    _refused(
        tmp_path,
        source,
        f"the export directory's RVA would be {end:#x}, which its 32-bit field cannot hold",
    )


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            _last_section_at(0xFFFFF000),
            ".tvmffi's VirtualAddress would be 0x100000000, which its 32-bit field cannot hold",
        ),
        (
            _optional(SizeOfInitializedData=0xFFFFFE00),
            "SizeOfInitializedData would be 0x100002600, which its 32-bit field cannot hold",
        ),
    ],
)
def test_header_fields_that_would_overflow_are_refused(tmp_path, edit, message):
    _refused(tmp_path, _patched(tmp_path, edit), message)


def _plan(path: Path, blob_size: int, size: int | None = None):
    with open(path, "rb") as handle:
        fd = handle.fileno()
        return plan_pe_edit(fd, os.fstat(fd).st_size if size is None else size, "x.dll", blob_size)


@pytest.mark.parametrize(
    ("blob_size", "message"),
    [
        (  # the blob alone: no payload is read to find this out
            1 << 32,
            "a blob of 4294967296 bytes does not fit in a section: .tvmffi's VirtualSize is a"
            " 32-bit field",
        ),
        (0x1000, "the export directory's RVA would be 0x100000000"),
        (0xFF8, "the export directory's end RVA would be 0x1000000"),
        (0x100, "SizeOfImage would be 0x100000000"),
    ],
)
def test_a_blob_that_would_end_past_4_gib_is_refused_before_anything_is_read(
    tmp_path, blob_size, message
):
    source = _patched(tmp_path, _last_section_at(0xFFFFE000))  # .tvmffi at RVA 0xFFFFF000
    with pytest.raises(
        InputError, match="^" + re.escape(f"x.dll: cannot pack this PE file: {message}")
    ):
        _plan(source, blob_size)


def test_a_payload_over_4_gib_is_refused_by_the_command_line(tmp_path):
    payload = tmp_path / "huge.bin"
    with open(payload, "wb") as handle:
        handle.truncate(5 << 30)  # sparse: no disk, and refused before it is read
    out = tmp_path / "out.dll"
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    result = _pack(HOST, out, payload)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    assert result.returncode == 3, result.stderr
    assert result.stderr.startswith(f"ffitool: error: {HOST}: cannot pack this PE file: a blob of")
    assert result.stderr.endswith(
        "bytes does not fit in a section: .tvmffi's VirtualSize is a 32-bit field\n"
    )
    assert not out.exists()
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    assert cpu < 60  # reading 5 GiB would cost far more; generous for a busy machine


@pytest.mark.parametrize(
    ("size", "message"),
    [
        ((1 << 32) + 1, ".tvmffi's PointerToRawData would be 0x100000200"),
        (0xFFFFF000, "the end of .tvmffi's file bytes would be 0x100000200"),
    ],
)
def test_an_input_ending_near_4_gib_is_refused(tmp_path, size, message):
    """A sparse overlay makes the file that large; .tvmffi's file offset must fit 32 bits."""
    source = tmp_path / "large.dll"
    source.write_bytes(HOST.read_bytes())
    os.truncate(source, size)
    with pytest.raises(
        InputError, match="^" + re.escape(f"x.dll: cannot pack this PE file: {message}")
    ):
        _plan(source, 0x1000)


def test_a_certificate_past_the_end_of_the_file_is_refused(tmp_path):
    """`inspect` refuses it first on the command line; the writer does not rely on that."""
    size = HOST.stat().st_size

    def edit(data: bytearray) -> None:
        at = _pe(data).OPTIONAL_HEADER.DATA_DIRECTORY[4].get_file_offset()
        struct.pack_into("<II", data, at, size - 8, 16)

    with pytest.raises(
        InputError,
        match=r"^x.dll: cannot pack this PE file: the certificate table ends past the file's"
        rf" end \({size} bytes\)$",
    ):
        _plan(_patched(tmp_path, edit), 0x400)


def _overlapping_names(data: bytearray) -> None:
    """Every name of pe_many.dll (2,000) pointing one byte further into one long string: copied
    out name by name, they would take 2,000 x 10,000 bytes from a 60 KB file."""
    pe = pefile.PE(data=bytes(data))
    export = pe.DIRECTORY_ENTRY_EXPORT.struct
    names_at = pe.get_offset_from_rva(export.AddressOfNames)
    (first,) = struct.unpack_from("<I", data, names_at)
    start = pe.get_offset_from_rva(first)
    data[start : start + 12_001] = b"e" * 12_000 + b"\0"
    for index in range(export.NumberOfNames):
        struct.pack_into("<I", data, names_at + 4 * index, first + index)


def test_export_names_sharing_bytes_are_refused(tmp_path):
    source = _patched(tmp_path, _overlapping_names, "pe_many.dll")
    _refused(
        tmp_path,
        source,
        "the export tables and strings take more bytes than the file holds: they overlap",
    )


def _exports_size(path: Path) -> int:
    directory = pefile.PE(str(path), fast_load=True).OPTIONAL_HEADER.DATA_DIRECTORY[0]
    return directory.Size


@pytest.mark.parametrize(
    ("name", "fields"),
    [
        ("ffi_pe.x86_64.dll", {"FileAlignment": 0x10000, "SectionAlignment": 0x10000}),
        ("ffi_pe.x86_64.dll", {"FileAlignment": 0x200, "SectionAlignment": 0x200}),
        ("ffi_pe.x86_64.dll", {"FileAlignment": 1, "SectionAlignment": 1}),
        ("ffi_pe.x86_64.dll", {"FileAlignment": 0x10000, "SectionAlignment": 0x10000000}),
        ("pe_many.dll", {"FileAlignment": 0x10000, "SectionAlignment": 0x10000}),
        ("pe_forward.dll", {"SectionAlignment": 0x40000000}),
    ],
)
@pytest.mark.slow
def test_the_output_stays_within_its_bound_whatever_the_alignments(tmp_path, name, fields):
    """Alignments the specification allows, however odd, are packed, and the output is no
    larger than the input, the blob, the rebuilt export directory and the padding."""
    source = _patched(tmp_path, _optional(**fields), name)
    out = tmp_path / "out.dll"
    payload = tmp_path / "payload.bin"
    payload.write_bytes(PAYLOAD)
    result = _pack(source, out, payload)
    assert result.returncode == 0, result.stderr
    pe = pefile.PE(str(out))
    assert pe.verify_checksum()
    size, blob = source.stat().st_size, len(planned_blob(source, tmp_path))
    padding = 2 * (pe.OPTIONAL_HEADER.FileAlignment - 1) + 7
    assert out.stat().st_size <= size + blob + _exports_size(out) + padding
    assert out.stat().st_size <= 2 * size + blob + BOUND


def _sections(count: int):
    """An edit giving the DLL `count` sections: its section bytes move 4 KiB further to make
    room in the headers, and empty sections follow the last one."""

    def edit(data: bytearray) -> None:
        pe = _pe(data)
        header = pe.OPTIONAL_HEADER
        moved = header.SizeOfHeaders
        for section in pe.sections:
            if section.SizeOfRawData:
                _set(data, section, "PointerToRawData", section.PointerToRawData + 0x1000)
        _set(data, header, "SizeOfHeaders", moved + 0x1000)
        data[moved:moved] = bytes(0x1000)
        last = pe.sections[-1]
        table_end = last.get_file_offset() + 40
        rva = last.VirtualAddress + 0x1000
        added = count - len(pe.sections)
        for index in range(added):
            entry = struct.pack("<8sIIIIIIHHI", b".e%d" % index, 0x10, rva + 0x1000 * index,
                                *(0, 0, 0, 0, 0, 0, 0x40000040))  # fmt: skip
            data[table_end + 40 * index : table_end + 40 * (index + 1)] = entry
        _set(data, pe.FILE_HEADER, "NumberOfSections", count)
        _set(data, header, "SizeOfImage", rva + 0x1000 * added)

    return edit


@pytest.mark.slow
def test_a_dll_with_96_sections_is_refused_and_one_with_95_packs(tmp_path):
    """96 is the most the PE specification lets the loader take, and the most ffitool reads."""
    _refused(
        tmp_path,
        _patched(tmp_path, _sections(96)),
        "it has 96 sections: a new one would pass the PE specification's 96",
    )
    result = _pack(_patched(tmp_path, _sections(95)), tmp_path / "out.dll")
    assert result.returncode == 0, result.stderr
    assert len(pefile.PE(str(tmp_path / "out.dll")).sections) == 96


# --- every other refusal of the writer ------------------------------------------------------


def _optional_size(size: int, count: int | None = None):
    """An edit shrinking the optional header to `size` bytes (the section table moves up with
    it, as a linker would lay it out), and setting NumberOfRvaAndSizes to `count`."""

    def edit(data: bytearray) -> None:
        pe = _pe(data)
        at, old = pe.OPTIONAL_HEADER.get_file_offset(), pe.FILE_HEADER.SizeOfOptionalHeader
        table = data[at + old : at + old + 40 * pe.FILE_HEADER.NumberOfSections]
        data[at + size : at + old + len(table)] = table + bytes(old - size)
        _set(data, pe.FILE_HEADER, "SizeOfOptionalHeader", size)
        if count is not None:
            struct.pack_into("<I", data, at + 108, count)

    return edit


def _ordinal_past_the_exports(data: bytearray) -> None:
    """The first name's ordinal index past the address table (the name is not an FFI one, so
    the reader, which looks up FFI names only, does not see it)."""
    pe = pefile.PE(data=bytes(data))
    export = pe.DIRECTORY_ENTRY_EXPORT.struct
    at = pe.get_offset_from_rva(export.AddressOfNameOrdinals)
    struct.pack_into("<H", data, at, export.NumberOfFunctions + 5)


def _section_past_the_end(data: bytearray) -> None:
    section = _pe(data).sections[-1]
    _set(data, section, "SizeOfRawData", section.SizeOfRawData + 0x200)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (_optional_size(108), "an optional header of 108 bytes has no data directories"),
        (_optional_size(152, 16), "16 data directories do not fit in the optional header"),
        (_optional_size(144, 4), "only 4 data directories: no export directory"),
        (_ordinal_past_the_exports, "export name 0 has ordinal index 14, past the exports"),
        (_section_past_the_end, "section .pdata's bytes run past the file's end"),
    ],
)
def test_inputs_the_writer_cannot_lay_out_are_refused(tmp_path, edit, message):
    _refused(tmp_path, _patched(tmp_path, edit, "pe_forward.dll"), message)


@pytest.fixture
def packed_once(tmp_path) -> Path:
    out = tmp_path / "once.dll"
    assert _pack(PE / "pe_forward.dll", out).returncode == 0
    return out


@pytest.mark.slow
def test_a_packed_dll_with_data_after_its_section_is_not_repacked(tmp_path, packed_once):
    with open(packed_once, "ab") as handle:
        handle.write(b"overlay!")
    _refused(tmp_path, packed_once, "data follows the .tvmffi section")


@pytest.mark.slow
def test_a_packed_dll_whose_directory_points_into_its_section_is_not_repacked(
    tmp_path, packed_once
):
    """Rewriting .tvmffi would pull the data from under the debug directory pointing there."""
    data = bytearray(packed_once.read_bytes())
    pe = _pe(data)
    entry = pe.OPTIONAL_HEADER.DATA_DIRECTORY[6]
    struct.pack_into("<II", data, entry.get_file_offset(), pe.sections[-1].VirtualAddress, 28)
    packed_once.write_bytes(bytes(data))
    _refused(tmp_path, packed_once, "data directory 6 points into .tvmffi")


def test_a_read_error_is_one_line(tmp_path):
    """What the OS says, not a traceback: here the descriptor is a directory's."""
    fd = os.open(tmp_path, os.O_RDONLY)
    try:
        with pytest.raises(InputError, match=r"^x.dll: read error: Is a directory$"):
            plan_pe_edit(fd, 4096, "x.dll", 0x100)
    finally:
        os.close(fd)


def test_the_checksum_refuses_a_file_that_shrank(tmp_path):
    path = tmp_path / "short.dll"
    path.write_bytes(HOST.read_bytes())
    with open(path, "rb") as handle, pytest.raises(OSError, match="the file shrank"):
        pe_checksum(handle.fileno(), path.stat().st_size + 1, 0xD8)
