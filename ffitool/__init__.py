"""ffitool: read and rewrite binaries that follow the Apache TVM FFI ABI, statically.

The public API, which the command line is a thin layer over:

- `inspect_path(path)`: what a library, object or archive exports and embeds.
- `inspect_blob_file(path)`: the same for a raw blob file.
- `decode(data)` / `encode(blob)`: the `__tvm_ffi__library_bin` codec.

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
    "Finding": "ffitool.findings",
    "Severity": "ffitool.findings",
    "InspectedFile": "ffitool.library",
    "Library": "ffitool.library",
    "inspect_blob_file": "ffitool.library",
    "inspect_path": "ffitool.library",
    "Role": "ffitool.symbols",
}

__all__ = [
    "Blob",
    "BlobError",
    "DecodedBlob",
    "FfitoolError",
    "Finding",
    "InputError",
    "InspectedFile",
    "Library",
    "Module",
    "Role",
    "Severity",
    "UsageError",
    "__version__",
    "decode",
    "decode_legacy",
    "encode",
    "inspect_blob_file",
    "inspect_path",
]

if TYPE_CHECKING:
    from ffitool.blob import Blob, DecodedBlob, Module, decode, decode_legacy, encode
    from ffitool.errors import BlobError, FfitoolError, InputError, UsageError
    from ffitool.findings import Finding, Severity
    from ffitool.library import InspectedFile, Library, inspect_blob_file, inspect_path
    from ffitool.symbols import Role


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'ffitool' has no attribute {name!r}")
    return getattr(import_module(module), name)
