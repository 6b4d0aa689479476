"""The Mach-O export trie, decoded whole and encoded again, for the writer and its verifier.

dyld finds an exported name by walking a prefix tree stored in `__LINKEDIT`: every node holds
the terminal information of the name spelled by the path to it (a ULEB128 size, then flags and
an address, a re-export or a stub/resolver pair), a child count and, per child, the edge label
as a C string and the child's offset as a ULEB128. Adding one name can change the offsets and
thus the sizes of many nodes, so the writer rebuilds the trie from the decoded entries. The
terminal information of every existing entry is kept byte for byte, never reinterpreted.

One node parser serves both walks: the reader's (`ffitool.formats.macho.reader`), which only
looks names up, and `decode_trie`'s, which decodes every entry for the writer and its verifier.
"""

from __future__ import annotations

import bisect
from typing import NamedTuple

_MAX_LEB_BYTES = 10
_EXPANSION_LIMIT = 64
"""Decoded names may total at most this many times the trie's size (plus a MiB): a hostile
chain of one-letter edges would otherwise spell quadratically many bytes."""


class TrieError(ValueError):
    """An export trie is malformed; the message says where."""


def read_uleb(data: bytes, at: int) -> tuple[int, int]:
    """The ULEB128 number at `at` of an export trie and the offset after it (at most 10
    bytes: 64 bits)."""
    value = shift = 0
    for index in range(at, min(at + _MAX_LEB_BYTES, len(data))):
        byte = data[index]
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, index + 1
        shift += 7
    raise TrieError(f"bad ULEB128 number at trie offset {at}")


class Node(NamedTuple):
    """One node of an export trie as the file states it."""

    terminal_at: int
    """Where its terminal information starts."""
    terminal_size: int
    """0: the node exports no name."""
    edges: list[tuple[bytes, int]]
    """(label, child offset) of each edge, in the trie's order."""
    end: int
    """The offset after the node."""
    empty_label: int | None
    """Where the first edge with an empty label starts: a real trie has none, and a walk
    that follows one consumes nothing (`decode_trie` refuses it, a lookup passes it by)."""


def parse_node(data: bytes, node: int) -> Node:
    """The node at offset `node` of the trie `data`, every part of it checked to lie inside."""
    if node >= len(data):
        raise TrieError(f"export trie node at {node} is past the trie")
    size = data[node]  # a one-byte ULEB128 is the common case: read it inline
    at = node + 1
    if size & 0x80:
        size, at = read_uleb(data, node)
    terminal_at = at
    at += size
    if at > len(data):
        raise TrieError(f"export trie node at {node} runs past the trie")
    if at == len(data):
        raise TrieError(f"export trie node at {node} has no child count")
    count, at = data[at], at + 1
    edges = []
    empty_label = None
    for _ in range(count):
        end = data.find(b"\0", at)
        if end == -1:
            raise TrieError(f"export trie edge at {at} is not terminated")
        if end == at and empty_label is None:
            empty_label = at
        label = data[at:end]
        child, at = data[end + 1] if end + 1 < len(data) else 0x80, end + 2
        if child & 0x80:  # a longer number, or none: read_uleb tells
            child, at = read_uleb(data, end + 1)
        edges.append((label, child))
    return Node(terminal_at, size, edges, at, empty_label)


def uleb(value: int) -> bytes:
    """`value` as ULEB128."""
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def regular_export(address: int) -> bytes:
    """Terminal information of a plain exported symbol (EXPORT_SYMBOL_FLAGS_KIND_REGULAR) at
    `address`, an offset from the Mach-O header as the trie stores it."""
    return uleb(0) + uleb(address)


