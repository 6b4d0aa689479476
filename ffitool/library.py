"""The model: a Library joins what a format reader found with the blob codec.

`inspect_path` (and `inspect_open`, through which `ffitool.inspect` reads every file and wheel
member) opens a file once, reads its images, classifies FFI symbols by role, decodes the blob
where it lies (read through the descriptor, payloads never copied) and hashes payloads by
streaming them from the file in fixed-size chunks, so the memory used does not grow with the
blob; each payload goes to the payload decoder its kind or content calls for (bounded by
`DECODE_LIMIT`). What is wrong is found while reading, and kept on what it is about: a blob's
bytes and placement on the blob (B, L1xx; a payload's, B3xx), the FFI symbols themselves on
the Library (L2xx). `checks` only adds what a user's requirements ask (R1xx), so it may import
this module and not the reverse.
"""

from __future__ import annotations

import errno
import gc
import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import BinaryIO, cast

from ffitool import blob as codec
from ffitool.errors import BlobError, InputError
from ffitool.files import CHUNK, open_regular_file
from ffitool.findings import Finding, printable
from ffitool.formats import (
    Image,
    Location,
    Slice,
    Symbol,
    SymbolTable,
    Window,
    read_object,
)
from ffitool.formats.sniff import (
    ARCHIVE,
    CUBIN_FILE,
    DEVICE_FILES,
    ELF_FILE,
    HEAD_SIZE,
    THIN_ARCHIVE,
    sniff,
)
from ffitool.formats.strtab import read_exactly
from ffitool.payloads import (
    DECODED_KINDS,
    SNIFF_BYTES,
    SNIFFED_FIRST_BYTES,
    Decoded,
    Details,
    choose_decoder,
    decoder_for_content,
    run_decoder,
)
from ffitool.rules import finding
from ffitool.symbols import Naming, Role, classify
from ffitool.units import format_size


@dataclass(frozen=True, slots=True)
class FfiSymbol:
    """A symbol with its FFI role; `dynamic` says whether `dlsym` can see it."""

    symbol: Symbol
    naming: Naming
    dynamic: bool
    in_symtab: bool


@dataclass(frozen=True, slots=True)
class Function:
    """A packed-ABI function that `Module.get_function(name)` resolves."""

    name: str
    symbol: FfiSymbol
    has_metadata: bool
    has_doc: bool


@dataclass(frozen=True, slots=True)
class ModuleInfo:
    """One module of the blob as stored: size and digest of its payload, its imports."""

    index: int
    kind: str
    size: int | None
    sha256: str | None
    imports: tuple[int, ...]
    payload_offset: int | None
    """Offset of the payload bytes from the start of the blob."""
    decoded: Decoded | None = None
    """What the payload decoders made of the payload; None when no decoder knows its kind
    or content (or payloads were not read)."""

    @property
    def details(self) -> Details | None:
        """The payload's decoded details (architecture, kernels, function table...), if any."""
        return None if self.decoded is None else self.decoded.details


@dataclass(frozen=True)
class LibraryBin:
    """Where the blob is and what it holds. `modules` is empty when it could not be decoded."""

    symbol: FfiSymbol
    file_offset: int | None
    nbytes: int | None
    layout: str
    """"tvm_ffi" for `__tvm_ffi__library_bin`, "legacy" for `__tvm_dev_mblob`."""
    modules: tuple[ModuleInfo, ...]
    findings: tuple[Finding, ...]
    prefix: str = ""
    """The system-lib prefix of `<prefix>__tvm_ffi__library_bin`, under which a constructor
    registers the blob for `tvm_ffi.system_lib(prefix)`; empty for the plain name."""


@dataclass(frozen=True)
class EmbeddedCubin:
    """Device code linked in by tvm-ffi's cubin embedding (`TVM_FFI_EMBED_CUBIN`,
    `tvm_ffi.utils.embed_cubin`): the bytes between `__tvm_ffi__cubin_<name>` and
    `__tvm_ffi__cubin_<name>_end`. Only a well-formed pair is one: a broken pair is an L213
    finding on the library instead."""

    name: str
    symbol: FfiSymbol
    end: FfiSymbol
    file_offset: int
    size: int
    sha256: str | None
    decoded: Decoded | None = None
    """What the payload decoders made of the bytes (by content: a cubin, a fatbin, PTX);
    None when no decoder knows them."""

    @property
    def details(self) -> Details | None:
        return None if self.decoded is None else self.decoded.details


