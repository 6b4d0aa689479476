"""The Mach-O export trie, decoded whole and encoded again, for the writer and its verifier.

dyld finds an exported name by walking a prefix tree stored in `__LINKEDIT`: every node holds
the terminal information of the name spelled by the path to it (a ULEB128 size, then flags and
an address, a re-export or a stub/resolver pair), a child count and, per child, the edge label
as a C string and the child's offset as a ULEB128. Adding one name can change the offsets and
thus the sizes of many nodes, so the writer rebuilds the trie from the decoded entries. The
terminal information of every existing entry is kept byte for byte, never reinterpreted.

The reader (`ffitool.formats.macho`) only looks names up; this module decodes every entry,
which only the writer needs.
"""

from __future__ import annotations

from dataclasses import dataclass, field

_MAX_LEB_BYTES = 10
_EXPANSION_LIMIT = 64
"""Decoded names may total at most this many times the trie's size (plus a MiB): a hostile
chain of one-letter edges would otherwise spell quadratically many bytes."""


class TrieError(ValueError):
    """The trie is malformed; the message says where."""


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


def read_uleb(data: bytes, at: int) -> tuple[int, int]:
    """The ULEB128 number at `at` and the offset after it."""
    value = shift = 0
    for index in range(at, min(at + _MAX_LEB_BYTES, len(data))):
        byte = data[index]
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, index + 1
        shift += 7
    raise TrieError(f"bad ULEB128 number at trie offset {at}")


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
        node, prefix = pending.pop()
        if node in visited:
            raise TrieError(f"export trie node at {node} is reached twice")
        if node >= len(data):
            raise TrieError(f"export trie node at {node} is past the trie ({len(data)} bytes)")
        visited.add(node)
        size, at = read_uleb(data, node)
        if size:
            if at + size > len(data):
                raise TrieError(f"export trie node at {node} runs past the trie")
            budget -= len(prefix)
            if budget < 0:
                raise TrieError("export trie spells out far more names than its size allows")
            entries[prefix] = data[at : at + size]
        at += size
        if at >= len(data):
            raise TrieError(f"export trie node at {node} has no child count")
        count, at = data[at], at + 1
        children = []
        for _ in range(count):
            start = at
            end = data.find(b"\0", at)
            if end == -1:
                raise TrieError(f"export trie edge at {at} is not terminated")
            if end == start:
                raise TrieError(f"export trie edge at {start} has an empty label")
            child, at = read_uleb(data, end + 1)
            children.append((child, prefix + data[start:end]))
        # Depth-first in edge order: push the last child first.
        pending.extend(reversed(children))
    return entries


@dataclass
class _Node:
    terminal: bytes | None = None
    edges: list[tuple[bytes, _Node]] = field(default_factory=list)
    offset: int = 0


def encode_trie(entries: dict[bytes, bytes], alignment: int = 8) -> bytes:
    """A trie holding exactly `entries` (name -> terminal information), zero-padded to
    `alignment` as the linkers pad it. Children keep the order in which names are given."""
    if not entries:
        return b""
    root = _Node()
    for name, terminal in entries.items():
        if not name or not terminal:
            raise TrieError("an export trie entry needs a name and terminal information")
        _insert(root, name, terminal)
    order = _preorder(root)
    while True:
        position = 0
        moved = False
        for node in order:
            if node.offset != position:
                node.offset, moved = position, True
            position += len(_node_bytes(node))
        if not moved:
            break
    out = b"".join(_node_bytes(node) for node in order)
    return out + bytes(-len(out) % alignment)


def _insert(root: _Node, name: bytes, terminal: bytes) -> None:
    node, rest = root, name
    while rest:
        for index, (label, child) in enumerate(node.edges):
            common = _common_prefix(label, rest)
            if not common:
                continue
            if common < len(label):  # split the edge where the names part
                middle = _Node(edges=[(label[common:], child)])
                node.edges[index] = (label[:common], middle)
                child = middle
            node, rest = child, rest[common:]
            break
        else:
            leaf = _Node()
            node.edges.append((rest, leaf))
            node, rest = leaf, b""
    if node.terminal is not None:
        raise TrieError(f"name {name!r} is given twice")
    node.terminal = terminal


def _common_prefix(a: bytes, b: bytes) -> int:
    length = min(len(a), len(b))
    for index in range(length):
        if a[index] != b[index]:
            return index
    return length


def _preorder(root: _Node) -> list[_Node]:
    order, stack = [], [root]
    while stack:
        node = stack.pop()
        order.append(node)
        stack.extend(child for _, child in reversed(node.edges))
    return order


def _node_bytes(node: _Node) -> bytes:
    if len(node.edges) > 255:
        raise TrieError("an export trie node cannot have more than 255 children")
    head = uleb(len(node.terminal)) + node.terminal if node.terminal else b"\0"
    edges = b"".join(label + b"\0" + uleb(child.offset) for label, child in node.edges)
    return head + bytes([len(node.edges)]) + edges
