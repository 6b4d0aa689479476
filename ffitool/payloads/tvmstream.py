"""TVM's binary serialization (`support::Serializer`), read back under the payload bounds.

Every module TVM writes into a blob (`cuda`, `relax.VMExecutable`, `const_loader`,
`static_library`, `c`) saves itself with the same little-endian stream
(include/tvm/support/serializer.h): numbers as their bytes, a string or bytes as a u64 length
then the bytes, an array or map as a u64 count then the items (a map's as key, value pairs), a
`DLDataType` as code u8, bits u8, lanes u16. `Reader` reads that stream from a payload: every
length is checked against what is left before anything is taken, every count against the
smallest size its items can have (so a count cannot promise more items than there are bytes),
and the names it keeps are capped in length and number, so work and output stay proportional
to the payload.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from ffitool.payloads import PayloadError

NAME_LIMIT = 1024
"""Characters kept of one name (a kernel, a parameter, a tag); longer names end in "..."."""
KEEP_LIMIT = 4096
"""Items kept of one list (functions, names); the rest are read over and counted."""

_T = TypeVar("_T")

_DTYPE_BASES = {0: "int", 1: "uint", 2: "float", 4: "bfloat", 6: "bool"}
"""DLPack type codes whose name tvm-ffi spells with the bit width after it."""
_DTYPE_NAMED = {
    7: "float8_e3m4",
    8: "float8_e4m3",
    9: "float8_e4m3b11fnuz",
    10: "float8_e4m3fn",
    11: "float8_e4m3fnuz",
    12: "float8_e5m2",
    13: "float8_e5m2fnuz",
    14: "float8_e8m0fnu",
    15: "float6_e2m3fn",
    16: "float6_e3m2fn",
    17: "float4_e2m1fn",
}
"""DLPack type codes whose name carries its width (tvm-ffi prints no bits after them)."""
_HANDLE = 3


def dtype_name(code: int, bits: int, lanes: int) -> str:
    """A DLDataType spelled as tvm-ffi's `DLDataTypeToString` spells it ("float32x4", "handle").

    Codes tvm-ffi does not know (it raises on them) are spelled "dtype(code,bits,lanes)".
    """
    if code == _HANDLE:
        return "void" if bits == 0 and lanes == 0 else "handle"
    if code == 6 and bits == 8:
        base = "bool"
    elif code in _DTYPE_NAMED:
        base = _DTYPE_NAMED[code]
    elif code in _DTYPE_BASES:
        base = f"{_DTYPE_BASES[code]}{bits}"
    else:
        return f"dtype({code},{bits},{lanes})"
    return f"{base}x{lanes}" if lanes > 1 else base


def clip(name: str) -> str:
    """A name cut to NAME_LIMIT characters, marked when cut."""
    return name if len(name) <= NAME_LIMIT else name[:NAME_LIMIT] + "..."


@dataclass(frozen=True)
class Kept:
    """The first KEEP_LIMIT items of a list that held `count`."""

    items: tuple[str, ...]
    count: int


class Reader:
    """A cursor over one payload in TVM's serializer format; every read is bounds-checked."""

    def __init__(self, data: memoryview) -> None:
        self.data = data
        self.pos = 0

    @property
    def left(self) -> int:
        """Bytes not yet read."""
        return len(self.data) - self.pos

    def take(self, size: int, what: str) -> memoryview:
        """The next `size` bytes, or PayloadError when fewer are left."""
        if size < 0 or size > self.left:
            raise PayloadError(f"{what}: {size} bytes, {self.left} left", self.pos)
        start = self.pos
        self.pos += size
        return self.data[start : self.pos]

    def _unpack(self, fmt: str, what: str) -> int:
        size = struct.calcsize(fmt)
        value: int = struct.unpack_from(fmt, self.take(size, what))[0]
        return value

    def i32(self, what: str) -> int:
        return self._unpack("<i", what)

    def u64(self, what: str) -> int:
        return self._unpack("<Q", what)

    def i64(self, what: str) -> int:
        return self._unpack("<q", what)

    def count(self, what: str, item_size: int) -> int:
        """An array's u64 count, refused when its items cannot fit in what is left."""
        at = self.pos
        count = self.u64(what)
        if count * item_size > self.left:
            raise PayloadError(f"{what}: {count} items cannot fit in {self.left} bytes", at)
        return count

    def sized(self, what: str) -> memoryview:
        """A u64 length then that many bytes (a string or bytes field)."""
        at = self.pos
        size = self.u64(what)
        if size > self.left:
            raise PayloadError(f"{what}: {size} bytes, {self.left} left", at)
        return self.take(size, what)

    def string(self, what: str) -> str:
        """A string field, decoded as UTF-8 (undecodable bytes replaced) and clipped."""
        raw = self.sized(what)
        return clip(bytes(raw[: NAME_LIMIT * 4]).decode("utf-8", "replace"))

    def dtype(self, what: str) -> str:
        """A DLDataType (code u8, bits u8, lanes u16), spelled as tvm-ffi spells it."""
        raw = self.take(4, what)
        return dtype_name(raw[0], raw[1], int.from_bytes(raw[2:4], "little"))

    def array(
        self, what: str, item_size: int, read: Callable[[], _T], fixed: bool = False
    ) -> tuple[list[_T], int]:
        """An array: its first KEEP_LIMIT items as `read` returns them, and its count.

        The rest are read over: in one step when every item is `item_size` bytes (`fixed`),
        else one by one with `read`, whose result is dropped.
        """
        count = self.count(what, item_size)
        kept = [read() for _ in range(min(count, KEEP_LIMIT))]
        if fixed:
            self.take(item_size * (count - len(kept)), what)
        else:
            for _ in range(count - len(kept)):
                read()
        return kept, count

    def strings(self, what: str) -> Kept:
        """An array of strings (`std::vector<std::string>`, `Array<String>`)."""
        count = self.count(what, 8)
        items = tuple(self.string(what) for _ in range(min(count, KEEP_LIMIT)))
        for _ in range(count - len(items)):
            self.sized(what)
        return Kept(items, count)


TENSOR_MAGIC = 0xDD5E40F096B4A13F
"""`kTVMTensorMagic`, which starts every saved tensor."""


def skip_tensor(reader: Reader) -> int:
    """Read over one tensor as `runtime::SaveDLTensor` writes it; its data's size.

    include/tvm/runtime/tensor.h: u64 magic, u64 reserved, DLDevice (i32 type, i32 id), i32
    ndim, DLDataType, ndim i64 dimensions, then the data as bytes (u64 size, the bytes).
    """
    at = reader.pos
    if reader.u64("tensor magic") != TENSOR_MAGIC:
        raise PayloadError("tensor without its magic", at)
    reader.take(8 + 8, "tensor reserved and device")
    ndim = reader.i32("tensor ndim")
    if ndim < 0:
        raise PayloadError(f"tensor ndim {ndim}", reader.pos - 4)
    reader.take(4, "tensor dtype")
    reader.take(8 * ndim, "tensor shape")
    return len(reader.sized("tensor data"))


def kept_json(kept: Kept) -> dict[str, object]:
    """A kept list as the JSON report carries it: the items and, when cut, the full count."""
    out: dict[str, object] = {"count": kept.count, "items": list(kept.items)}
    return out
