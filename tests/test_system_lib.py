"""System-lib blobs in shared libraries: `blob emit-c --system-lib` output, built with gcc.

A constructor hands `<prefix>__tvm_ffi__library_bin` to `TVMFFIEnvModRegisterSystemLibSymbol`,
where `tvm_ffi.system_lib(prefix)` finds it. `inspect` must show that blob with its prefix and
`extract` must write its modules, both checked against what the real runtime received.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import os
import subprocess
from pathlib import Path

import jsonschema
import pytest
from conftest import FIXTURES, ROOT, ffitool, require_tool

from ffitool.library import inspect_path

GAMMA = b"gamma \x00 system-lib payload"
SYS = bytes(range(255, 0, -1)) * 3
PLAIN = b"the plain blob's payload"
SRC = FIXTURES.parent / "src"


def manifest(directory: Path, payloads: list[tuple[str, bytes]]) -> Path:
    """A manifest of `_lib` importing one module per payload, in order."""
    directory.mkdir(parents=True)
    modules: list[dict[str, object]] = [
        {"index": 0, "kind": "_lib", "imports": list(range(1, len(payloads) + 1))}
    ]
    for index, (kind, data) in enumerate(payloads, 1):
        name = f"{index}.bin"
        (directory / name).write_bytes(data)
        modules.append({"index": index, "kind": kind, "imports": [], "file": name})
    path = directory / "manifest.json"
    path.write_text(json.dumps({"schema": "ffitool.manifest/1", "modules": modules}))
    return path


def emit_c(tmp_path: Path, name: str, payloads: list[tuple[str, bytes]], prefix: str) -> Path:
    """C for a blob of `payloads`: registered as a system lib under `prefix`, or plain."""
    source = tmp_path / f"{name}.c"
    args = ["blob", "emit-c", str(manifest(tmp_path / name, payloads)), "-o", str(source)]
    if prefix:
        args += ["--symbol-prefix", prefix, "--system-lib"]
    result = ffitool(*args)
    assert result.returncode == 0, result.stderr
    return source


def build(tvm_ffi, tmp_path: Path, sources: list[Path], *flags: str) -> Path:
    gcc = require_tool("gcc")
    include = tvm_ffi.libinfo.find_include_path()
    dlpack = tvm_ffi.libinfo.find_dlpack_include_path()
    lib = tmp_path / "libsys.so"
    subprocess.run(
        [gcc, "-shared", "-fPIC", "-O1", f"-I{include}", f"-I{dlpack}", f"-I{SRC}",
         "-o", str(lib), *map(str, sources), *flags],
        check=True,
    )  # fmt: skip
    return lib


def system_function(tmp_path: Path, prefix: str) -> Path:
    """`__tvm_ffi_<prefix>add_one`, registered the way TVM's system-lib codegen does it."""
    source = tmp_path / "function.c"
    symbol = f"__tvm_ffi_{prefix}add_one"
    source.write_text(
        '#include "ffi_fixture.h"\n'
        f"FIXTURE_DEFINE_ADD_ONE({symbol})\n"
        "int TVMFFIEnvModRegisterSystemLibSymbol(const char* name, void* symbol);\n"
        "__attribute__((constructor)) static void register_function(void) {\n"
        f'  TVMFFIEnvModRegisterSystemLibSymbol("{symbol}", (void*){symbol});\n'
        "}\n"
    )
    return source


