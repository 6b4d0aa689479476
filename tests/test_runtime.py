"""The real tvm-ffi runtime is the oracle: what inspect reports is what load_module does."""

from __future__ import annotations

import hashlib
import re
import struct
import subprocess

import pytest
from conftest import FIXTURES, require_tool

from ffitool.blob import decode
from ffitool.errors import BlobError
from ffitool.library import inspect_path


def dynamic_ffi_names(path) -> set[str]:
    """Every defined `__tvm_ffi_*` name in the dynamic table, per readelf (what dlsym can find)."""
    readelf = require_tool("readelf")
    out = subprocess.run(
        [readelf, "-W", "--dyn-syms", str(path)], capture_output=True, text=True, check=True
    ).stdout
    names = set()
    for line in out.splitlines():
        fields = line.split()
        if len(fields) >= 8 and fields[-1].startswith("__tvm_ffi_") and fields[-2] != "UND":
            names.add(fields[-1])
    return names


def symtab_ffi_names(path) -> set[str]:
    readelf = require_tool("readelf")
    out = subprocess.run(
        [readelf, "-W", "--syms", str(path)], capture_output=True, text=True, check=True
    ).stdout
    return {line.split()[-1] for line in out.splitlines() if "__tvm_ffi_" in line}


@pytest.mark.parametrize(
    "name",
    ["libffi_c.so", "libffi_c.stripped.so", "libffi_cpp.so", "libffi_hidden_blob.so"],
)
def test_runtime_resolves_exactly_what_inspect_lists(runtime, name):
    tvm_ffi, _ = runtime
    path = FIXTURES / name
    (library,) = inspect_path(path).libraries
    module = tvm_ffi.load_module(str(path))
    listed = {f.name for f in library.functions}
    assert listed, "fixture should export functions"
    exported_specials = {s.symbol.name for s in library.symbols if s.dynamic} - {
        f.symbol.symbol.name for f in library.functions
    }
    for function in listed:
        assert module.implements_function(function)
    # dlsym sees exactly the FFI names that inspect marks as exported, no more, no less.
    assert dynamic_ffi_names(path) == {f"__tvm_ffi_{n}" for n in listed} | {
        n for n in exported_specials if n.startswith("__tvm_ffi_")
    }
    # Names that exist only in .symtab (hidden, local, compiler clones) do not resolve.
    for hidden in symtab_ffi_names(path) - dynamic_ffi_names(path):
        if hidden.startswith("__tvm_ffi_"):
            assert not module.implements_function(hidden[len("__tvm_ffi_") :]), hidden


def test_functions_compute(runtime):
    tvm_ffi, _ = runtime
    c = tvm_ffi.load_module(str(FIXTURES / "libffi_c.so"))
    assert (c["add_one"](5), c["sum3"](1, 2, 3), c["main"]()) == (6, 6, 42)
    cpp = tvm_ffi.load_module(str(FIXTURES / "libffi_cpp.so"))
    assert cpp["add_one"](1) == 2
    assert cpp["concat"]("ab", "cd") == "abcd"
    (library,) = inspect_path(FIXTURES / "libffi_cpp.so").libraries
    flags = {f.name: (f.has_metadata, f.has_doc) for f in library.functions}
    assert flags == {"add_one": (True, True), "concat": (True, False)}
    assert cpp.get_function_doc("add_one") is not None
    assert cpp.get_function_doc("concat") is None
    assert cpp.get_function_metadata("concat") is not None


@pytest.mark.parametrize("name", ["libffi_c.so", "libffi_c.stripped.so"])
def test_loaders_receive_exactly_the_reported_payloads(runtime, name):
    tvm_ffi, received = runtime
    path = FIXTURES / name
    (library,) = inspect_path(path).libraries
    module = tvm_ffi.load_module(str(path))
    modules = library.library_bin.modules
    got = {k: [hashlib.sha256(p).hexdigest() for p in v] for k, v in received.items()}
    assert got == {m.kind: [m.sha256] for m in modules if m.kind != "_lib"}
    assert [m.size for m in modules] == [None, 16, 300]
    # The root's imports follow the reported tree: 0 -> [1, 2], 1 -> [2] (one shared object).
    assert [m.imports for m in modules] == [(1, 2), (2,), ()]
    assert len(module.imports) == 2
    assert module.imports[0].imports[0].same_as(module.imports[1])


def test_hidden_blob_is_ignored_by_the_runtime_as_reported(runtime):
    tvm_ffi, received = runtime
    path = FIXTURES / "libffi_hidden_blob.so"
    (library,) = inspect_path(path).libraries
    assert [f.code for f in library.library_bin.findings] == ["L101"]
    module = tvm_ffi.load_module(str(path))
    assert received == {}
    assert len(module.imports) == 0


