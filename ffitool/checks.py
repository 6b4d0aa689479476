"""Checks: the rules that are judgements over the model rather than facts met while reading it.

Decoding a blob reports what it finds in the bytes (the B codes, and the L1xx codes of how the
blob is placed), with offsets; the rules below are small functions over a `Library` (L210,
L211, L212), which `inspect` shows too. `check_file` joins both and places every finding of a
file at a byte offset in it where there is one. The requirement rules (R1xx) only speak when
a requirement was configured.

Requirements are met per loadable image (a shared library or executable, which is loaded on
its own), and over all images of a file otherwise: an object or the members of a static
archive are linked together, so a function may come from any of them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

from ffitool.findings import Finding
from ffitool.library import InspectedFile, Library, LibraryBin
from ffitool.rules import finding
from ffitool.symbols import Role
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


LibraryCheck = Callable[[Library, Requirements], Iterator[Finding]]
_LIBRARY_CHECKS: list[LibraryCheck] = []


def _library_check(check: LibraryCheck) -> LibraryCheck:
    _LIBRARY_CHECKS.append(check)
    return check


def library_findings(library: Library, requirements: Requirements = _NOTHING) -> list[Finding]:
    """What the checks find in one library (`inspect` shows these with no requirements)."""
    return [found for check in _LIBRARY_CHECKS for found in check(library, requirements)]


def check_file(inspected: InspectedFile, requirements: Requirements) -> list[Reported]:
    """Every finding of one inspected file: the blobs' (found while reading them), then the
    checks', then the requirements'."""
    reported: list[Reported] = []
    for library in inspected.libraries:
        located = [(f, _file_offset(blob, f)) for blob in _blobs(library) for f in blob.findings]
        located += [(f, None) for f in library_findings(library, requirements)]
        located += _blob_requirement_findings(library, requirements)
        part = _part(inspected, library)
        reported += [Reported(inspected.path, part, f, offset) for f, offset in located]
    groups: list[tuple[str | None, tuple[Library, ...]]] = [
        (_part(inspected, lib), (lib,)) for lib in inspected.libraries if lib.loadable
    ]
    linked = tuple(lib for lib in inspected.libraries if not lib.loadable)
    if linked or not inspected.libraries:
        groups.append((None, linked))
    for part, libraries in groups:
        for found in _requirement_findings(libraries, requirements):
            reported.append(Reported(inspected.path, part, found, None))
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


@_library_check
def function_not_exported(library: Library, _: Requirements) -> Iterator[Finding]:
    """L210: `Module.get_function` finds functions with dlsym, in a loaded library only.

    A system-lib function is registered by a constructor, not looked up by dlsym.
    """
    if not library.loadable:
        return
    for ffi in library.symbols:
        naming = ffi.naming
        function = naming.role is Role.FUNCTION and not naming.prefix and ffi.symbol.defined
        if function and not ffi.dynamic:
            yield finding(
                "L210",
                f"function {ffi.symbol.name} is not exported dynamically;"
                " the runtime will not find it",
            )


@_library_check
def function_not_code(library: Library, _: Requirements) -> Iterator[Finding]:
    """L211: the runtime calls what `__tvm_ffi_<name>` resolves to; it must be code."""
    for ffi in library.symbols:
        symbol = ffi.symbol
        if ffi.naming.role is not Role.FUNCTION or not symbol.defined:
            continue
        # STT_GNU_IFUNC is 10, which pyelftools names LOOS: a resolver that returns code.
        if symbol.type not in ("FUNC", "LOOS"):
            yield finding(
                "L211",
                f"{symbol.name} is a {symbol.type} symbol in {symbol.section}, not a function:"
                " calling it crashes the caller",
            )
        elif symbol.executable is False:
            yield finding(
                "L211",
                f"{symbol.name} is in {symbol.section}, which is not an executable section",
            )


@_library_check
def getter_without_function(library: Library, _: Requirements) -> Iterator[Finding]:
    """L212: metadata and doc getters describe a function that must exist beside them."""
    names: set[str] = set()
    for ffi in library.symbols:
        if ffi.naming.role is Role.FUNCTION and ffi.symbol.defined:
            names.update((ffi.naming.name, ffi.naming.prefix + ffi.naming.name))
    for ffi in library.symbols:
        naming = ffi.naming
        getter = naming.role in (Role.METADATA, Role.DOC) and ffi.symbol.defined
        if getter and naming.name not in names:
            yield finding(
                "L212",
                f"{ffi.symbol.name} describes __tvm_ffi_{naming.name}, which is not defined",
            )


def _requirement_findings(
    libraries: tuple[Library, ...], requirements: Requirements
) -> Iterator[Finding]:
    """R100-R102 over images that are loaded or linked together."""
    if requirements.require_ffi and not any(
        ffi.symbol.defined for lib in libraries for ffi in lib.symbols
    ):
        yield finding("R100", "no __tvm_ffi_ function, getter or blob is defined")
    names = {function.name for lib in libraries for function in lib.functions}
    for name in requirements.functions:
        if name not in names:
            yield finding("R101", f"required function {name} (__tvm_ffi_{name}) is not exported")
    kinds = {
        module.kind for lib in libraries for blob in _loaded_blobs(lib) for module in blob.modules
    }
    for kind in requirements.kinds:
        if kind not in kinds:
            yield finding("R102", f"no module of kind {kind} in any blob")


def _blob_requirement_findings(
    library: Library, requirements: Requirements
) -> list[tuple[Finding, int | None]]:
    """R103-R104, each with the file offset of the module or blob it is about."""
    found: list[tuple[Finding, int | None]] = []
    for blob in _loaded_blobs(library):
        where = blob.symbol.symbol.name
        limit = requirements.max_blob_size
        if limit is not None and blob.nbytes is not None and 8 + blob.nbytes > limit:
            size = 8 + blob.nbytes
            over = finding(
                "R104",
                f"{where} occupies {format_size(size)} ({size} bytes), over the limit of"
                f" {format_size(limit)} ({limit} bytes)",
                0,
            )
            found.append((over, _file_offset(blob, over)))
        allowed = requirements.allowed_kinds
        for module in blob.modules:
            if allowed is not None and module.kind != "_lib" and module.kind not in allowed:
                odd = finding(
                    "R103",
                    f"module {module.index} of {where} has kind {module.kind},"
                    " which is not allowed",
                    module.payload_offset,
                )
                found.append((odd, _file_offset(blob, odd) if odd.offset is not None else None))
    return found
