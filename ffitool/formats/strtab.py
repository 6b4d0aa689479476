"""String and symbol tables scanned for FFI names without an object per symbol.

Shared by the ELF and Mach-O readers, whose symbol tables differ but whose string tables are
the same kind of thing: NUL-terminated names, found by offset. The string table is searched for
the FFI markers in C and only the symbols whose name offset falls inside a matching string are
decoded. A libtorch-sized table holds 80 MB of names: it is read through the file descriptor a
window at a time (at most 1 MiB) and searched with the C library's `memmem` (through ctypes),
which skips over mangled names four times faster than `bytes.find` does with a needle ending in
`_`, their most frequent byte. Nothing is mapped: a mapped page of a file that another process
truncates raises SIGBUS, where a short read here is an ordinary error.

Names are read through `Names`: once per distinct offset, at most `NAME_LIMIT` bytes each and
`NAME_EXPANSION` times the table in all, so that what a table's entries spell is bounded by
the table, not by the number of entries that point into it.
"""

from __future__ import annotations

import bisect
import errno
import functools
import os
import sys
from array import array
from collections.abc import Callable
from typing import Literal, Protocol

from ffitool.symbols import FFI_PREFIX, LEGACY_BIN, LEGACY_CTX

SYMBOL_SLICE = 1 << 16
"""Symbol-table entries read at a time (1.5 MiB of a 64-bit table)."""

_FFI_MARKER = FFI_PREFIX.encode()
_LEGACY_MARKERS = (LEGACY_BIN.encode() + b"\0", LEGACY_CTX.encode() + b"\0")
_COMMON_MARKER = b"__tvm_"  # the prefix all markers share: one pass over the string table
_INDEX_SEARCH_LIMIT = 64
_EXPANSION_LIMIT = 1 << 16
_SCAN_WINDOW = 1 << 20
_NEAR = 256
NAME_LIMIT = 1 << 16
"""The longest name read from a table, in bytes. FFI names are C identifiers (C++ compilers
are asked to tell 1,024 characters apart), and the longest C++ names real libraries hold,
template instantiations, run to a few KB: a name without a terminator within 64 KiB is a
damaged or hostile table."""
NAME_EXPANSION = 4
"""All the distinct names read from one table may spell at most this many times its size (plus
`NAME_LIMIT`): merged tails make names overlap a little, but thousands of symbols pointing at
successive offsets of one long string would otherwise spell quadratically many bytes."""


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
    A search or a slice inside the last window read is answered from it, without a copy.
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
            if count == len(self._cached):
                return self._cached
            return self._cached[offset : offset + count]
        span = min(max(count, _CACHED_WINDOW), self._length - at)
        data = read_exactly(self._fd, self._start + at, span)
        self._cached_at, self._cached = at, data
        return data if count == span else data[:count]

    def _bounds(self, start: int, end: int | None) -> tuple[int, int]:
        end = self._length if end is None else min(end, self._length)
        return max(start, 0), end

    def find(self, sub: bytes, start: int = 0, end: int | None = None) -> int:
        start, end = self._bounds(start, end)
        cached, origin = self._cached, self._cached_at
        if origin <= start < origin + len(cached):  # the usual case: a name's terminator
            high = min(end, origin + len(cached))
            at = cached.find(sub, start - origin, high - origin)
            if at != -1 or high == end:
                return -1 if at == -1 else origin + at
            start = max(start, high - len(sub) + 1)
        window = _FIRST_WINDOW
        while end - start >= len(sub):
            high = min(end, start + window)
            data = self._read(start, high - start)
            at = _searcher(data)(sub, 0, len(data))
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


def read_exactly(fd: int, offset: int, length: int) -> bytes:
    """`length` bytes at `offset` of a file; a short read (the file shrank) is an OSError."""
    data = os.pread(fd, length, offset)
    if len(data) != length:
        raise OSError(errno.EIO, "the file shrank while it was being read")
    return data


