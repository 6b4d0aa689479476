"""ffitool: read and rewrite binaries that follow the Apache TVM FFI ABI, statically.

The public API, which the command line is a thin layer over (a guide with examples that run:
docs/api.md):

- `inspect(*paths)`: what `ffitool inspect` reports for files, directory trees and wheels,
  one `Inspected`, `Skipped` or `Unreadable` result at a time; `inspect_path(path)` for
  one object file or archive.
- `Library.findings`, `LibraryBin.findings`: what `inspect` shows for each library and blob;
  `check_file(file, Requirements(...))`: the findings that `ffitool check` reports, each
  with its rule in `RULES`.
- `decode(data)` / `encode(blob)`: the `__tvm_ffi__library_bin` codec; `inspect_blob_file`
  for a raw blob file.
- `pack_library(path, plan_edits(existing_modules(path), Edits(add=...)))`: embed modules.
- `extract(path, directory)` / `read_manifest(path)`: payload files and their manifest;
  `extract_cubins(path, directory)`: the embedded cubins (`Library.cubins`) as files.

Submodules load on first use, so `import ffitool` stays cheap.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "Inspected": "ffitool.targets",
    "Skipped": "ffitool.targets",
    "Unreadable": "ffitool.targets",
    "inspect": "ffitool.targets",
    "BlobReport": "ffitool.library",
    "FfiSymbol": "ffitool.library",
    "Function": "ffitool.library",
    "InspectedFile": "ffitool.library",
    "Library": "ffitool.library",
    "LibraryBin": "ffitool.library",
    "ModuleInfo": "ffitool.library",
    "EmbeddedCubin": "ffitool.library",
    "inspect_blob_file": "ffitool.library",
    "inspect_path": "ffitool.library",
    "Finding": "ffitool.findings",
    "Severity": "ffitool.findings",
    "RULES": "ffitool.rules",
    "Rule": "ffitool.rules",
    "Reported": "ffitool.checks",
    "Requirements": "ffitool.checks",
    "check_file": "ffitool.checks",
    "Role": "ffitool.symbols",
    "Blob": "ffitool.blob",
    "DecodedBlob": "ffitool.blob",
    "LegacyBlob": "ffitool.blob",
    "Module": "ffitool.blob",
    "decode": "ffitool.blob",
    "decode_legacy": "ffitool.blob",
    "encode": "ffitool.blob",
    "BlobError": "ffitool.errors",
    "FfitoolError": "ffitool.errors",
    "InputError": "ffitool.errors",
    "UsageError": "ffitool.errors",
    "Edits": "ffitool.edit.plan",
    "ExistingModule": "ffitool.edit.plan",
    "PayloadSource": "ffitool.edit.plan",
    "Plan": "ffitool.edit.plan",
    "plan_edits": "ffitool.edit.plan",
    "plan_from_modules": "ffitool.edit.plan",
    "PackResult": "ffitool.pack",
    "existing_modules": "ffitool.pack",
    "pack_library": "ffitool.pack",
    "payload_source": "ffitool.pack",
    "Extracted": "ffitool.manifest",
    "extract": "ffitool.manifest",
    "extract_cubins": "ffitool.manifest",
    "read_manifest": "ffitool.manifest",
}

__all__ = [
    "RULES",
    "Blob",
    "BlobError",
    "BlobReport",
    "DecodedBlob",
    "Edits",
    "EmbeddedCubin",
    "ExistingModule",
    "Extracted",
    "FfiSymbol",
    "FfitoolError",
    "Finding",
    "Function",
    "InputError",
    "Inspected",
    "InspectedFile",
    "LegacyBlob",
    "Library",
    "LibraryBin",
    "Module",
    "ModuleInfo",
    "PackResult",
    "PayloadSource",
    "Plan",
    "Reported",
    "Requirements",
    "Role",
    "Rule",
    "Severity",
    "Skipped",
    "Unreadable",
    "UsageError",
    "__version__",
    "check_file",
    "decode",
    "decode_legacy",
    "encode",
    "existing_modules",
    "extract",
    "extract_cubins",
    "inspect",
    "inspect_blob_file",
    "inspect_path",
    "pack_library",
    "payload_source",
    "plan_edits",
    "plan_from_modules",
    "read_manifest",
]

if TYPE_CHECKING:
    from ffitool.blob import Blob, DecodedBlob, LegacyBlob, Module, decode, decode_legacy, encode
    from ffitool.checks import Reported, Requirements, check_file
    from ffitool.edit.plan import (
        Edits,
        ExistingModule,
        PayloadSource,
        Plan,
        plan_edits,
        plan_from_modules,
    )
    from ffitool.errors import BlobError, FfitoolError, InputError, UsageError
    from ffitool.findings import Finding, Severity
    from ffitool.library import (
        BlobReport,
        EmbeddedCubin,
        FfiSymbol,
        Function,
        InspectedFile,
        Library,
        LibraryBin,
        ModuleInfo,
        inspect_blob_file,
        inspect_path,
    )
    from ffitool.manifest import Extracted, extract, extract_cubins, read_manifest
    from ffitool.pack import PackResult, existing_modules, pack_library, payload_source
    from ffitool.rules import RULES, Rule
    from ffitool.symbols import Role
    from ffitool.targets import Inspected, Skipped, Unreadable, inspect


def __getattr__(name: str) -> Any:
    """Import the submodule that defines `name` on first use, and keep the value here."""
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'ffitool' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    """The public names too, though none is loaded yet: what `dir()` and completion show."""
    return sorted(set(globals()) | set(__all__))