def unique_prefix(tag: str) -> str:
    """The system-lib registry is process-wide: every test registers its own prefix."""
    return f"{tag}{os.getpid()}_"


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.mark.slow
def test_emit_c_system_lib_in_a_shared_library_is_shown_and_extracted(runtime, tmp_path):
    tvm_ffi, received = runtime
    prefix = unique_prefix("shown")
    blob_c = emit_c(tmp_path, "blob", [("test_gamma", GAMMA), ("test_sys", SYS)], prefix)
    lib = build(tvm_ffi, tmp_path, [blob_c, system_function(tmp_path, prefix)])

    # The runtime: the constructor registered the blob, system_lib(prefix) loads its modules.
    # RTLD_LOCAL: its __tvm_ffi__library_bin must not interpose on what later tests load in
    # this process (a GOT relocation would resolve to it); the constructor runs either way.
    ctypes.CDLL(str(lib), mode=ctypes.RTLD_LOCAL)
    received.clear()
    module = tvm_ffi.system_lib(prefix)
    assert received == {"test_gamma": [GAMMA], "test_sys": [SYS]}
    assert len(module.imports) == 2
    assert module["add_one"](41) == 42

    # inspect: no plain blob, one system-lib blob with its prefix, no findings.
    (library,) = inspect_path(lib).libraries
    assert library.library_bin is None
    (blob,) = library.system_lib_bins
    assert (blob.prefix, blob.symbol.symbol.name) == (prefix, f"{prefix}__tvm_ffi__library_bin")
    assert [(m.kind, m.size, m.sha256, m.imports) for m in blob.modules] == [
        ("_lib", None, None, (1, 2)),
        ("test_gamma", len(GAMMA), sha256(GAMMA), ()),
        ("test_sys", len(SYS), sha256(SYS), ()),
    ]
    assert blob.findings == ()
    assert [(f.name, f.symbol.naming.prefix) for f in library.functions] == [("add_one", prefix)]
    assert library.findings == ()

    # The JSON document carries it, and the schema describes it.
    result = ffitool("inspect", "--json", str(lib))
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    schema = json.loads((ROOT / "ffitool" / "schemas" / "inspect-3.json").read_text())
    jsonschema.validate(document, schema)
    (shown,) = document["files"][0]["libraries"][0]["system_lib_bins"]
    assert (shown["prefix"], shown["symbol"]) == (prefix, f"{prefix}__tvm_ffi__library_bin")
    assert document["files"][0]["libraries"][0]["library_bin"] is None
    text = ffitool("inspect", str(lib)).stdout
    assert f"System-lib blob {prefix}__tvm_ffi__library_bin (prefix {prefix}, tvm_ffi)" in (
        text.replace("\n", " ")
    )

    # extract writes exactly the payloads the runtime received, and the tree.
    out = tmp_path / "out"
    result = ffitool("extract", str(lib), "-d", str(out))
    assert result.returncode == 0, result.stderr
    assert (out / "001-test_gamma.bin").read_bytes() == GAMMA
    assert (out / "002-test_sys.bin").read_bytes() == SYS
    written = json.loads((out / "manifest.json").read_text())
    assert [(m["kind"], m["imports"]) for m in written["modules"]] == [
        ("_lib", [1, 2]), ("test_gamma", []), ("test_sys", [])
    ]  # fmt: skip