@dataclass(frozen=True)
class Library:
    """One image (a whole file, or one archive member) seen through the FFI ABI."""

    member: str | None
    format: str
    kind: str
    machine: str
    bits: int
    endianness: str
    loadable: bool
    """Loaded by `dlopen` (only what `dlsym` sees counts), rather than linked."""
    symbol_tables: tuple[SymbolTable, ...]
    functions: tuple[Function, ...]
    symbols: tuple[FfiSymbol, ...]
    library_bin: LibraryBin | None
    """The blob under the plain name (or the legacy one): what `tvm_ffi.load_module` reads."""
    findings: tuple[Finding, ...]
    """What is wrong with the library's FFI symbols themselves (L2xx), as `inspect` lists them
    for it; what is wrong with a blob is on that blob (`library_bin.findings`)."""
    system_lib_bins: tuple[LibraryBin, ...] = ()
    """Blobs with a system-lib prefix, in prefix order: what `tvm_ffi.system_lib(prefix)`
    reads once they are registered, from an object, an archive or a shared library alike."""
    signature: str | None = None
    """Code-signature state (Mach-O): none, ad-hoc, linker-signed, certificate; None for ELF."""
    slice: Slice | None = None
    """Where the image lies in a universal file, and its architecture's name there."""
    cubins: tuple[EmbeddedCubin, ...] = ()
    """Embedded cubins (`__tvm_ffi__cubin_<name>` ... `_end`), by name; any symbol table
    counts, `.symtab` included, as the symbols are local to the code that launches them."""


@dataclass(frozen=True)
class InspectedFile:
    """Everything `inspect` reports about one path."""

    path: str
    format: str
    size: int
    libraries: tuple[Library, ...]
    unreadable: tuple[tuple[str, str], ...] = ()
    """(member, one-line error) of each archive member that could not be read."""
    device: Details | None = None
    """A device code file's decoding (a cubin or fatbin given as a file, `format` "CUDA cubin"
    or "CUDA fatbin"): it is no host library, so `libraries` is empty and no FFI expectation
    applies to it."""


def inspect_path(path: str | os.PathLike[str], *, digests: bool = True) -> InspectedFile:
    """Read a library, object or archive statically and describe its FFI contents.

    Never loads or runs the file. Raises InputError when it cannot be read or is not a
    supported object file; problems inside a readable file become findings. Without
    `digests`, payloads are not hashed (sha256 is None), for callers that compare bytes; they
    are still decoded (`ModuleInfo.details`), which reads only those a decoder knows.
    """
    display = str(path)
    handle, size = open_regular_file(path)
    with handle:
        return inspect_open(handle, size, display, digests=digests)


def inspect_open(
    handle: BinaryIO, size: int, display: str, base: int = 0, *, digests: bool = True
) -> InspectedFile:
    """`inspect_path` for an object that is `size` bytes at `base` of an open file.

    A wheel member stored without compression is such a byte range, and is read where it lies
    rather than copied out. With a `base`, the file is read through a window and offsets are
    reported from the start of the object, as in the file a user would extract; the tables are
    then read through the window rather than the descriptor's fast path.
    """
    stream = handle
    if base:
        stream = cast(BinaryIO, Window(handle, base, size, display))
    try:
        stream.seek(0)
        container = sniff(stream.read(HEAD_SIZE))
        if container in DEVICE_FILES:
            return _device_file(stream, size, display, container)
        with _no_cycle_collection():
            obj = read_object(stream, size, display)
            data = _BlobBytes(handle, size, base)
            payloads = _Payloads(stream, digests)
            libraries = tuple(_library(image, data, payloads) for image in obj.images)
    except OSError as exc:
        raise InputError(f"{display}: read error: {exc.strerror or exc}") from None
    return InspectedFile(display, obj.format, size, libraries, obj.unreadable)


