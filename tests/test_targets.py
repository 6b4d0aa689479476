"""Directories and wheels as `inspect` targets, through the real command line, and hostile ones
(zip bombs, lying sizes, huge central directories, 100k files) run with bounds."""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import socket
import struct
import sys
import zipfile
import zlib
from functools import partial
from pathlib import Path

import jsonschema
import pytest
from conftest import FIXTURES, ROOT, ffitool, run_measured

from ffitool.targets import Inspected, Skipped, Source, Unreadable, iter_sources, read_source

CPU_LIMIT = 30.0
MEGABYTES = 200


def schema() -> dict:
    return json.loads((ROOT / "ffitool" / "schemas" / "inspect-3.json").read_text())


def inspect_json(*paths: Path | str) -> tuple[int, list[dict], str]:
    """Exit code, the `files` of the validated JSON document, and stderr."""
    result = ffitool("inspect", "--json", *map(str, paths), timeout=120)
    document = json.loads(result.stdout)
    jsonschema.validate(document, schema())
    return result.returncode, document["files"], result.stderr


def as_fixture(entry: dict, name: str) -> dict:
    """`entry` with the path it would have if the fixture were inspected on its own."""
    return {**entry, "path": f"fixtures/bin/{name}"}


def direct(name: str) -> dict:
    code, files, _ = inspect_json(f"fixtures/bin/{name}")
    assert code == 0
    return files[0]


def headings(stdout: str, under: Path) -> list[tuple[str, str]]:
    """(path, format) of each file's heading line in the text report ("PATH   FORMAT, SIZE")."""
    lines = [line for line in stdout.splitlines() if line.startswith(str(under))]
    pairs = [line.split(", ")[0].rsplit("  ", 1) for line in lines]
    return [(path.rstrip(" "), kind) for path, kind in pairs]


# --- directories --------------------------------------------------------------------------


@pytest.mark.slow
def test_a_directory_is_walked_in_order_and_skips_loops_and_special_files(tmp_path):
    tree = tmp_path / "tree"
    (tree / "lib" / "nested").mkdir(parents=True)
    (tree / "src").mkdir()
    shutil.copy(FIXTURES / "libffi_c.so", tree / "lib" / "libffi_c.so.1")
    shutil.copy(FIXTURES / "libplain.so", tree / "lib" / "nested" / "libplain.so")
    shutil.copy(FIXTURES / "libffi_static.a", tree / "libffi_static.a")
    # Recognised by content, not by name: a library without a suffix, text named like one.
    shutil.copy(FIXTURES / "ffi_c.o", tree / "src" / "objectfile")
    (tree / "src" / "fake.so").write_text("not a library\n")
    (tree / "src" / "main.c").write_text("int main(void) { return 0; }\n")
    (tree / "empty.so").write_bytes(b"")
    (tree / "lib" / "libffi_c.so").symlink_to("libffi_c.so.1")  # read once, where it lies
    (tree / "lib" / "again").symlink_to("..")  # a directory link: not descended
    (tree / "loop_a").symlink_to("loop_b")
    (tree / "loop_b").symlink_to("loop_a")
    (tree / "outside.so").symlink_to(FIXTURES / "libffi_cpp.so")
    os.mkfifo(tree / "fifo")
    with socket.socket(socket.AF_UNIX) as server:
        cwd = os.getcwd()
        os.chdir(tree)  # a socket path is limited to 108 bytes: bind a relative one
        try:
            server.bind("socket")
        finally:
            os.chdir(cwd)
        code, files, stderr = inspect_json(tree)
    assert code == 0
    assert [f["path"] for f in files] == [
        f"{tree}/lib/libffi_c.so.1",
        f"{tree}/lib/nested/libplain.so",
        f"{tree}/libffi_static.a",
        f"{tree}/src/objectfile",
    ]
    assert files[0] == {**direct("libffi_c.so"), "path": f"{tree}/lib/libffi_c.so.1"}
    assert files[3] == {**direct("ffi_c.o"), "path": f"{tree}/src/objectfile"}
    assert stderr.splitlines() == [
        f"ffitool: note: {tree}/fifo: skipped: FIFO",
        f"ffitool: note: {tree}/loop_a: skipped: symbolic link loop",
        f"ffitool: note: {tree}/loop_b: skipped: symbolic link loop",
        f"ffitool: note: {tree}/outside.so: skipped: symbolic link to a file outside the"
        " directory, not followed",
        f"ffitool: note: {tree}/socket: skipped: socket",
    ]
    # The text report names the same files; a file given explicitly is still read as before.
    wide = {**os.environ, "COLUMNS": "300"}
    text = ffitool("inspect", str(tree), str(tree / "src" / "main.c"), env=wide, timeout=120)
    assert text.returncode == 3
    assert headings(text.stdout, tree) == [
        (f"{tree}/lib/libffi_c.so.1", "ELF"),
        (f"{tree}/lib/nested/libplain.so", "ELF"),
        (f"{tree}/libffi_static.a", "ar archive"),
        (f"{tree}/src/objectfile", "ELF"),
    ]
    assert text.stderr.splitlines()[-1] == (
        f"ffitool: error: {tree}/src/main.c: not an ELF file, Mach-O file, PE file or ar archive"
    )


