"""String and symbol tables scanned for FFI names without an object per symbol.

Shared by the ELF and Mach-O readers, whose symbol tables differ but whose string tables are
the same kind of thing: NUL-terminated names, found by offset. The string table is searched for
the FFI markers in C and only the symbols whose name offset falls inside a matching string are
decoded. A libtorch-sized table holds 80 MB of names: it is read through the file descriptor a
window at a time (at most 1 MiB) and searched with the C library's `memmem` (through ctypes),
which skips over mangled names four times faster than `bytes.find` does with a needle ending in
`_`, their most frequent byte. Nothing is mapped: a mapped page of a file that another process
truncates raises SIGBUS, where a short read here is an ordinary error.
"""

from __future__ import annotations

import bisect
import errno
import functools
import os
import sys
from array import array
from collections.abc import Callable
from typing import Protocol

from ffitool.symbols import FFI_PREFIX, LEGACY_BIN, LEGACY_CTX

SYMBOL_SLICE = 1 << 16
"""Symbol-table entries read at a time (1.5 MiB of a 64-bit table)."""

_MARKERS = (FFI_PREFIX.encode(), LEGACY_BIN.encode() + b"\0", LEGACY_CTX.encode() + b"\0")
_COMMON_MARKER = b"__tvm_"  # the prefix all markers share: one pass over the string table
_INDEX_SEARCH_LIMIT = 64
_EXPANSION_LIMIT = 1 << 16


class Searchable(Protocol):
    """What the string-table scan needs: bytes has it, and so has a mapped table."""

    def __len__(self) -> int: ...
    def find(self, sub: bytes, start: int = ..., end: int | None = ...) -> int: ...
    def rfind(self, sub: bytes, start: int = ..., end: int | None = ...) -> int: ...
    def __getitem__(self, key: slice) -> bytes: ...


_FIRST_WINDOW = 4 << 10
_LAST_WINDOW = 1 << 20
_CACHED_WINDOW = 64 << 10


class WindowedTable:
    """One section's bytes with `bytes`-like find, rfind and slicing, read as needed.

    A search reads windows that start small (a name's terminator is usually near) and double
    up to 1 MiB, overlapping by the needle's length so that no match is missed at a border.
    """

    def __init__(self, fd: int, start: int, length: int) -> None:
        self._fd = fd
        self._start = start
        self._length = length
        self._cached_at = 0
        self._cached = b""

    def __len__(self) -> int:
        return self._length

    def _read(self, at: int, count: int) -> bytes:
        """`count` bytes at `at`, from the last window read when it holds them: with many
        marked names close together (100k functions), each costs a slice, not a pread."""
        offset = at - self._cached_at
        if offset >= 0 and offset + count <= len(self._cached):
            return self._cached[offset : offset + count]
        span = min(max(count, _CACHED_WINDOW), self._length - at)
        data = os.pread(self._fd, span, self._start + at)
        if len(data) != span:
            raise OSError(errno.EIO, "the file shrank while it was being read")
        self._cached_at, self._cached = at, data
        return data[:count]

    def _bounds(self, start: int, end: int | None) -> tuple[int, int]:
        end = self._length if end is None else min(end, self._length)
        return max(start, 0), end

    def find(self, sub: bytes, start: int = 0, end: int | None = None) -> int:
        start, end = self._bounds(start, end)
        window = _FIRST_WINDOW
        while end - start >= len(sub):
            high = min(end, start + window)
            at = _search(self._read(start, high - start), sub)
            if at != -1:
                return start + at
            if high == end:
                break
            start = high - len(sub) + 1
            window = min(2 * window, _LAST_WINDOW)
        return -1

    def rfind(self, sub: bytes, start: int = 0, end: int | None = None) -> int:
        start, end = self._bounds(start, end)
        window = _FIRST_WINDOW
        while end - start >= len(sub):
            low = max(start, end - window)
            at = self._read(low, end - low).rfind(sub)
            if at != -1:
                return low + at
            if low == start:
                break
            end = low + len(sub) - 1
            window = min(2 * window, _LAST_WINDOW)
        return -1

    def __getitem__(self, key: slice) -> bytes:
        begin, end, _ = key.indices(self._length)
        return self._read(begin, max(begin, end) - begin)


