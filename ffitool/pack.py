"""`pack`: embed module blobs into an already linked shared library.

Flow: read the library's current blob -> plan the new one (pure) -> stage a copy next to the
destination with the structure in place -> stream the blob in -> verify -> rename. On any
failure the staged file is removed and the input is byte-identical.
"""

from __future__ import annotations

import errno
import fcntl
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from ffitool.blob import UNKEEPABLE
from ffitool.edit.plan import ExistingModule, PayloadSource, Plan, file_identity
from ffitool.edit.stream import InputFile, Progress, blob_size, open_input, same_bytes, write_blob
from ffitool.edit.verification import VerificationError, fail
from ffitool.errors import InputError, UsageError
from ffitool.findings import Severity
from ffitool.formats import Format, Packer, format_named, formats
from ffitool.library import InspectedFile, Library, inspect_open, inspect_path
from ffitool.staging import Ownership, descriptor_path, staged
from ffitool.symbols import LIBRARY_BIN


@dataclass(frozen=True)
class PackResult:
    """What was written where."""

    destination: Path
    plan: Plan
    placement: Any
    """Where the blob went: the ELF or PE writer's placement, or one per packed Mach-O slice."""
    warnings: tuple[str, ...] = ()
    """What the user must know about the output (a certificate signature replaced or removed)."""


SIGNATURE_MODES = ("adhoc", "remove")


def existing_modules(path: Path, arches: tuple[str, ...] = ()) -> list[ExistingModule] | None:
    """The modules of the library's current blob with their file ranges, or None without one.

    A blob the runtime rejects cannot be kept module by module: that is an error (a manifest
    can still replace it whole). A legacy `__tvm_dev_mblob` is ignored, as tvm-ffi does. The
    slices of a universal file that are packed must carry the same blob (or none), since one
    plan serves them all.
    """
    held, info = open_input(path)
    before = file_identity(info)
    slices = _packed_libraries(_packable(held, info.st_size, path, digests=False), arches)
    if sum(library.library_bin is not None for library in slices) > 1:  # compare payloads
        slices = _packed_libraries(_packable(held, info.st_size, path, digests=True), arches)
    found = slices[0].library_bin
    if len({_blob_identity(library) for library in slices}) > 1:
        raise InputError(
            f"{path}: its slices carry different blobs; pack them one at a time with --arch"
        )
    if file_identity(os.fstat(held.fd)) != before:
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
            else PayloadSource(
                str(path), found.file_offset + m.payload_offset, m.size, before, held
            ),
            m.imports,
        )
        for m in found.modules
    ]


def payload_source(path: str) -> PayloadSource:
    """A whole file as a payload, checked now so that nothing is written for a bad argument;
    its descriptor is held, and the pack reads that one rather than the path again."""
    held, info = open_input(path)
    if info.st_size == 0:
        raise InputError(f"{path}: empty payload; the runtime rejects empty modules")
    return PayloadSource(str(path), 0, info.st_size, file_identity(info), held)


def pack_library(
    library: Path,
    plan: Plan,
    output: Path | None = None,
    progress: Progress | None = None,
    *,
    arches: tuple[str, ...] = (),
    signature: str = "adhoc",
) -> PackResult:
    """Write `library` with the planned blob to `output` (default: in place), verified first.

    In place follows a symlink to the file it names, as patchelf does, and keeps the file's
    owner, group and mode; with `-o` the output gets the input's permission bits. The input
    is read through one descriptor, locked against a concurrent pack, and must still be the
    file at its path when the output replaces anything. `arches` and `signature` apply to
    Mach-O files: the slices to pack (default all) and whether each is signed again ad hoc
    or left unsigned.
    """
    library = Path(library)
    held, info = open_input(library)
    inspected = _packable(held, info.st_size, library, digests=False)
    found = _format(inspected)
    if not found.slices and (arches or signature != "adhoc"):
        raise UsageError(_sliced_only())
    if found.slices:
        _packed_libraries(inspected, arches)
        if signature not in SIGNATURE_MODES:
            raise UsageError(f"--signature must be one of {', '.join(SIGNATURE_MODES)}")
    packer = found.make_packer(arches, signature == "remove")
    return _rewrite(library, held, plan, output, progress, packer)


def _rewrite(
    library: Path,
    held: InputFile,
    plan: Plan,
    output: Path | None,
    progress: Progress | None,
    writer: Packer,
) -> PackResult:
    """The flow every format shares: lock and check the input (the descriptor it was
    inspected through), plan, stage, write, verify, check the path still names the file that
    was read, rename."""
    in_place = output is None
    destination = output or Path(os.path.realpath(library))
    with held.reader(library) as handle:
        _lock(handle, library)
        info = os.fstat(handle.fileno())
        if in_place:
            _check_writable(handle, library)
        _check_sources(plan, library, file_identity(info))
        source = str(descriptor_path(handle.fileno()) or library)
        edit = writer.plan(handle, info.st_size, str(library), blob_size(plan))
        ownership = Ownership.of(info) if in_place else Ownership(Ownership.of(info).mode)
        with staged(destination, ownership) as staging:
            copies = 0

            def blob(fd: int, offset: int) -> None:
                nonlocal copies
                # One progress bar, however many copies (one per packed Mach-O slice).
                write_blob(fd, offset, plan, progress if copies == 0 else None)
                copies += 1

            # No fsync, as with cp, strip, objcopy and patchelf: on a 400 MB host it would
            # cost more than the whole rewrite. Durability is left to the file system.
            writer.write(source, staging.fd, edit, blob)
            try:
                written = verify_output(writer, staging.path, Path(source), plan, edit)
            except VerificationError as exc:  # verifiers do not know the library's name
                raise VerificationError(f"{library}: {exc}; nothing was written") from None
            _check_unchanged(handle, library, info)
    placement, warnings = writer.result(edit)
    return PackResult(destination, plan, placement, warnings + _mismatched_payloads(written))


