"""Codec for the `__tvm_ffi__library_bin` blob: bytes <-> `Blob`.

Layout (all integers u64 little-endian): `<nbytes> <indptr: vec> <child_indices: vec>` then, per
module, `<key: str>` and, unless the key is `_lib`, `<payload: bytes>`. Decoding is strict and
bounded: every length is compared with the bytes that remain before anything is sliced or
allocated, so a hostile length costs nothing, and time and memory are linear in the blob's
size (fields read once, kinds decoded once per distinct key, import rows bounded by B209,
finding messages listing at most `findings.LIST_ITEMS` modules). What the runtime
(`ProcessLibraryBin` in tvm-ffi) would reject raises `BlobError` with the byte offset; what
the runtime accepts but TVM's writer never produces is returned as findings.
"""

from __future__ import annotations

import bisect
import struct
import sys
from array import array
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property, partial
from itertools import pairwise
from typing import Protocol

from ffitool.errors import BlobError
from ffitool.findings import LIST_ITEMS, Finding, listed, printable
from ffitool.rules import finding

LIB_KIND = "_lib"
"""Key of the module that stands for the shared library itself; it carries no payload."""
_LIB_KEY = LIB_KIND.encode()

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
        self.view = view

    def __len__(self) -> int:
        return len(self.view)

    def read(self, start: int, length: int) -> memoryview:
        return self.view[start : start + length]

    span = read


@dataclass(frozen=True)
class Module:
    """One module of a blob: its kind, its payload (None for `_lib`) and its imports in order."""

    kind: str
    payload: Buffer | Span | None = None
    imports: tuple[int, ...] = ()


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
    """A decoded blob with the layout facts that findings and digests need.

    Modules are kept as columns (kinds interned, offsets and sizes in arrays of machine words)
    and `blob` and `layouts` are built from them on first use: a blob of a million one-byte
    modules then costs tens of bytes per module, not the few hundred its Module objects,
    payload views and layouts take (`inspect` and `blob decode` never build them).
    """

    nbytes: int
    kinds: tuple[str, ...]
    """Each module's kind; equal kinds are one string."""
    imports: tuple[tuple[int, ...], ...]
    findings: tuple[Finding, ...]
    source: ByteSource
    key_offsets: array[int]
    payload_offsets: array[int]
    """-1 for `_lib`, which has no payload."""
    payload_sizes: array[int]

    @property
    def size(self) -> int:
        """Bytes the runtime reads: the 8-byte header plus `nbytes`."""
        return _WORD + self.nbytes

    def payload(self, index: int) -> Buffer | Span | None:
        """Module `index`'s payload: a zero-copy view, or a Span for a ByteSource."""
        offset = self.payload_offsets[index]
        return None if offset < 0 else self.source.span(offset, self.payload_sizes[index])

    def layout(self, index: int) -> ModuleLayout:
        """Where module `index`'s fields sit."""
        offset = self.payload_offsets[index]
        return ModuleLayout(
            self.key_offsets[index], None if offset < 0 else offset, self.payload_sizes[index]
        )

    @cached_property
    def layouts(self) -> tuple[ModuleLayout, ...]:
        return tuple(map(self.layout, range(len(self.kinds))))

    @cached_property
    def blob(self) -> Blob:
        return Blob(
            tuple(
                Module(kind, self.payload(index), self.imports[index])
                for index, kind in enumerate(self.kinds)
            )
        )


_Label = str | Callable[[], str]
"""What a field is, for an error message; a callable when building the text per module would
cost more than reading the module."""


def _label(what: _Label) -> str:
    return what if isinstance(what, str) else what()


_CURSOR_WINDOW = 1 << 16
"""Bytes a cursor reads from a ByteSource at once, to serve the small fields that follow.
Smaller than `files.CHUNK`: the window is refilled past every module's payload, which is
skipped, so a megabyte there would be mostly payload bytes no field needs."""
_BIG_ENDIAN = sys.byteorder == "big"