def _search(data: bytes, sub: bytes) -> int:
    """`data.find(sub)`, with the C library's memmem where there is one."""
    memmem = _memmem()
    if memmem is None or len(sub) < 2 or len(data) < len(sub):  # one byte: memchr is as fast
        return data.find(sub)
    import ctypes  # loaded by _memmem already; imported lazily to keep start-up small

    base = ctypes.cast(ctypes.c_char_p(data), ctypes.c_void_p).value
    found = memmem(data, len(data), sub, len(sub))
    return -1 if found is None or base is None else found - base


@functools.cache
def _memmem() -> Callable[[int, int, bytes, int], int | None] | None:
    """The C library's memmem, or None where there is none to be had (Windows)."""
    try:
        import ctypes

        function = ctypes.CDLL(None).memmem
    except (ImportError, OSError, AttributeError, TypeError):
        return None
    function.restype = ctypes.c_void_p
    function.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_char_p, ctypes.c_size_t]
    return function


def candidate_ranges(strings: Searchable) -> list[tuple[int, int]]:
    """Ranges (first, last) of string-table offsets where a name with an FFI marker may start.

    Linkers merge string tails, so a symbol's name may start anywhere inside a stored string:
    every offset from the start of the string up to its last marker is a candidate.
    """
    ranges = []
    at = strings.find(_COMMON_MARKER)
    while at != -1:
        begin = strings.rfind(b"\0", 0, at) + 1
        end = strings.find(b"\0", at)
        end = len(strings) if end == -1 else end
        rest = strings[at : end + 1]  # one slice: 500k names are 4M searches otherwise
        last = max(rest.rfind(marker) for marker in _MARKERS)
        if last >= 0:
            ranges.append((begin, at + last))
        at = strings.find(_COMMON_MARKER, end)
    return ranges


def st_name_column(data: bytes, entry_size: int, little: bool) -> array:
    """The st_name field (first 4 bytes of every entry, both classes) of each symbol."""
    count = len(data) // entry_size
    order = "little" if little else "big"
    if entry_size % 4:
        return array(
            "I",
            (
                int.from_bytes(data[i * entry_size : i * entry_size + 4], order)
                for i in range(count)
            ),
        )
    words = array("I")
    words.frombytes(data[: count * entry_size])
    if little != (sys.byteorder == "little"):
        words.byteswap()
    return words[:: entry_size // 4]


def offset_filter(ranges: list[tuple[int, int]]) -> Callable[[array], set[int]]:
    """A function from st_name values to those that fall in a candidate range.

    Usually the ranges are a few short names and are expanded into a set once. A crafted table
    with megabyte-long names would make that set huge, so past a bound each distinct st_name
    is looked up in the ranges instead.
    """
    if sum(last - first + 1 for first, last in ranges) <= _EXPANSION_LIMIT:
        starts: set[int] = set()
        for first, last in ranges:
            starts.update(range(first, last + 1))
        return starts.intersection
    firsts = [first for first, _ in ranges]

    def in_ranges(fields: array) -> set[int]:
        wanted = set()
        for offset in set(fields):
            slot = bisect.bisect_right(firsts, offset) - 1
            if slot >= 0 and offset <= ranges[slot][1]:
                wanted.add(offset)
        return wanted

    return in_ranges


def matching_entries(fields: array, hits: set[int]) -> list[tuple[int, int]]:
    """(index, st_name) of the entries whose st_name is one of `hits`.

    A few hits are located by byte search in the column, in C; many with one pass in Python.
    """
    if len(hits) > _INDEX_SEARCH_LIMIT:
        return [(number, offset) for number, offset in enumerate(fields) if offset in hits]
    column = fields.tobytes()  # 4 bytes an entry, in native order like the patterns below
    found = []
    for offset in hits:
        pattern = array("I", [offset]).tobytes()
        at = column.find(pattern)
        while at != -1:
            if at % 4 == 0:
                found.append((at // 4, offset))
            at = column.find(pattern, at + 1)
    return sorted(found)


def c_string(strings: Searchable, offset: int) -> str:
    end = strings.find(b"\0", offset)
    raw = strings[offset : end if end != -1 else len(strings)]
    return raw.decode("utf-8", "surrogateescape")  # bytes kept: shown as \xff, in JSON as hex
