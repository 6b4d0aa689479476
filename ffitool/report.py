"""The model as plain JSON-ready data: the `ffitool.inspect/1` schema, one place for both.

The CLI prints exactly these dictionaries; `ffitool/schemas/inspect-1.json` describes them.
"""

from __future__ import annotations

from typing import Any

from ffitool.findings import Finding
from ffitool.library import (
    BlobReport,
    FfiSymbol,
    Function,
    InspectedFile,
    Library,
    LibraryBin,
    ModuleInfo,
)

INSPECT_SCHEMA = "ffitool.inspect/1"
BLOB_SCHEMA = "ffitool.blob/1"

Json = dict[str, Any]


def inspect_document(files: list[InspectedFile], errors: list[tuple[str, str]]) -> Json:
    """The whole `inspect --json` document; `errors` are (path, message) of unreadable inputs."""
    entries: list[Json] = [file_json(f) for f in files]
    entries.extend({"path": path, "error": message} for path, message in errors)
    return {"schema": INSPECT_SCHEMA, "files": entries}


def file_json(inspected: InspectedFile) -> Json:
    return {
        "path": inspected.path,
        "format": inspected.format,
        "size": inspected.size,
        "libraries": [library_json(lib) for lib in inspected.libraries],
    }


def library_json(library: Library) -> Json:
    return {
        "member": library.member,
        "format": library.format,
        "kind": library.kind,
        "machine": library.machine,
        "bits": library.bits,
        "endianness": library.endianness,
        "symbol_tables": [t.value for t in library.symbol_tables],
        "functions": [function_json(f) for f in library.functions],
        "symbols": [symbol_json(s) for s in library.symbols],
        "library_bin": None
        if library.library_bin is None
        else library_bin_json(library.library_bin),
        "system_lib_bins": [library_bin_json(b) for b in library.system_lib_bins],
        "findings": findings_json(library.findings),
    }


def function_json(function: Function) -> Json:
    symbol = function.symbol.symbol
    return {
        "name": function.name,
        "symbol": symbol.name,
        "prefix": function.symbol.naming.prefix,
        "address": symbol.address,
        "size": symbol.size,
        "exported": function.symbol.dynamic,
        "metadata": function.has_metadata,
        "doc": function.has_doc,
    }


def symbol_json(ffi_symbol: FfiSymbol) -> Json:
    symbol = ffi_symbol.symbol
    return {
        "symbol": symbol.name,
        "role": ffi_symbol.naming.role.value,
        "name": ffi_symbol.naming.name,
        "prefix": ffi_symbol.naming.prefix,
        "type": symbol.type,
        "binding": symbol.binding,
        "visibility": symbol.visibility,
        "address": symbol.address,
        "size": symbol.size,
        "section": symbol.section,
        "defined": symbol.defined,
        "table": symbol.table.value,
        "in_symtab": ffi_symbol.in_symtab,
        "exported": ffi_symbol.dynamic,
    }


def library_bin_json(library_bin: LibraryBin) -> Json:
    symbol = library_bin.symbol.symbol
    return {
        "symbol": symbol.name,
        "prefix": library_bin.prefix,
        "layout": library_bin.layout,
        "section": symbol.section,
        "address": symbol.address,
        "symbol_size": symbol.size,
        "file_offset": library_bin.file_offset,
        "nbytes": library_bin.nbytes,
        "modules": [module_json(m) for m in library_bin.modules],
        "findings": findings_json(library_bin.findings),
    }


def module_json(module: ModuleInfo) -> Json:
    return {
        "index": module.index,
        "kind": module.kind,
        "size": module.size,
        "sha256": module.sha256,
        "imports": list(module.imports),
        "payload_offset": module.payload_offset,
    }


def findings_json(findings: tuple[Finding, ...]) -> list[Json]:
    return [f.to_json() for f in findings]


def blob_document(report: BlobReport) -> Json:
    """The `blob decode --json` document."""
    return {
        "schema": BLOB_SCHEMA,
        "path": report.path,
        "size": report.size,
        "nbytes": report.nbytes,
        "modules": [module_json(m) for m in report.modules],
        "findings": findings_json(report.findings),
    }
