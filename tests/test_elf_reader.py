"""The ELF and archive readers agree with readelf, across classes, endiannesses and machines."""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys

import pytest
from conftest import ELF_FIXTURES, FIXTURES, ffitool, require_tool

from ffitool.blob import Blob, Module, encode
from ffitool.errors import InputError
from ffitool.formats import SymbolTable, read_object
from ffitool.symbols import classify

_ROW = re.compile(
    r"^\s*\d+:\s+([0-9a-f]+)\s+(\S+)\s+(\S+)\s+(\S+)\s+(\S+)\s+(?:\[[^\]]*\]\s+)?(\S+)\s+(\S+)$"
)
_TABLE = re.compile(r"^Symbol table '\.(dynsym|symtab)'")


def readelf_symbols(path) -> dict[tuple[str | None, str, str], tuple]:
    """FFI symbols as readelf prints them, keyed by (archive member, table, name)."""
    readelf = require_tool("readelf")
    out = subprocess.run(
        [readelf, "-W", "--syms", "--dyn-syms", str(path)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    member = None
    table = ""
    found = {}
    for line in out.splitlines():
        if line.startswith("File: "):
            member = line[line.index("(") + 1 : -1]
        elif m := _TABLE.match(line):
            table = m.group(1)
        elif m := _ROW.match(line):
            value, size, kind, bind, vis, ndx, name = m.groups()
            if name in classify([name]) or classify([name, "mylib___tvm_ffi__library_bin"]).get(
                name
            ):
                found[(member, table, name)] = (
                    int(value, 16),
                    int(size, 0),
                    kind,
                    bind,
                    vis,
                    ndx != "UND",
                )
    return found


def ffitool_symbols(path) -> dict[tuple[str | None, str, str], tuple]:
    with open(path, "rb") as handle:
        obj = read_object(handle, path.stat().st_size, str(path))
    found = {}
    for image in obj.images:
        names = classify(s.name for s in image.symbols)
        for s in image.symbols:
            if s.name in names:
                found[(image.member, s.table.value, s.name)] = (
                    s.address,
                    s.size,
                    s.type,
                    s.binding,
                    s.visibility,
                    s.defined,
                )
    return found


@pytest.mark.parametrize("name", ELF_FIXTURES)
def test_every_ffi_symbol_matches_readelf(name):
    path = FIXTURES / name
    expected = readelf_symbols(path)
    assert ffitool_symbols(path) == expected
    if name != "libplain.so":
        assert expected, "the fixture should have FFI symbols"


@pytest.mark.parametrize(
    ("name", "machine", "bits", "endianness"),
    [
        ("libffi_c.so", "x86-64", 64, "little"),
        ("libffi_c.aarch64.so", "aarch64", 64, "little"),
        ("libffi_c.arm32.so", "arm", 32, "little"),
        ("libffi_c.ppc64be.so", "ppc64", 64, "big"),
    ],
)
def test_header_facts(name, machine, bits, endianness):
    path = FIXTURES / name
    with open(path, "rb") as handle:
        (image,) = read_object(handle, path.stat().st_size, name).images
    assert (image.machine, image.bits, image.endianness, image.kind) == (
        machine,
        bits,
        endianness,
        "shared library",
    )
    assert image.tables == (SymbolTable.DYNAMIC, SymbolTable.STATIC)


def test_archive_members_match_ar():
    ar = require_tool("ar")
    path = FIXTURES / "libffi_static.a"
    members = subprocess.run([ar, "t", str(path)], capture_output=True, text=True, check=True)
    with open(path, "rb") as handle:
        obj = read_object(handle, path.stat().st_size, str(path))
    assert (
        [i.member for i in obj.images]
        == members.stdout.split()
        == ["ffi_c.o", "plain.o", "syslib.o"]
    )
    assert {i.kind for i in obj.images} == {"relocatable object"}


def test_stripped_library_has_only_the_dynamic_table():
    path = FIXTURES / "libffi_c.stripped.so"
    with open(path, "rb") as handle:
        (image,) = read_object(handle, path.stat().st_size, str(path)).images
    assert image.tables == (SymbolTable.DYNAMIC,)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "x: not an ELF file, Mach-O file, PE file or ar archive"),
        (b"#!/bin/sh\n", "x: not an ELF file, Mach-O file, PE file or ar archive"),
        (b"\xcf\xfa\xed\xfe" + b"\0" * 60, "x: malformed Mach-O: unsupported Mach-O file type 0"),
        (b"\xce\xfa\xed\xfe" + b"\0" * 60, "x: 32-bit Mach-O files are not supported yet"),
        (
            b"MZ" + b"\0" * 62,
            "x: malformed PE: no PE signature: an MS-DOS program or another MZ format",
        ),
        (
            b"\x64\x86" + b"\0" * 62,
            "x: COFF objects are not supported (inspect the DLL or EXE they are linked into)",
        ),
        (b"!<thin>\n", "x: thin ar archives hold no members to read"),
        (b"!<arch>\nbad", None),
    ],
)
def test_unsupported_inputs_are_clean_errors(tmp_path, content, message):
    path = tmp_path / "x"
    path.write_bytes(content)
    with open(path, "rb") as handle:
        if message is None:
            obj = read_object(handle, len(content), "x")
            assert obj.images == ()
            return
        with pytest.raises(InputError) as caught:
            read_object(handle, len(content), "x")
    assert str(caught.value) == message