def decode_trie(data: bytes) -> dict[bytes, bytes]:
    """Every name of the trie with its terminal information, in the order of a depth-first walk.

    Each node is visited at most once, so child offsets that loop back terminate; a node that
    is reached twice or lies outside the trie is an error, as is a trie that spells more name
    bytes than `_EXPANSION_LIMIT` allows.
    """
    if not data:
        return {}
    entries: dict[bytes, bytes] = {}
    budget = _EXPANSION_LIMIT * len(data) + (1 << 20)
    visited: set[int] = set()
    pending: list[tuple[int, bytes]] = [(0, b"")]
    while pending:
        at, prefix = pending.pop()
        if at in visited:
            raise TrieError(f"export trie node at {at} is reached twice")
        visited.add(at)
        terminal_at, size, edges, _, empty_label = parse_node(data, at)
        if size:
            budget -= len(prefix)
            if budget < 0:
                raise TrieError("export trie spells out far more names than its size allows")
            entries[prefix] = data[terminal_at : terminal_at + size]
        if empty_label is not None:
            raise TrieError(f"export trie edge at {empty_label} has an empty label")
        # Depth-first in edge order: push the last child first.
        pending.extend([(child, prefix + label) for label, child in reversed(edges)])
    return entries


def encode_trie(entries: dict[bytes, bytes], alignment: int = 8) -> bytes:
    """A trie holding exactly `entries` (name -> terminal information), zero-padded to
    `alignment` as the linkers pad it.

    Built from the sorted names: the names under a node share its prefix and form one run of
    the sorted list, split by their next byte into one run per child (found by bisection);
    an edge's label is the longest prefix of its run (that of its first and last names).
    Nodes are laid out depth first; their offsets are recomputed until no ULEB128 size
    changes, as the linkers do.
    """
    names = sorted(entries)
    if not names or not names[0] or not all(entries.values()):
        raise TrieError("an export trie entry needs a name and terminal information")
    terminals: list[bytes | None] = [None]
    edges: list[list[tuple[bytes, int]]] = [[]]
    pending = [(0, len(names), 0, 0)]  # (first name, end, prefix length, node)
    while pending:
        first, end, depth, node = pending.pop()
        if len(names[first]) == depth:
            terminals[node] = entries[names[first]]
            first += 1
        while first < end:
            head = names[first][: depth + 1]
            last = (
                end
                if head[-1] == 0xFF
                else bisect.bisect_left(names, head[:-1] + bytes([head[-1] + 1]), first, end)
            )
            common = _common_prefix(names[first], names[last - 1], depth + 1)
            child = len(terminals)
            terminals.append(None)
            edges.append([])
            edges[node].append((names[first][depth:common], child))
            pending.append((first, last, common, child))
            first = last
    order = _preorder(edges)
    fixed = [
        (_uleb_size(len(t)) + len(t) if t else 1) + 1 + sum(len(label) + 1 for label, _ in e)
        for t, e in zip(terminals, edges, strict=True)
    ]
    children = [[child for _, child in e] for e in edges]
    offsets = [0] * len(terminals)
    moved = True
    while moved:
        position, moved = 0, False
        for node in order:
            if offsets[node] != position:
                offsets[node], moved = position, True
            position += fixed[node]
            for child in children[node]:
                offset = offsets[child]
                position += 1 if offset < 0x80 else 2 if offset < 0x4000 else _uleb_size(offset)
    out = bytearray()
    for node in order:
        terminal = terminals[node]
        out += uleb(len(terminal)) + terminal if terminal else b"\0"
        if len(edges[node]) > 255:
            raise TrieError("an export trie node cannot have more than 255 children")
        out.append(len(edges[node]))
        for label, child in edges[node]:
            out += label + b"\0" + uleb(offsets[child])
    return bytes(out + bytes(-len(out) % alignment))


def _uleb_size(value: int) -> int:
    return max(1, -(-value.bit_length() // 7))


def _common_prefix(a: bytes, b: bytes, known: int) -> int:
    """The length of the longest common prefix of `a` and `b`, which share `known` bytes;
    found by bisection over slice comparisons, which run in C."""
    low, high = known, min(len(a), len(b))
    while low < high:
        middle = (low + high + 1) // 2
        if a[:middle] == b[:middle]:
            low = middle
        else:
            high = middle - 1
    return low


def _preorder(edges: list[list[tuple[bytes, int]]]) -> list[int]:
    order, stack = [], [0]
    while stack:
        node = stack.pop()
        order.append(node)
        stack.extend(child for _, child in reversed(edges[node]))
    return order
