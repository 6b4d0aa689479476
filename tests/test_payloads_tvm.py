"""Decoders of the modules TVM writes: hand-built payloads from TVM's source, then TVM itself.

The fast tests build payloads byte for byte from the layouts in TVM's source (the decoders'
module docs say where) and damage them; the slow ones compile with apache-tvm 0.27 and compare
what the decoders read from TVM's own blob with what TVM reports for the same module.
"""

from __future__ import annotations

import re
import struct
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import pytest
from conftest import require, require_tvm_ffi
from hypothesis import given, settings
from hypothesis import strategies as st

from ffitool import blob
from ffitool.payloads import PayloadError, decode_payload, tvm_device
from ffitool.payloads.relax_vm import MAGIC_V1, MAGIC_V2, decode_vm_executable
from ffitool.payloads.tvm_device import decode_cuda_module
from ffitool.payloads.tvm_modules import (
    decode_c_source,
    decode_const_loader,
    decode_static_library,
)
from ffitool.payloads.tvmstream import KEEP_LIMIT, NAME_LIMIT, TENSOR_MAGIC, dtype_name

# --- TVM's serializer format, written as include/tvm/support/serializer.h writes it ----------


def _u64(value: int) -> bytes:
    return struct.pack("<Q", value)


def _str(value: str | bytes) -> bytes:
    raw = value.encode() if isinstance(value, str) else value
    return _u64(len(raw)) + raw


def _strs(values: list[str]) -> bytes:
    return _u64(len(values)) + b"".join(_str(value) for value in values)


def _dtype(code: int, bits: int, lanes: int) -> bytes:
    return struct.pack("<BBH", code, bits, lanes)


def _tensor(shape: tuple[int, ...], data: bytes) -> bytes:
    """A float32 tensor as runtime::SaveDLTensor writes it."""
    header = struct.pack("<QQiiiBBH", TENSOR_MAGIC, 0, 1, 0, len(shape), 2, 32, 1)
    return header + struct.pack(f"<{len(shape)}q", *shape) + _str(data)


def _function_info(
    name: str, types: list[bytes], tags: list[str], extra: list[int] | None
) -> bytes:
    """A FunctionInfo; `extra` None writes the three fields of TVM before 0.21."""
    fields = _str(name) + _u64(len(types)) + b"".join(types) + _strs(tags)
    if extra is None:
        return fields
    return fields + _u64(len(extra)) + b"".join(struct.pack("<i", tag) for tag in extra)


def _cuda_payload(
    fmt: str = "ptx", code: bytes = b"//\n.version 8.0\n", legacy: bool = False
) -> bytes:
    kernels = [
        (
            "gemm_kernel",
            [_dtype(3, 64, 1), _dtype(2, 16, 4), _dtype(0, 32, 1)],
            ["blockIdx.x", "threadIdx.x", "tirx.use_dyn_shared_memory"],
            [1, 0, 0],
        ),
        ("copy_kernel", [_dtype(3, 64, 1)], ["threadIdx.x"], [0]),
    ]
    fmap = _u64(len(kernels)) + b"".join(
        _str(name) + _function_info(name, types, tags, None if legacy else extra)
        for name, types, tags, extra in kernels
    )
    return _str(fmt) + fmap + _str(code)


def _source_map(sources: dict[str, bytes]) -> bytes:
    return _u64(len(sources)) + b"".join(_str(k) + _str(v) for k, v in sources.items())


def _metal_payload() -> bytes:
    table = _u64(1) + _str("k") + _function_info("k", [_dtype(3, 64, 1)], ["threadIdx.x"], [0])
    return _str("metal") + table + _source_map({"k": b"kernel void k() {}", "k2": b"x"})


def _webgpu_payload() -> bytes:
    table = _u64(1) + _str("k") + _function_info("k", [_dtype(2, 32, 1)], [], [0])
    return table + _source_map({"k": b"@compute fn k() {}"})


