"""`pack`: embed module blobs into an already linked shared library.

Flow: read the library's current blob -> plan the new one (pure) -> stage a copy next to the
destination with the structure in place -> stream the blob in -> verify -> rename. On any
failure the staged file is removed and the input is byte-identical.
"""

from __future__ import annotations

import fcntl
import os
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from ffitool.blob import UNKEEPABLE
from ffitool.errors import InputError
from ffitool.formats.elf import PARSE_ERRORS
from ffitool.library import Library, inspect_path, open_regular_file
from ffitool.pack.elf_writer import Placement, plan_edit, write_edit
from ffitool.pack.plan import ExistingModule, PayloadSource, Plan, file_identity
from ffitool.pack.stream import Progress, blob_size, write_blob
from ffitool.pack.verify import VerificationError, verify
from ffitool.staging import Ownership, descriptor_path, staged


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
    before = file_identity(os.stat(path))
    found = _shared_library(path).library_bin
    if file_identity(os.stat(path)) != before:
        raise InputError(f"{path}: changed while its blob was read")
    if found is None or found.layout != "tvm_ffi":
        return None
    broken = [f for f in found.findings if f.code in UNKEEPABLE]
    if broken or found.file_offset is None:
        reason = broken[0].message if broken else "it has no bytes in the file"
        raise InputError(f"{path}: the existing blob cannot be read ({reason}); use --manifest")
    return [
        ExistingModule(
            m.kind,
            None
            if m.payload_offset is None or m.size is None
            else PayloadSource(str(path), found.file_offset + m.payload_offset, m.size, before),
            m.imports,
        )
        for m in found.modules
    ]


def payload_source(path: str) -> PayloadSource:
    """A whole file as a payload, checked now so that nothing is written for a bad argument."""
    handle, size = open_regular_file(path)
    with handle:
        identity = file_identity(os.fstat(handle.fileno()))
    if size == 0:
        raise InputError(f"{path}: empty payload; the runtime rejects empty modules")
    return PayloadSource(str(path), 0, size, identity)


def pack_library(
    library: Path, plan: Plan, output: Path | None = None, progress: Progress | None = None
) -> PackResult:
    """Write `library` with the planned blob to `output` (default: in place), verified first.

    In place follows a symlink to the file it names, as patchelf does, and keeps the file's
    owner, group and mode; with `-o` the output gets the input's permission bits. The input
    is read through one descriptor, locked against a concurrent pack, and must still be the
    file at its path when the output replaces anything.
    """
    library = Path(library)
    _shared_library(library)
    in_place = output is None
    destination = output or Path(os.path.realpath(library))
    with open(library, "rb") as handle:
        _lock(handle, library)
        info = os.fstat(handle.fileno())
        _check_sources(plan, library, file_identity(info))
        source = str(descriptor_path(handle.fileno()) or library)
        try:
            edit = plan_edit(handle, info.st_size, str(library), blob_size(plan))
        except PARSE_ERRORS as exc:
            raise InputError(f"{library}: malformed ELF: {exc}") from None
        ownership = Ownership.of(info) if in_place else Ownership(Ownership.of(info).mode)
        with staged(destination, ownership) as staging:

            def blob(fd: int, offset: int) -> None:
                write_blob(fd, offset, plan, progress)

            # No fsync, as with cp, strip, objcopy and patchelf: on a 400 MB host it would
            # cost more than the whole rewrite. Durability is left to the file system.
            write_edit(source, staging.fd, edit, blob)
            try:
                verify(staging.path, Path(source), plan, edit.placement)
            except PARSE_ERRORS as exc:
                raise VerificationError(
                    f"{library}: packed file failed verification: {exc}; nothing was written"
                ) from None
            except VerificationError as exc:  # verify() does not know the library's name
                raise VerificationError(f"{library}: {exc}; nothing was written") from None
            _check_unchanged(handle, library, info)
    return PackResult(destination, plan, edit.placement)


def _lock(handle: BinaryIO, library: Path) -> None:
    """An exclusive advisory lock on the input: a second pack of it fails instead of racing."""
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise InputError(f"{library}: another ffitool pack is rewriting it; try again") from None
    except OSError:
        pass  # a file system without flock: the identity check before the rename remains


def _check_sources(plan: Plan, library: Path, locked: tuple[int, int, int, int]) -> None:
    """Modules kept from the library's blob must come from the file now locked, unchanged.

    Another pack may have replaced the library between reading its blob and taking the lock;
    copying the old ranges out of the new file would lose that pack's modules. (Payload files
    are checked where they are copied, on the descriptor that reads them.)
    """
    for module in plan.modules:
        source = module.source
        if source is None or source.identity is None or Path(source.path) != library:
            continue
        if source.identity != locked:
            raise InputError(f"{library}: changed since its blob was read; nothing was written")


def _check_unchanged(handle: BinaryIO, library: Path, before: os.stat_result) -> None:
    """The path still names the file read, unmodified: else replacing it would lose a change."""
    try:
        now = os.stat(library)
    except OSError as exc:
        raise InputError(f"{library}: disappeared while packing: {exc.strerror}") from None
    ours = os.fstat(handle.fileno())
    if not file_identity(now) == file_identity(ours) == file_identity(before):
        raise InputError(f"{library}: changed while it was being packed; nothing was written")


def _shared_library(path: Path) -> Library:
    """Read the input with the inspecting reader: unreadable or unsupported files end here."""
    inspected = inspect_path(path, digests=False)
    if inspected.format != "ELF" or inspected.libraries[0].kind != "shared library":
        raise InputError(f"{path}: only ELF shared libraries can be packed")
    return inspected.libraries[0]
