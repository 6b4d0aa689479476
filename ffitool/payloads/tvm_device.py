"""TVM's device modules (`cuda` and its kin): the format, the kernel table and the code.

TVM's CUDA module (src/backend/cuda/runtime/cuda_module.cc `CUDAModuleNode::SaveToBytes`,
mirrored byte for byte by the codegen's `CUDAFallbackModuleNode` in
src/backend/cuda/codegen/cuda_fallback_module.cc, which is what a TVM built without CUDA
writes) saves three serializer fields (see `tvmstream`):

    fmt   string                      "cuda" (CUDA C source, compiled when loaded), "ptx",
                                      "cubin" or "fatbin"
    fmap  map<string, FunctionInfo>   kernel name -> its launch information
    code  bytes                       the source, PTX, cubin or fatbin

A FunctionInfo (src/runtime/metadata.h, `Serializer<runtime::FunctionInfo>`) is the kernel's
name, `Array<DLDataType>` arg_types, `Array<String>` launch_param_tags (the thread axes such as
"blockIdx.x", plus tags such as dynamic shared memory's) and `Array<ArgExtraTags>`
arg_extra_tags (int32 each: 0 none, 1 a TMA tensor map). The `hip`, `opencl` and `hexagon`
modules save the same three fields (src/backend/{rocm,opencl,hexagon}/runtime); `metal` saves
fmt, fmap and a map of function name -> source bytes instead of one code field
(src/backend/metal), `webgpu` only fmap and that map (webgpu_fallback_module.cc, read by
web/emcc/webgpu_runtime.cc).

TVM before 0.21 (the legacy `__tvm_dev_mblob` libraries among them) wrote the same fields with
a FunctionInfo of three: no arg_extra_tags (src/runtime/file_utils.cc `FunctionInfo::Save`
then, over dmlc's stream, which encodes strings, vectors and maps as TVM's serializer does
now); `_read` tells the two apart.

A `cuda` module's code is decoded in turn by the PTX, cubin or fatbin decoder when that module
is installed; its failure is recorded, not raised, since the table is still worth showing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from importlib import import_module

from ffitool.payloads import Details, JsonValue, PayloadError
from ffitool.payloads.tvmstream import Kept, Reader, kept_json

_CODE_DECODERS = {
    "ptx": ("ffitool.payloads.ptx", "decode_ptx"),
    "cubin": ("ffitool.payloads.cubin", "decode_cubin"),
    "fatbin": ("ffitool.payloads.fatbin", "decode_fatbin"),
}
"""The code formats another decoder reads, as (module, function); imported when met."""
_EXTRA_TAGS = {0: "none", 1: "tensormap"}
_MIN_FUNCTION_INFO = 8 * 5
"""Smallest map entry: the key and the four fields of a FunctionInfo, each a u64 length."""


@dataclass(frozen=True)
class Kernel:
    """One entry of the function table."""

    key: str
    name: str
    arg_types: Kept
    launch_param_tags: Kept
    arg_extra_tags: tuple[str, ...] | None
    """None in the FunctionInfo TVM wrote before 0.21, which had no such field."""

    def to_json(self) -> dict[str, JsonValue]:
        return {
            "name": self.name,
            "key": self.key,
            "arg_types": kept_json(self.arg_types),
            "launch_param_tags": kept_json(self.launch_param_tags),
            "arg_extra_tags": None if self.arg_extra_tags is None else list(self.arg_extra_tags),
        }


@dataclass(frozen=True)
class DeviceModule:
    """A device module's payload: its format, kernel table and code (or per-kernel sources)."""

    decoder: str
    format: str | None
    kernels: tuple[Kernel, ...]
    kernel_count: int
    code_size: int
    sources: Kept | None = None
    """metal and webgpu: the functions that have their own source, in the order saved."""
    code: Details | None = None
    code_error: str | None = None
    trailing: int = 0
    legacy_function_info: bool = False
    """The table is in the three-field FunctionInfo of TVM before 0.21 (no arg_extra_tags)."""

    def summary(self) -> str:
        names = ", ".join(kernel.name for kernel in self.kernels[:8])
        more = f", +{self.kernel_count - 8}" if self.kernel_count > 8 else ""
        code = f"; {self.code.summary()}" if self.code is not None else ""
        return (
            f"TVM {self.decoder.removeprefix('tvm.')} module, {self.format or 'source'} "
            f"({self.code_size} bytes), {self.kernel_count} kernel(s): {names}{more}{code}"
        )

    def to_json(self) -> dict[str, JsonValue]:
        return {
            "decoder": self.decoder,
            "format": self.format,
            "kernel_count": self.kernel_count,
            "kernels": [kernel.to_json() for kernel in self.kernels],
            "code_size": self.code_size,
            "sources": None if self.sources is None else kept_json(self.sources),
            "code": None if self.code is None else self.code.to_json(),
            "code_error": self.code_error,
            "trailing_bytes": self.trailing,
            "legacy_function_info": self.legacy_function_info,
        }


def _extra_tag(reader: Reader) -> str:
    value = reader.i32("arg_extra_tags")
    return _EXTRA_TAGS.get(value, str(value))


