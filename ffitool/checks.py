"""Checks: the rules that are judgements over the model rather than facts met while reading it.

Reading a library reports what it finds: in a blob's bytes (the B codes) and in how the blob
is placed (L1xx), with offsets, on the blob; in the FFI symbols themselves (L2xx) on the
`Library`. `check_file` joins both and places every finding of a file at a byte offset in it
where there is one, then adds the requirement rules (R1xx), which only speak when a
requirement was configured. Each requirement is one function registered under its rule's
code; it says what it found and the runner makes the finding of that code.

Requirements are met per loadable image (a shared library or executable, which is loaded on
its own), and over all images of a file otherwise: an object or the members of a static
archive are linked together, so a function may come from any of them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TypeVar

from ffitool.findings import Finding
from ffitool.library import InspectedFile, Library, LibraryBin
from ffitool.payloads import Details
from ffitool.payloads.archs import device_code, runs_on
from ffitool.rules import finding
from ffitool.units import format_size


@dataclass(frozen=True)
class Requirements:
    """What a project asks of every library it ships (empty: nothing is asked)."""

    functions: tuple[str, ...] = ()
    kinds: tuple[str, ...] = ()
    allowed_kinds: tuple[str, ...] | None = None
    """None allows every kind; `_lib` is always allowed."""
    max_blob_size: int | None = None
    """Upper bound on 8 + nbytes of each blob."""
    require_ffi: bool = False
    archs: tuple[str, ...] = ()
    """Architectures every device payload and device code file must run on (sm_90, sm_90a)."""


_NOTHING = Requirements()


@dataclass(frozen=True)
class Reported:
    """A finding with where it is: the target's name, the archive member, a file offset."""

    path: str
    member: str | None
    """The archive member, or the architecture of a universal file's slice."""
    finding: Finding
    file_offset: int | None
    """Absolute byte offset in the file (the blob offset plus where the blob starts)."""


GroupRequirement = Callable[[tuple[Library, ...], Requirements], Iterator[str]]
"""A requirement over images that are loaded or linked together (R100-R102)."""
BlobRequirement = Callable[[LibraryBin, Requirements], Iterator[tuple[str, int | None]]]
"""A requirement over one blob that tvm-ffi reads (R103, R104): messages with blob offsets."""

DeviceRequirement = Callable[[Details, str, Requirements], Iterator[str]]
"""A requirement over device code (R105): a decoded payload or a device code file, named by
the second argument in the messages."""

GROUP_REQUIREMENTS: dict[str, GroupRequirement] = {}
BLOB_REQUIREMENTS: dict[str, BlobRequirement] = {}
DEVICE_REQUIREMENTS: dict[str, DeviceRequirement] = {}
"""Each check by the code of the rule it reports, run in the order they are defined here."""

_Check = TypeVar("_Check")


def _registered(table: dict[str, _Check], code: str) -> Callable[[_Check], _Check]:
    """Register a check under its rule's code: the check says what it found, the runner
    makes the finding, so a check cannot report under another rule's code."""

    def register(check: _Check) -> _Check:
        table[code] = check
        return check

    return register


def check_file(inspected: InspectedFile, requirements: Requirements) -> list[Reported]:
    """Every finding of one inspected file: the blobs' (found while reading them), then the
    checks', then the requirements'."""
    reported: list[Reported] = []
    for library in inspected.libraries:
        located = [(f, _file_offset(blob, f)) for blob in _blobs(library) for f in blob.findings]
        located += [(f, None) for f in library.findings]
        located += _blob_requirement_findings(library, requirements)
        part = _part(inspected, library)
        reported += [Reported(inspected.path, part, f, offset) for f, offset in located]
    groups: list[tuple[str | None, tuple[Library, ...]]] = [
        (_part(inspected, lib), (lib,)) for lib in inspected.libraries if lib.loadable
    ]
    linked = tuple(lib for lib in inspected.libraries if not lib.loadable)
    # A device code file is no host library: no FFI expectation applies to it.
    if (linked or not inspected.libraries) and inspected.device is None:
        groups.append((None, linked))
    for part, libraries in groups:
        for found in _requirement_findings(libraries, requirements):
            reported.append(Reported(inspected.path, part, found, None))
    if inspected.device is not None:
        what = f"the {inspected.format}"
        for found in _device_findings(inspected.device, what, requirements):
            reported.append(Reported(inspected.path, None, found, None))
    return reported


def nothing_found(path: str, requirements: Requirements) -> list[Reported]:
    """R100 for a path given to `check` under which no file was found to check (an empty
    directory, a wheel without libraries): with `require-ffi`, an empty build must fail."""
    if not requirements.require_ffi:
        return []
    message = "nothing to check: no ELF, Mach-O or PE file or ar archive was found in it"
    return [Reported(path, None, finding("R100", message), None)]


def _part(inspected: InspectedFile, library: Library) -> str | None:
    """Which part of the file a finding is in: the archive member, or for a universal file
    (several images, no member names) the slice's architecture; None for a plain file."""
    if library.member is not None or len(inspected.libraries) == 1:
        return library.member
    return library.machine


def _blobs(library: Library) -> tuple[LibraryBin, ...]:
    plain = (library.library_bin,) if library.library_bin is not None else ()
    return plain + library.system_lib_bins


