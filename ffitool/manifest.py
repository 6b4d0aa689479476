"""Manifests: a blob's tree as JSON next to one file per payload (`ffitool.manifest/1`).

`extract` writes one, `pack --manifest`, `blob encode` and `blob emit-c` read one. Reading
checks every file against the size and sha256 recorded, so a stale directory is caught
before anything is written.
"""

from __future__ import annotations

import contextlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

from ffitool.blob import LIB_KIND
from ffitool.errors import InputError, UsageError
from ffitool.findings import printable
from ffitool.library import LibraryBin, file_sha256, inspect_path, open_regular_file
from ffitool.pack.plan import ExistingModule, PayloadSource
from ffitool.pack.stream import copy_payload
from ffitool.symbols import LIBRARY_BIN

MANIFEST_SCHEMA = "ffitool.manifest/1"
MANIFEST_NAME = "manifest.json"


@dataclass(frozen=True)
class Extracted:
    """What `extract` wrote."""

    manifest: Path
    files: tuple[Path, ...]


def extract(library: Path, directory: Path, symbol_prefix: str | None = None) -> Extracted:
    """Write each payload of the library's blob to `directory`, plus `manifest.json`.

    `symbol_prefix` picks `<prefix>__tvm_ffi__library_bin` ("" the plain name); by default
    the plain blob, the one `load_module` reads and `pack` rewrites, else the only system-lib
    blob there is.
    """
    found = _blob_to_extract(library, symbol_prefix)
    if any(f.code == "B100" for f in found.findings):
        raise InputError(f"{library}: the blob is malformed; see `ffitool inspect`")
    written: list[Path] = []  # payload files, then the manifest
    try:
        directory.mkdir(parents=True, exist_ok=True)
        entries = []
        for module in found.modules:
            entry: dict[str, object] = {
                "index": module.index,
                "kind": module.kind,
                "imports": list(module.imports),
            }
            if module.payload_offset is not None and module.size is not None:
                name = f"{module.index:03d}-{_file_safe(module.kind)}.bin"
                written.append(directory / name)
                source = PayloadSource(
                    str(library), found.file_offset + module.payload_offset, module.size
                )
                with open(directory / name, "wb") as out:
                    copy_payload(source, out.fileno(), 0)
                entry.update(file=name, size=module.size, sha256=module.sha256)
            entries.append(entry)
        manifest = directory / MANIFEST_NAME
        written.append(manifest)
        document = {"schema": MANIFEST_SCHEMA, "source": str(library), "modules": entries}
        manifest.write_text(json.dumps(document, indent=2) + "\n")
    except (OSError, InputError) as exc:
        for path in written:  # no half-extracted directory: what was written goes again
            with contextlib.suppress(OSError):
                path.unlink()
        if isinstance(exc, InputError):
            raise
        raise InputError(f"{directory}: cannot write: {exc.strerror or exc}") from None
    return Extracted(manifest, tuple(written[:-1]))


def _blob_to_extract(library: Path, symbol_prefix: str | None) -> LibraryBin:
    inspected = inspect_path(library)
    blobs = [
        blob
        for lib in inspected.libraries
        for blob in (lib.library_bin, *lib.system_lib_bins)
        if blob is not None and blob.layout == "tvm_ffi" and blob.file_offset is not None
    ]
    if symbol_prefix is not None:
        blobs = [blob for blob in blobs if blob.prefix == symbol_prefix]
    else:
        blobs = [blob for blob in blobs if not blob.prefix] or blobs
    if not blobs:
        name = printable(f"{symbol_prefix or ''}{LIBRARY_BIN}")
        raise InputError(f"{library}: no readable {name} to extract")
    prefixes = sorted({blob.prefix for blob in blobs})
    if len(prefixes) > 1:
        listed = ", ".join(printable(prefix) for prefix in prefixes)
        raise UsageError(
            f"{library}: blobs with the system-lib prefixes {listed}; choose one with"
            " --symbol-prefix"
        )
    return blobs[0]  # in an archive, the first member's


def read_manifest(path: Path) -> list[ExistingModule]:
    """The modules a manifest describes, each file checked against its size and sha256."""
    try:
        document = json.loads(path.read_text())
    except OSError as exc:
        raise InputError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise InputError(f"{path}: not JSON: {exc}") from None
    if not isinstance(document, dict) or document.get("schema") != MANIFEST_SCHEMA:
        raise InputError(f"{path}: not an {MANIFEST_SCHEMA} manifest")
    entries = document.get("modules")
    if not isinstance(entries, list) or not entries:
        raise InputError(f"{path}: `modules` must be a non-empty list")
    modules = [_module(path, number, entry, len(entries)) for number, entry in enumerate(entries)]
    return modules


def _module(path: Path, number: int, entry: object, count: int) -> ExistingModule:
    where = f"{path}: module {number}"
    if not isinstance(entry, dict) or entry.get("index") != number:
        raise InputError(f"{where}: entries must be objects listed in index order")
    kind, imports = entry.get("kind"), entry.get("imports", [])
    if not isinstance(kind, str):
        raise InputError(f"{where}: `kind` must be a string")
    if not isinstance(imports, list) or not all(
        isinstance(i, int) and not isinstance(i, bool) and 0 <= i < count for i in imports
    ):
        raise InputError(f"{where}: `imports` must list module indices below {count}")
    if kind == LIB_KIND:
        if "file" in entry:
            raise InputError(f"{where}: `_lib` has no payload file")
        return ExistingModule(kind, None, tuple(imports))
    if not kind:
        raise InputError(f"{where}: `kind` cannot be empty")
    name = entry.get("file")
    if not isinstance(name, str) or Path(name).is_absolute() or ".." in Path(name).parts:
        raise InputError(f"{where}: `file` must be a path relative to the manifest")
    payload = path.parent / name
    handle, size = open_regular_file(payload)
    with handle:
        digest = file_sha256(handle, 0, size) if "sha256" in entry else None
    if size == 0:
        raise InputError(f"{payload}: empty payload; the runtime rejects empty modules")
    if "size" in entry and entry["size"] != size:
        raise InputError(f"{payload}: {size} bytes, the manifest says {entry['size']}")
    if digest is not None and digest != entry["sha256"]:
        raise InputError(f"{payload}: sha256 differs from the manifest's")
    return ExistingModule(kind, PayloadSource(str(payload), 0, size), tuple(imports))


def _file_safe(kind: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", kind)[:64] or "module"
