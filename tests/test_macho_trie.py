"""The export trie codec the Mach-O writer rebuilds tries with.

Decoding is checked against llvm-objdump's listing of the linkers' own tries; encoding by
decoding again (llvm-objdump reading the writer's tries is in test_macho_pack.py). Hostile
tries end in a TrieError, never a hang or an allocation out of proportion.
"""

from __future__ import annotations

import struct
import subprocess

import pytest
from conftest import FIXTURES, require_tool

from ffitool.formats.macho.trie import (
    TrieError,
    decode_trie,
    encode_trie,
    read_uleb,
    regular_export,
    uleb,
)

MACHO = FIXTURES / "macho"
DYLIBS = ["libffi_macho.x86_64.dylib", "libmany.arm64.dylib", "libffi_macho.lld.arm64.dylib"]


def linker_trie(name: str) -> bytes:
    """The export trie bytes the linker wrote (LC_DYLD_INFO_ONLY or LC_DYLD_EXPORTS_TRIE)."""
    data = (MACHO / name).read_bytes()
    ncmds, at = struct.unpack_from("<I", data, 16)[0], 32
    for _ in range(ncmds):
        cmd, size = struct.unpack_from("<II", data, at)
        if cmd == 0x80000022:
            offset, length = struct.unpack_from("<II", data, at + 40)
        elif cmd == 0x80000033:
            offset, length = struct.unpack_from("<II", data, at + 8)
        at += size
    return data[offset : offset + length]


@pytest.mark.parametrize("name", DYLIBS)
def test_decoded_entries_are_llvm_objdumps(name):
    listing = subprocess.run(
        [require_tool("llvm-objdump-16"), "--macho", "--exports-trie", str(MACHO / name)],
        check=True, capture_output=True, text=True,
    ).stdout  # fmt: skip
    expected = {
        parts[1].encode(): int(parts[0], 16)
        for parts in (line.split() for line in listing.splitlines())
        if len(parts) == 2 and parts[0].startswith("0x")
    }
    entries = decode_trie(linker_trie(name))
    addresses = {}
    for entry_name, terminal in entries.items():
        flags, at = read_uleb(terminal, 0)
        assert flags == 0  # regular exports only in these fixtures
        addresses[entry_name] = read_uleb(terminal, at)[0]
    assert addresses == expected


@pytest.mark.parametrize("name", DYLIBS)
def test_encoding_keeps_every_entry_and_pads_to_8(name):
    entries = decode_trie(linker_trie(name))
    encoded = encode_trie(entries)
    assert len(encoded) % 8 == 0
    assert decode_trie(encoded) == entries
    assert list(decode_trie(encoded)) == sorted(entries)  # laid out in name order


def test_a_name_that_extends_another_splits_nothing_it_should_not():
    entries = {b"_a": regular_export(1), b"_ab": regular_export(2), b"_b": regular_export(3)}
    encoded = encode_trie(entries)
    assert decode_trie(encoded) == entries
    # root: no terminal, one edge "_" to a node with edges "a" (terminal, edge "b") and "b"
    assert encoded.startswith(b"\0\x01_\0")


def test_uleb_round_trip():
    for value in (0, 1, 127, 128, 300, 1 << 35, (1 << 64) - 1):
        assert read_uleb(uleb(value) + b"\xff", 0) == (value, len(uleb(value)))


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"\0\x01_\0\x00", "reached twice"),  # the child is the root again
        (b"\0\x01\0\x05", "empty label"),
        (b"\0\x01_\0\x50", "past the trie"),
        (b"\0\x01_", "not terminated"),
        (b"\x05\x00", "runs past the trie"),
        (b"\0", "has no child count"),
        (b"\0\x01_\0\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff", "bad ULEB128"),
    ],
)
def test_hostile_tries_are_errors(data, message):
    with pytest.raises(TrieError, match=message):
        decode_trie(data)


def test_a_trie_spelling_far_more_than_its_size_is_refused():
    # A chain of 200,000 one-letter edges, every node terminal: quadratically many name bytes.
    count = 200_000
    nodes = bytearray()
    for index in range(count):
        child = (index + 1) * 9  # each node is 9 bytes: the child offset in a 3-byte ULEB128
        wide = bytes([child & 0x7F | 0x80, child >> 7 & 0x7F | 0x80, child >> 14])
        nodes += b"\x02\x00\x01" + b"\x01" + b"a\0" + wide
    nodes += b"\0\0"
    with pytest.raises(TrieError, match="far more names than its size allows"):
        decode_trie(bytes(nodes))


def test_a_byte_0xff_after_a_shared_prefix_is_its_own_run():
    entries = {b"_a\xff": regular_export(1), b"_a\xfe": regular_export(2), b"_b": regular_export(3)}
    assert decode_trie(encode_trie(entries)) == dict(sorted(entries.items()))


def test_encoding_refuses_empty_entries():
    with pytest.raises(TrieError):
        encode_trie({b"": regular_export(1)})
    with pytest.raises(TrieError):
        encode_trie({b"_x": b""})


def test_encoding_refuses_a_node_of_more_than_255_children():
    """A node's child count is one byte: names that differ in all 256 first bytes need 256."""
    entries = {bytes([first]) + b"_": regular_export(first) for first in range(256)}
    with pytest.raises(TrieError, match="more than 255 children"):
        encode_trie(entries)
