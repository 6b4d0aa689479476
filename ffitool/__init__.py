"""ffitool: read and rewrite binaries that follow the Apache TVM FFI ABI, statically.

The public API, which the command line is a thin layer over:

- `inspect_path(path)`: what a library, object or archive exports and embeds.
- `inspect_blob_file(path)`: the same for a raw blob file.
- `decode(data)` / `encode(blob)`: the `__tvm_ffi__library_bin` codec.
- `pack_library(path, plan_edits(existing_modules(path), Edits(add=...)))`: embed modules.
- `extract(path, directory)` / `read_manifest(path)`: payload files and their manifest.
- `check_file(inspect_path(path), Requirements(functions=("add_one",)))`: the findings that
  `ffitool check` reports, each with its rule in `RULES`.

Submodules load on first use, so `import ffitool` stays cheap.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "Blob": "ffitool.blob",
    "DecodedBlob": "ffitool.blob",
    "Module": "ffitool.blob",
    "decode": "ffitool.blob",
    "decode_legacy": "ffitool.blob",
    "encode": "ffitool.blob",
    "BlobError": "ffitool.errors",
    "FfitoolError": "ffitool.errors",
    "InputError": "ffitool.errors",
    "UsageError": "ffitool.errors",
    "Requirements": "ffitool.checks",
    "check_file": "ffitool.checks",
    "library_findings": "ffitool.checks",
    "RULES": "ffitool.rules",
    "Finding": "ffitool.findings",
    "Severity": "ffitool.findings",
    "InspectedFile": "ffitool.library",
    "Library": "ffitool.library",
    "inspect_blob_file": "ffitool.library",
    "inspect_path": "ffitool.library",
    "Role": "ffitool.symbols",
    "Edits": "ffitool.edit.plan",
    "plan_edits": "ffitool.edit.plan",
    "plan_from_modules": "ffitool.edit.plan",
    "existing_modules": "ffitool.pack",
    "pack_library": "ffitool.pack",
    "payload_source": "ffitool.pack",
    "extract": "ffitool.manifest",
    "read_manifest": "ffitool.manifest",
}

__all__ = [
    "RULES",
    "Blob",
    "BlobError",
    "DecodedBlob",
    "Edits",
    "FfitoolError",
    "Finding",
    "InputError",
    "InspectedFile",
    "Library",
    "Module",
    "Requirements",
    "Role",
    "Severity",
    "UsageError",
    "__version__",
    "check_file",
    "decode",
    "decode_legacy",
    "encode",
    "existing_modules",
    "extract",
    "inspect_blob_file",
    "inspect_path",
    "library_findings",
    "pack_library",
    "payload_source",
    "plan_edits",
    "plan_from_modules",
    "read_manifest",
]

if TYPE_CHECKING:
    from ffitool.blob import Blob, DecodedBlob, Module, decode, decode_legacy, encode
    from ffitool.checks import Requirements, check_file, library_findings
    from ffitool.edit.plan import Edits, plan_edits, plan_from_modules
    from ffitool.errors import BlobError, FfitoolError, InputError, UsageError
    from ffitool.findings import Finding, Severity
    from ffitool.library import InspectedFile, Library, inspect_blob_file, inspect_path
    from ffitool.manifest import extract, read_manifest
    from ffitool.pack import existing_modules, pack_library, payload_source
    from ffitool.rules import RULES
    from ffitool.symbols import Role


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'ffitool' has no attribute {name!r}")
    return getattr(import_module(module), name)
