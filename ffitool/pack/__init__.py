"""`pack`: embed module blobs into an already linked shared library.

Flow: read the library's current blob -> plan the new one (pure) -> stage a copy next to the
destination with the structure in place -> stream the blob in -> verify -> rename. On any
failure the staged file is removed and the input is byte-identical.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ffitool.errors import InputError
from ffitool.formats.elf import PARSE_ERRORS
from ffitool.library import Library, inspect_path, open_regular_file
from ffitool.pack.elf_writer import Placement, plan_edit, write_edit
from ffitool.pack.plan import ExistingModule, PayloadSource, Plan
from ffitool.pack.stream import Progress, blob_size, write_blob
from ffitool.pack.verify import VerificationError, verify
from ffitool.staging import Ownership, staged


@dataclass(frozen=True)
class PackResult:
    """What was written where."""

    destination: Path
    plan: Plan
    placement: Placement


def existing_modules(path: Path) -> list[ExistingModule] | None:
    """The modules of the library's current blob with their file ranges, or None without one.

    A blob the runtime rejects cannot be kept module by module: that is an error (a manifest
    can still replace it whole). A legacy `__tvm_dev_mblob` is ignored, as tvm-ffi does.
    """
    found = _shared_library(path).library_bin
    if found is None or found.layout != "tvm_ffi":
        return None
    broken = [f for f in found.findings if f.code == "B100"]
    if broken or found.file_offset is None:
        reason = broken[0].message if broken else "it has no bytes in the file"
        raise InputError(f"{path}: the existing blob cannot be read ({reason}); use --manifest")
    return [
        ExistingModule(
            m.kind,
            None
            if m.payload_offset is None or m.size is None
            else PayloadSource(str(path), found.file_offset + m.payload_offset, m.size),
            m.imports,
        )
        for m in found.modules
    ]


def payload_source(path: str) -> PayloadSource:
    """A whole file as a payload, checked now so that nothing is written for a bad argument."""
    handle, size = open_regular_file(path)
    handle.close()
    if size == 0:
        raise InputError(f"{path}: empty payload; the runtime rejects empty modules")
    return PayloadSource(str(path), 0, size)


def pack_library(
    library: Path, plan: Plan, output: Path | None = None, progress: Progress | None = None
) -> PackResult:
    """Write `library` with the planned blob to `output` (default: in place), verified first.

    In place follows a symlink to the file it names, as patchelf does, and keeps the file's
    owner, group and mode; with `-o` the output gets the input's permission bits.
    """
    library = Path(library)
    _shared_library(library)
    in_place = output is None
    destination = output or Path(os.path.realpath(library))
    with open(library, "rb") as handle:
        info = os.fstat(handle.fileno())
        try:
            edit = plan_edit(handle, info.st_size, str(library), blob_size(plan))
        except PARSE_ERRORS as exc:
            raise InputError(f"{library}: malformed ELF: {exc}") from None
    ownership = Ownership.of(info) if in_place else Ownership(Ownership.of(info).mode)
    with staged(destination, ownership) as staging:

        def blob(fd: int, offset: int) -> None:
            write_blob(fd, offset, plan, progress)

        # No fsync, as with cp, strip, objcopy and patchelf: on a 400 MB host it would cost
        # more than the whole rewrite. Durability is left to the file system (and `sync`).
        write_edit(str(library), staging.fd, edit, blob)
        try:
            verify(staging.path, library, plan, edit.placement)
        except PARSE_ERRORS as exc:
            raise VerificationError(f"packed file failed verification: {exc}") from None
    return PackResult(destination, plan, edit.placement)


def _shared_library(path: Path) -> Library:
    """Read the input with the inspecting reader: unreadable or unsupported files end here."""
    inspected = inspect_path(path, digests=False)
    if inspected.format != "ELF" or inspected.libraries[0].kind != "shared library":
        raise InputError(f"{path}: only ELF shared libraries can be packed")
    return inspected.libraries[0]
