"""Embedded cubins: what tvm-ffi's `embed_cubin` links between `__tvm_ffi__cubin_<name>` and
`__tvm_ffi__cubin_<name>_end`, read back, decoded and extracted.

The libraries are built as tvm-ffi's users build them: nvcc compiles a cubin and a fatbin,
`python3 -m tvm_ffi.utils.embed_cubin` merges each into a host object (which makes both symbols
local: only `.symtab` holds them), gcc links a shared library and ar an archive. The oracle is
the cubin and fatbin files themselves: sizes, digests and extracted bytes must equal theirs.
Broken pairs are written in assembly, one per way a pair can fail to delimit bytes (L213).
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import ffitool, nvidia_tool, require_tool, require_tvm_ffi, run_measured

from ffitool import extract_cubins, inspect_path
from ffitool.checks import Requirements, check_file
from ffitool.errors import InputError
from ffitool.library import Library

KERNELS = """
extern "C" __global__ void add(float* a, const float* b, int n) {
  int i = threadIdx.x;
  if (i < n) a[i] += b[i];
}
__global__ void square(float* a) { a[threadIdx.x] *= a[threadIdx.x]; }
"""

HOST = """
extern const char __tvm_ffi__cubin_my_kernels[], __tvm_ffi__cubin_my_kernels_end[];
extern const char __tvm_ffi__cubin_fat[], __tvm_ffi__cubin_fat_end[];
unsigned long cubin_size(void) {
  return (unsigned long)(__tvm_ffi__cubin_my_kernels_end - __tvm_ffi__cubin_my_kernels);
}
unsigned long fat_size(void) {
  return (unsigned long)(__tvm_ffi__cubin_fat_end - __tvm_ffi__cubin_fat);
}
"""

BROKEN = """
    .section .rodata
__tvm_ffi__cubin_noend: .byte 1, 2, 3, 4
__tvm_ffi__cubin_back_end: .byte 0
__tvm_ffi__cubin_back: .byte 1
__tvm_ffi__cubin_split: .byte 1
__tvm_ffi__cubin_far: .byte 1
    .set __tvm_ffi__cubin_far_end, __tvm_ffi__cubin_far + 100000
    .section .data
__tvm_ffi__cubin_split_end: .byte 0
    .section .bss
__tvm_ffi__cubin_zeros: .zero 16
__tvm_ffi__cubin_zeros_end:
    .section .rodata.good, "a"
__tvm_ffi__cubin_good: .ascii "hello"
__tvm_ffi__cubin_good_end:
    .section .rodata.torn, "a"
__tvm_ffi__cubin_torn: .byte 0x7f, 0x45, 0x4c, 0x46, 2, 1, 1, 0
    .zero 10
    .byte 0xbe, 0
__tvm_ffi__cubin_torn_end:
    .section .rodata.alias, "a"
__tvm_ffi__cubin_alias: .ascii "same bytes"
__tvm_ffi__cubin_alias_end:
    .set __tvm_ffi__cubin_alias2, __tvm_ffi__cubin_alias + 1
    .set __tvm_ffi__cubin_alias2_end, __tvm_ffi__cubin_alias_end
    .section .note.GNU-stack, "", @progbits
"""
"""One pair per way of delimiting no bytes, one good pair of bytes no decoder knows, and one
of a cubin's first 20 bytes only (L214)."""

BROKEN_NAMES = ("noend", "back", "split", "far", "zeros", "alias2")

PAST_SECTION = """
    .section .cubin_a, "a"
__tvm_ffi__cubin_past: .byte 1, 2, 3, 4
    .set __tvm_ffi__cubin_past_end, __tvm_ffi__cubin_past + 64
    .section .cubin_b, "a"
    .zero 256
    .section .note.GNU-stack, "", @progbits
"""
"""A pair whose end lies past its 4-byte section, inside the bytes of the same segment."""


@dataclass(frozen=True)
class Built:
    directory: Path
    cubin: bytes
    fatbin: bytes

    def path(self, name: str) -> Path:
        return self.directory / name


def _run(*command: str, cwd: Path) -> None:
    subprocess.run(command, cwd=cwd, check=True, capture_output=True, timeout=600)