class _Cursor:
    """Reads fields from a window of a ByteSource, checking every length before using it.

    Small fields come out of a buffer that holds the source's bytes from where it was last
    filled (up to `_CURSOR_WINDOW`; in memory, the whole view, never refilled): a file-backed
    blob of a million tiny modules takes a few hundred reads, not one read per field.
    """

    def __init__(self, data: ByteSource, start: int, end: int) -> None:
        self.data = data
        self.pos = start
        self.end = end
        self._buffer: Buffer = data.view if isinstance(data, _InMemory) else b""
        self._buffer_at = 0 if isinstance(data, _InMemory) else start

    @property
    def remaining(self) -> int:
        return self.end - self.pos

    def _buffered(self, length: int) -> int:
        """Where the `length` bytes at `pos` (checked to end before `end`) sit in the buffer."""
        at = self.pos - self._buffer_at
        if at + length <= len(self._buffer):
            return at
        self._buffer = self.data.read(self.pos, max(length, min(_CURSOR_WINDOW, self.remaining)))
        self._buffer_at = self.pos
        return 0

    def u64(self, what: _Label) -> int:
        if self.end - self.pos < _WORD:
            raise BlobError(
                f"truncated {_label(what)}: need 8 bytes, {self.remaining} left", self.pos
            )
        at = self._buffered(_WORD)  # first: it may replace the buffer
        (value,) = _U64.unpack_from(self._buffer, at)
        self.pos += _WORD
        return value

    def u64_vector(self, what: str) -> tuple[int, int, array[int]]:
        """Return (offset of the count, offset of the first item, items)."""
        count_offset = self.pos
        count = self.u64(f"{what} count")
        if count > self.remaining // _WORD:
            raise BlobError(
                f"{what} count {count} needs {count * _WORD} bytes, {self.remaining} left",
                count_offset,
            )
        at = self._buffered(count * _WORD)
        items = array("Q")
        items.frombytes(self._buffer[at : at + count * _WORD])
        if _BIG_ENDIAN:
            items.byteswap()
        first = self.pos
        self.pos += count * _WORD
        return count_offset, first, items

    def size(self, what: _Label) -> tuple[int, int]:
        """Read the size of a `<size: u64><size bytes>` field: (its offset, the size). The
        runtime rejects size 0, and so do we."""
        size_offset = self.pos
        if self.end - size_offset < _WORD:
            raise BlobError(
                f"truncated {_label(what)} size: need 8 bytes, {self.remaining} left", size_offset
            )
        at = self._buffered(_WORD)  # first: it may replace the buffer
        (size,) = _U64.unpack_from(self._buffer, at)
        self.pos += _WORD
        if size > self.end - self.pos:
            raise BlobError(
                f"{_label(what)} size {size} exceeds the {self.remaining} bytes left", size_offset
            )
        if size == 0:
            raise BlobError(
                f"{_label(what)} is empty, which the runtime's reader rejects", size_offset
            )
        return size_offset, size

    def module(self) -> tuple[bytes, int, int] | None:
        """One module's key, payload offset and payload size (-1 and 0 for `_lib`), when all
        its fields are in the buffer and valid; None, with nothing read, otherwise (see
        `_module_fields`). The common case in one call, without building an error label:
        per module, this is most of what decoding costs."""
        buffer, base = self._buffer, self._buffer_at
        usable = min(len(buffer), self.end - base)
        start = self.pos - base + _WORD
        if start > usable:
            return None
        (key_size,) = _U64.unpack_from(buffer, start - _WORD)
        stop = start + key_size
        if not key_size or stop > usable:
            return None
        key = bytes(buffer[start:stop])
        if key == _LIB_KEY:
            self.pos = base + stop
            return key, -1, 0
        if stop + _WORD > usable:
            return None
        (size,) = _U64.unpack_from(buffer, stop)
        payload = stop + _WORD
        if not size or size > self.end - base - payload:
            return None
        self.pos = base + payload + size
        return key, base + payload, size

    def key(self, what: _Label) -> tuple[int, bytes]:
        """Read a `<size><bytes>` key: (its offset, its bytes)."""
        offset, size = self.size(what)
        at = self._buffered(size)
        self.pos += size
        return offset, bytes(self._buffer[at : at + size])


class _Kinds:
    """Module keys as text, decoded once per distinct key: equal kinds share one string."""

    def __init__(self, findings: list[Finding]) -> None:
        self._seen: dict[bytes, tuple[str, bool]] = {}
        self._findings = findings

    def text(self, key: bytes, index: int, offset: int) -> str:
        """Decode a key as UTF-8; undecodable bytes survive as surrogates so encoding is exact,
        and each module with such a key gets a B208 finding."""
        known = self._seen.get(key)
        if known is None:
            try:
                known = (key.decode("utf-8"), True)
            except UnicodeDecodeError:
                known = (key.decode("utf-8", "surrogateescape"), False)
            self._seen[key] = known
        if not known[1]:
            self._findings.append(
                finding("B208", f"module {index} kind is not valid UTF-8", offset)
            )
        return known[0]