def _loaded_blobs(library: Library) -> tuple[LibraryBin, ...]:
    """The blobs tvm-ffi reads: requirements are about those, not a legacy `__tvm_dev_mblob`."""
    return tuple(blob for blob in _blobs(library) if blob.layout == "tvm_ffi")


def _file_offset(blob: LibraryBin, found: Finding) -> int | None:
    if blob.file_offset is None:
        return None
    return blob.file_offset + (found.offset or 0)


def _requirement_findings(
    libraries: tuple[Library, ...], requirements: Requirements
) -> Iterator[Finding]:
    """R100-R102 over images that are loaded or linked together."""
    for code, check in GROUP_REQUIREMENTS.items():
        for message in check(libraries, requirements):
            yield finding(code, message)


def _blob_requirement_findings(
    library: Library, requirements: Requirements
) -> list[tuple[Finding, int | None]]:
    """R103-R105, each with the file offset of the module, blob or embedded cubin it is about."""
    found: list[tuple[Finding, int | None]] = []
    for blob in _loaded_blobs(library):
        for code, check in BLOB_REQUIREMENTS.items():
            for message, offset in check(blob, requirements):
                over = finding(code, message, offset)
                found.append((over, None if offset is None else _file_offset(blob, over)))
        for module in blob.modules if requirements.archs else ():
            if module.details is None:
                continue
            what = f"module {module.index} ({module.kind}) of {blob.symbol.symbol.name}"
            at = module.payload_offset
            for over in _device_findings(module.details, what, requirements, at):
                found.append((over, None if over.offset is None else _file_offset(blob, over)))
    for cubin in library.cubins if requirements.archs else ():
        if cubin.details is not None:
            what = f"embedded cubin {cubin.name}"
            found += [
                (f, cubin.file_offset) for f in _device_findings(cubin.details, what, requirements)
            ]
    return found


def _device_findings(
    details: Details, what: str, requirements: Requirements, offset: int | None = None
) -> Iterator[Finding]:
    """R105 over one piece of device code: a payload (at `offset` in its blob) or a file."""
    for code, check in DEVICE_REQUIREMENTS.items():
        for message in check(details, what, requirements):
            yield finding(code, message, offset)


@_registered(GROUP_REQUIREMENTS, "R100")
def require_ffi(libraries: tuple[Library, ...], requirements: Requirements) -> Iterator[str]:
    """R100 (`require-ffi`): the build produced an FFI library at all."""
    if requirements.require_ffi and not any(
        ffi.symbol.defined for lib in libraries for ffi in lib.symbols
    ):
        yield "no __tvm_ffi_ function, getter or blob is defined"


@_registered(GROUP_REQUIREMENTS, "R101")
def required_functions(libraries: tuple[Library, ...], requirements: Requirements) -> Iterator[str]:
    """R101 (`require-function`): `Module.get_function(name)` finds each required name."""
    names = {function.name for lib in libraries for function in lib.functions}
    for name in requirements.functions:
        if name not in names:
            yield f"required function {name} (__tvm_ffi_{name}) is not exported"


@_registered(GROUP_REQUIREMENTS, "R102")
def required_kinds(libraries: tuple[Library, ...], requirements: Requirements) -> Iterator[str]:
    """R102 (`require-kind`): some blob tvm-ffi reads holds a module of each required kind."""
    kinds = {
        module.kind for lib in libraries for blob in _loaded_blobs(lib) for module in blob.modules
    }
    for kind in requirements.kinds:
        if kind not in kinds:
            yield f"no module of kind {kind} in any blob"


@_registered(DEVICE_REQUIREMENTS, "R105")
def required_archs(details: Details, what: str, requirements: Requirements) -> Iterator[str]:
    """R105 (`require-arch`): device code runs on each required architecture, as SASS or PTX
    the driver compiles for it (`payloads.archs`); a payload without device code is not
    asked."""
    code = device_code(details) if requirements.archs else ()
    if not code:
        return
    has = ", ".join(dict.fromkeys(piece.label() for piece in code))
    for arch in requirements.archs:
        if not any(runs_on(piece, arch) for piece in code):
            yield f"{what} has no code for {arch} (it has {has})"


@_registered(BLOB_REQUIREMENTS, "R104")
def max_blob_size(blob: LibraryBin, requirements: Requirements) -> Iterator[tuple[str, int | None]]:
    """R104 (`max-blob-size`): 8 + nbytes within the limit. Defined before R103, so that a
    blob's own finding comes before its modules'."""
    limit = requirements.max_blob_size
    if limit is not None and blob.nbytes is not None and 8 + blob.nbytes > limit:
        size = 8 + blob.nbytes
        yield (
            f"{blob.symbol.symbol.name} occupies {format_size(size)} ({size} bytes), over the"
            f" limit of {format_size(limit)} ({limit} bytes)",
            0,
        )


@_registered(BLOB_REQUIREMENTS, "R103")
def allowed_kinds(blob: LibraryBin, requirements: Requirements) -> Iterator[tuple[str, int | None]]:
    """R103 (`allow-kind`): every module's kind is allowed; `_lib` always is."""
    allowed = requirements.allowed_kinds
    if allowed is None:
        return
    for module in blob.modules:
        if module.kind != "_lib" and module.kind not in allowed:
            yield (
                f"module {module.index} of {blob.symbol.symbol.name} has kind {module.kind},"
                " which is not allowed",
                module.payload_offset,
            )
