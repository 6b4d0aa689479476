"""`pack`: embed module blobs into an already linked shared library.

Flow: read the library's current blob -> plan the new one (pure) -> stage a copy next to the
destination with the structure in place -> stream the blob in -> verify -> rename. On any
failure the staged file is removed and the input is byte-identical.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

from ffitool.errors import InputError
from ffitool.library import inspect_path
from ffitool.pack.elf_writer import Placement, place, prepare
from ffitool.pack.plan import ExistingModule, PayloadSource, Plan
from ffitool.pack.stream import Progress, blob_size, write_blob
from ffitool.pack.verify import verify
from ffitool.staging import staged


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
    inspected = inspect_path(path, digests=False)
    if len(inspected.libraries) != 1 or inspected.format != "ELF":
        raise InputError(f"{path}: only an ELF shared library can be packed")
    found = inspected.libraries[0].library_bin
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
    try:
        with open(path, "rb") as handle:
            info = os.fstat(handle.fileno())
    except OSError as exc:
        raise InputError(f"{path}: cannot read payload: {exc.strerror or exc}") from None
    if not stat.S_ISREG(info.st_mode):
        raise InputError(f"{path}: a payload must be a regular file")
    if info.st_size == 0:
        raise InputError(f"{path}: empty payload; the runtime rejects empty modules")
    return PayloadSource(path, 0, info.st_size)


def pack_library(
    library: Path, plan: Plan, output: Path | None = None, progress: Progress | None = None
) -> PackResult:
    """Write `library` with the planned blob to `output` (default: in place), verified first."""
    destination = output or library
    try:
        mode = stat.S_IMODE(os.stat(library).st_mode)
    except OSError as exc:
        raise InputError(f"{library}: cannot open: {exc.strerror or exc}") from None
    with staged(destination, mode) as staging:
        prepare(library, staging, str(library))
        placement = place(staging, library, blob_size(plan))
        with open(staging, "r+b") as handle:
            write_blob(handle.fileno(), placement.file_offset, plan, progress)
            os.fsync(handle.fileno())
        verify(staging, library, plan, placement)
    return PackResult(destination, plan, placement)