def decode(data: Buffer | ByteSource) -> DecodedBlob:
    """Decode a blob from the start of `data`; payloads are zero-copy views into it (or, from a
    ByteSource, spans that say where they are).

    `data` ends where the bytes the runtime could read end (for a blob in a library: the
    file-backed rest of its segment). Raises `BlobError` for anything the runtime rejects.
    Time and memory are linear in the blob's size: every field is read once, every kind
    decoded once, and the import rows are bounded by B209.
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
    kinds, key_offsets, payload_offsets, payload_sizes = _modules(cursor, num_modules, findings)
    if cursor.remaining:
        findings.append(
            finding(
                "B201",
                f"{cursor.remaining} trailing bytes after the last module (inside nbytes)",
                cursor.pos,
            )
        )
    findings.extend(_layout_findings(indptr, indptr_at, len(children), child_at))
    if overflow is not None:
        findings.append(overflow)  # the tree is empty: its shape says nothing
    else:
        libs = [i for i, kind in enumerate(kinds) if kind == LIB_KIND]
        findings.extend(_tree_findings(imports, libs, key_offsets[0]))
    return DecodedBlob(
        nbytes,
        tuple(kinds),
        tuple(imports),
        tuple(findings),
        cursor.data,
        key_offsets,
        payload_offsets,
        payload_sizes,
    )


def _modules(
    cursor: _Cursor, count: int, findings: list[Finding]
) -> tuple[list[str], array[int], array[int], array[int]]:
    """Read `count` modules' keys and locate their payloads: kinds, key offsets, payload
    offsets (-1 for `_lib`) and payload sizes."""
    kinds: list[str] = []
    key_offsets = array("q")
    payload_offsets = array("q")
    payload_sizes = array("q")
    texts = _Kinds(findings)
    read = cursor.module
    for index in range(count):
        key_offset = cursor.pos
        key, payload_offset, size = read() or _module_fields(cursor, index)
        kinds.append(texts.text(key, index, key_offset))
        key_offsets.append(key_offset)
        payload_offsets.append(payload_offset)
        payload_sizes.append(size)
    return kinds, key_offsets, payload_offsets, payload_sizes


def _module_fields(cursor: _Cursor, index: int) -> tuple[bytes, int, int]:
    """`_Cursor.module`, field by field: the buffer is refilled as needed and a field the
    runtime would reject raises its BlobError."""
    _, key = cursor.key(partial(_module_field, index, None))
    if key == _LIB_KEY:
        return key, -1, 0
    size_offset, size = cursor.size(partial(_module_field, index, key))
    cursor.pos += size
    return key, size_offset + _WORD, size


def _module_field(index: int, key: bytes | None) -> str:
    """What an error in module `index` is about: its key, or (given the key) its payload."""
    if key is None:
        return f"module {index} key"
    return f"module {index} ({printable(key.decode('utf-8', 'surrogateescape'))}) payload"


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

    Returns every module's imports, or, past the bound below, every module without imports
    and the B209 finding that says so.
    """
    overflow = _check_rows(indptr, indptr_first, children, child_first, num_modules)
    if overflow is not None:
        return [()] * num_modules, overflow
    return _rows(indptr, children, num_modules), None


def _check_rows(
    indptr: Sequence[int],
    indptr_first: int,
    children: Sequence[int],
    child_first: int,
    num_modules: int,
) -> Finding | None:
    """Check that every row lies inside the child indices and names existing modules.

    Each module's row is a slice of the child array. A canonical CSR hands out each child
    index once; rows only overlap when indptr goes back, and `[0, C, 0, C, ...]` gives every
    other module all C children: quadratic in the blob's size (the runtime creates every one
    of those imports). Past `2 * len(children) + EDGE_SLACK` edges the tree is not to be
    expanded, and the B209 finding returned says where the rows passed the bound. Checking
    runs in time linear in the two arrays, whatever the rows expand to.
    """
    bad = (
        [j for j, child in enumerate(children) if child >= num_modules]
        if children and max(children) >= num_modules
        else []
    )
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
        if bad:
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
    return overflow


def _rows(
    indptr: Sequence[int], children: Sequence[int], num_modules: int
) -> list[tuple[int, ...]]:
    """Each module's imports, from rows `_check_rows` passed. Equal indices are one int object
    (the child array holds a fresh one per entry): a long import list costs 8 bytes an entry."""
    canonical = list(range(num_modules))
    shared = tuple(canonical[c] if c < num_modules else c for c in children)
    return [shared[indptr[i] : indptr[i + 1]] for i in range(num_modules)]


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


