"""Codec for the `__tvm_ffi__library_bin` blob: bytes <-> `Blob`.

Layout (all integers u64 little-endian): `<nbytes> <indptr: vec> <child_indices: vec>` then, per
module, `<key: str>` and, unless the key is `_lib`, `<payload: bytes>`. Decoding is strict and
bounded: every length is compared with the bytes that remain before anything is sliced or
allocated, so a hostile length costs nothing. What the runtime (`ProcessLibraryBin` in tvm-ffi)
would reject raises `BlobError` with the byte offset; what the runtime accepts but TVM's writer
never produces is returned as findings.
"""

from __future__ import annotations

import bisect
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from ffitool.errors import BlobError
from ffitool.findings import Finding, listed, printable
from ffitool.rules import finding

LIB_KIND = "_lib"
"""Key of the module that stands for the shared library itself; it carries no payload."""

_U64 = struct.Struct("<Q")
_WORD = _U64.size

Buffer = bytes | bytearray | memoryview


UNKEEPABLE = frozenset({"B100", "B209"})
"""Findings after which the decoded modules do not describe the blob (rejected, or its import
tree not expanded): it cannot be kept or extracted module by module."""


@dataclass(frozen=True)
class Span:
    """A payload left where it is: `length` bytes at `offset` of a `ByteSource`."""

    offset: int
    length: int

    def __len__(self) -> int:
        return self.length


class ByteSource(Protocol):
    """Bytes the codec reads a piece at a time instead of all at once (a file, with pread).

    `read` returns exactly the bytes asked for, which the codec has checked lie inside
    `len(source)`; a source whose bytes vanished meanwhile raises an OSError. Payloads are
    not read: `span` only says where they are.
    """

    def __len__(self) -> int: ...
    def read(self, start: int, length: int) -> Buffer: ...
    def span(self, start: int, length: int) -> Buffer | Span: ...


class _InMemory:
    """A ByteSource over bytes already in memory: reads and payloads are zero-copy views."""

    def __init__(self, view: memoryview) -> None:
        self._view = view

    def __len__(self) -> int:
        return len(self._view)

    def read(self, start: int, length: int) -> memoryview:
        return self._view[start : start + length]

    span = read


@dataclass(frozen=True)
class Module:
    """One module of a blob: its kind, its payload (None for `_lib`) and its imports in order."""

    kind: str
    payload: Buffer | Span | None = None
    imports: tuple[int, ...] = ()

    @property
    def is_lib(self) -> bool:
        """True for the `_lib` placeholder that the runtime replaces by the library module."""
        return self.kind == LIB_KIND


@dataclass(frozen=True)
class Blob:
    """The decoded import tree: module 0 is the root that `load_module` returns."""

    modules: tuple[Module, ...]


@dataclass(frozen=True)
class ModuleLayout:
    """Where one module's fields sit, as byte offsets from the start of the blob."""

    key_offset: int
    payload_offset: int | None
    payload_size: int


@dataclass(frozen=True)
class DecodedBlob:
    """A decoded blob with the layout facts that findings and digests need."""

    blob: Blob
    nbytes: int
    layouts: tuple[ModuleLayout, ...]
    findings: tuple[Finding, ...]

    @property
    def size(self) -> int:
        """Bytes the runtime reads: the 8-byte header plus `nbytes`."""
        return _WORD + self.nbytes


class _Cursor:
    """Reads u64 fields from a window of a buffer, checking every length before using it."""

    def __init__(self, data: ByteSource, start: int, end: int) -> None:
        self.data = data
        self.pos = start
        self.end = end

    @property
    def remaining(self) -> int:
        return self.end - self.pos

    def u64(self, what: str) -> int:
        if self.remaining < _WORD:
            raise BlobError(f"truncated {what}: need 8 bytes, {self.remaining} left", self.pos)
        (value,) = _U64.unpack(self.data.read(self.pos, _WORD))
        self.pos += _WORD
        return value

    def u64_vector(self, what: str) -> tuple[int, int, tuple[int, ...]]:
        """Return (offset of the count, offset of the first item, items)."""
        count_offset = self.pos
        count = self.u64(f"{what} count")
        if count > self.remaining // _WORD:
            raise BlobError(
                f"{what} count {count} needs {count * _WORD} bytes, {self.remaining} left",
                count_offset,
            )
        items = struct.unpack(f"<{count}Q", self.data.read(self.pos, count * _WORD))
        first = self.pos
        self.pos += count * _WORD
        return count_offset, first, items

    def sized(self, what: str, payload: bool = False) -> tuple[int, Buffer | Span]:
        """Read `<size: u64><size bytes>` (a payload's bytes only located); the runtime rejects
        size 0, and so do we."""
        size_offset = self.pos
        size = self.u64(f"{what} size")
        if size > self.remaining:
            raise BlobError(
                f"{what} size {size} exceeds the {self.remaining} bytes left", size_offset
            )
        if size == 0:
            raise BlobError(f"{what} is empty, which the runtime's reader rejects", size_offset)
        found = (self.data.span if payload else self.data.read)(self.pos, size)
        self.pos += size
        return size_offset, found