def _searcher(data: bytes) -> Callable[[bytes, int, int], int]:
    """`data.find` (needle, start, end), with the C library's memmem where there is one.

    The address of `data` is taken once, so that searching a window for every marker in it
    costs one call each.
    """
    memmem = _memmem()
    if memmem is None or len(data) < _FIRST_WINDOW:  # a short search: find is as fast
        return data.find
    import ctypes  # loaded by _memmem already; imported lazily to keep start-up small

    base = ctypes.cast(ctypes.c_char_p(data), ctypes.c_void_p).value or 0

    def find(sub: bytes, start: int, end: int) -> int:
        if len(sub) < 2 or end - start < len(sub):  # one byte: memchr is as fast
            return data.find(sub, start, end)
        found = memmem(base + start, end - start, sub, len(sub))
        return -1 if found is None else found - base

    return find


@functools.cache
def _memmem() -> Callable[[int, int, bytes, int], int | None] | None:
    """The C library's memmem, or None where there is none to be had (Windows)."""
    try:
        import ctypes

        function = ctypes.CDLL(None).memmem
    except (ImportError, OSError, AttributeError, TypeError):
        return None
    function.restype = ctypes.c_void_p
    function.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p, ctypes.c_size_t]
    return function


def marked_strings(strings: Searchable) -> list[tuple[int, int, int]]:
    """(first, last, end) of each string that holds an FFI marker: where it starts, where its
    last marker starts, and where its terminator is (the table's length if it has none).

    Linkers merge string tails, so a symbol's name may start anywhere inside a stored string:
    every offset from `first` up to `last` is a candidate. The table is read once, 1 MiB at a
    time, each window cut after its last terminator so that no string straddles two; each
    string is looked at once, whatever number of markers it holds.
    """
    spans: list[tuple[int, int, int]] = []
    length = len(strings)
    position = 0
    while position < length:
        data = strings[position : position + _SCAN_WINDOW]
        cut = len(data) if position + len(data) == length else data.rfind(b"\0") + 1
        if cut:
            _mark_window(data, cut, position, spans)
            position += cut
            continue
        # One string longer than a window: looked at through the table, in windows.
        end = strings.find(b"\0", position)
        end = length if end == -1 else end
        at = strings.find(_COMMON_MARKER, position, end)
        last = _last_marker(strings, at, end) if at != -1 else -1
        if last != -1:
            spans.append((position, last, end))
        position = end + 1
    return spans


def _mark_window(data: bytes, cut: int, origin: int, spans: list[tuple[int, int, int]]) -> None:
    """The spans of the marked strings in `data[:cut]`, which holds whole strings only.

    Each marked string costs a handful of calls into C; the next marker is looked for close
    by first (in a table of FFI names it is a few bytes on), then with memmem.
    """
    search = _searcher(data)
    near = data.find
    at = search(_COMMON_MARKER, 0, cut)
    previous = 0
    while at != -1:
        end = near(b"\0", at, cut)
        end = cut if end == -1 else end
        last = _last_marker(data, at, end)
        if last != -1:
            first = data.rfind(b"\0", previous, at) + 1
            spans.append((origin + first, origin + last, origin + end))
        previous = end
        at = near(_COMMON_MARKER, end, min(end + _NEAR, cut))
        if at == -1 and end + _NEAR < cut:
            at = search(_COMMON_MARKER, end + _NEAR - len(_COMMON_MARKER) + 1, cut)


def _last_marker(strings: Searchable, at: int, end: int) -> int:
    """Where the last marker of the string whose first `__tvm_` is at `at` starts, or -1.

    The legacy markers are whole names: they count only right before a terminator, and a
    string that ends with one has no `__tvm_ffi_` after it.
    """
    for legacy in _LEGACY_MARKERS:
        start = end + 1 - len(legacy)
        if start >= at and strings.rfind(legacy, start, end + 1) != -1:
            return start
    return strings.rfind(_FFI_MARKER, at, end)


def candidate_ranges(strings: Searchable) -> list[tuple[int, int]]:
    """Ranges (first, last) of string-table offsets where a name with an FFI marker may start:
    see `marked_strings`."""
    return [(first, last) for first, last, _ in marked_strings(strings)]