def _vm_function(kind: int, name: str, num_args: int, params: list[str]) -> bytes:
    return (
        struct.pack("<i", kind) + _str(name) + struct.pack("<4q", 0, 3, num_args, 5) + _strs(params)
    )


def _vm_payload(magic: int = MAGIC_V2) -> bytes:
    functions = [
        _vm_function(1, "main", 2, ["x", "y"]),
        _vm_function(0, "vm.builtin.alloc_storage", -2, []),
        _vm_function(2, "fused", 1, ["a"]),
    ]
    scopes = _u64(1) + struct.pack("<q", 0) + _str("global") if magic == MAGIC_V2 else b""
    constants = [
        struct.pack("<i", 70) + _tensor((2,), bytes(8)),
        struct.pack("<i", 69) + _u64(2) + struct.pack("<2q", 4, 8),
        struct.pack("<i", 65) + _str("ErrorContext"),
        struct.pack("<iq", 1, 7),
        struct.pack("<id", 3, 0.5),
        struct.pack("<i", 5) + _dtype(2, 32, 1),
    ]
    code = _u64(2) + struct.pack("<2q", 0, 3) + _u64(3) + struct.pack("<3q", 1, 2, 3)
    return (
        _u64(magic)
        + _str("0.14")
        + _u64(len(functions))
        + b"".join(functions)
        + scopes
        + _u64(len(constants))
        + b"".join(constants)
        + code
    )


def _const_loader_payload() -> bytes:
    return (
        _strs(["w0", "w1"])
        + _u64(2)
        + _tensor((2, 3), bytes(24))
        + _tensor((4,), bytes(16))
        + _strs(["f1", "f2"])
        + _u64(2)
        + _strs(["w0"])
        + _strs(["w0", "w1"])
    )


def _static_library_payload() -> bytes:
    return _str(b"\x7fELF object") + _strs(["f1", "g"])


def _c_payload() -> bytes:
    return _str("int f1(void) { return 0; }") + _str("c") + _strs(["f1", "f2"]) + _strs(["w0"])


SAMPLES = {
    "cuda": _cuda_payload(),
    "opencl": _cuda_payload("cl", b"__kernel void gemm_kernel() {}"),
    "hip": _cuda_payload("hsaco", b"\x7fELF", legacy=True),
    "metal": _metal_payload(),
    "webgpu": _webgpu_payload(),
    "relax.VMExecutable": _vm_payload(),
    "const_loader": _const_loader_payload(),
    "static_library": _static_library_payload(),
    "c": _c_payload(),
}


# --- what the decoders read from payloads built from TVM's source ----------------------------


@pytest.mark.slow  # importing tvm_ffi takes half a second of CPU
def test_dtype_names_are_tvm_ffis() -> None:
    dtype = require_tvm_ffi().dtype
    for code in [0, 1, 2, 3, 4, 6, *range(7, 18)]:
        for bits in (1, 4, 8, 16, 32, 64):
            for lanes in (0, 1, 2, 4, 16):
                expected = str(dtype.from_dlpack_data_type((code, bits, lanes)))
                assert dtype_name(code, bits, lanes) == expected, (code, bits, lanes)
    assert dtype_name(5, 64, 1) == "dtype(5,64,1)"  # a code tvm-ffi refuses to spell


def test_cuda_module_table_and_format() -> None:
    details = decode_cuda_module(memoryview(_cuda_payload()))
    assert details.format == "ptx"
    assert details.kernel_count == 2
    gemm, copy = details.kernels
    assert gemm.name == gemm.key == "gemm_kernel"
    assert gemm.arg_types.items == ("handle", "float16x4", "int32")
    assert gemm.launch_param_tags.items == (
        "blockIdx.x",
        "threadIdx.x",
        "tirx.use_dyn_shared_memory",
    )
    assert gemm.arg_extra_tags == ("tensormap", "none", "none")
    assert copy.arg_types.items == ("handle",)
    assert details.code_size == len(b"//\n.version 8.0\n")
    assert details.trailing == 0
    json = details.to_json()
    assert json["decoder"] == "tvm.cuda"
    assert json["kernels"][0]["arg_types"] == {
        "count": 3,
        "items": ["handle", "float16x4", "int32"],
    }
    assert "2 kernel(s): gemm_kernel, copy_kernel" in details.summary()