def _device_file(stream: BinaryIO, size: int, display: str, container: str) -> InspectedFile:
    """A cubin or fatbin file, decoded whole like a payload of its kind. One its decoder cannot
    read, or over DECODE_LIMIT, is unreadable (InputError): there is nothing else in it to
    report, and a file that says it is device code and is not is as broken as a torn ELF file."""
    if size > DECODE_LIMIT:
        raise InputError(
            f"{display}: {container} of {format_size(size)} is over the"
            f" {format_size(DECODE_LIMIT)} decoding limit"
        )
    stream.seek(0)
    data = stream.read(size)
    if len(data) != size:
        raise OSError(errno.EIO, "the file shrank while it was being read")
    decoded = run_decoder("cubin" if container == CUBIN_FILE else "fatbin", memoryview(data))
    if decoded.details is None:
        error = decoded.error
        what = "" if error is None else f": {error.what} at offset {error.offset}"
        raise InputError(f"{display}: malformed {container}{what}")
    return InspectedFile(display, container, size, (), device=decoded.details)


@contextmanager
def _no_cycle_collection() -> Iterator[None]:
    """Reading builds a few objects per FFI symbol and no reference cycles: the cycle
    collector, which runs after every few hundred allocations and walks every object that
    survived the last run, finds nothing and costs a third of reading 100k functions.
    Refcounting still frees what is dropped; collection resumes afterwards."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


_READ_LIMIT = 16 << 20


class _BlobBytes:
    """Where blobs are decoded from, through the file's descriptor and never a mapping.

    A mapped page of a file that another process truncates raises SIGBUS, which Python cannot
    catch; a short read is an ordinary error. A blob of up to 16 MiB (most are) is read whole
    after its nbytes header; a larger one is decoded through `_FileRange`, which reads its
    headers and keys piece by piece and leaves payloads where they are (they are hashed
    with pread), so memory stays flat for a 1 GiB blob.
    """

    def __init__(self, handle: BinaryIO, size: int, base: int = 0) -> None:
        self._fd = handle.fileno()
        self._size = size
        self._base = base
        self._decoded: dict[tuple[bool, int, int, bool], _Decoded | tuple[str, int]] = {}

    def decoded(self, location: Location, legacy: bool, payloads: _Payloads) -> _Decoded:
        """The blob at `location`, decoded (and its payloads decoded and hashed) once
        however many symbols alias it: 3,000 system-lib names of one 16 MB blob cost one
        decode. Raises BlobError when the runtime would reject it."""
        key = (legacy, location.file_offset, location.available, payloads.digests)
        found = self._decoded.get(key)
        if found is None:
            window = self.window(location.file_offset, location.available)
            try:
                found = _decode(window, legacy, location.file_offset, payloads)
            except BlobError as exc:
                found = (exc.what, exc.offset)
            self._decoded[key] = found
        if isinstance(found, tuple):
            raise BlobError(*found)
        return found

    def window(self, offset: int, available: int) -> codec.Buffer | codec.ByteSource:
        """The bytes from `offset` (from `base`) that a blob there may occupy (at most
        `available`)."""
        at = self._base + offset
        head = os.pread(self._fd, 8, at)
        wanted = 8 + int.from_bytes(head, "little") if len(head) == 8 else available
        if wanted <= min(available, _READ_LIMIT):
            return read_exactly(self._fd, at, wanted)
        return _FileRange(self._fd, at, min(available, self._size - offset))


@dataclass(frozen=True)
class _Decoded:
    """What a blob holds, whichever symbol names it."""

    nbytes: int
    size: int
    """Bytes the runtime reads: 8 + nbytes."""
    modules: tuple[ModuleInfo, ...]
    findings: tuple[Finding, ...]
    has_lib: bool


def _decode(
    window: codec.Buffer | codec.ByteSource,
    legacy: bool,
    file_offset: int,
    payloads: _Payloads,
) -> _Decoded:
    if legacy:
        old = codec.decode_legacy(window)
        return _Decoded(old.nbytes, 8 + old.nbytes, _legacy_modules(old), old.findings, True)
    decoded = codec.decode(window)
    modules = _module_infos(decoded, file_offset, payloads)
    return _Decoded(
        decoded.nbytes,
        decoded.size,
        modules,
        (*decoded.findings, *_payload_findings(modules)),
        codec.LIB_KIND in decoded.kinds,
    )


@dataclass(frozen=True)
class _Payloads:
    """Where payloads left in the file are read from, and whether they are hashed."""

    handle: BinaryIO
    digests: bool


class _FileRange:
    """`length` bytes of a file at `offset`, as the codec's ByteSource: read on demand."""

    def __init__(self, fd: int, offset: int, length: int) -> None:
        self._fd = fd
        self._offset = offset
        self._length = max(length, 0)

    def __len__(self) -> int:
        return self._length

    def read(self, start: int, length: int) -> bytes:
        return read_exactly(self._fd, self._offset + start, length)

    def span(self, start: int, length: int) -> codec.Span:
        return codec.Span(start, length)