def test_archive_member_overrunning_the_file_is_an_error(tmp_path):
    header = b"m.o/            0           0     0     644     999       `\n"
    path = tmp_path / "x.a"
    path.write_bytes(b"!<arch>\n" + header + b"\x7fELF")
    with open(path, "rb") as handle, pytest.raises(InputError) as caught:
        read_object(handle, path.stat().st_size, "x.a")
    assert str(caught.value) == "x.a: archive member at offset 8 claims 999 bytes, only 4 remain"


def test_candidate_ranges_stay_linear_and_long_names_stay_cheap():
    from array import array

    from ffitool.formats.strtab import candidate_ranges, offset_filter

    long_name = b"__tvm_ffi_" * 200_000  # a 2 MB name made of markers
    strings = b"\0" + long_name + b"\0x__tvm_ffi_a\0plain\0"
    ranges = candidate_ranges(strings)
    # One range per string, up to its last marker; the plain string has none.
    assert ranges == [(1, 1 + 10 * 199_999), (2_000_002, 2_000_003)]
    tail = 2_000_002
    fields = array("I", [0, 1, 5, 1 + 10 * 199_999, 1 + 10 * 199_999 + 1, tail, tail + 1, tail + 2])
    # Past the expansion bound the ranges are bisected, not expanded: same answer.
    assert offset_filter(ranges)(fields) == {1, 5, 1 + 10 * 199_999, tail, tail + 1}
    small = [(tail, tail + 1)]
    assert offset_filter(small)(fields) == {tail, tail + 1}


@pytest.mark.parametrize("name", ["libffi_c.so", "libffi_c.ppc64be.so", "libffi_c.arm32.so"])
def test_scan_of_every_entry_agrees_with_the_index_search(monkeypatch, name):
    """Many candidate names switch to a pass over all st_name fields; both must agree."""
    path = FIXTURES / name
    searched = ffitool_symbols(path)
    monkeypatch.setattr("ffitool.formats.strtab._INDEX_SEARCH_LIMIT", 0)
    assert ffitool_symbols(path) == searched == readelf_symbols(path)


@pytest.mark.parametrize("name", ELF_FIXTURES)
def test_windowed_tables_read_the_same_as_tables_read_into_memory(name):
    """A file object is read in windows; a BytesIO has no descriptor and takes the read path."""
    path = FIXTURES / name
    data = path.read_bytes()
    with open(path, "rb") as handle:
        windowed = read_object(handle, len(data), name)
    read = read_object(io.BytesIO(data), len(data), name)
    assert windowed == read
    assert any(image.symbols for image in windowed.images) or name == "libplain.so"


