"""A Relax VM executable (`relax.VMExecutable`): its format version and function table.

`VMExecutable::SaveToBytes` (src/runtime/vm/executable.cc) writes, in TVM's serializer format:

    header     u64 magic 0xD225DE2F4214151E (0x...151D before memory scopes existed)
    version    string, VM_VERSION ("0.14" in TVM 0.27, include/tvm/runtime/vm/executable.h)
    functions  u64 count, then per VMFuncInfo: kind i32 (0 packed, 1 VM, 2 VM TIR), name
               string, start_instr, end_instr, num_args, register_file_size (i64 each; a
               packed function's num_args is -2), param_names array of strings
    scopes     (V2 magic only) u64 count, then (i64 constant index, string scope) pairs
    constants  u64 count, then per constant its type index (i32, tvm-ffi's TypeIndex) and value:
               Tensor 70 (see `tvmstream.skip_tensor`), Shape 69
               (u64 n, n i64), Str 65 (u64 n, n bytes), Int 1 (i64), Float 3 (f64),
               DataType 5 (4 bytes)
    code       instr_offset and instr_data, arrays of i64

The constants are read over, not materialised: their count, kinds and bytes are kept.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ffitool.payloads import JsonValue, PayloadError
from ffitool.payloads.tvmstream import Kept, Reader, kept_json, skip_tensor

MAGIC_V1 = 0xD225DE2F4214151D
MAGIC_V2 = 0xD225DE2F4214151E
_KINDS = {0: "packed", 1: "VM", 2: "VMTIR"}
_MIN_FUNC_INFO = 4 + 8 + 4 * 8 + 8
_CONSTANT_KINDS = {1: "int", 3: "float", 5: "dtype", 65: "str", 69: "shape", 70: "tensor"}


@dataclass(frozen=True)
class VMFunction:
    """One VMFuncInfo: how the VM calls the function and what it names its parameters."""

    name: str
    kind: str
    num_args: int
    param_names: Kept

    def to_json(self) -> dict[str, JsonValue]:
        return {
            "name": self.name,
            "kind": self.kind,
            "num_args": self.num_args,
            "param_names": kept_json(self.param_names),
        }


@dataclass(frozen=True)
class VMExecutable:
    """A `relax.VMExecutable` payload."""

    version: str
    magic: int
    functions: tuple[VMFunction, ...]
    function_count: int
    memory_scopes: int
    constant_kinds: dict[str, int]
    constant_bytes: int
    instructions: int
    code_words: int
    trailing: int = 0
    decoder: str = field(default="relax.VMExecutable")

    def summary(self) -> str:
        entry = [f.name for f in self.functions if f.kind != "packed"][:8]
        constants = sum(self.constant_kinds.values())
        return (
            f"Relax VM executable {self.version}, {self.function_count} function(s) "
            f"({', '.join(entry) or 'no VM function'}), {constants} constant(s) "
            f"({self.constant_bytes} bytes), {self.instructions} instruction(s)"
        )

    def to_json(self) -> dict[str, JsonValue]:
        return {
            "decoder": self.decoder,
            "version": self.version,
            "magic": f"0x{self.magic:016X}",
            "function_count": self.function_count,
            "functions": [function.to_json() for function in self.functions],
            "memory_scopes": self.memory_scopes,
            "constants": dict(self.constant_kinds),
            "constant_bytes": self.constant_bytes,
            "instructions": self.instructions,
            "code_words": self.code_words,
            "trailing_bytes": self.trailing,
        }


def _function(reader: Reader) -> VMFunction:
    code = reader.i32("function kind")
    kind = _KINDS.get(code)
    if kind is None:
        raise PayloadError(f"unknown VM function kind {code}", reader.pos - 4)
    name = reader.string("function name")
    reader.take(16, "start and end instruction")
    num_args = reader.i64("num_args")
    reader.take(8, "register_file_size")
    return VMFunction(name, kind, num_args, reader.strings("param_names"))


def _memory_scopes(reader: Reader) -> int:
    count = reader.count("memory scopes", 16)
    for _ in range(count):
        reader.take(8, "memory scope index")
        reader.sized("memory scope")
    return count


def _skip_constant(reader: Reader) -> str:
    at = reader.pos
    code = reader.i32("constant type")
    kind = _CONSTANT_KINDS.get(code)
    if kind is None:
        raise PayloadError(f"constant of type index {code}", at)
    if kind == "tensor":
        skip_tensor(reader)
    elif kind == "shape":
        reader.take(8 * reader.count("shape", 8), "shape")
    elif kind == "str":
        reader.sized("string constant")
    else:
        reader.take(4 if kind == "dtype" else 8, f"{kind} constant")
    return kind


def _constants(reader: Reader) -> tuple[dict[str, int], int]:
    count = reader.count("constants", 4)
    start = reader.pos
    kinds: dict[str, int] = {}
    for _ in range(count):
        kind = _skip_constant(reader)
        kinds[kind] = kinds.get(kind, 0) + 1
    return kinds, reader.pos - start


def decode_vm_executable(data: memoryview) -> VMExecutable:
    """Decode a `relax.VMExecutable` payload (see the module doc for the layout)."""
    reader = Reader(data)
    magic = reader.u64("header")
    if magic not in (MAGIC_V1, MAGIC_V2):
        raise PayloadError(f"not a VM executable header (0x{magic:016X})", 0)
    version = reader.string("version")
    functions, count = reader.array("functions", _MIN_FUNC_INFO, lambda: _function(reader))
    scopes = _memory_scopes(reader) if magic == MAGIC_V2 else 0
    kinds, constant_bytes = _constants(reader)
    instructions = reader.count("instr_offset", 8)
    reader.take(8 * instructions, "instr_offset")
    words = reader.count("instr_data", 8)
    reader.take(8 * words, "instr_data")
    return VMExecutable(
        version,
        magic,
        tuple(functions),
        count,
        scopes,
        kinds,
        constant_bytes,
        instructions,
        words,
        reader.left,
    )