@pytest.fixture(scope="session")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    """libemb.so, emb.o, libemb.a and a stripped copy, each holding my_kernels (a cubin) and
    fat (a fatbin), embedded by tvm-ffi's own tool."""
    require_tvm_ffi()
    for tool in ("gcc", "ar", "strip", "ld", "objcopy"):
        require_tool(tool)
    nvcc = nvidia_tool("nvcc")
    directory = tmp_path_factory.mktemp("embedded")
    (directory / "k.cu").write_text(KERNELS)
    (directory / "host.c").write_text(HOST)
    _run(str(nvcc), "-cubin", "-arch=sm_80", "k.cu", "-o", "k.cubin", cwd=directory)
    _run(
        str(nvcc), "-fatbin", "-gencode=arch=compute_80,code=sm_80",
        "-gencode=arch=compute_90,code=compute_90", "k.cu", "-o", "k.fatbin", cwd=directory,
    )  # fmt: skip
    _run("gcc", "-fPIC", "-c", "host.c", "-o", "host.o", cwd=directory)
    embed = (sys.executable, "-m", "tvm_ffi.utils.embed_cubin")
    _run(*embed, "--output-obj", "mid.o", "--input-obj", "host.o", "--cubin", "k.cubin",
         "--name", "my_kernels", cwd=directory)  # fmt: skip
    _run(*embed, "--output-obj", "emb.o", "--input-obj", "mid.o", "--cubin", "k.fatbin",
         "--name", "fat", cwd=directory)  # fmt: skip
    _run("gcc", "-shared", "emb.o", "-o", "libemb.so", cwd=directory)
    _run("ar", "rcs", "libemb.a", "emb.o", cwd=directory)
    _run("strip", "-o", "libemb.stripped.so", "libemb.so", cwd=directory)
    return Built(
        directory, (directory / "k.cubin").read_bytes(), (directory / "k.fatbin").read_bytes()
    )