def test_a_windowed_string_table_finds_every_marker(tmp_path):
    """Each marker, a system-lib prefix and merged tails, at an offset no window starts at,
    and markers and names straddling the borders of the growing windows."""
    from ffitool.formats.strtab import Names, WindowedTable, _memmem, candidate_ranges

    strings = (
        b"\0_ZN2at6TensorEv\0__tvm_ffi_add\0mylib___tvm_ffi__library_bin\0"
        b"x__tvm_dev_mblob\0__tvm_module_ctx\0__tvm_dev_mblob_not\0__tvm_module_ctxx\0"
        b"___tvm_\0tail__tvm_ffi_f\0"
    )
    expected = []
    for name, last in [
        (b"__tvm_ffi_add", b"__tvm_ffi_"),
        (b"mylib___tvm_ffi__library_bin", b"__tvm_ffi_"),
        (b"x__tvm_dev_mblob", b"__tvm_dev_mblob"),
        (b"__tvm_module_ctx", b"__tvm_module_ctx"),
        (b"tail__tvm_ffi_f", b"__tvm_ffi_"),
    ]:
        start = strings.index(b"\0" + name + b"\0") + 1
        expected.append((start, start + name.rindex(last)))
    assert candidate_ranges(strings) == expected
    # Windows of 4, 8, 16... KiB: a marker across the first border, a 9 KiB name whose start
    # lies two windows back from its marker, a marker across a later border.
    long_name = b"_ZN" + b"x" * 9000 + b"__tvm_ffi_long"
    straddling = b"\0" * (4096 - 3) + b"__tvm_ffi_edge\0" + long_name + b"\0"
    straddling += b"\0" * (4096 + 8192 - 2 - len(straddling)) + b"__tvm_ffi_far\0"
    big = strings + straddling
    assert _memmem() is not None  # Linux always has it: the fast path is the one tested
    path = tmp_path / "table"
    path.write_bytes(b"\xff" * 5003 + big + b"\xff" * 7)
    with open(path, "rb") as handle:
        table = WindowedTable(handle.fileno(), 5003, len(big))
        assert len(table) == len(big)
        assert candidate_ranges(table) == candidate_ranges(big)
        assert len(candidate_ranges(big)) == len(expected) + 3
        tail = strings.index(b"__tvm_dev_mblob\0")  # the merged tail of x__tvm_dev_mblob
        names = Names(table, ValueError, "name")
        assert names[tail] == "__tvm_dev_mblob"
        assert names[big.index(long_name)] == long_name.decode()
        assert table.find(b"__tvm_", 0, 20) == -1
        assert table.find(b"\xff") == -1  # the bytes around the table are not in it
        assert table.rfind(b"\xff") == -1
        assert table[1:5] == big[1:5]
    path.write_bytes(b"\xff" * 5003 + big[:100])  # shorter than the table now says
    with open(path, "rb") as handle:
        table = WindowedTable(handle.fileno(), 5003, len(big))
        with pytest.raises(OSError, match="the file shrank while it was being read"):
            candidate_ranges(table)


@pytest.mark.parametrize(("version", "exported"), [("@V1", False), ("@@V1", True)])
def test_a_blob_defined_only_in_a_hidden_version_is_not_exported(tmp_path, version, exported):
    """`name@V1` (bit 15 of its .gnu.version entry) is skipped by dlsym, as glibc's lookup
    skips hidden versions; `name@@V1`, the default version, is found. The runtime's own
    loader (ctypes, dlsym) is the oracle, and check says L101 for the hidden one."""
    blob = encode(Blob((Module("_lib", None, ()),)))
    source = tmp_path / "versioned.c"
    source.write_text(
        '__attribute__((visibility("default"))) const unsigned char blob_data[] = {'
        + ",".join(map(str, blob))
        + "};\n"
        f'__asm__(".symver blob_data,__tvm_ffi__library_bin{version}");\n'
    )
    script = tmp_path / "versions.map"
    script.write_text("V1 { global: __tvm_ffi__library_bin; local: *; };\n")
    library = tmp_path / "libversioned.so"
    subprocess.run(
        [require_tool("gcc"), "-shared", "-o", library, source, f"-Wl,--version-script={script}"],
        check=True,
        capture_output=True,
    )
    found = subprocess.run(
        [sys.executable, "-c", _DLSYM, str(library), "__tvm_ffi__library_bin"],
        capture_output=True,
        text=True,
    )
    assert found.stdout == ("found\n" if exported else "missing\n"), found
    (image,) = read_object(io.BytesIO(library.read_bytes()), library.stat().st_size, "x").images
    (dynamic,) = [s for s in image.symbols if s.table is SymbolTable.DYNAMIC]
    assert (dynamic.name, dynamic.exported) == ("__tvm_ffi__library_bin", exported)
    checked = ffitool("check", str(library), "--format", "json")
    l101 = [
        f["message"]
        for f in json.loads(checked.stdout)["files"][0]["findings"]
        if f["code"] == "L101"
    ]
    hidden = [
        "__tvm_ffi__library_bin is defined only in a hidden symbol version (`name@V`, not"
        " the default `name@@V`): dlsym, and so the runtime, will not find it"
    ]
    assert l101 == ([] if exported else hidden)


# Prints whether dlsym finds argv[2] in the library argv[1], as the runtime looks it up.
_DLSYM = """
import ctypes, sys
library = ctypes.CDLL(sys.argv[1])
try:
    ctypes.c_char.in_dll(library, sys.argv[2])
    print("found")
except ValueError:
    print("missing")
"""