def decode(data: Buffer | ByteSource) -> DecodedBlob:
    """Decode a blob from the start of `data`; payloads are zero-copy views into it (or, from a
    ByteSource, spans that say where they are).

    `data` ends where the bytes the runtime could read end (for a blob in a library: the
    file-backed rest of its segment). Raises `BlobError` for anything the runtime rejects.
    """
    nbytes, cursor = _body(data)
    indptr_at, indptr_first, indptr = cursor.u64_vector("indptr")
    if len(indptr) < 2:
        raise BlobError(
            f"indptr has {len(indptr)} entries; the runtime needs at least 2 (one module)",
            indptr_at,
        )
    child_at, child_first, children = cursor.u64_vector("child_indices")
    num_modules = len(indptr) - 1
    if num_modules > cursor.remaining // _WORD:
        raise BlobError(
            f"{num_modules} modules need at least {num_modules * _WORD} bytes, "
            f"{cursor.remaining} left",
            indptr_at,
        )
    imports, overflow = _import_lists(indptr, indptr_first, children, child_first, num_modules)
    findings: list[Finding] = []
    modules: list[Module] = []
    layouts: list[ModuleLayout] = []
    for index in range(num_modules):
        key_offset, key = cursor.sized(f"module {index} key")
        kind = _kind_text(key, index, key_offset, findings)
        if kind == LIB_KIND:
            modules.append(Module(kind, None, imports[index]))
            layouts.append(ModuleLayout(key_offset, None, 0))
            continue
        size_offset, payload = cursor.sized(
            f"module {index} ({printable(kind)}) payload", payload=True
        )
        modules.append(Module(kind, payload, imports[index]))
        layouts.append(ModuleLayout(key_offset, size_offset + _WORD, len(payload)))
    if cursor.remaining:
        findings.append(
            finding(
                "B201",
                f"{cursor.remaining} trailing bytes after the last module (inside nbytes)",
                cursor.pos,
            )
        )
    findings.extend(_layout_findings(indptr, indptr_at, len(children), child_at))
    blob = Blob(tuple(modules))
    if overflow is not None:
        findings.append(overflow)  # the tree is empty: its shape says nothing
    else:
        findings.extend(tree_findings(blob, first_key_offset=layouts[0].key_offset))
    return DecodedBlob(blob, nbytes, tuple(layouts), tuple(findings))


def _body(data: Buffer | ByteSource) -> tuple[int, _Cursor]:
    """Read the `nbytes` header and return a cursor confined to the bytes it announces."""
    if isinstance(data, (bytes, bytearray, memoryview)):
        data = _InMemory(memoryview(data).cast("B"))
    header = _Cursor(data, 0, len(data))
    nbytes = header.u64("nbytes header")
    if nbytes > header.remaining:
        raise BlobError(f"nbytes {nbytes} exceeds the {header.remaining} bytes available", 0)
    return nbytes, _Cursor(data, _WORD, _WORD + nbytes)


EDGE_SLACK = 1 << 16
"""Import edges a blob may expand to beyond twice its child indices (see `_import_lists`)."""


def _import_lists(
    indptr: Sequence[int],
    indptr_first: int,
    children: Sequence[int],
    child_first: int,
    num_modules: int,
) -> tuple[list[tuple[int, ...]], Finding | None]:
    """Split CSR child indices per module, rejecting every index the runtime would misread.

    Each module's row is a slice of the child array. A canonical CSR hands out each child
    index once; rows only overlap when indptr goes back, and `[0, C, 0, C, ...]` gives every
    other module all C children: quadratic in the blob's size (the runtime creates every one
    of those imports). Past `2 * len(children) + EDGE_SLACK` edges the tree is not expanded:
    every module is returned without imports and a B209 finding says where the rows passed
    the bound. Checking runs in time linear in the two arrays, whatever the rows expand to.
    """
    bad = [j for j, child in enumerate(children) if child >= num_modules]
    limit = 2 * len(children) + EDGE_SLACK
    edges = 0
    overflow: Finding | None = None
    for i in range(num_modules):
        lo, hi = indptr[i], indptr[i + 1]
        if lo >= hi:
            continue
        if hi > len(children):
            raise BlobError(
                f"indptr[{i + 1}] = {hi} points past the {len(children)} child indices",
                indptr_first + (i + 1) * _WORD,
            )
        first_bad = bisect.bisect_left(bad, lo)
        if first_bad < len(bad) and bad[first_bad] < hi:
            j = bad[first_bad]
            raise BlobError(
                f"module {i} imports module {children[j]}, but there are {num_modules} modules",
                child_first + j * _WORD,
            )
        edges += hi - lo
        if edges > limit and overflow is None:
            overflow = finding(
                "B209",
                f"import rows overlap: by module {i} they expand to more than {limit} edges"
                f" from {len(children)} child indices; the import tree is not expanded",
                indptr_first + (i + 1) * _WORD,
            )
    if overflow is not None:
        return [()] * num_modules, overflow
    return [tuple(children[indptr[i] : indptr[i + 1]]) for i in range(num_modules)], None