@pytest.fixture(scope="session")
def broken(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An object of broken pairs (and one good pair of plain text)."""
    require_tool("gcc")
    directory = tmp_path_factory.mktemp("broken")
    (directory / "broken.s").write_text(BROKEN)
    _run("gcc", "-c", "broken.s", "-o", "broken.o", cwd=directory)
    return directory / "broken.o"


@pytest.fixture(scope="session")
def past_section(tmp_path_factory: pytest.TempPathFactory) -> Path:
    require_tool("gcc")
    directory = tmp_path_factory.mktemp("past")
    (directory / "past.s").write_text(PAST_SECTION)
    _run("gcc", "-shared", "-nostdlib", "past.s", "-o", "libpast.so", cwd=directory)
    return directory / "libpast.so"


def _only(path: Path) -> Library:
    (library,) = inspect_path(path).libraries
    return library


def _expect_pair(library: Library, built: Built) -> None:
    cubins = {cubin.name: cubin for cubin in library.cubins}
    assert sorted(cubins) == ["fat", "my_kernels"]
    for name, data, decoder in (
        ("my_kernels", built.cubin, "cubin"),
        ("fat", built.fatbin, "fatbin"),
    ):
        cubin = cubins[name]
        assert cubin.size == len(data)
        assert cubin.sha256 == hashlib.sha256(data).hexdigest()
        assert cubin.details is not None and cubin.details.decoder == decoder
        assert cubin.symbol.symbol.name == f"__tvm_ffi__cubin_{name}"
        assert cubin.end.symbol.name == f"__tvm_ffi__cubin_{name}_end"
    assert not [f for f in library.findings if f.code == "L213"]


@pytest.mark.slow  # nvcc and the embedding, once per session: seconds of CPU
@pytest.mark.parametrize("name", ["libemb.so", "emb.o"])
def test_embedded_cubins_are_sized_from_their_pair(built: Built, name: str) -> None:
    library = _only(built.path(name))
    _expect_pair(library, built)
    details = {c.name: c.details for c in library.cubins}
    assert details["my_kernels"] is not None
    assert "sm_80" in details["my_kernels"].summary()


@pytest.mark.slow
def test_the_file_offset_is_where_the_bytes_are(built: Built) -> None:
    data = built.path("libemb.so").read_bytes()
    for cubin in _only(built.path("libemb.so")).cubins:
        start = cubin.file_offset
        assert data[start : start + cubin.size] in (built.cubin, built.fatbin)


@pytest.mark.slow
def test_only_symtab_holds_them_and_they_are_still_found(built: Built) -> None:
    library = _only(built.path("libemb.so"))
    for cubin in library.cubins:
        assert cubin.symbol.symbol.table.value == "symtab"
        assert cubin.symbol.symbol.binding == "LOCAL"
        assert not cubin.symbol.dynamic


@pytest.mark.slow
def test_archive_members_have_their_own(built: Built) -> None:
    (member,) = inspect_path(built.path("libemb.a")).libraries
    assert member.member == "emb.o"
    _expect_pair(member, built)
    data = built.path("libemb.a").read_bytes()
    kernels = next(c for c in member.cubins if c.name == "my_kernels")
    assert data[kernels.file_offset : kernels.file_offset + kernels.size] == built.cubin


@pytest.mark.slow
def test_a_stripped_library_lists_none(built: Built) -> None:
    library = _only(built.path("libemb.stripped.so"))
    assert library.cubins == ()
    with pytest.raises(InputError, match="no embedded cubins"):
        extract_cubins(built.path("libemb.stripped.so"), built.directory / "none")


@pytest.mark.slow
def test_json_and_text_list_them(built: Built) -> None:
    run = ffitool("inspect", "--json", str(built.path("libemb.so")))
    assert run.returncode == 0, run.stderr
    (library,) = json.loads(run.stdout)["files"][0]["libraries"]
    rows = {row["name"]: row for row in library["cubins"]}
    assert rows["my_kernels"]["size"] == len(built.cubin)
    assert rows["my_kernels"]["sha256"] == hashlib.sha256(built.cubin).hexdigest()
    assert rows["my_kernels"]["details"]["decoder"] == "cubin"
    assert rows["fat"]["details"]["decoder"] == "fatbin"
    assert rows["fat"]["end_symbol"] == "__tvm_ffi__cubin_fat_end"
    text = ffitool("inspect", str(built.path("libemb.so")))
    assert "Embedded cubins (2)" in text.stdout
    assert "cubin sm_80" in text.stdout


@pytest.mark.slow
def test_extract_writes_the_bytes_the_cubin_files_hold(built: Built, tmp_path: Path) -> None:
    run = ffitool("extract", "--cubins", str(built.path("libemb.so")), "-d", str(tmp_path / "a"))
    assert run.returncode == 0, run.stderr
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["fat.fatbin", "my_kernels.cubin"]
    assert (tmp_path / "a" / "my_kernels.cubin").read_bytes() == built.cubin
    assert (tmp_path / "a" / "fat.fatbin").read_bytes() == built.fatbin
    again = ffitool("extract", "--cubins", str(built.path("libemb.so")), "-d", str(tmp_path / "a"))
    assert again.returncode != 0 and "not empty" in again.stderr
    (tmp_path / "a" / "keep.txt").write_text("mine")
    (tmp_path / "a" / "001-x.bin").write_text("a payload of an earlier extract")
    forced = ffitool(
        "extract", "--cubins", "--force", str(built.path("libemb.so")), "-d", str(tmp_path / "a")
    )
    assert forced.returncode == 0, forced.stderr
    assert (tmp_path / "a" / "keep.txt").read_text() == "mine"
    assert (tmp_path / "a" / "001-x.bin").exists()  # --cubins removes nothing it did not write
    files = extract_cubins(built.path("libemb.a"), tmp_path / "b")
    assert [p.name for p in files] == ["emb.o-fat.fatbin", "emb.o-my_kernels.cubin"]
    assert files[1].read_bytes() == built.cubin


@pytest.mark.slow
def test_extract_never_writes_through_a_symlink(built: Built, tmp_path: Path) -> None:
    target = tmp_path / "victim"
    target.write_text("untouched")
    out = tmp_path / "out"
    out.mkdir()
    (out / "my_kernels.cubin").symlink_to(target)
    forced = ffitool("extract", "--cubins", "--force", str(built.path("libemb.so")), "-d", str(out))
    assert forced.returncode == 0, forced.stderr
    assert target.read_text() == "untouched"
    assert not (out / "my_kernels.cubin").is_symlink()
    assert (out / "my_kernels.cubin").read_bytes() == built.cubin


def test_broken_pairs_are_l213_and_not_listed(broken: Path) -> None:
    library = _only(broken)
    assert [c.name for c in library.cubins] == ["alias", "good", "torn"]
    messages = [f.message for f in library.findings if f.code == "L213"]
    assert len(messages) == len(BROKEN_NAMES)
    for name in BROKEN_NAMES:
        assert [m for m in messages if f"__tvm_ffi__cubin_{name} " in m], name
    _, good, torn = library.cubins
    assert good.size == 5 and good.details is None
    assert good.sha256 == hashlib.sha256(b"hello").hexdigest()
    assert torn.size == 20 and torn.details is None
    assert torn.decoded is not None and torn.decoded.decoder == "cubin"
    (unreadable,) = [f.message for f in library.findings if f.code == "L214"]
    assert unreadable.startswith("__tvm_ffi__cubin_torn: the cubin decoder cannot read")


@pytest.mark.slow  # an assembly and a link
def test_a_pair_past_its_section_is_l213_though_the_segment_goes_on(past_section: Path) -> None:
    library = _only(past_section)
    assert library.cubins == ()
    (message,) = [f.message for f in library.findings if f.code == "L213"]
    assert "__tvm_ffi__cubin_past claims 64 bytes" in message
    assert "hold 4 from" in message


def test_bytes_no_decoder_knows_are_extracted_as_bin(broken: Path, tmp_path: Path) -> None:
    _, written, torn = extract_cubins(broken, tmp_path / "out")
    assert written.name == "good.bin"
    assert written.read_bytes() == b"hello"
    assert torn.name == "torn.bin"  # starts like a cubin, but no decoder reads it (L214)


@pytest.mark.slow  # a CLI run
def test_symbol_prefix_does_not_combine_with_cubins(broken: Path, tmp_path: Path) -> None:
    run = ffitool(
        "extract", "--cubins", "--symbol-prefix", "p", str(broken), "-d", str(tmp_path / "o")
    )
    assert run.returncode == 2, run.stderr
    assert not (tmp_path / "o").exists()


@pytest.mark.slow  # an assembly of 8,000 symbols, then a measured inspect
def test_many_pairs_over_the_same_bytes_read_them_once(tmp_path: Path) -> None:
    """4,000 pairs over one 4 MiB range would hash 16 GB if each were read: overlapping pairs
    are L213, and reading stays bounded by the bytes there are."""
    require_tool("gcc")
    lines = ['    .section .rodata.big, "a"', "__tvm_ffi__cubin_big: .zero 4194304",
             "__tvm_ffi__cubin_big_end:"]  # fmt: skip
    for i in range(1, 4001):
        lines.append(f"    .set __tvm_ffi__cubin_a{i}, __tvm_ffi__cubin_big + {i}")
        lines.append(f"    .set __tvm_ffi__cubin_a{i}_end, __tvm_ffi__cubin_big_end")
    (tmp_path / "many.s").write_text("\n".join(lines) + "\n")
    _run("gcc", "-c", "many.s", "-o", "many.o", cwd=tmp_path)
    command = [sys.executable, "-m", "ffitool", "inspect", "--json", str(tmp_path / "many.o")]
    code, cpu, _ = run_measured(command, tmp_path)
    assert code == 0, (tmp_path / "stderr").read_text()
    (library,) = json.loads((tmp_path / "stdout").read_text())["files"][0]["libraries"]
    assert [row["name"] for row in library["cubins"]] == ["big"]
    assert sum(f["code"] == "L213" for f in library["findings"]) == 4000
    assert cpu < 10.0


@pytest.mark.slow
def test_require_arch_asks_embedded_cubins_too(built: Built) -> None:
    """R105 over each embedded cubin, at its file offset: the sm_80 cubin has no code for
    sm_90; the fatbin has compute_90 PTX, which the driver compiles for sm_90."""
    inspected = inspect_path(built.path("libemb.so"))
    (library,) = inspected.libraries
    reported = check_file(inspected, Requirements(archs=("sm_90",)))
    offsets = {c.name: c.file_offset for c in library.cubins}
    assert [(r.finding.code, r.finding.message, r.file_offset) for r in reported] == [
        ("R105", "embedded cubin my_kernels has no code for sm_90 (it has sm_80)",
         offsets["my_kernels"]),
    ]  # fmt: skip
    assert check_file(inspected, Requirements(archs=("sm_80",))) == []