def _kernel(reader: Reader, legacy: bool) -> Kernel:
    key = reader.string("function table key")
    name = reader.string("FunctionInfo name")
    types, type_count = reader.array("arg_types", 4, lambda: reader.dtype("arg_types"), fixed=True)
    tags = reader.strings("launch_param_tags")
    if legacy:
        return Kernel(key, name, Kept(tuple(types), type_count), tags, None)
    extra, _ = reader.array("arg_extra_tags", 4, lambda: _extra_tag(reader), fixed=True)
    return Kernel(key, name, Kept(tuple(types), type_count), tags, tuple(extra))


def _decode_code(fmt: str, code: memoryview) -> tuple[Details | None, str | None]:
    """The code's own details when a decoder for its format is installed."""
    where = _CODE_DECODERS.get(fmt)
    if where is None:
        return None, None
    try:
        decode = getattr(import_module(where[0]), where[1])
    except (ImportError, AttributeError):
        return None, None
    try:
        details: Details = decode(code)
    except PayloadError as exc:
        return None, str(exc)
    return details, None


def _table(reader: Reader, legacy: bool) -> tuple[tuple[Kernel, ...], int]:
    smallest = _MIN_FUNCTION_INFO - (8 if legacy else 0)
    kernels, count = reader.array("function table", smallest, lambda: _kernel(reader, legacy))
    return tuple(kernels), count


def _source_map(reader: Reader) -> tuple[Kept, int]:
    """A map of function name -> source bytes: the names, and the sources' total size."""
    total = 0

    def entry() -> str:
        nonlocal total
        name = reader.string("source name")
        total += len(reader.sized("source"))
        return name

    names, count = reader.array("sources", 16, entry)
    return Kept(tuple(names), count), total


_Parse = Callable[[memoryview, bool], tuple[DeviceModule, memoryview]]
"""One payload layout read with the current (False) or the pre-0.21 (True) FunctionInfo:
the module, and its code (empty when the layout has per-function sources)."""


def _format_table_code(decoder: str) -> _Parse:
    def parse(data: memoryview, legacy: bool) -> tuple[DeviceModule, memoryview]:
        reader = Reader(data)
        fmt = reader.string("format")
        kernels, count = _table(reader, legacy)
        code = reader.sized("code")
        module = DeviceModule(decoder, fmt, kernels, count, len(code), trailing=reader.left)
        return replace(module, legacy_function_info=legacy), code

    return parse


def _table_sources(decoder: str, with_format: bool) -> _Parse:
    def parse(data: memoryview, legacy: bool) -> tuple[DeviceModule, memoryview]:
        reader = Reader(data)
        fmt = reader.string("format") if with_format else None
        kernels, count = _table(reader, legacy)
        sources, size = _source_map(reader)
        module = DeviceModule(decoder, fmt, kernels, count, size, sources, trailing=reader.left)
        return replace(module, legacy_function_info=legacy), data[:0]

    return parse


def _read(parse: _Parse, data: memoryview) -> tuple[DeviceModule, memoryview]:
    """The payload read with the FunctionInfo layout that accounts for every byte.

    TVM since 0.21 writes four FunctionInfo fields, before three; nothing in the payload says
    which. A payload read with the wrong one fails or leaves bytes over (the code is last and
    its length is checked), so the current layout is tried first and the legacy one when it
    does not fit; when neither fits exactly, the current layout's result or error stands.
    """
    try:
        current: tuple[DeviceModule, memoryview] | None = parse(data, False)
    except PayloadError as error:
        current, refusal = None, error
    if current is not None and current[0].trailing == 0:
        return current
    try:
        legacy = parse(data, True)
    except PayloadError:
        legacy = None
    if legacy is not None and legacy[0].trailing == 0:
        return legacy
    if current is None:
        raise refusal
    return current


def decode_cuda_module(data: memoryview) -> DeviceModule:
    """Decode a `cuda` payload: the format, the kernel table, and the code, decoded in turn."""
    module, code = _read(_format_table_code("tvm.cuda"), data)
    details, error = _decode_code(module.format or "", code)
    return replace(module, code=details, code_error=error)


def decode_hip_module(data: memoryview) -> DeviceModule:
    """Decode a `hip` (ROCm) payload: the format, the kernel table and the code's size."""
    return _read(_format_table_code("tvm.hip"), data)[0]


def decode_opencl_module(data: memoryview) -> DeviceModule:
    """Decode an `opencl` payload: the format, the kernel table and the code's size."""
    return _read(_format_table_code("tvm.opencl"), data)[0]


def decode_hexagon_module(data: memoryview) -> DeviceModule:
    """Decode a `hexagon` payload: the format, the kernel table and the code's size."""
    return _read(_format_table_code("tvm.hexagon"), data)[0]


def decode_metal_module(data: memoryview) -> DeviceModule:
    """Decode a `metal` payload: the format, the kernel table and the per-function sources."""
    return _read(_table_sources("tvm.metal", with_format=True), data)[0]


def decode_webgpu_module(data: memoryview) -> DeviceModule:
    """Decode a `webgpu` payload: the kernel table and the per-function WGSL sources."""
    return _read(_table_sources("tvm.webgpu", with_format=False), data)[0]