def _library(image: Image, data: _BlobBytes, payloads: _Payloads) -> Library:
    ffi_symbols = _merge_tables(image)
    functions = _functions(ffi_symbols, image.loadable)
    blobs = [
        s
        for s in ffi_symbols
        if s.naming.role in (Role.LIBRARY_BIN, Role.LEGACY_BIN) and s.symbol.defined
    ]
    # The legacy blob only stands in when there is no tvm-ffi one (False sorts first).
    plain = sorted(
        (s for s in blobs if not s.naming.prefix), key=lambda s: s.naming.role is Role.LEGACY_BIN
    )
    prefixed = sorted((s for s in blobs if s.naming.prefix), key=lambda s: s.naming.prefix)
    prefixes = {f.symbol.naming.prefix for f in functions}
    library_bin = _library_bin(image, plain[0], prefixes, data, payloads) if plain else None
    symbol_findings = [
        *_functions_not_exported(ffi_symbols, image.loadable),
        *_functions_not_code(ffi_symbols),
        *_getters_without_function(ffi_symbols),
    ]
    cubins = _embedded_cubins(image, ffi_symbols, payloads, symbol_findings)
    return Library(
        member=image.member,
        format=image.format,
        kind=image.kind,
        machine=image.machine,
        bits=image.bits,
        endianness=image.endianness,
        loadable=image.loadable,
        symbol_tables=image.tables,
        functions=functions,
        symbols=ffi_symbols,
        library_bin=library_bin,
        findings=tuple(symbol_findings),
        system_lib_bins=tuple(_library_bin(image, s, prefixes, data, payloads) for s in prefixed),
        signature=image.signature,
        slice=image.slice,
        cubins=cubins,
    )


def _merge_tables(image: Image) -> tuple[FfiSymbol, ...]:
    """One entry per name: the dynamic-table record wins, with a note that .symtab has it too.

    The record chosen is the first defined one of the dynamic table, else the first one the
    loader finds (a format without a dynamic table, Mach-O, marks those), else the first
    defined one, else the first; one pass over each name's records.
    """
    namings = classify(s.name for s in image.symbols)
    by_name: dict[str, list[Symbol]] = {}
    for symbol in image.symbols:
        if symbol.name in namings:
            by_name.setdefault(symbol.name, []).append(symbol)
    merged = []
    static, dynamic = SymbolTable.STATIC, SymbolTable.DYNAMIC
    for name, records in by_name.items():
        in_dynamic = exported = defined = None
        in_symtab = False
        for record in records:
            if record.table is static:
                in_symtab = True
            elif in_dynamic is None and record.table is dynamic and record.section is not None:
                in_dynamic = record
            if exported is None and record.exported:
                exported = record
            if defined is None and record.section is not None:
                defined = record
        chosen = in_dynamic or exported or defined or records[0]
        visible = (in_dynamic is not None or exported is not None) and chosen.exported
        merged.append(FfiSymbol(chosen, namings[name], visible, in_symtab))
    merged.sort(key=_by_address)
    return tuple(merged)


def _by_address(ffi: FfiSymbol) -> tuple[int, str]:
    return ffi.symbol.address, ffi.symbol.name


def _functions(symbols: Iterable[FfiSymbol], loadable: bool) -> tuple[Function, ...]:
    """Functions as the runtime sees them.

    In a loadable file only what `dlsym` finds counts; in an object or archive member, every
    defined global function (the linker decides later what gets exported).
    """
    pool = [
        s
        for s in symbols
        if s.symbol.section is not None and (s.dynamic if loadable else s.symbol.external)
    ]
    helpers = {
        (s.naming.role, s.naming.name)
        for s in pool
        if s.naming.role is Role.METADATA or s.naming.role is Role.DOC
    }
    functions = []
    if helpers:
        for s in pool:
            naming = s.naming
            if naming.role is Role.FUNCTION:
                metadata = (Role.METADATA, naming.name) in helpers
                functions.append(
                    Function(naming.name, s, metadata, (Role.DOC, naming.name) in helpers)
                )
    else:
        functions = [
            Function(s.naming.name, s, False, False) for s in pool if s.naming.role is Role.FUNCTION
        ]
    functions.sort(key=_by_prefix_and_name)
    return tuple(functions)


