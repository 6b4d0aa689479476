"""TVM's host-side module kinds that declare names: `const_loader`, `static_library`, `c`.

Each is a few fields of TVM's serializer format (see `tvmstream`):

- `const_loader` (src/runtime/const_loader_module.cc, `ConstLoaderModuleNode::SaveToBytes`):
  the constant variable names (array of strings), their count again (u64) and that many saved
  tensors, the function symbols (array of strings), their count again (u64), and per symbol
  the names of the constants it needs (array of strings). The tensors are read over. TVM up to
  0.8 wrote the same fields under the kind `metadata` (src/runtime/metadata_module.cc, renamed
  const_loader in 2022), which this decoder reads too.
- `static_library` (src/runtime/static_library.cc): the object file's bytes, then the names
  of the functions it provides (array of strings).
- `c` (src/target/source/source_module.cc, `CSourceModuleNode::SaveToBytes`): the C source,
  its format string, the function names and the constant variables it reads (arrays of
  strings).
"""

from __future__ import annotations

from dataclasses import dataclass

from ffitool.payloads import JsonValue, PayloadError
from ffitool.payloads.tvmstream import KEEP_LIMIT, Kept, Reader, kept_json, skip_tensor


def _names(kept: Kept, limit: int = 8) -> str:
    shown = ", ".join(kept.items[:limit])
    return shown + (f", +{kept.count - limit}" if kept.count > limit else "")


@dataclass(frozen=True)
class ConstLoader:
    """A `const_loader` payload: which constants each function symbol is initialised with."""

    variables: Kept
    tensor_bytes: int
    symbols: tuple[tuple[str, Kept], ...]
    symbol_count: int
    trailing: int = 0
    decoder: str = "const_loader"

    def summary(self) -> str:
        names = ", ".join(name for name, _ in self.symbols[:8])
        return (
            f"constants: {self.variables.count} ({self.tensor_bytes} bytes) "
            f"for {self.symbol_count} symbol(s): {names}"
        )

    def to_json(self) -> dict[str, JsonValue]:
        return {
            "decoder": self.decoder,
            "variables": kept_json(self.variables),
            "tensor_bytes": self.tensor_bytes,
            "symbol_count": self.symbol_count,
            "symbols": [{"symbol": s, "variables": kept_json(v)} for s, v in self.symbols],
            "trailing_bytes": self.trailing,
        }


def _repeated_count(reader: Reader, expected: int, what: str) -> None:
    at = reader.pos
    count = reader.u64(what)
    if count != expected:
        raise PayloadError(f"{what} is {count}, the names say {expected}", at)


def decode_const_loader(data: memoryview) -> ConstLoader:
    """Decode a `const_loader` payload (see the module doc)."""
    reader = Reader(data)
    variables = reader.strings("constant variables")
    _repeated_count(reader, variables.count, "constant count")
    tensor_bytes = sum(skip_tensor(reader) for _ in range(variables.count))
    symbols = reader.strings("symbols")
    _repeated_count(reader, symbols.count, "symbol count")
    per_symbol = [reader.strings("symbol's constants") for _ in range(symbols.count)]
    pairs = tuple(zip(symbols.items, per_symbol[:KEEP_LIMIT], strict=False))
    return ConstLoader(variables, tensor_bytes, pairs, symbols.count, reader.left)


@dataclass(frozen=True)
class StaticLibrary:
    """A `static_library` payload: an object file and the functions it provides."""

    object_size: int
    functions: Kept
    trailing: int = 0
    decoder: str = "static_library"

    def summary(self) -> str:
        return (
            f"static library object ({self.object_size} bytes), "
            f"{self.functions.count} function(s): {_names(self.functions)}"
        )

    def to_json(self) -> dict[str, JsonValue]:
        return {
            "decoder": self.decoder,
            "object_size": self.object_size,
            "functions": kept_json(self.functions),
            "trailing_bytes": self.trailing,
        }


def decode_static_library(data: memoryview) -> StaticLibrary:
    """Decode a `static_library` payload (see the module doc)."""
    reader = Reader(data)
    size = len(reader.sized("object file"))
    return StaticLibrary(size, reader.strings("function names"), reader.left)


@dataclass(frozen=True)
class CSource:
    """A `c` payload: C source TVM compiles when it exports, its functions and constants."""

    format: str
    source_size: int
    functions: Kept
    const_vars: Kept
    trailing: int = 0
    decoder: str = "c"

    def summary(self) -> str:
        return (
            f"{self.format or 'c'} source ({self.source_size} bytes), "
            f"{self.functions.count} function(s): {_names(self.functions)}"
        )

    def to_json(self) -> dict[str, JsonValue]:
        return {
            "decoder": self.decoder,
            "format": self.format,
            "source_size": self.source_size,
            "functions": kept_json(self.functions),
            "const_vars": kept_json(self.const_vars),
            "trailing_bytes": self.trailing,
        }


def decode_c_source(data: memoryview) -> CSource:
    """Decode a `c` payload (see the module doc)."""
    reader = Reader(data)
    size = len(reader.sized("source"))
    fmt = reader.string("format")
    functions = reader.strings("function names")
    const_vars = reader.strings("const vars")
    return CSource(fmt, size, functions, const_vars, reader.left)