def test_sources_are_listed_by_sniffing_and_read_in_any_process(tmp_path):
    """`check` lists sources in one process and reads them in workers: same results."""
    shutil.copy(FIXTURES / "libffi_c.so", tmp_path / "b.so")
    shutil.copy(FIXTURES / "libffi_static.a", tmp_path / "a.a")
    shutil.copy(FIXTURES / "macho" / "libffi_macho.universal.dylib", tmp_path / "e.dylib")
    # A Java class file shares the universal magic; its version makes it no Mach-O file.
    (tmp_path / "f.class").write_bytes(b"\xca\xfe\xba\xbe\x00\x00\x00\x41" + bytes(64))
    (tmp_path / "c.so").write_text("text\n")
    os.mkfifo(tmp_path / "d")
    sources = list(iter_sources([tmp_path, tmp_path / "c.so"]))
    assert sources == [
        Source(str(tmp_path / "a.a"), explicit=False),
        Source(str(tmp_path / "b.so"), explicit=False),
        Skipped(str(tmp_path / "d"), "FIFO"),
        Source(str(tmp_path / "e.dylib"), explicit=False),
        Source(str(tmp_path / "c.so"), explicit=True),
    ]
    readable = [s for s in sources if isinstance(s, Source)]
    with multiprocessing.get_context("fork").Pool(2) as pool:
        in_workers = pool.map(partial(read_all, digests=False), readable)
    assert in_workers == [read_all(s, digests=False) for s in readable]
    (archive,), (library,), (universal,), (text,) = in_workers
    assert isinstance(universal, Inspected)
    assert [lib.machine for lib in universal.file.libraries] == ["x86-64", "aarch64"]
    assert isinstance(archive, Inspected) and isinstance(library, Inspected)
    assert library.file.libraries[0].library_bin.modules[1].sha256 is None  # not hashed
    assert text == Unreadable(
        str(tmp_path / "c.so"),
        f"{tmp_path / 'c.so'}: not an ELF file, Mach-O file, PE file or ar archive",
    )


def read_all(source: Source, digests: bool) -> list:
    return list(read_source(source, digests=digests))


@pytest.mark.slow
def test_an_unreadable_file_in_a_directory_is_an_error_and_the_rest_is_read(tmp_path):
    shutil.copy(FIXTURES / "libplain.so", tmp_path / "a.so")
    data = (FIXTURES / "libffi_c.so").read_bytes()
    (tmp_path / "b.so").write_bytes(data[:2000])  # the section headers are past the end
    code, files, stderr = inspect_json(tmp_path)
    assert code == 3
    truncated = ffitool("inspect", str(tmp_path / "b.so")).stderr
    assert [f["path"] for f in files] == [str(tmp_path / "a.so"), str(tmp_path / "b.so")]
    assert files[1] == {"path": str(tmp_path / "b.so"), "error": truncated[16:].rstrip("\n")}
    assert stderr == truncated


@pytest.mark.slow
def test_a_directory_of_100k_files_streams(tmp_path):
    """One flat directory of 100k small text files and a library: memory stays flat."""
    tree = tmp_path / "many"
    tree.mkdir()
    for i in range(100_000):
        (tree / f"f{i:06d}.txt").write_bytes(b"x")
    shutil.copy(FIXTURES / "libplain.so", tree / "zz.so")
    command = [sys.executable, "-m", "ffitool", "inspect", "--json", str(tree)]
    code, cpu, megabytes = run_measured(command, tmp_path)
    assert code == 0, (tmp_path / "stderr").read_text()
    files = json.loads((tmp_path / "stdout").read_text())["files"]
    assert [f["path"] for f in files] == [f"{tree}/zz.so"]
    assert cpu < CPU_LIMIT * 2 and megabytes < MEGABYTES, (cpu, megabytes)


# --- wheels -------------------------------------------------------------------------------


def truncated_elf() -> bytes:
    return (FIXTURES / "libffi_c.so").read_bytes()[:2000]


def build_wheel(path: Path, members: list[tuple[str, bytes, int]]) -> None:
    """A wheel as `pip wheel` lays it out: the members, then .dist-info with a RECORD."""
    dist = "demo-1.0.dist-info"
    with zipfile.ZipFile(path, "w") as wheel:
        for name, data, method in members:
            wheel.writestr(zipfile.ZipInfo(name), data, compress_type=method)
        wheel.writestr(f"{dist}/METADATA", "Metadata-Version: 2.1\nName: demo\nVersion: 1.0\n")
        wheel.writestr(
            f"{dist}/WHEEL",
            "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: false\n"
            "Tag: cp311-cp311-linux_x86_64\n",
        )
        record = "".join(f"{name},,\n" for name, _, _ in members) + f"{dist}/RECORD,,\n"
        wheel.writestr(f"{dist}/RECORD", record, compress_type=zipfile.ZIP_DEFLATED)