def _by_prefix_and_name(function: Function) -> tuple[str, str]:
    return function.symbol.naming.prefix, function.name


def _library_bin(
    image: Image,
    chosen: FfiSymbol,
    prefixes: set[str],
    data: _BlobBytes,
    payloads: _Payloads,
) -> LibraryBin:
    """Locate and decode one blob symbol (plain, legacy or system-lib prefixed); `prefixes`
    are the system-lib prefixes (empty for plain names) under which functions are defined."""
    prefix = chosen.naming.prefix
    findings = _placement_findings(image, chosen)
    location = image.locations.get((chosen.symbol.name, chosen.symbol.table))
    legacy = chosen.naming.role is Role.LEGACY_BIN
    layout = "legacy" if legacy else "tvm_ffi"
    if location is None:
        # A debug companion has no data by design: the blob is in the library it describes.
        if not chosen.symbol.nobits and not image.debug_only:
            findings.append(
                finding(
                    "L104",
                    f"{chosen.symbol.name} at {chosen.symbol.address:#x}"
                    " is not backed by file bytes",
                )
            )
        return LibraryBin(chosen, None, None, layout, (), tuple(findings), prefix)
    try:
        decoded = data.decoded(location, legacy, payloads)
    except BlobError as exc:
        findings.append(finding("B100", exc.what, exc.offset))
        return LibraryBin(chosen, location.file_offset, None, layout, (), tuple(findings), prefix)
    findings.extend(decoded.findings)
    if not legacy:
        findings.extend(_size_findings(chosen, decoded.size))
        if prefix in prefixes and not decoded.has_lib:
            findings.append(finding("L105", _NO_LIB_MODULE))
    return LibraryBin(
        chosen,
        location.file_offset,
        decoded.nbytes,
        layout,
        decoded.modules,
        tuple(findings),
        prefix,
    )


def _placement_findings(image: Image, chosen: FfiSymbol) -> list[Finding]:
    """Why the runtime would not find the blob even though it is in the file."""
    symbol = chosen.symbol
    found: list[Finding] = []
    if chosen.naming.role is Role.LEGACY_BIN:
        found.append(finding("L300", f"{symbol.name} is the pre-tvm-ffi blob; tvm-ffi ignores it"))
    if symbol.nobits:
        found.append(
            finding(
                "L103",
                f"{symbol.name} is in the NOBITS section {symbol.section}: it is all zeros at load"
                " time, so the runtime reads nbytes = 0 and fails to load the library",
            )
        )
    if image.loadable and not chosen.dynamic and not chosen.naming.prefix:
        # A system-lib blob is handed over by address from a constructor: dlsym never looks.
        found.append(
            finding(
                "L101",
                f"{symbol.name} is {symbol.hidden_because}: dlsym, and so the runtime,"
                " will not find it",
            )
        )
    return found


def _size_findings(chosen: FfiSymbol, size: int) -> list[Finding]:
    symbol = chosen.symbol
    if symbol.size and symbol.size < size:
        return [
            finding(
                "L102",
                f"symbol size {symbol.size} is smaller than the {size} bytes the blob"
                " occupies (8 + nbytes)",
                0,
            )
        ]
    return []


def _functions_not_exported(symbols: tuple[FfiSymbol, ...], loadable: bool) -> Iterator[Finding]:
    """L210: `Module.get_function` finds functions with dlsym, in a loaded library only.

    A system-lib function is registered by a constructor, not looked up by dlsym.
    """
    if not loadable:
        return
    for ffi in symbols:
        naming = ffi.naming
        function = naming.role is Role.FUNCTION and not naming.prefix and ffi.symbol.defined
        if function and not ffi.dynamic:
            yield finding(
                "L210",
                f"function {ffi.symbol.name} is not exported dynamically;"
                " the runtime will not find it",
            )


def _functions_not_code(symbols: tuple[FfiSymbol, ...]) -> Iterator[Finding]:
    """L211: the runtime calls what `__tvm_ffi_<name>` resolves to; it must be code."""
    for ffi in symbols:
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