def _kind_text(key: Buffer | Span, index: int, offset: int, findings: list[Finding]) -> str:
    """Decode a key as UTF-8; undecodable bytes survive as surrogates so encoding is exact."""
    raw = bytes(key)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        findings.append(finding("B208", f"module {index} kind is not valid UTF-8", offset))
        return raw.decode("utf-8", "surrogateescape")


def _layout_findings(
    indptr: Sequence[int], indptr_at: int, num_children: int, child_at: int
) -> list[Finding]:
    """CSR shapes the runtime tolerates but TVM never writes (and `encode` cannot reproduce)."""
    found: list[Finding] = []
    if indptr[0] != 0:
        found.append(finding("B207", f"indptr starts at {indptr[0]}, not 0", indptr_at))
    for i in range(len(indptr) - 1):
        if indptr[i + 1] < indptr[i]:
            found.append(
                finding(
                    "B207",
                    f"indptr decreases at entry {i + 1} ({indptr[i]} -> {indptr[i + 1]})",
                    indptr_at + _WORD * (i + 2),
                )
            )
            break
    if indptr[-1] < num_children:
        found.append(
            finding(
                "B207",
                f"{num_children - indptr[-1]} child indices are not referenced by indptr",
                child_at,
            )
        )
    return found


def tree_findings(blob: Blob, *, first_key_offset: int | None = None) -> list[Finding]:
    """Import-tree shapes that load but that TVM's writer never produces.

    TVM emits modules root first, every child after its parent, children sorted and unique,
    exactly one `_lib`, all modules reachable. Offsets point at the first module's key.
    """
    found: list[Finding] = []
    modules = blob.modules

    def add(code: str, message: str) -> None:
        found.append(finding(code, message, first_key_offset))

    for index, module in enumerate(modules):
        if list(module.imports) != sorted(set(module.imports)):
            add("B204", f"module {index} imports {listed(module.imports)}: unsorted or duplicated")
    cycle = find_cycle(blob)
    if cycle:
        add("B202", "import cycle " + " -> ".join(str(i) for i in cycle))
    else:
        for index, module in enumerate(modules):
            backward = [c for c in module.imports if c <= index]
            if backward:
                add("B203", f"module {index} imports earlier module(s) {listed(backward)}")
    libs = [i for i, m in enumerate(modules) if m.is_lib]
    if len(libs) > 1:
        add("B205", f"{len(libs)} `_lib` modules (at {listed(libs)}); TVM writes one")
    unreachable = sorted(set(range(len(modules))) - reachable(blob))
    if unreachable:
        add("B206", f"module(s) {listed(unreachable)} are not reachable from the root")
    return found


def reachable(blob: Blob, root: int = 0) -> set[int]:
    """Indices reachable from `root` through imports (the root included)."""
    seen = {root}
    stack = [root]
    while stack:
        for child in blob.modules[stack.pop()].imports:
            if child not in seen:
                seen.add(child)
                stack.append(child)
    return seen


def find_cycle(blob: Blob) -> list[int] | None:
    """One import cycle as a closed path of indices, or None; iterative, so depth is unbounded."""
    state = [0] * len(blob.modules)  # 0 new, 1 on the current path, 2 done
    for start in range(len(blob.modules)):
        if state[start]:
            continue
        path = [start]
        cursors = [0]
        state[start] = 1
        while path:
            node = path[-1]
            imports = blob.modules[node].imports
            if cursors[-1] == len(imports):
                state[node] = 2
                path.pop()
                cursors.pop()
                continue
            child = imports[cursors[-1]]
            cursors[-1] += 1
            if state[child] == 1:
                return [*path[path.index(child) :], child]
            if state[child] == 0:
                state[child] = 1
                path.append(child)
                cursors.append(0)
    return None


@dataclass(frozen=True)
class ModuleShape:
    """A module without its bytes: what a writer needs to lay out a blob before streaming it."""

    kind: str
    payload_size: int | None
    imports: tuple[int, ...] = ()


def shape_of(blob: Blob) -> list[ModuleShape]:
    """The shapes of a blob's modules."""
    return [
        ModuleShape(m.kind, None if m.payload is None else len(m.payload), m.imports)
        for m in blob.modules
    ]