class Names:
    """The names of a string table by offset, each distinct offset decoded once, bounded.

    Thousands of symbols may name one string (it is then read once, and they share one copy)
    or successive offsets inside one long string (the total they spell is then bounded): a
    name is at most `NAME_LIMIT` bytes, and all the distinct names of a table together at
    most `NAME_EXPANSION` times the table plus `NAME_LIMIT`, whatever the entries say.
    Beyond either bound `error` is raised, with a message naming `what` was read.
    """

    def __init__(
        self,
        strings: Searchable,
        error: Callable[[str], Exception],
        what: str,
        terminator: bytes = b"\0",
    ) -> None:
        self._strings = strings
        self._error = error
        self._what = what
        self._terminator = terminator
        self._left = NAME_EXPANSION * len(strings) + NAME_LIMIT
        self._raw: dict[int, bytes | str] = {}
        self._text: dict[int, str] = {}

    def __len__(self) -> int:
        return len(self._strings)

    def raw(self, offset: int) -> bytes:
        """The bytes of the name at `offset`, up to its terminator or the end of the table."""
        found = self._raw.get(offset)
        if found is None:
            found = self._raw[offset] = self._read(offset)
        if isinstance(found, str):  # refused before: not read again
            raise self._error(found)
        return found

    def _read(self, offset: int) -> bytes | str:
        """The name at `offset`, or why it is refused."""
        strings = self._strings
        end = strings.find(self._terminator, offset, offset + NAME_LIMIT + 1)
        if end == -1:  # the name runs to the end of the table, or past the limit
            end = max(offset, len(strings))
        if end - offset > NAME_LIMIT:
            return f"{self._what} at offset {offset} is longer than {NAME_LIMIT} bytes"
        self._left -= end - offset
        if self._left < 0:
            return (
                f"{len(self._raw) + 1} {self._what}s at distinct offsets spell more than"
                f" {NAME_EXPANSION} times their {len(strings)}-byte table (overlapping names?)"
            )
        return strings[offset:end]

    def __getitem__(self, offset: int) -> str:
        """The name at `offset` as text; bytes that are not UTF-8 become surrogates, shown as
        `\\xff` in text and kept exactly in JSON's `_hex` fields."""
        found = self._text.get(offset)
        if found is None:
            # Bytes that are not UTF-8 are kept (surrogateescape): shown as \xff, in JSON as hex.
            found = self._text[offset] = self.raw(offset).decode("utf-8", "surrogateescape")
        return found


def st_name_column(data: bytes, entry_size: int, little: bool) -> array[int]:
    """The st_name field (first 4 bytes of every entry, both classes) of each symbol."""
    count = len(data) // entry_size
    order: Literal["little", "big"] = "little" if little else "big"
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


def offset_filter(ranges: list[tuple[int, int]]) -> Callable[[array[int]], set[int]]:
    """A function from st_name values to those that fall in a candidate range.

    Usually the ranges are short (one offset for a name that starts with its marker) and are
    expanded into a set once, of at most a few offsets a range. A crafted table with
    megabyte-long names would make that set huge, so past that bound each distinct st_name is
    looked up in the ranges instead.
    """
    if sum(last - first + 1 for first, last in ranges) <= max(_EXPANSION_LIMIT, 4 * len(ranges)):
        starts = {first for first, last in ranges if first == last}
        for first, last in ranges:
            if first != last:
                starts.update(range(first, last + 1))
        return starts.intersection
    firsts = [first for first, _ in ranges]

    def in_ranges(fields: array[int]) -> set[int]:
        wanted = set()
        for offset in set(fields):
            slot = bisect.bisect_right(firsts, offset) - 1
            if slot >= 0 and offset <= ranges[slot][1]:
                wanted.add(offset)
        return wanted

    return in_ranges


def matching_entries(fields: array[int], hits: set[int]) -> list[tuple[int, int]]:
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