def _getters_without_function(symbols: tuple[FfiSymbol, ...]) -> Iterator[Finding]:
    """L212: metadata and doc getters describe a function that must exist beside them."""
    names: set[str] = set()
    for ffi in symbols:
        if ffi.naming.role is Role.FUNCTION and ffi.symbol.defined:
            names.update((ffi.naming.name, ffi.naming.prefix + ffi.naming.name))
    for ffi in symbols:
        naming = ffi.naming
        getter = naming.role in (Role.METADATA, Role.DOC) and ffi.symbol.defined
        if getter and naming.name not in names:
            yield finding(
                "L212",
                f"{ffi.symbol.name} describes __tvm_ffi_{naming.name}, which is not defined",
            )


def _embedded_cubins(
    image: Image, symbols: tuple[FfiSymbol, ...], payloads: _Payloads, findings: list[Finding]
) -> tuple[EmbeddedCubin, ...]:
    """Each defined `__tvm_ffi__cubin_<name>` with its `_end`: sized from the pair, hashed and
    decoded by content; a pair the bytes cannot be taken from adds an L213 to `findings`, and
    so does one whose bytes overlap another's (real embeddings never do), so that what is read
    adds up to at most the image's bytes however many pairs name them."""
    ends = {s.naming.name: s for s in symbols if s.naming.role is Role.CUBIN_END}
    placed: list[tuple[int, int, FfiSymbol, FfiSymbol]] = []
    for start in symbols:
        if start.naming.role is not Role.CUBIN or not start.symbol.defined:
            continue
        found = _cubin_bytes(image, start, ends.get(start.naming.name))
        if isinstance(found, Finding):
            findings.append(found)
        else:
            end, offset, size = found
            placed.append((offset, size, start, end))
    placed.sort(key=lambda item: (item[0], item[1], item[2].symbol.name))
    cubins = []
    reach, last = 0, ""
    for offset, size, start, end in placed:
        if size and offset < reach:
            findings.append(
                finding("L213", f"{printable(start.symbol.name)} overlaps the bytes of {last}")
            )
            continue
        if size:
            reach, last = offset + size, printable(start.symbol.name)
        digest, decoded = _hash_and_decode_cubin(payloads, offset, size)
        findings.extend(_undecoded(start, decoded))
        cubins.append(EmbeddedCubin(start.naming.name, start, end, offset, size, digest, decoded))
    cubins.sort(key=lambda cubin: cubin.name)
    return tuple(cubins)


def _undecoded(start: FfiSymbol, decoded: Decoded | None) -> list[Finding]:
    """L214 for embedded bytes that start like a format its decoder then cannot read."""
    if decoded is None or decoded.error is None:
        return []
    return [
        finding(
            "L214",
            f"{printable(start.symbol.name)}: the {decoded.decoder} decoder cannot read"
            f" the embedded bytes: {decoded.error.what} at offset {decoded.error.offset}",
        )
    ]


def _cubin_bytes(
    image: Image, start: FfiSymbol, end: FfiSymbol | None
) -> tuple[FfiSymbol, int, int] | Finding:
    """(the end symbol, file offset, size) of an embedded cubin, or the L213 saying why the
    pair does not delimit bytes of the file: the runtime would hand the driver whatever lies
    between two addresses."""
    first = start.symbol
    name = printable(first.name)
    if end is None or not end.symbol.defined:
        return finding("L213", f"{name} has no defined {name}_end: its size is unknown")
    last = end.symbol
    if last.section != first.section:
        return finding(
            "L213",
            f"{name} is in {printable(str(first.section))} but its _end in"
            f" {printable(str(last.section))}: the pair delimits no bytes",
        )
    size = last.address - first.address
    if size < 0:
        return finding(
            "L213", f"{name}_end at {last.address:#x} is before {name} at {first.address:#x}"
        )
    location = image.locations.get((first.name, first.table))
    if first.nobits or (location is None and size):
        return finding("L213", f"{name} at {first.address:#x} is not backed by file bytes")
    room = None if location is None else location.available
    if location is not None and location.in_section is not None:
        room = min(location.available, location.in_section)
    if room is not None and size > room:
        return finding(
            "L213",
            f"{name} claims {size} bytes up to its _end; its section and the file hold {room}"
            f" from {first.address:#x}",
        )
    return end, 0 if location is None else location.file_offset, size


