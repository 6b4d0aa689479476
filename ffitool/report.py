"""The model as plain JSON-ready data: the `ffitool.inspect/3` schema, one place for both.

The CLI prints exactly these dictionaries; `ffitool/schemas/inspect-3.json` describes them.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict
from functools import partial
from typing import Any

from ffitool.findings import Finding, unsurrogated, with_exact_bytes
from ffitool.library import (
    BlobReport,
    EmbeddedCubin,
    FfiSymbol,
    Function,
    InspectedFile,
    Library,
    LibraryBin,
    ModuleInfo,
)

INSPECT_SCHEMA = "ffitool.inspect/3"
BLOB_SCHEMA = "ffitool.blob/2"

Json = dict[str, Any]


class Rows:
    """A JSON array whose items are made as `write_json` writes them, for the long ones.

    The dicts of 500k functions and their symbols take a gigabyte at once; made one at a time,
    they take nothing. Only `write_json` knows this type: `json.dumps` refuses it.
    """

    def __init__(self, items: Sequence[Any], convert: Callable[[Any], Json]) -> None:
        self._items = items
        self._convert = convert

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[Json]:
        return map(self._convert, self._items)


def _array(items: Sequence[Any], convert: Callable[[Any], Json], lazy: bool) -> Any:
    return Rows(items, convert) if lazy else [convert(item) for item in items]


def write_json(document: Any, write: Callable[[str], object]) -> None:
    """Write the text of `json.dumps(document, indent=2)`, expanding `Rows` as it goes."""
    pieces: list[str] = []
    for piece in _json_pieces(document, ""):
        pieces.append(piece)
        if len(pieces) >= 1 << 12:
            write("".join(pieces))
            pieces.clear()
    write("".join(pieces))


def _json_pieces(value: Any, pad: str) -> Iterator[str]:
    inner = pad + "  "
    if isinstance(value, dict) and value:
        opening = "{\n"
        for key, item in value.items():
            yield f"{opening}{inner}{json.dumps(key)}: "
            opening = ",\n"
            yield from _json_pieces(item, inner)
        yield f"\n{pad}}}"
    elif isinstance(value, (list, Rows)) and len(value):
        opening = "[\n"
        for item in value:
            yield opening + inner
            opening = ",\n"
            if isinstance(value, Rows):  # plain data: formatted in one piece
                yield _indented(item, inner)
            else:
                yield from _json_pieces(item, inner)
        yield f"\n{pad}]"
    elif isinstance(value, Rows):
        yield "[]"
    else:
        yield _indented(value, pad)


def _indented(value: Any, pad: str) -> str:
    """`json.dumps(value, indent=2)` re-indented by `pad`.

    With `indent`, the json module encodes in pure Python, about 40 calls an item; here only
    the scalars are encoded, by json's C encoder, and the layout is joined as strings.
    """
    inner = pad + "  "
    if isinstance(value, dict):
        if not value:
            return "{}"
        fields = (f"{inner}{_STRING(k)}: {_indented(v, inner)}" for k, v in value.items())
        return "{\n" + ",\n".join(fields) + f"\n{pad}}}"
    if isinstance(value, (list, tuple)):
        if not value:
            return "[]"
        return "[\n" + ",\n".join(inner + _indented(v, inner) for v in value) + f"\n{pad}]"
    if isinstance(value, str):
        return _STRING(value if value.isascii() else unsurrogated(value))
    if value is None or isinstance(value, bool):
        return _CONSTANTS[value]
    if isinstance(value, int):
        return int.__repr__(value)
    return json.dumps(value)


# What json.dumps does for these, without its per-call set-up (4 million calls for 100k
# functions): the C string escaper it uses with ensure_ascii, and the three constants. A
# lone surrogate (a byte that is not UTF-8, kept by surrogateescape) would come out as
# `\udcff`, which no UTF-8 decoder accepts: `_indented` escapes those first, as text.
_STRING = json.encoder.encode_basestring_ascii
_CONSTANTS = {None: "null", True: "true", False: "false"}


def inspect_document(
    files: list[InspectedFile], errors: list[tuple[str, str]], *, lazy: bool = False
) -> Json:
    """The whole `inspect --json` document; `errors` are (path, message) of unreadable inputs.

    With `lazy`, the long arrays are `Rows`, for `write_json`; otherwise plain lists.
    """
    entries: list[Json] = [file_json(f, lazy=lazy) for f in files]
    entries.extend({"path": path, "error": message} for path, message in errors)
    return {"schema": INSPECT_SCHEMA, "files": entries}


def file_json(inspected: InspectedFile, *, lazy: bool = False) -> Json:
    return {
        "path": inspected.path,
        "format": inspected.format,
        "size": inspected.size,
        "libraries": [library_json(lib, lazy=lazy) for lib in inspected.libraries],
        "device": None if inspected.device is None else inspected.device.to_json(),
    }


def library_json(library: Library, *, lazy: bool = False) -> Json:
    sized = records_sizes(library.format)
    return {
        "member": library.member,
        "format": library.format,
        "kind": library.kind,
        "loadable": library.loadable,
        "machine": library.machine,
        "bits": library.bits,
        "endianness": library.endianness,
        "slice": None if library.slice is None else asdict(library.slice),
        "signature": library.signature,
        "symbol_tables": [t.value for t in library.symbol_tables],
        "functions": _array(library.functions, _sizing(function_json, sized), lazy),
        "symbols": _array(library.symbols, _sizing(symbol_json, sized), lazy),
        "library_bin": None
        if library.library_bin is None
        else library_bin_json(library.library_bin, lazy=lazy, sized=sized),
        "system_lib_bins": [
            library_bin_json(b, lazy=lazy, sized=sized) for b in library.system_lib_bins
        ],
        "cubins": [cubin_json(cubin) for cubin in library.cubins],
        "findings": findings_json(library.findings),
    }


def _sizing(convert: Callable[..., Json], sized: bool) -> Callable[[Any], Json]:
    """`convert` for a library whose format records sizes or not; the plain function in the
    common case, as a partial with a keyword costs a fifth of a row."""
    return convert if sized else partial(convert, sized=False)


def function_json(function: Function, *, sized: bool = True) -> Json:
    """One function; `sized` is False for a format whose symbols record no size."""
    symbol = function.symbol.symbol
    row = {
        "name": function.name,
        "symbol": symbol.file_name,
        "prefix": function.symbol.naming.prefix,
        "address": symbol.address,
        "size": symbol.size if sized else None,
        "exported": function.symbol.dynamic,
        "metadata": function.has_metadata,
        "doc": function.has_doc,
    }
    return row if symbol.file_name.isascii() else with_exact_bytes(row, "symbol")


def symbol_json(ffi_symbol: FfiSymbol, *, sized: bool = True) -> Json:
    symbol = ffi_symbol.symbol
    row = {
        "symbol": symbol.file_name,
        "role": ffi_symbol.naming.role.value,
        "name": ffi_symbol.naming.name,
        "prefix": ffi_symbol.naming.prefix,
        "type": symbol.type,
        "binding": symbol.binding,
        "visibility": symbol.visibility,
        "address": symbol.address,
        "size": symbol.size if sized else None,
        "section": symbol.section,
        "defined": symbol.defined,
        "table": symbol.table.value,
        "in_symtab": ffi_symbol.in_symtab,
        "exported": ffi_symbol.dynamic,
    }
    return row if symbol.file_name.isascii() else with_exact_bytes(row, "symbol")


def library_bin_json(library_bin: LibraryBin, *, lazy: bool = False, sized: bool = True) -> Json:
    symbol = library_bin.symbol.symbol
    row = {
        "symbol": symbol.file_name,
        "prefix": library_bin.prefix,
        "layout": library_bin.layout,
        "section": symbol.section,
        "address": symbol.address,
        "symbol_size": symbol.size if sized else None,
        "file_offset": library_bin.file_offset,
        "nbytes": library_bin.nbytes,
        "modules": _array(library_bin.modules, module_json, lazy),
        "findings": findings_json(library_bin.findings),
    }
    return with_exact_bytes(row, "symbol")


def module_json(module: ModuleInfo) -> Json:
    row = {
        "index": module.index,
        "kind": module.kind,
        "size": module.size,
        "sha256": module.sha256,
        "imports": list(module.imports),
        "payload_offset": module.payload_offset,
        "details": None if module.details is None else module.details.to_json(),
    }
    return row if module.kind.isascii() else with_exact_bytes(row, "kind")


def cubin_json(cubin: EmbeddedCubin) -> Json:
    """One embedded cubin: its pair of symbols, where its bytes are and what they hold."""
    symbol = cubin.symbol.symbol
    row = {
        "name": cubin.name,
        "symbol": symbol.file_name,
        "end_symbol": cubin.end.symbol.file_name,
        "section": symbol.section,
        "address": symbol.address,
        "table": symbol.table.value,
        "file_offset": cubin.file_offset,
        "size": cubin.size,
        "sha256": cubin.sha256,
        "details": None if cubin.details is None else cubin.details.to_json(),
    }
    return row if symbol.file_name.isascii() else with_exact_bytes(row, "symbol")


SIZELESS_FORMATS = frozenset({"Mach-O", "PE"})
"""Formats whose symbols carry no size (an nlist entry, an export-directory entry has no
such field): the reader's 0 there is not a size, so JSON says null and text says `-`."""


def records_sizes(library_format: str) -> bool:
    """Whether the symbols of a library of this format record their size (ELF's st_size)."""
    return library_format not in SIZELESS_FORMATS


def findings_json(findings: tuple[Finding, ...]) -> list[Json]:
    return [f.to_json() for f in findings]


def blob_document(report: BlobReport, *, lazy: bool = False) -> Json:
    """The `blob decode --json` document (`lazy` as for `inspect_document`)."""
    return {
        "schema": BLOB_SCHEMA,
        "path": report.path,
        "size": report.size,
        "nbytes": report.nbytes,
        "modules": _array(report.modules, module_json, lazy),
        "findings": findings_json(report.findings),
    }