@pytest.mark.parametrize("code", [b"", b"//\n.version 8.0\n", bytes(range(256)) * 3])
def test_function_info_of_tvm_before_0_21(code: bytes) -> None:
    legacy = decode_cuda_module(memoryview(_cuda_payload(code=code, legacy=True)))
    assert legacy.legacy_function_info
    assert [(k.name, k.arg_types.items, k.arg_extra_tags) for k in legacy.kernels] == [
        ("gemm_kernel", ("handle", "float16x4", "int32"), None),
        ("copy_kernel", ("handle",), None),
    ]
    assert (legacy.code_size, legacy.trailing) == (len(code), 0)
    current = decode_cuda_module(memoryview(_cuda_payload(code=code)))
    assert not current.legacy_function_info
    assert current.kernels[0].arg_extra_tags == ("tensormap", "none", "none")


def test_cuda_code_goes_to_the_code_decoder(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[bytes] = []

    def decode_ptx(data: memoryview) -> Any:
        seen.append(bytes(data))
        return SimpleNamespace(decoder="ptx", summary=lambda: "PTX 8.0", to_json=lambda: {"x": 1})

    monkeypatch.setattr(
        tvm_device, "import_module", lambda name: SimpleNamespace(decode_ptx=decode_ptx)
    )
    details = decode_cuda_module(memoryview(_cuda_payload()))
    assert seen == [b"//\n.version 8.0\n"]
    assert details.code is not None and details.to_json()["code"] == {"x": 1}
    assert details.summary().endswith("; PTX 8.0")


def test_cuda_code_decoder_failure_is_kept_not_raised(monkeypatch: pytest.MonkeyPatch) -> None:
    def decode_cubin(data: memoryview) -> Any:
        raise PayloadError("not an ELF file", 0)

    monkeypatch.setattr(
        tvm_device, "import_module", lambda name: SimpleNamespace(decode_cubin=decode_cubin)
    )
    details = decode_cuda_module(memoryview(_cuda_payload("cubin", b"junk")))
    assert details.code is None
    assert details.code_error == "not an ELF file at payload offset 0"


def test_cuda_code_decoder_absent_gives_the_size(monkeypatch: pytest.MonkeyPatch) -> None:
    def missing(name: str) -> ModuleType:
        raise ImportError(name)

    monkeypatch.setattr(tvm_device, "import_module", missing)
    details = decode_cuda_module(memoryview(_cuda_payload("fatbin", b"\x50\xed\x55\xba")))
    assert (details.format, details.code, details.code_error, details.code_size) == (
        "fatbin",
        None,
        None,
        4,
    )


def test_metal_and_webgpu_sources_per_function() -> None:
    metal = decode_payload("metal", memoryview(_metal_payload())).details
    assert isinstance(metal, tvm_device.DeviceModule)
    assert (metal.decoder, metal.format, metal.code_size) == ("tvm.metal", "metal", 19)
    assert metal.sources is not None and metal.sources.items == ("k", "k2")
    webgpu = decode_payload("webgpu", memoryview(_webgpu_payload())).details
    assert isinstance(webgpu, tvm_device.DeviceModule)
    assert (webgpu.format, webgpu.kernels[0].arg_types.items) == (None, ("float32",))
    hip = decode_payload("hip", memoryview(_cuda_payload("hsaco", b"\x7fELF")))
    assert hip.details is not None and "TVM hip module, hsaco (4 bytes)" in hip.details.summary()


@pytest.mark.parametrize("magic", [MAGIC_V1, MAGIC_V2])
def test_vm_executable_functions_and_sections(magic: int) -> None:
    details = decode_vm_executable(memoryview(_vm_payload(magic)))
    assert details.version == "0.14"
    assert [(f.name, f.kind, f.num_args, f.param_names.items) for f in details.functions] == [
        ("main", "VM", 2, ("x", "y")),
        ("vm.builtin.alloc_storage", "packed", -2, ()),
        ("fused", "VMTIR", 1, ("a",)),
    ]
    assert details.memory_scopes == (1 if magic == MAGIC_V2 else 0)
    assert details.constant_kinds == {
        "tensor": 1,
        "shape": 1,
        "str": 1,
        "int": 1,
        "float": 1,
        "dtype": 1,
    }
    assert (details.instructions, details.code_words, details.trailing) == (2, 3, 0)
    assert "3 function(s) (main, fused), 6 constant(s)" in details.summary()


def test_const_loader_names_per_symbol() -> None:
    details = decode_const_loader(memoryview(_const_loader_payload()))
    assert details.variables.items == ("w0", "w1")
    assert details.tensor_bytes == 40
    assert [(s, v.items) for s, v in details.symbols] == [("f1", ("w0",)), ("f2", ("w0", "w1"))]
    assert details.to_json()["symbols"][1] == {
        "symbol": "f2",
        "variables": {"count": 2, "items": ["w0", "w1"]},
    }


def test_static_library_and_c_source() -> None:
    library = decode_static_library(memoryview(_static_library_payload()))
    assert (library.object_size, library.functions.items) == (len(b"\x7fELF object"), ("f1", "g"))
    source = decode_c_source(memoryview(_c_payload()))
    assert (source.format, source.functions.items, source.const_vars.items) == (
        "c",
        ("f1", "f2"),
        ("w0",),
    )


def test_kinds_and_content_find_their_decoders() -> None:
    for kind, payload in SAMPLES.items():
        decoded = decode_payload(kind, memoryview(payload))
        assert decoded.error is None and decoded.expected is None and decoded.details is not None, (
            kind
        )
    vm = memoryview(_vm_payload())
    found = decode_payload("my_vm", vm)
    assert found.details is not None and found.details.decoder == "relax.VMExecutable"
    mismatch = decode_payload("cuda", vm)
    assert mismatch.expected == "tvm.cuda" and mismatch.details is not None
    assert mismatch.details.decoder == "relax.VMExecutable"


# --- hostile payloads: only PayloadError, and work and output bounded by the payload ---------


@pytest.mark.parametrize("kind", sorted(SAMPLES))
def test_truncations_and_mutations_raise_only_payload_error(kind: str) -> None:
    payload = SAMPLES[kind]
    damaged = [payload[:end] for end in range(len(payload))]
    for at in range(len(payload)):
        for value in (0x00, 0x7F, 0xFF):
            damaged.append(payload[:at] + bytes([value]) + payload[at + 1 :])
    for data in damaged:
        decoded = decode_payload(kind, memoryview(data))
        assert (decoded.details is None) == (decoded.error is not None)
        if decoded.error is not None:
            assert 0 <= decoded.error.offset <= len(data)


@settings(max_examples=80, deadline=None, derandomize=True)
@given(
    kind=st.sampled_from(sorted(SAMPLES)),
    edits=st.lists(st.tuples(st.integers(0, 1 << 16), st.integers(0, 255)), max_size=6),
    cut=st.integers(0, 1 << 16),
)
def test_random_damage_raises_only_payload_error(
    kind: str, edits: list[tuple[int, int]], cut: int
) -> None:
    payload = bytearray(SAMPLES[kind])
    for at, value in edits:
        payload[at % len(payload)] = value
    data = memoryview(bytes(payload[: len(payload) - cut % 8]))
    for decoder_kind in (kind, "relax.VMExecutable", "cuda", "const_loader"):
        decoded = decode_payload(decoder_kind, data)
        assert (decoded.details is None) == (decoded.error is not None)


def test_a_count_beyond_the_payload_is_refused_where_it_is() -> None:
    payload = _str("ptx") + _u64(1 << 62)
    with pytest.raises(PayloadError) as caught:
        decode_cuda_module(memoryview(payload))
    assert caught.value.offset == len(_str("ptx"))
    with pytest.raises(PayloadError, match="not a VM executable header"):
        decode_vm_executable(memoryview(_u64(0x1234) + _str("0.14")))


def test_names_and_lists_are_capped() -> None:
    many = _str(b"") + _u64(KEEP_LIMIT * 4) + _str("") * (KEEP_LIMIT * 4)
    library = decode_static_library(memoryview(many))
    assert library.functions.count == KEEP_LIMIT * 4
    assert len(library.functions.items) == KEEP_LIMIT
    long_name = _str(b"") + _strs(["k" * (NAME_LIMIT * 50)])
    (name,) = decode_static_library(memoryview(long_name)).functions.items
    assert name == "k" * NAME_LIMIT + "..."
    wide = [_dtype(2, 32, 1)] * (KEEP_LIMIT * 3)
    table = _u64(1) + _str("k") + _function_info("k", wide, [], [0] * len(wide))
    (kernel,) = decode_cuda_module(memoryview(_str("cuda") + table + _str(b""))).kernels
    assert (kernel.arg_types.count, len(kernel.arg_types.items)) == (KEEP_LIMIT * 3, KEEP_LIMIT)
    assert kernel.arg_extra_tags is not None and len(kernel.arg_extra_tags) == KEEP_LIMIT


# --- TVM itself (apache-tvm 0.27): what it writes, and what it says of the same module ------


def _tvm() -> Any:
    try:
        import tvm
    except ImportError:
        require(False, "apache-tvm is not installed")
    return tvm


def _blob_payloads(module: Any) -> dict[str, bytes]:
    """The payloads TVM's own packer (what export_library embeds) writes for `module`."""
    pack = require_tvm_ffi().get_global_func("runtime.ModulePackImportsToTensor")
    decoded = blob.decode(pack(module).numpy().tobytes())
    return {
        module.kind: bytes(module.payload)
        for module in decoded.blob.modules
        if module.payload is not None
    }


_STATS_GLOBALS = re.compile(r"Globals \(#(\d+)\): \[(.*)\]")
_STATS_CONSTANTS = re.compile(r"Constant pool \(# (\d+)\): \[(.*)\]\n")
_STATS_ITEM = re.compile(r'"(?:[^"]|"(?=[^,\]]))*"\s*|shapetuple\[[^\]]*\]|\[[^\]]*\]|[\w.]+')


def _stats_constant_kind(item: str) -> str:
    if item.startswith('"'):
        return "str"
    if item.startswith("shapetuple"):
        return "shape"
    return "tensor" if item.startswith("[") else "dtype"


def _relax_module() -> Any:
    import numpy as np
    from tvm.script import ir as I
    from tvm.script import relax as R

    @I.ir_module
    class Module:
        @R.function
        def main(x: R.Tensor((4,), "float32"), y: R.Tensor((4,), "float32")) -> R.Tensor:
            c = R.const(np.arange(4, dtype="float32"))
            return R.add(R.add(x, y), c)

        @R.function
        def second(a: R.Tensor((2, 3), "int32")) -> R.Tensor:
            return R.multiply(a, a)

    return Module


def _compare_with_tvm(tvm: Any, executable: Any, expected_kind: str) -> None:
    payload = _blob_payloads(executable.mod)["relax.VMExecutable"]
    details = decode_vm_executable(memoryview(payload))
    stats = executable.stats()
    count, names = _STATS_GLOBALS.search(stats).groups()  # type: ignore[union-attr]
    assert details.function_count == int(count)
    assert [f.name for f in details.functions] == names.split(", ")
    constants = _STATS_CONSTANTS.search(stats).group(2)  # type: ignore[union-attr]
    kinds: dict[str, int] = {}
    for item in _STATS_ITEM.findall(constants):
        kinds[_stats_constant_kind(item.strip())] = (
            kinds.get(_stats_constant_kind(item.strip()), 0) + 1
        )
    assert details.constant_kinds == kinds
    vm = tvm.relax.VirtualMachine(executable, tvm.cpu())
    for function in details.functions:
        if function.kind == "packed":
            continue
        assert function.kind == expected_kind
        arity = vm._get_function_arity(function.name)
        assert function.num_args == arity
        assert list(function.param_names.items) == [
            vm._get_function_param_name(function.name, i) for i in range(arity)
        ]
    # TVM's own loader reads the same bytes back to the same table.
    loaded = require_tvm_ffi().get_global_func("ffi.Module.load_from_bytes.relax.VMExecutable")(
        payload
    )
    assert _STATS_GLOBALS.search(loaded["stats"]()).groups() == (count, names)  # type: ignore[union-attr]


@pytest.mark.slow
def test_relax_vm_executables_tvm_builds() -> None:
    tvm = _tvm()
    module = _relax_module()
    bytecode = tvm.compile(module, target="llvm")
    _compare_with_tvm(tvm, bytecode, "VM")
    assert (
        decode_vm_executable(
            memoryview(_blob_payloads(bytecode.mod)["relax.VMExecutable"])
        ).instructions
        > 0
    )
    _compare_with_tvm(tvm, tvm.relax.build(module, target="llvm", exec_mode="compiled"), "VMTIR")


def _tir_kernel() -> Any:
    from tvm.script import tirx as T

    @T.prim_func
    def scale(a: T.handle, b: T.handle, n: T.int32, alpha: T.float32) -> None:
        A = T.match_buffer(a, (n,), "float16")
        B = T.match_buffer(b, (n,), "float16")
        for i in T.thread_binding(8, thread="blockIdx.x"):
            for j in T.thread_binding(128, thread="threadIdx.x"):
                if i * 128 + j < n:
                    B[i * 128 + j] = A[i * 128 + j] * T.Cast("float16", alpha)

    return scale


_C_TYPES = {"half*": "handle", "float*": "handle", "float": "float32", "int": "int32"}
_KERNEL = re.compile(
    r'extern "C" __global__ void (?:__launch_bounds__\(\d+\) )?(\w+)\(([^)]*)\) \{'
)


def _kernels_in_source(source: str) -> dict[str, list[str]]:
    """Each kernel's parameter types as DLDataType names, from the CUDA C TVM generated."""
    kernels = {}
    for name, params in _KERNEL.findall(source):
        types = [
            p.replace("__restrict__", "").rsplit(None, 1)[0].replace(" ", "")
            for p in params.split(",")
        ]
        kernels[name] = [_C_TYPES[t] for t in types]
    return kernels


@pytest.mark.slow
def test_cuda_module_tvm_writes_from_cuda_source() -> None:
    tvm = _tvm()
    target = tvm.target.Target({"kind": "cuda", "arch": "sm_90a"}, host="llvm")
    built = tvm.compile(tvm.IRModule({"scale": _tir_kernel()}), target=target)
    (cuda,) = [m for m in built.mod.imports if m.kind == "cuda"]
    details = decode_cuda_module(memoryview(_blob_payloads(built.mod)["cuda"]))
    source = cuda.inspect_source("cuda")
    assert details.format == "cuda"
    assert details.code_size == len(source.encode())
    expected = _kernels_in_source(source)
    assert (
        {k.name: list(k.arg_types.items) for k in details.kernels}
        == expected
        == {"scale_kernel": ["handle", "handle", "float32", "int32"]}
    )
    (kernel,) = details.kernels
    assert kernel.launch_param_tags.items == ("blockIdx.x", "threadIdx.x")
    assert kernel.arg_extra_tags == ("none",) * 4


def _libdevice() -> Path | None:
    try:
        import nvidia
    except ImportError:
        return None
    found = [
        p for root in nvidia.__path__ for p in Path(root).glob("cu*/nvvm/libdevice/libdevice*.bc")
    ]
    return found[0] if found else None


@pytest.mark.slow
def test_cuda_module_tvm_writes_from_nvptx() -> None:
    tvm = _tvm()
    libdevice = _libdevice()
    require(libdevice is not None, "nvidia-cuda-nvcc's libdevice is not installed")
    require_tvm_ffi().register_global_func(
        "tvm_callback_libdevice_path", lambda arch: str(libdevice), override=True
    )
    target = tvm.target.Target({"kind": "nvptx", "mcpu": "sm_80"}, host="llvm")
    built = tvm.compile(tvm.IRModule({"scale": _tir_kernel()}), target=target)
    (cuda,) = [m for m in built.mod.imports if m.kind == "cuda"]
    decoded = decode_payload("cuda", memoryview(_blob_payloads(built.mod)["cuda"]))
    details = decoded.details
    assert isinstance(details, tvm_device.DeviceModule)
    assert details.format == "ptx"
    assert details.code_size == len(cuda.inspect_source("ptx").encode())
    assert [(k.name, k.arg_types.items) for k in details.kernels] == [
        ("scale_kernel", ("handle", "handle", "float32", "int32"))
    ]
    assert details.code is None or details.code.decoder == "ptx"


@pytest.mark.slow
def test_host_modules_read_back_by_tvms_loaders() -> None:
    _tvm()
    ffi = require_tvm_ffi()
    # const_loader: TVM loads the hand-built payload, then saves it again in its own order.
    loaded = ffi.get_global_func("ffi.Module.load_from_bytes.const_loader")(_const_loader_payload())
    resaved = decode_const_loader(memoryview(_blob_payloads(loaded)["const_loader"]))
    assert sorted(resaved.variables.items) == ["w0", "w1"]
    assert resaved.tensor_bytes == 40
    assert sorted((s, v.items) for s, v in resaved.symbols) == [
        ("f1", ("w0",)),
        ("f2", ("w0", "w1")),
    ]
    # static_library and c: TVM's loaders provide exactly the functions the decoders list.
    for kind, payload, decode in (
        ("static_library", _static_library_payload(), decode_static_library),
        ("c", _c_payload(), decode_c_source),
    ):
        module = ffi.get_global_func(f"ffi.Module.load_from_bytes.{kind}")(payload)
        for name in decode(memoryview(payload)).functions.items:
            assert module.implements_function(name), (kind, name)
        assert not module.implements_function("not_there")


@pytest.mark.slow
@pytest.mark.parametrize(("kind", "fmt"), [("opencl", "cl"), ("metal", "metal"), ("webgpu", None)])
def test_other_device_modules_tvm_writes(kind: str, fmt: str | None) -> None:
    tvm = _tvm()
    built = tvm.compile(
        tvm.IRModule({"scale": _tir_kernel()}),
        target=tvm.target.Target({"kind": kind}, host="llvm"),
    )
    (device,) = [m for m in built.mod.imports if m.kind == kind]
    decoded = decode_payload(kind, memoryview(_blob_payloads(built.mod)[kind]))
    details = decoded.details
    assert isinstance(details, tvm_device.DeviceModule), decoded.error
    assert (details.decoder, details.format, details.trailing) == (f"tvm.{kind}", fmt, 0)
    (kernel,) = details.kernels
    assert (kernel.name, kernel.arg_types.items) == (
        "scale_kernel",
        ("handle", "handle", "float32", "int32"),
    )
    assert kernel.launch_param_tags.items[:2] == ("blockIdx.x", "threadIdx.x")
    if kind == "opencl":
        assert details.code_size == len(device.inspect_source("cl").encode())
    else:
        assert details.sources is not None and details.sources.items == ("scale_kernel",)