def verify_output(
    writer: Packer, staging: Path, source: Path, plan: Plan, edit: Any
) -> tuple[Library, ...]:
    """Raise VerificationError, naming the first difference, unless `staging` is right.

    The staged file is re-read as inspect reads it: each packed image's blob must be exactly
    the planned modules with their sources' bytes; then the format's verifier compares the
    rest of the file with the input. Returns the images as re-read."""
    try:
        libraries = inspect_path(staging, digests=False).libraries  # bytes are compared below
    except InputError as exc:
        fail(str(exc).split(": ", 1)[-1])
    offsets = writer.blob_offsets(edit)
    if len(libraries) != len(offsets):
        fail(f"{len(libraries)} images, expected {len(offsets)}")
    for library, offset in zip(libraries, offsets, strict=True):
        if offset is not None:
            check_blob(library, staging, plan, offset)
    writer.verify(staging, source, edit)
    return libraries


def _mismatched_payloads(libraries: tuple[Library, ...]) -> tuple[str, ...]:
    """B302 of the written blob, once however many slices carry it: a payload under the kind
    of another format is packed as asked, but the user must hear that its loader will fail."""
    found = (
        f"{f.code}: {f.message}"
        for library in libraries
        if library.library_bin is not None
        for f in library.library_bin.findings
        if f.code == "B302"
    )
    return tuple(dict.fromkeys(found))


def check_blob(library: Library, staging: Path, plan: Plan, file_offset: int) -> None:
    """The library's blob is exported, at `file_offset`, and holds exactly the planned modules
    with exactly their source's bytes."""
    found = library.library_bin
    if found is None or found.symbol.symbol.name != LIBRARY_BIN:
        fail("no __tvm_ffi__library_bin")
    if not found.symbol.dynamic:
        fail("__tvm_ffi__library_bin is not exported")
    errors = [f.message for f in found.findings if f.severity is Severity.ERROR]
    if errors:
        fail("; ".join(errors))
    if found.file_offset != file_offset:
        fail(f"blob at file offset {found.file_offset}, planned {file_offset}")
    got = [(m.kind, m.imports, m.size) for m in found.modules]
    want = [(m.kind, m.imports, None if m.source is None else m.source.size) for m in plan.modules]
    if got != want:
        fail(f"modules {got} differ from the plan {want}")
    for module, planned in zip(found.modules, plan.modules, strict=True):
        if planned.source is None or module.payload_offset is None:
            continue
        if not same_bytes(planned.source, str(staging), file_offset + module.payload_offset):
            fail(f"module {module.index} ({module.kind}) payload bytes differ from the source")


def _lock(handle: BinaryIO, library: Path) -> None:
    """An exclusive advisory lock on the input: a second pack of it fails instead of racing."""
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise InputError(f"{library}: another ffitool pack is rewriting it; try again") from None
    except OSError:
        pass  # a file system without flock: the identity check before the rename remains


def _check_writable(handle: BinaryIO, library: Path) -> None:
    """In place, the user must be allowed to write the file, as patchelf requires: write
    access to its directory alone, which is all the rename needs, is not permission to
    change a read-only file."""
    where = descriptor_path(handle.fileno()) or library
    if not os.access(where, os.W_OK, effective_ids=os.access in os.supports_effective_ids):
        raise InputError(
            f"{library}: cannot write: {os.strerror(errno.EACCES)} (use -o to write a"
            " packed copy elsewhere)"
        )


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


def _packable(held: InputFile, size: int, path: Path, *, digests: bool) -> InspectedFile:
    """Read the input with the inspecting reader: unreadable or unsupported files end here."""
    with held.reader(path) as handle:
        inspected = inspect_open(handle, size, str(path), digests=digests)
    kinds = {library.kind for library in inspected.libraries}
    found = format_named(inspected.format)
    if found is not None and found.packer is not None and kinds <= found.packable_kinds and kinds:
        return inspected
    raise InputError(
        f"{path}: only ELF shared libraries, Mach-O dylibs and bundles and PE DLLs can be packed"
    )


def _format(inspected: InspectedFile) -> Format:
    """The format of a file `_packable` admitted."""
    found = format_named(inspected.format)
    assert found is not None  # _packable admitted it by its format
    return found


def _sliced_only() -> str:
    sliced = " and ".join(f.name for f in formats() if f.slices)
    return f"--arch and --signature apply to {sliced} files only"


def _packed_libraries(inspected: InspectedFile, arches: tuple[str, ...]) -> list[Library]:
    """The images a pack rewrites: all, or the Mach-O slices named by `--arch`."""
    if not arches:
        return list(inspected.libraries)
    found = _format(inspected)
    if not found.slices:
        raise UsageError(_sliced_only())
    names = [found.arch_names.get(lib.machine, lib.machine) for lib in inspected.libraries]
    unknown = sorted(set(arches) - set(names))
    if unknown:
        raise UsageError(f"no {', '.join(unknown)} slice (it has {', '.join(names)})")
    return [lib for lib, name in zip(inspected.libraries, names, strict=True) if name in arches]


def _blob_identity(
    library: Library,
) -> tuple[tuple[str, tuple[int, ...], int | None, str | None], ...]:
    """What must agree between the slices of one pack: the blob's modules, byte for byte."""
    found = library.library_bin
    if found is None or found.layout != "tvm_ffi":
        return ()
    return tuple((m.kind, m.imports, m.size, m.sha256) for m in found.modules)