@pytest.mark.slow
def test_a_library_with_both_blobs_shows_both_and_extract_picks_by_prefix(runtime, tmp_path):
    tvm_ffi, received = runtime
    prefix = unique_prefix("both")
    plain_c = emit_c(tmp_path, "plain", [("test_alpha", PLAIN)], "")
    system_c = emit_c(tmp_path, "system", [("test_gamma", GAMMA)], prefix)
    lib = build(tvm_ffi, tmp_path, [plain_c, system_c, SRC / "pack_host.c"])

    received.clear()
    tvm_ffi.load_module(str(lib))
    assert received == {"test_alpha": [PLAIN]}
    ctypes.CDLL(str(lib), mode=ctypes.RTLD_LOCAL)
    received.clear()
    tvm_ffi.system_lib(prefix)
    assert received == {"test_gamma": [GAMMA]}

    (library,) = inspect_path(lib).libraries
    assert library.library_bin is not None
    assert (library.library_bin.prefix, library.library_bin.symbol.symbol.name) == (
        "",
        "__tvm_ffi__library_bin",
    )
    assert [m.sha256 for m in library.library_bin.modules] == [None, sha256(PLAIN)]
    assert [(b.prefix, [m.sha256 for m in b.modules]) for b in library.system_lib_bins] == [
        (prefix, [None, sha256(GAMMA)])
    ]

    # Without --symbol-prefix: the plain blob, the one load_module reads and pack rewrites.
    assert ffitool("extract", str(lib), "-d", str(tmp_path / "a")).returncode == 0
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == [
        "001-test_alpha.bin", "manifest.json"
    ]  # fmt: skip
    assert (tmp_path / "a" / "001-test_alpha.bin").read_bytes() == PLAIN
    result = ffitool("extract", str(lib), "-d", str(tmp_path / "b"), "--symbol-prefix", prefix)
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == [
        "001-test_gamma.bin", "manifest.json"
    ]  # fmt: skip
    assert (tmp_path / "b" / "001-test_gamma.bin").read_bytes() == GAMMA
    result = ffitool("extract", str(lib), "-d", str(tmp_path / "c"), "--symbol-prefix", "nope_")
    assert result.returncode == 3
    assert result.stderr == (
        f"ffitool: error: {lib}: no readable nope___tvm_ffi__library_bin to extract\n"
    )
    assert not (tmp_path / "c").exists()


@pytest.mark.slow
def test_several_system_lib_blobs_need_a_prefix_to_extract(runtime, tmp_path):
    tvm_ffi, _ = runtime
    first, second = unique_prefix("first"), unique_prefix("second")
    sources = [
        emit_c(tmp_path, "one", [("test_gamma", GAMMA)], first),
        emit_c(tmp_path, "two", [("test_sys", SYS)], second),
    ]
    lib = build(tvm_ffi, tmp_path, sources)
    (library,) = inspect_path(lib).libraries
    assert [b.prefix for b in library.system_lib_bins] == [first, second]

    result = ffitool("extract", str(lib), "-d", str(tmp_path / "out"))
    assert result.returncode == 2
    assert result.stderr == (
        f"ffitool: error: {lib}: blobs with the system-lib prefixes {first}, {second};"
        " choose one with --symbol-prefix\n"
    )
    result = ffitool("extract", str(lib), "-d", str(tmp_path / "out"), "--symbol-prefix", "")
    assert result.returncode == 3
    assert "no readable __tvm_ffi__library_bin to extract" in result.stderr
    result = ffitool("extract", str(lib), "-d", str(tmp_path / "out"), "--symbol-prefix", second)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "out" / "001-test_sys.bin").read_bytes() == SYS


@pytest.mark.parametrize("exported", [True, False])
def test_a_system_lib_blob_need_not_be_exported(runtime, tmp_path, exported):
    """Registered by address from a constructor: dlsym never looks, so no L101 either way."""
    tvm_ffi, received = runtime
    prefix = unique_prefix(f"hidden{int(exported)}")
    sources = [emit_c(tmp_path, "blob", [("test_gamma", GAMMA)], prefix)]
    sources.append(system_function(tmp_path, prefix))
    flags = []
    if not exported:
        script = tmp_path / "local.map"
        script.write_text("{ local: *; };\n")
        flags = [f"-Wl,--version-script={script}"]
    lib = build(tvm_ffi, tmp_path, sources, *flags)

    ctypes.CDLL(str(lib), mode=ctypes.RTLD_LOCAL)
    received.clear()
    assert tvm_ffi.system_lib(prefix)["add_one"](1) == 2
    assert received == {"test_gamma": [GAMMA]}

    (library,) = inspect_path(lib).libraries
    (blob,) = library.system_lib_bins
    assert blob.symbol.dynamic is exported
    assert blob.symbol.symbol.table.value == ("dynsym" if exported else "symtab")
    assert [m.sha256 for m in blob.modules] == [None, sha256(GAMMA)]
    assert blob.findings == ()
    assert library.findings == ()  # no L210 for the unexported system-lib function
    assert [f.name for f in library.functions] == (["add_one"] if exported else [])