def _tree_findings(
    imports: Sequence[Sequence[int]], libs: list[int], offset: int | None
) -> list[Finding]:
    """Import-tree shapes that load but that TVM's writer never produces.

    TVM emits modules root first, every child after its parent, children sorted and unique,
    exactly one `_lib`, all modules reachable. Findings point at `offset`, the first module's
    key. Every message is bounded (see `findings.listed`); the work is linear in modules plus
    imports.
    """
    found: list[Finding] = []

    def add(code: str, message: str) -> None:
        found.append(finding(code, message, offset))

    for index, row in enumerate(imports):
        if len(row) > 1 and any(a >= b for a, b in pairwise(row)):
            add("B204", f"module {index} imports {listed(row)}: unsorted or duplicated")
    cycle = find_cycle(imports)
    if cycle:
        add("B202", "import cycle " + _path(cycle))
    else:
        for index, row in enumerate(imports):
            backward = [c for c in row if c <= index] if row else None
            if backward:
                add("B203", f"module {index} imports earlier module(s) {listed(backward)}")
    if len(libs) > 1:
        add("B205", f"{len(libs)} `_lib` modules (at {listed(libs)}); TVM writes one")
    unreachable = unreachable_from(imports)
    if unreachable:
        add("B206", f"module(s) {listed(unreachable)} are not reachable from the root")
    return found


def _path(cycle: Sequence[int]) -> str:
    """`0 -> 1 -> 0`; a longer cycle shows its first LIST_ITEMS steps and where it closes."""
    if len(cycle) <= LIST_ITEMS + 1:
        return " -> ".join(map(str, cycle))
    left_out = len(cycle) - LIST_ITEMS - 1
    return " -> ".join(map(str, cycle[:LIST_ITEMS])) + f" -> ... ({left_out} more) -> {cycle[-1]}"


def unreachable_from(imports: Sequence[Sequence[int]]) -> list[int]:
    """The modules no import path from module 0 reaches (B206): the runtime creates them and
    then drops them, so a blob that has any is refused by every writer."""
    seen = reachable_from(imports)
    if len(seen) == len(imports):
        return []
    return [i for i in range(len(imports)) if i not in seen]


def reachable_from(imports: Sequence[Sequence[int]], root: int = 0) -> set[int]:
    """Indices reachable from `root` when module i imports `imports[i]` (the root included)."""
    seen = {root}
    stack = [root]
    while stack:
        for child in imports[stack.pop()]:
            if child not in seen:
                seen.add(child)
                stack.append(child)
    return seen


def find_cycle(imports: Sequence[Sequence[int]]) -> list[int] | None:
    """One import cycle as a closed path of indices (module i imports `imports[i]`), or None;
    iterative, so depth is unbounded."""
    state = [0] * len(imports)  # 0 new, 1 on the current path, 2 done
    for start in range(len(imports)):
        if state[start]:
            continue
        path = [start]
        cursors = [0]
        state[start] = 1
        while path:
            node = path[-1]
            row = imports[node]
            if cursors[-1] == len(row):
                state[node] = 2
                path.pop()
                cursors.pop()
                continue
            child = row[cursors[-1]]
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
    """Read a legacy blob as far as the format allows, reporting where and why it stopped.

    Every `_import_tree` entry is checked; as in the runtime, the last one is the tree, and
    only it is expanded, so many trees cost what their bytes do.
    """
    nbytes, cursor = _body(data)
    num_entries = cursor.u64("entry count")
    kinds: list[str] = []
    tree: tuple[array[int], array[int], int, Finding | None] | None = None
    findings: list[Finding] = []
    texts = _Kinds(findings)
    for _ in range(num_entries):
        key_offset, key = cursor.key(lambda: f"entry {len(kinds)} key")
        kind = texts.text(key, len(kinds), key_offset)
        if kind == LEGACY_TREE_KEY:
            _, indptr_first, indptr = cursor.u64_vector("indptr")
            _, child_first, children = cursor.u64_vector("child_indices")
            count = max(len(indptr) - 1, 0)
            overflow = _check_rows(indptr, indptr_first, children, child_first, count)
            if overflow is not None:
                findings.append(overflow)
            tree = (indptr, children, count, overflow)
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
    return LegacyBlob(nbytes, tuple(kinds), _legacy_imports(tree), tuple(findings))


def _legacy_imports(
    tree: tuple[array[int], array[int], int, Finding | None] | None,
) -> tuple[tuple[int, ...], ...] | None:
    """The rows of the last import tree (none past its B209 bound), or None without one."""
    if tree is None:
        return None
    indptr, children, count, overflow = tree
    if overflow is not None:
        return ((),) * count
    return tuple(_rows(indptr, children, count))