def frame(shapes: Sequence[ModuleShape]) -> list[bytes | int]:
    """The encoded blob as header pieces, with each payload's place marked by its module index.

    Every rule the runtime enforces is checked here, so nothing invalid is ever written.
    """
    if not shapes:
        raise ValueError("a blob needs at least one module (the root)")
    indptr = [0]
    children: list[int] = []
    for index, shape in enumerate(shapes):
        for child in shape.imports:
            if not 0 <= child < len(shapes):
                raise ValueError(f"module {index} imports {child}, outside 0..{len(shapes) - 1}")
        children.extend(shape.imports)
        indptr.append(len(children))
    pieces: list[bytes | int] = [b"", _pack_vector(indptr) + _pack_vector(children)]
    for index, shape in enumerate(shapes):
        key = shape.kind.encode("utf-8", "surrogateescape")
        if not key:
            raise ValueError("a module kind cannot be empty")
        pieces.append(_U64.pack(len(key)) + key)
        if shape.kind == LIB_KIND:
            if shape.payload_size is not None:
                raise ValueError("the `_lib` module carries no payload")
            continue
        if not shape.payload_size:
            raise ValueError(
                f"module '{printable(shape.kind)}' has an empty or missing payload,"
                " which the runtime rejects"
            )
        pieces.append(_U64.pack(shape.payload_size))
        pieces.append(index)
    payload_bytes = sum(s.payload_size or 0 for s in shapes)
    header_bytes = sum(len(p) for p in pieces if isinstance(p, bytes))
    pieces[0] = _U64.pack(header_bytes + payload_bytes)
    return pieces


def shapes_size(shapes: Sequence[ModuleShape]) -> int:
    """Total bytes a blob of these module shapes occupies, computed without building it."""
    return sum(
        len(piece) if isinstance(piece, bytes) else shapes[piece].payload_size or 0
        for piece in frame(shapes)
    )


def encoded_size(blob: Blob) -> int:
    """Total bytes `encode(blob)` produces, computed without building them."""
    return shapes_size(shape_of(blob))


def encode(blob: Blob) -> bytes:
    """Encode a blob the way TVM's `PackImportsToBytes` lays it out, byte for byte."""
    return b"".join(encode_chunks(blob))


def encode_chunks(blob: Blob) -> list[Buffer]:
    """The encoded blob as a list of pieces, payloads uncopied."""
    return [
        piece if isinstance(piece, bytes) else _payload(blob.modules[piece])
        for piece in frame(shape_of(blob))
    ]


def _payload(module: Module) -> Buffer:
    if module.payload is None or isinstance(module.payload, Span):
        raise ValueError(f"module '{printable(module.kind)}' needs a payload in memory")
    return module.payload


def _pack_vector(items: Sequence[int]) -> bytes:
    return _U64.pack(len(items)) + struct.pack(f"<{len(items)}Q", *items)


LEGACY_TREE_KEY = "_import_tree"


@dataclass(frozen=True)
class LegacyBlob:
    """What can be read of a pre-tvm-ffi `__tvm_dev_mblob`.

    Legacy modules are stored without a length prefix, so reading stops at the first module
    whose kind is not `_lib` or `_import_tree`: `kinds` lists the keys read up to there.
    """

    nbytes: int
    kinds: tuple[str, ...]
    imports: tuple[tuple[int, ...], ...] | None
    findings: tuple[Finding, ...]


def decode_legacy(data: Buffer | ByteSource) -> LegacyBlob:
    """Read a legacy blob as far as the format allows, reporting where and why it stopped."""
    nbytes, cursor = _body(data)
    num_entries = cursor.u64("entry count")
    kinds: list[str] = []
    imports: tuple[tuple[int, ...], ...] | None = None
    findings: list[Finding] = []
    for _ in range(num_entries):
        key_offset, key = cursor.sized(f"entry {len(kinds)} key")
        kind = _kind_text(key, len(kinds), key_offset, findings)
        if kind == LEGACY_TREE_KEY:
            _, indptr_first, indptr = cursor.u64_vector("indptr")
            _, child_first, children = cursor.u64_vector("child_indices")
            count = max(len(indptr) - 1, 0)
            rows, overflow = _import_lists(indptr, indptr_first, children, child_first, count)
            imports = tuple(rows)
            if overflow is not None:
                findings.append(overflow)
            continue
        kinds.append(kind)
        if kind != LIB_KIND:
            findings.append(
                finding(
                    "B301",
                    f"legacy module '{printable(kind)}' has no length prefix; stopped reading here",
                    key_offset,
                )
            )
            break
    return LegacyBlob(nbytes, tuple(kinds), imports, tuple(findings))