def _hash_and_decode_cubin(
    payloads: _Payloads, offset: int, size: int
) -> tuple[str | None, Decoded | None]:
    """Digest and decoding of an embedded cubin's bytes, by content, up to DECODE_LIMIT."""
    import hashlib

    handle = payloads.handle
    if size > DECODE_LIMIT:
        digest = file_sha256(handle, offset, size) if payloads.digests else None
        name = decoder_for_content(memoryview(_read_at(handle, offset, min(size, SNIFF_BYTES))))
        return digest, None if name is None else Decoded(None, None, None, name, too_large=True)
    data = _read_at(handle, offset, size)
    digest = hashlib.sha256(data).hexdigest() if payloads.digests else None
    name = decoder_for_content(memoryview(data))
    return digest, None if name is None else run_decoder(name, memoryview(data))


_NO_LIB_MODULE = (
    "the library exports functions but its blob has no `_lib` module: "
    "they are unreachable from the loaded module"
)


def _module_infos(
    decoded: codec.DecodedBlob, blob_file_offset: int, payloads: _Payloads
) -> tuple[ModuleInfo, ...]:
    """Modules with their sizes, what the payload decoders make of them and (unless
    `payloads.digests` is off) sha256 digests.

    Read from the decoded columns, not `decoded.blob`: a million tiny modules would otherwise
    cost a Module, a payload view and a layout each. A payload already in memory is hashed
    and decoded there; one left in the file (a blob over `_READ_LIMIT`) is read from it.
    """
    import hashlib  # only files with a blob pay for loading OpenSSL

    infos = []
    offsets, sizes, imports = decoded.payload_offsets, decoded.payload_sizes, decoded.imports
    for index, kind in enumerate(decoded.kinds):
        offset = offsets[index]
        digest = None
        decoding = None
        payload = decoded.payload(index)  # None: a module without a payload
        if payload is None:
            pass
        elif isinstance(payload, codec.Span):
            at = blob_file_offset + offset
            digest, decoding = _hash_and_decode_in_file(kind, payloads, at, sizes[index])
        else:
            digest = hashlib.sha256(payload).hexdigest() if payloads.digests else None
            # (never empty: the codec refuses an empty payload)
            if kind in DECODED_KINDS or payload[0] in SNIFFED_FIRST_BYTES:
                decoding = _decode_in_memory(kind, _view(payload))
        infos.append(
            ModuleInfo(
                index,
                kind,
                None if offset < 0 else sizes[index],
                digest,
                imports[index],
                None if offset < 0 else offset,
                decoding,
            )
        )
    return tuple(infos)


DECODE_LIMIT = 64 << 20
"""Largest payload the decoders read. A payload left in the file (in a blob over
`_READ_LIMIT`) is read into memory to be decoded; a larger one is reported by size and
digest only (B304), so that a 1 GiB payload never is."""


def _view(payload: codec.Buffer) -> memoryview:
    """The codec's in-memory payloads are already views (zero-copy); only bytes are wrapped."""
    return payload if isinstance(payload, memoryview) else memoryview(payload)


def _decode_in_memory(kind: str, payload: memoryview) -> Decoded | None:
    name, mismatch = choose_decoder(kind, payload)
    return None if name is None else run_decoder(name, payload, mismatch)


def _hash_and_decode_in_file(
    kind: str, payloads: _Payloads, at: int, size: int
) -> tuple[str | None, Decoded | None]:
    """The digest and decoding of a payload left in the file. Its first SNIFF_BYTES choose
    the decoder; a payload that one reads, up to DECODE_LIMIT, is read once for both, and any
    other is hashed in chunks (or, without digests, not read further)."""
    import hashlib

    handle = payloads.handle
    name, mismatch = choose_decoder(kind, memoryview(_read_at(handle, at, min(size, SNIFF_BYTES))))
    if name is None or size > DECODE_LIMIT:
        digest = file_sha256(handle, at, size) if payloads.digests else None
        too_large = None if name is None else Decoded(None, None, mismatch, name, too_large=True)
        return digest, too_large
    data = _read_at(handle, at, size)
    digest = hashlib.sha256(data).hexdigest() if payloads.digests else None
    return digest, run_decoder(name, memoryview(data), mismatch)


def _read_at(handle: BinaryIO, offset: int, size: int) -> bytes:
    handle.seek(offset)
    data = handle.read(size)
    if len(data) != size:
        raise InputError(f"{handle.name}: file ended inside a payload at offset {offset}")
    return data