def test_bss_blob_fails_to_load_as_reported(runtime):
    tvm_ffi, _ = runtime
    path = FIXTURES / "libffi_bss_blob.so"
    (library,) = inspect_path(path).libraries
    assert [f.code for f in library.library_bin.findings] == ["L103"]
    with pytest.raises(RuntimeError, match=re.escape("stream.Read(&import_tree_indptr)")):
        tvm_ffi.load_module(str(path))


def _q(*values: int) -> bytes:
    return struct.pack(f"<{len(values)}Q", *values)


def _s(text: bytes) -> bytes:
    return _q(len(text)) + text


def _blob(children: list[int], second: bytes) -> bytes:
    body = (
        _q(3, 0, len(children), len(children)) + _q(len(children), *children) + _s(b"_lib") + second
    )
    return _q(len(body)) + body


def _library_with_blob(tmp_path, blob: bytes):
    gcc = require_tool("gcc")
    source = tmp_path / "lib.c"
    array = ", ".join(str(b) for b in blob)
    source.write_text(
        '__attribute__((visibility("default"))) const unsigned char\n'
        f"__tvm_ffi__library_bin[{len(blob)}] = {{{array}}};\n"
        "int __tvm_ffi_main(void* s, const void* a, int n, void* r) { return 0; }\n"
    )
    out = tmp_path / "lib.so"
    subprocess.run([gcc, "-shared", "-fPIC", "-o", str(out), str(source)], check=True)
    return out


@pytest.mark.parametrize(
    ("second", "children", "runtime_error", "ffitool_error"),
    [
        (
            _s(b"test_empty") + _q(0),
            [1],
            "stream.Read(&module_bytes)",
            "module 1 (test_empty) payload is empty",
        ),
        (_q(0), [1], "stream.Read(&kind)", "module 1 key is empty"),
        (
            _s(b"test_sys") + _s(b"x"),
            [5],
            "child_index < modules.size()",
            "module 0 imports module 5",
        ),
    ],
)
def test_runtime_and_ffitool_reject_the_same_blobs(
    runtime, tmp_path, second, children, runtime_error, ffitool_error
):
    tvm_ffi, _ = runtime
    blob = _blob(children, second)
    with pytest.raises(BlobError, match=re.escape(ffitool_error)):
        decode(blob)
    path = _library_with_blob(tmp_path, blob)
    (library,) = inspect_path(path).libraries
    assert [f.code for f in library.library_bin.findings] == ["B100"]
    with pytest.raises(RuntimeError, match=re.escape(runtime_error)):
        tvm_ffi.load_module(str(path))


def test_a_cycle_is_only_a_warning_because_the_runtime_loads_it(runtime, tmp_path):
    tvm_ffi, received = runtime
    body = _q(3, 0, 1, 2) + _q(2, 1, 0) + _s(b"_lib") + _s(b"test_cycle") + _s(b"c")
    path = _library_with_blob(tmp_path, _q(len(body)) + body)
    (library,) = inspect_path(path).libraries
    assert [f.code for f in library.library_bin.findings] == ["B202"]
    module = tvm_ffi.load_module(str(path))
    assert received == {"test_cycle": [b"c"]}
    assert module.imports[0].imports[0].same_as(module)


def test_a_symbol_smaller_than_its_blob_is_only_a_warning(runtime, tmp_path):
    """The runtime reads nbytes past the symbol's end, so this loads; TVM never writes it."""
    tvm_ffi, received = runtime
    gcc = require_tool("gcc")
    blob = _blob([1], _s(b"test_sys") + _s(b"short"))
    source = tmp_path / "short.S"
    source.write_text(
        "  .section .rodata\n"
        "  .globl __tvm_ffi__library_bin\n"
        "  .type __tvm_ffi__library_bin, @object\n"
        "  .size __tvm_ffi__library_bin, 16\n"
        "__tvm_ffi__library_bin:\n"
        f"  .byte {', '.join(str(b) for b in blob)}\n"
        '  .section .note.GNU-stack,"",@progbits\n'
    )
    lib = tmp_path / "libshort.so"
    subprocess.run([gcc, "-shared", "-fPIC", "-o", str(lib), str(source)], check=True)
    (library,) = inspect_path(lib).libraries
    assert [(f.code, f.severity.value) for f in library.library_bin.findings] == [
        ("L102", "warning")
    ]
    assert library.library_bin.findings[0].message == (
        f"symbol size 16 is smaller than the {len(blob)} bytes the blob occupies (8 + nbytes)"
    )
    tvm_ffi.load_module(str(lib))
    assert received == {"test_sys": [b"short"]}