@pytest.mark.slow
def test_a_wheel_is_read_member_by_member_without_extracting(tmp_path):
    wheel = tmp_path / "demo-1.0-cp311-cp311-linux_x86_64.whl"
    build_wheel(
        wheel,
        [
            ("pkg/__init__.py", b"from . import lib\n", zipfile.ZIP_DEFLATED),
            ("pkg/lib/libffi_c.so", (FIXTURES / "libffi_c.so").read_bytes(), zipfile.ZIP_STORED),
            (
                "pkg/lib/libffi_static.a",
                (FIXTURES / "libffi_static.a").read_bytes(),
                zipfile.ZIP_DEFLATED,
            ),
            (
                "pkg/lib/libhidden.so",
                (FIXTURES / "libffi_hidden_blob.so").read_bytes(),
                zipfile.ZIP_DEFLATED,
            ),
            ("pkg/lib/libbroken.so", truncated_elf(), zipfile.ZIP_DEFLATED),
        ],
    )
    (tmp_path / "libbroken.so").write_bytes(truncated_elf())
    alone = ffitool("inspect", str(tmp_path / "libbroken.so")).stderr
    broken_error = alone.removeprefix(f"ffitool: error: {tmp_path / 'libbroken.so'}: ").rstrip()

    code, files, stderr = inspect_json(wheel)
    assert code == 3
    names = [f["path"] for f in files]
    assert names == [
        f"{wheel}!pkg/lib/libffi_c.so",
        f"{wheel}!pkg/lib/libffi_static.a",
        f"{wheel}!pkg/lib/libhidden.so",
        f"{wheel}!pkg/lib/libbroken.so",
    ]
    # Offsets, digests and findings are the member's own, as if it had been extracted:
    # the stored member is read in place, the deflated ones from memory.
    assert as_fixture(files[0], "libffi_c.so") == direct("libffi_c.so")
    assert as_fixture(files[1], "libffi_static.a") == direct("libffi_static.a")
    assert as_fixture(files[2], "libffi_hidden_blob.so") == direct("libffi_hidden_blob.so")
    assert [f["code"] for f in files[2]["libraries"][0]["library_bin"]["findings"]] == ["L101"]
    message = f"{wheel}!pkg/lib/libbroken.so: {broken_error}"
    assert files[3] == {"path": f"{wheel}!pkg/lib/libbroken.so", "error": message}
    assert stderr == f"ffitool: error: {message}\n"

    # The same wheel found in a directory; the text report names members the same way.
    text = ffitool("inspect", str(tmp_path), env={**os.environ, "COLUMNS": "300"})
    assert text.returncode == 3
    assert headings(text.stdout, tmp_path) == [
        (name, "ELF" if name[-1] == "o" else "ar archive") for name in names[:3]
    ]
    assert text.stderr.splitlines() == [  # in name order: demo-1.0...whl, libbroken.so
        f"ffitool: error: {message}",
        f"ffitool: error: {tmp_path / 'libbroken.so'}: {broken_error}",
    ]


def test_a_wheel_without_libraries_is_a_note(tmp_path):
    wheel = tmp_path / "pure-1.0-py3-none-any.whl"
    build_wheel(wheel, [("pure/__init__.py", b"", zipfile.ZIP_DEFLATED)])
    result = ffitool("inspect", str(wheel))
    assert (result.returncode, result.stdout) == (0, "")
    assert (
        result.stderr
        == f"ffitool: note: {wheel}: skipped: no ELF, Mach-O or PE file or ar archive in it\n"
    )


def test_a_zip_that_is_not_named_whl_is_not_opened_in_a_directory(tmp_path):
    build_wheel(
        tmp_path / "demo.zip", [("libffi_c.so", (FIXTURES / "libffi_c.so").read_bytes(), 0)]
    )
    result = ffitool("inspect", str(tmp_path))
    assert (result.returncode, result.stdout) == (0, "")
    assert "no ELF, Mach-O or PE file, ar archive or wheel" in result.stderr