def _payload_findings(modules: Iterable[ModuleInfo]) -> Iterator[Finding]:
    """B302-B304: a payload whose content is not its kind's, one its decoder cannot read, one
    too large to decode; each at the payload's offset in the blob."""
    for module in modules:
        decoding = module.decoded
        if decoding is None or module.payload_offset is None:
            continue
        where = f"module {module.index} ({printable(module.kind)})"
        if decoding.expected is not None:
            yield finding(
                "B302",
                f"{where}: the payload is {decoding.decoder}, not the {decoding.expected}"
                " its kind's loader reads",
                module.payload_offset,
            )
        if decoding.error is not None:
            at = module.payload_offset + decoding.error.offset
            yield finding(
                "B303",
                f"{where}: the {decoding.decoder} decoder cannot read the payload:"
                f" {decoding.error.what} at blob offset {at}",
                at,
            )
        if decoding.too_large:
            yield finding(
                "B304",
                f"{where}: the {format_size(module.size or 0)} payload is over the"
                f" {format_size(DECODE_LIMIT)} decoding limit; only its size and sha256 are"
                " shown",
                module.payload_offset,
            )


def _legacy_modules(legacy: codec.LegacyBlob) -> tuple[ModuleInfo, ...]:
    imports = legacy.imports or ()
    return tuple(
        ModuleInfo(i, kind, None, None, imports[i] if i < len(imports) else (), None)
        for i, kind in enumerate(legacy.kinds)
    )


def file_sha256(handle: BinaryIO, offset: int, size: int) -> str:
    """SHA-256 of a byte range of a file, read in 1 MiB chunks so memory stays flat."""
    import hashlib  # only files with a blob pay for loading OpenSSL

    digest = hashlib.sha256()
    buffer = bytearray(min(CHUNK, size) or 1)
    view = memoryview(buffer)
    handle.seek(offset)
    left = size
    while left:
        # typing.BinaryIO declares no readinto; every file and Window passed here has one.
        got = handle.readinto(view[: min(left, len(buffer))])  # type: ignore[attr-defined]
        if not got:
            raise InputError(f"{handle.name}: file ended inside a payload at offset {offset}")
        digest.update(view[:got])
        left -= got
    return digest.hexdigest()


@dataclass(frozen=True)
class BlobReport:
    """What `blob decode` reports about a raw blob file."""

    path: str
    size: int
    nbytes: int
    modules: tuple[ModuleInfo, ...]
    findings: tuple[Finding, ...]


def inspect_blob_file(path: str | os.PathLike[str]) -> BlobReport:
    """Decode a raw blob file (as TVM's `PackImportsToBytes` writes it), hash its payloads and
    decode those a payload decoder knows.

    Raises BlobError when the runtime would reject the blob, InputError when it cannot be read.
    """
    display = str(path)
    handle, size = open_regular_file(path)
    with handle:
        container = _object_container(os.pread(handle.fileno(), HEAD_SIZE, 0))
        if container is not None:
            raise InputError(
                f"{display}: this is {container}, not a raw blob; use 'ffitool inspect {display}'"
            )
        try:
            decoded = codec.decode(_BlobBytes(handle, size).window(0, size))
        except BlobError as exc:
            raise BlobError(f"{display}: {exc.what}", exc.offset) from None
        modules = _module_infos(decoded, 0, _Payloads(handle, True))
        found = (*decoded.findings, *_payload_findings(modules))
        report = BlobReport(display, size, decoded.nbytes, modules, found)
    return report


def _object_container(head: bytes) -> str | None:
    """What an object file's first bytes say it is, or None. A raw blob starts with its nbytes:
    read as one, these magics are above 2**48, so no blob of a real size is mistaken."""
    container = sniff(head)
    if container == ELF_FILE:
        return "an ELF shared library/object file"
    if container in DEVICE_FILES:
        return f"a {container} file"
    if container in (ARCHIVE, THIN_ARCHIVE):
        return "a static (ar) archive"
    return None


__all__ = [
    "BlobReport",
    "EmbeddedCubin",
    "FfiSymbol",
    "Function",
    "InspectedFile",
    "Library",
    "LibraryBin",
    "ModuleInfo",
    "file_sha256",
    "inspect_blob_file",
    "inspect_open",
    "inspect_path",
]