@pytest.mark.filterwarnings("ignore:Duplicate name")  # the duplicate is the point
@pytest.mark.slow
def test_hostile_member_names_are_display_names_only(tmp_path):
    library = (FIXTURES / "libplain.so").read_bytes()
    wheel = tmp_path / "names.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        for name in ("../../etc/evil.so", "/abs/\x1b[31mred.so", "dup.so", "dup.so"):
            info = zipfile.ZipInfo(name)
            info.filename = name  # ZipInfo would strip the leading slash; keep it as given
            archive.writestr(info, library, compress_type=zipfile.ZIP_DEFLATED)
    before = sorted(p.name for p in tmp_path.iterdir())
    code, files, _ = inspect_json(wheel)
    assert code == 0
    assert [f["path"] for f in files] == [
        f"{wheel}!../../etc/evil.so",
        f"{wheel}!/abs/\x1b[31mred.so",
        f"{wheel}!dup.so",
        f"{wheel}!dup.so",
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written
    text = ffitool("inspect", str(wheel), env={**os.environ, "COLUMNS": "300"})
    assert "\x1b" not in text.stdout and f"{wheel}!/abs/\\x1b[31mred.so" in text.stdout


# --- hostile wheels, with bounds ----------------------------------------------------------


def raw_zip(path: Path, members: list[tuple[str, int, bytes | None, int, int]]) -> None:
    """A zip written field by field, so that sizes can lie: (name, method, data as stored,
    crc, declared uncompressed size) per member; data None points the entry at the previous
    member's data, as an overlapping zip bomb does."""
    records = []
    offset = stored = 0
    with open(path, "wb") as out:
        for name, method, data, crc, size in members:
            encoded = name.encode()
            if data is not None:
                offset, stored = out.tell(), len(data)
            fields = (20, 0x800, method, 0, 0x21, crc, stored, size, len(encoded), 0)
            if data is not None:
                out.write(struct.pack("<4s5H3I2H", b"PK\x03\x04", *fields) + encoded + data)
            lengths = (len(encoded), 0, 0, 0, 0)  # name, extra, comment, disk, attributes
            head = struct.pack("<4s6H3I5H2I", b"PK\x01\x02", 20, *fields[:8], *lengths, 0, offset)
            records.append(head + encoded)
        start = out.tell()
        central = b"".join(records)
        out.write(central)
        count = len(members)
        if count >= 0xFFFF:  # zip64: the count is then only in the zip64 end record
            record = out.tell()
            claim = (count, count, len(central), start)
            out.write(struct.pack("<4sQ2H2I4Q", b"PK\x06\x06", 44, 45, 45, 0, 0, *claim))
            out.write(struct.pack("<4sIQI", b"PK\x06\x07", 0, record, 1))
            count = 0xFFFF
        out.write(
            struct.pack("<4s4H2IH", b"PK\x05\x06", 0, 0, count, count, len(central), start, 0)
        )


def deflate_zeros(head: bytes, mebibytes: int) -> tuple[bytes, int, int]:
    """`head` then `mebibytes` MiB of zeros, deflated at the format's best ratio (~1030:1)
    without compressing them all: once the window is zeros, each MiB deflates to the same
    bytes. Returns the deflate data, its CRC-32 and the uncompressed size."""
    zeros = bytes(1 << 20)
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    first = compressor.compress(head + zeros) + compressor.flush(zlib.Z_SYNC_FLUSH)
    repeated = compressor.compress(zeros) + compressor.flush(zlib.Z_SYNC_FLUSH)
    last = compressor.compress(zeros) + compressor.flush()
    crc = zlib.crc32(head)
    for _ in range(mebibytes):
        crc = zlib.crc32(zeros, crc)
    return first + repeated * (mebibytes - 2) + last, crc, len(head) + (mebibytes << 20)


def measured_inspect(tmp_path: Path, *paths: Path) -> tuple[int, list[dict], str]:
    command = [sys.executable, "-m", "ffitool", "inspect", "--json", *map(str, paths)]
    code, cpu, megabytes = run_measured(command, tmp_path)
    assert cpu < CPU_LIMIT and megabytes < MEGABYTES, (cpu, megabytes)
    files = json.loads((tmp_path / "stdout").read_text())["files"]
    return code, files, (tmp_path / "stderr").read_text()


@pytest.mark.slow
def test_zip_bombs_and_lying_sizes_are_refused_with_bounded_memory(tmp_path):
    elf_head = (FIXTURES / "libplain.so").read_bytes()[:64]
    zeros, zeros_crc, gib = deflate_zeros(b"", 1024)
    bomb, bomb_crc, _ = deflate_zeros(elf_head, 1024)
    library = (FIXTURES / "libplain.so").read_bytes()
    packed = zlib.compressobj(9, zlib.DEFLATED, -15)
    small = packed.compress(library) + packed.flush()
    crc = zlib.crc32(library)
    wheel = tmp_path / "bombs.whl"
    raw_zip(
        wheel,
        [
            ("zeros.bin", 8, zeros, zeros_crc, gib),  # not an object: sniffed and left
            ("bomb.so", 8, bomb, bomb_crc, len(elf_head) + gib),  # ratio 1000:1
            ("liar-small.so", 8, bomb, bomb_crc, 4 << 20),  # 1 GiB that claims 4 MiB
            ("liar-big.so", 8, small, crc, len(library) + 100),
            ("liar-stored.so", 0, library, crc, len(library) * 3),
            ("huge.so", 8, small, crc, 3 << 30),
            ("bad-crc.so", 8, small, crc ^ 1, len(library)),
            ("liar-tiny.so", 8, bomb, bomb_crc, 4),  # less than the 8 bytes sniffed
            ("cut.so", 8, small[: len(small) // 2], crc, len(library)),
            ("garbage.so", 8, b"\xff" * 64, crc, len(library)),
            ("bzip2.so", 12, small, crc, len(library)),
            ("good.so", 8, small, crc, len(library)),
        ],
    )
    assert zipfile.ZipFile(wheel).namelist()[-1] == "good.so"  # a well-formed zip otherwise
    code, files, stderr = measured_inspect(tmp_path, wheel)
    assert code == 3
    errors = {f["path"].split("!")[1]: f["error"].split(": ", 1)[1] for f in files if "error" in f}
    assert errors == {
        "bomb.so": f"declares {len(elf_head) + gib} bytes from {len(bomb)} compressed,"
        " a ratio over 200:1 (a zip bomb?)",
        "liar-small.so": f"lying size: decompresses to more than the {4 << 20} bytes it declares",
        "liar-big.so": f"lying size: decompresses to {len(library)} bytes,"
        f" declares {len(library) + 100}",
        "liar-stored.so": f"lying size: stored with {len(library)} bytes,"
        f" declares {len(library) * 3}",
        "huge.so": f"declares {3 << 30} bytes, more than the 2 GiB read from a wheel",
        "bad-crc.so": f"CRC-32 {crc:08x} does not match the recorded {crc ^ 1:08x}",
        "liar-tiny.so": "lying size: decompresses to more than the 4 bytes it declares",
        "cut.so": "compressed data ends early",
        "garbage.so": "bad deflate data: Error -3 while decompressing data: invalid block type",
        "bzip2.so": "compression method 12 is not supported (wheels use stored or deflate)",
    }
    assert [f["path"] for f in files if "error" not in f] == [f"{wheel}!good.so"]
    assert len(stderr.splitlines()) == len(errors)


def test_members_sharing_their_data_end_the_wheel(tmp_path):
    """Every entry points at the same deflated library: the first is read, the second ends
    the wheel (before, 755 of the 1000 were read, until their sizes added up to 200 times
    the wheel's)."""
    library = (FIXTURES / "libffi_c.so").read_bytes()
    packed = zlib.compressobj(9, zlib.DEFLATED, -15)
    data = packed.compress(library) + packed.flush()
    crc = zlib.crc32(library)
    members = [
        (f"lib{i:04d}.so", 8, data if i == 0 else None, crc, len(library)) for i in range(1000)
    ]
    wheel = tmp_path / "overlap.whl"
    raw_zip(wheel, members)
    code, files, stderr = measured_inspect(tmp_path, wheel)
    assert code == 3
    assert [f["path"] for f in files] == [f"{wheel}!lib0000.so", str(wheel)]
    start = 30 + len("lib0000.so")  # after the first local header
    message = (
        f"{wheel}: not a readable wheel: members lib0000.so and lib0001.so share their data"
        f" at offset {start}"
    )
    assert files[-1]["error"] == message
    assert stderr == f"ffitool: error: {message}\n"


@pytest.mark.slow
def test_small_bombs_share_one_budget(tmp_path):
    """Each member expands 1 KiB to 1 MiB, under the size below which no ratio is refused;
    together they may not expand to more than 200 times the wheel."""
    expanded = (FIXTURES / "libplain.so").read_bytes()[:64].ljust(1 << 20, b"\0")
    packed = zlib.compressobj(9, zlib.DEFLATED, -15)
    bomb = packed.compress(expanded) + packed.flush()
    crc, size = zlib.crc32(expanded), len(expanded)
    wheel = tmp_path / "bombs.whl"
    raw_zip(wheel, [(f"lib{i:03d}.so", 8, bomb, crc, size) for i in range(400)])
    code, files, _ = measured_inspect(tmp_path, wheel)
    read = 200 * wheel.stat().st_size // size
    assert code == 3
    assert [f["path"] for f in files] == [
        *(f"{wheel}!lib{i:03d}.so" for i in range(read)),
        str(wheel),
    ]
    message = (
        f"{wheel}: not a readable wheel: its libraries expand to more than 200 times its size"
        " (members overlapping?)"
    )
    assert files[-1]["error"] == message


def test_an_encrypted_member_is_refused(tmp_path):
    """General-purpose flag bit 0 set on the library's central directory entry."""
    wheel = tmp_path / "secret.whl"
    build_wheel(wheel, [("lib.so", (FIXTURES / "libffi_c.so").read_bytes(), zipfile.ZIP_STORED)])
    data = bytearray(wheel.read_bytes())
    entry = data.index(b"PK\x01\x02")
    assert data[entry + 46 : entry + 52] == b"lib.so"
    data[entry + 8] |= 1
    wheel.write_bytes(bytes(data))
    code, files, stderr = inspect_json(wheel)
    message = f"{wheel}!lib.so: encrypted members are not supported"
    assert code == 3
    assert files == [{"path": f"{wheel}!lib.so", "error": message}]
    assert stderr == f"ffitool: error: {message}\n"


def test_a_central_directory_claiming_10m_entries_is_refused(tmp_path):
    """A zip64 end record claims 10M entries: in 46 bytes, then in a (sparse) 460 MB."""
    for name, directory_size in (("short.whl", 46), ("sparse.whl", 46 * 10_000_000)):
        wheel = tmp_path / name
        with open(wheel, "wb") as out:
            out.write(b"PK\x03\x04")
            out.seek(directory_size, os.SEEK_CUR)  # the directory's bytes: a hole
            record = out.tell()
            claim = (10_000_000, 10_000_000, directory_size, 4)  # entries, size, offset
            out.write(struct.pack("<4sQ2H2I4Q", b"PK\x06\x06", 44, 45, 45, 0, 0, *claim))
            out.write(struct.pack("<4sIQI", b"PK\x06\x07", 0, record, 1))
            out.write(
                struct.pack(
                    "<4s4H2IH", b"PK\x05\x06", 0, 0, 0xFFFF, 0xFFFF, 0xFFFFFFFF, 0xFFFFFFFF, 0
                )
            )
    code, files, stderr = measured_inspect(
        tmp_path, tmp_path / "short.whl", tmp_path / "sparse.whl"
    )
    assert code == 3
    short, sparse = tmp_path / "short.whl", tmp_path / "sparse.whl"
    assert files == [
        {
            "path": str(short),
            "error": f"{short}: not a readable wheel: central directory claims 10000000 entries"
            " in only 46 bytes",
        },
        {
            "path": str(sparse),
            "error": f"{sparse}: not a readable wheel: central directory claims 10000000"
            " entries; at most 1000000 are read",
        },
    ]
    assert len(stderr.splitlines()) == 2


@pytest.mark.slow
def test_a_wheel_of_100k_members_streams(tmp_path):
    library = (FIXTURES / "libplain.so").read_bytes()
    members = [(f"pkg/data/{i:06d}.py", 0, b"x", zlib.crc32(b"x"), 1) for i in range(100_000)]
    members.append(("pkg/lib/libplain.so", 0, library, zlib.crc32(library), len(library)))
    wheel = tmp_path / "many.whl"
    raw_zip(wheel, members)
    code, files, stderr = measured_inspect(tmp_path, wheel)
    assert (code, stderr) == (0, "")
    assert [f["path"] for f in files] == [f"{wheel}!pkg/lib/libplain.so"]
    assert as_fixture(files[0], "libplain.so") == direct("libplain.so")


# --- check over the same targets ----------------------------------------------------------


@pytest.mark.slow
def test_check_reads_a_wheel_and_a_hostile_directory(tmp_path):
    wheel = tmp_path / "tree" / "demo-1.0-cp311-cp311-linux_x86_64.whl"
    wheel.parent.mkdir()
    build_wheel(
        wheel,
        [
            ("pkg/lib/libffi_c.so", (FIXTURES / "libffi_c.so").read_bytes(), zipfile.ZIP_STORED),
            (
                "pkg/lib/libhidden.so",
                (FIXTURES / "libffi_hidden_blob.so").read_bytes(),
                zipfile.ZIP_DEFLATED,
            ),
        ],
    )
    zeros, crc, size = deflate_zeros(b"", 1024)
    raw_zip(wheel.parent / "bomb-1.0-py3-none-any.whl", [("zeros.bin", 8, zeros, crc, size)])
    for i in range(10):  # enough sources for worker processes
        shutil.copy(FIXTURES / "libffi_c.so", wheel.parent / f"libffi_c_{i}.so")
    (wheel.parent / "loop").symlink_to("loop")
    os.mkfifo(wheel.parent / "fifo")
    command = [sys.executable, "-m", "ffitool", "check", "--format", "json", "--jobs", "2"]
    code, cpu, megabytes = run_measured([*command, str(wheel.parent)], tmp_path)
    assert cpu < CPU_LIMIT and megabytes < MEGABYTES, (cpu, megabytes)
    document = json.loads((tmp_path / "stdout").read_text())
    assert (code, document["exit_code"]) == (1, 1)
    assert [f["path"] for f in document["files"]] == [
        f"{wheel}!pkg/lib/libffi_c.so",
        f"{wheel}!pkg/lib/libhidden.so",
        *(f"{wheel.parent}/libffi_c_{i}.so" for i in range(10)),
    ]
    failing = [(f["path"], x["code"]) for f in document["files"] for x in f["findings"]]
    assert failing == [(f"{wheel}!pkg/lib/libhidden.so", "L101")]
    assert (document["errors"], document["skipped"]) == (
        [],
        [
            {"path": f"{wheel.parent}/fifo", "reason": "FIFO"},
            {"path": f"{wheel.parent}/loop", "reason": "symbolic link loop"},
        ],
    )
    assert (tmp_path / "stderr").read_text().splitlines() == [
        f"ffitool: note: {wheel.parent}/fifo: skipped: FIFO",
        f"ffitool: note: {wheel.parent}/loop: skipped: symbolic link loop",
    ]


# --- every refusal of the wheel reader ----------------------------------------------------


def _wheel_bytes(tmp_path: Path) -> bytes:
    """A wheel with one stored library, `lib.so`, first in its central directory."""
    wheel = tmp_path / "base.whl"
    build_wheel(wheel, [("lib.so", (FIXTURES / "libffi_c.so").read_bytes(), zipfile.ZIP_STORED)])
    return wheel.read_bytes()


def _end(data: bytes) -> int:
    return data.rindex(b"PK\x05\x06")


def _central(data: bytes) -> int:
    return struct.unpack_from("<I", data, _end(data) + 16)[0]


def _with(data: bytes, at: int, layout: str, value: int) -> bytes:
    edited = bytearray(data)
    struct.pack_into(layout, edited, at, value)
    return bytes(edited)


def _zip64_entry(data: bytes, extra: bytes) -> bytes:
    """The library's central directory entry with its compressed size 0xFFFFFFFF and `extra`
    as its extra field (zip64 holds the size there), the directory's size and the end records
    moved to match."""
    at, end = _central(data), _end(data)
    name_len = struct.unpack_from("<H", data, at + 28)[0]
    entry = bytearray(data[at : at + 46 + name_len])
    struct.pack_into("<I", entry, 20, 0xFFFFFFFF)
    struct.pack_into("<H", entry, 30, len(extra))
    tail = bytearray(data[end:])
    struct.pack_into("<I", tail, 12, struct.unpack_from("<I", tail, 12)[0] + len(extra))
    return data[:at] + bytes(entry) + extra + data[at + 46 + name_len : end] + bytes(tail)


WHEEL_REFUSALS = {
    "no end record": (
        lambda d: d.replace(b"PK\x05\x06", b"PK\x05\x07"),
        "no end of central directory record",
    ),
    "multi-disk": (
        lambda d: _with(d, _end(d) + 4, "<H", 1),
        "multi-disk archives are not supported",
    ),
    "directory past the end": (
        lambda d: _with(d, _end(d) + 12, "<I", len(d)),
        "central directory of {size} bytes at {central} overruns the file",
    ),
    "more entries than listed": (
        lambda d: _with(_with(d, _end(d) + 8, "<H", 5), _end(d) + 10, "<H", 5),
        "central directory ends before its 5 entries",
    ),
    "bad entry": (
        lambda d: _with(d, _central(d), "<I", 0x04034B50),
        "bad central directory entry at offset {central}",
    ),
    "name past the end": (
        lambda d: _with(d, _central(d) + 28, "<H", 0xFFFF),
        "the file ends inside a record at offset {entry}",
    ),
    "zip64 without its record": (
        lambda d: _with(d, _end(d) + 10, "<H", 0xFFFF),
        "bad zip64 end record locator",
    ),
    "zip64 locator to no record": (
        lambda d: (
            d[: _end(d)]
            + struct.pack("<4sIQI", b"PK\x06\x07", 0, 0, 1)
            + _with(d, _end(d) + 10, "<H", 0xFFFF)[_end(d) :]
        ),
        "bad zip64 end record",
    ),
    "zip64 size missing": (
        lambda d: _zip64_entry(d, b""),
        "zip64 sizes missing",
    ),
    "zip64 size too short": (
        lambda d: _zip64_entry(d, struct.pack("<HHI", 1, 4, 0)),
        "zip64 extra field too short",
    ),
}


@pytest.mark.parametrize("case", WHEEL_REFUSALS)
def test_each_refusal_of_a_wheel_is_one_line(tmp_path, case):
    edit, message = WHEEL_REFUSALS[case]
    data = _wheel_bytes(tmp_path)
    expected = message.format(size=len(data), central=_central(data), entry=_central(data) + 46)
    wheel = tmp_path / "bad.whl"
    wheel.write_bytes(edit(data))
    code, files, stderr = inspect_json(wheel)
    error = f"{wheel}: not a readable wheel: {expected}"
    # The entries before the damage are read (a directory cut short lists lib.so first).
    assert (code, files[-1]) == (3, {"path": str(wheel), "error": error})
    assert [f["path"] for f in files[:-1] if "error" not in f] in ([], [f"{wheel}!lib.so"])
    assert stderr == f"ffitool: error: {error}\n"


def test_an_end_record_alone_claiming_zip64_is_refused(tmp_path):
    wheel = tmp_path / "end.whl"
    wheel.write_bytes(struct.pack("<4s4H2IH", b"PK\x05\x06", 0, 0, 0xFFFF, 0xFFFF, 0, 0, 0))
    code, files, _ = inspect_json(wheel)
    error = f"{wheel}: not a readable wheel: zip64 end record missing"
    assert (code, files) == (3, [{"path": str(wheel), "error": error}])


@pytest.mark.slow
def test_a_zip64_size_in_the_extra_field_is_read(tmp_path):
    """The refusals above edit a wheel that reads, and the zip64 size is taken from the extra
    field (an unknown field before it is skipped)."""
    data = _wheel_bytes(tmp_path)
    stored = (FIXTURES / "libffi_c.so").stat().st_size
    extra = struct.pack("<HHI", 0x7075, 4, 0) + struct.pack("<HHQ", 1, 8, stored)
    for name, wheel_data in (("plain.whl", data), ("zip64.whl", _zip64_entry(data, extra))):
        wheel = tmp_path / name
        wheel.write_bytes(wheel_data)
        code, files, stderr = inspect_json(wheel)
        assert (code, stderr) == (0, "")
        assert [f["path"] for f in files] == [f"{wheel}!lib.so"]


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        (42, 1, "no local header at offset 1"),
        (20, 1 << 30, f"data of {1 << 30} bytes overruns the file"),
    ],
)
def test_a_member_whose_data_is_not_there_is_one_line(tmp_path, field, value, message):
    data = _wheel_bytes(tmp_path)
    wheel = tmp_path / "member.whl"
    wheel.write_bytes(_with(data, _central(data) + field, "<I", value))
    code, files, stderr = inspect_json(wheel)
    error = f"{wheel}!lib.so: {message}"
    assert (code, files) == (3, [{"path": f"{wheel}!lib.so", "error": error}])
    assert stderr == f"ffitool: error: {error}\n"


def test_an_unreadable_archive_member_is_reported_with_the_rest(tmp_path):
    """A directory holding an ar archive whose one member is a broken ELF file."""
    member = b"\x7fELF" + b"\xff" * 60
    header = f"{'bad.o/':16}{0:<12}{0:<6}{0:<6}{644:<8}{len(member):<10}`\n".encode()
    (tmp_path / "libx.a").write_bytes(b"!<arch>\n" + header + member)
    code, files, stderr = inspect_json(tmp_path)
    error = f"{tmp_path / 'libx.a'}(bad.o): malformed ELF: bad ELF identification"
    error += " (class or data encoding)"
    assert code == 3
    assert files[-1] == {"path": f"{tmp_path / 'libx.a'}(bad.o)", "error": error}
    assert stderr == f"ffitool: error: {error}\n"


def test_an_explicit_fifo_is_one_error_and_never_opened_for_reading(tmp_path):
    """Given by name, a FIFO is refused (a directory walk skips it with a note instead)."""
    fifo = tmp_path / "lib.so"
    os.mkfifo(fifo)
    code, files, stderr = inspect_json(fifo)
    assert (code, files) == (3, [{"path": str(fifo), "error": f"{fifo}: not a regular file"}])
    assert stderr == f"ffitool: error: {fifo}: not a regular file\n"


def _failing_pread(monkeypatch, failure) -> None:
    """os.pread fails as `failure(fd, count, offset)` says (an OSError, or b"" for a file
    that shrank), where it returns anything; the reads of a faulty disk, in process."""
    real = os.pread

    def pread(fd: int, count: int, offset: int) -> bytes:
        outcome = failure(fd, count, offset)
        if isinstance(outcome, OSError):
            raise outcome
        return real(fd, count, offset) if outcome is None else outcome

    monkeypatch.setattr(os, "pread", pread)


def test_a_read_error_on_the_first_bytes_is_one_unreadable_target(tmp_path, monkeypatch):
    path = tmp_path / "lib.so"
    shutil.copy(FIXTURES / "libffi_c.so", path)
    eio = OSError(5, "Input/output error")
    _failing_pread(monkeypatch, lambda fd, count, offset: eio if offset == 0 else None)
    (source,) = iter_sources([path])
    assert read_all(source, digests=True) == [
        Unreadable(str(path), f"{path}: read error: Input/output error")
    ]


def test_a_read_error_or_a_shrinking_file_inside_a_wheel_ends_the_wheel(tmp_path, monkeypatch):
    """An I/O error while the central directory is read, and a deflated member whose bytes
    are gone when they are read (the file shrank), each end the wheel with one line."""
    wheel = tmp_path / "demo-1.0-py3-none-any.whl"
    build_wheel(wheel, [("demo/libffi_c.so", (FIXTURES / "libffi_c.so").read_bytes(), 8)])
    (source,) = iter_sources([wheel])
    with zipfile.ZipFile(wheel) as archive:
        member = archive.getinfo("demo/libffi_c.so")
        directory = archive.start_dir
    eio = OSError(5, "Input/output error")
    _failing_pread(monkeypatch, lambda fd, count, offset: eio if offset >= directory else None)
    assert read_all(source, digests=True) == [
        Unreadable(str(wheel), f"{wheel}: read error: Input/output error")
    ]
    data_at = member.header_offset + 30 + len(member.filename)
    monkeypatch.undo()
    _failing_pread(monkeypatch, lambda fd, count, offset: b"" if offset == data_at else None)
    assert read_all(source, digests=True) == [
        Unreadable(str(wheel), f"{wheel}: read error: the file shrank while it was being read")
    ]
