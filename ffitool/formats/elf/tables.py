"""The dynamic symbol machinery, as the ELF writer grows it by one symbol.

One small class per structure (symbol table, GNU hash table, SysV hash table), each parsed from
the raw bytes of the input and serialised back. Adding a symbol never rehashes the names that
are already there: GNU hash chains store each symbol's hash, so inserting one symbol at the end
of its bucket's run only shifts indices; SysV chains are index links, renumbered the same way.
That keeps the work linear in the table with small constants, even for 75k-symbol libraries.
"""

from __future__ import annotations

import sys
from array import array
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from ffitool.errors import InputError
from ffitool.files import CHUNK
from ffitool.formats.elf.dynamic import gnu_hash, sysv_hash

NATIVE_LITTLE = sys.byteorder == "little"


def entry_chunks(size: int, entry_size: int) -> Iterator[tuple[int, int]]:
    """(offset, length) of the whole `entry_size`-byte entries of a `size`-byte table, about
    1 MiB at a time: relocation and symbol tables are walked in bounded memory."""
    step = max(1, CHUNK // entry_size) * entry_size
    whole = size - size % entry_size
    for start in range(0, whole, step):
        yield start, min(step, whole - start)


def _words(data: bytes | memoryview, code: str, little: bool) -> array[int]:
    """`data` as an array of unsigned words in native order ('I': 32-bit, 'Q': 64-bit)."""
    words = array(code)
    words.frombytes(bytes(data))
    if little != NATIVE_LITTLE:
        words.byteswap()
    return words


def _raw(words: array[int], little: bool) -> bytes:
    copy = array(words.typecode, words)
    if little != NATIVE_LITTLE:
        copy.byteswap()
    return copy.tobytes()


def shifted(index: int, position: int) -> int:
    """Where symbol `index` of the input ends up after a symbol is inserted at `position`."""
    return index + 1 if index >= position else index


@dataclass
class GnuHashTable:
    """DT_GNU_HASH: header, bloom filter, buckets and the hash-value chains.

    Symbols from `symoffset` on are sorted by bucket; `chains[i - symoffset]` is the hash of
    symbol i with bit 0 replaced by "last of its bucket".
    """

    symoffset: int
    bloom_shift: int
    bloom: array[int]
    buckets: array[int]
    chains: array[int]
    bloom_bits: int
    little: bool

    @classmethod
    def parse(cls, data: bytes, count: int, bits: int, little: bool, where: str) -> GnuHashTable:
        """Read a table covering `count` symbols; InputError if it cannot be one.

        A table whose buckets are all empty hashes no symbol, whatever its symoffset says (bfd
        writes 1 for a library that exports nothing): it is read as hashing none of the
        `count` symbols, so that the blob symbol goes last and nothing is renumbered.
        """
        if len(data) < 16:
            raise InputError(f"{where}: DT_GNU_HASH is truncated")
        nbuckets, symoffset, bloom_size, bloom_shift = _words(data[:16], "I", little)
        word = bits // 8
        buckets_at = 16 + bloom_size * word
        if not nbuckets or not bloom_size or not 1 <= symoffset <= count:
            raise InputError(
                f"{where}: DT_GNU_HASH with {nbuckets} buckets, {bloom_size} bloom words and"
                f" symoffset {symoffset} for {count} symbols"
            )
        if len(data) < buckets_at + nbuckets * 4:
            raise InputError(f"{where}: DT_GNU_HASH is shorter than its {nbuckets} buckets")
        buckets = _words(data[buckets_at : buckets_at + nbuckets * 4], "I", little)
        if not any(buckets):
            symoffset = count
        chains_at = buckets_at + nbuckets * 4
        if len(data) < chains_at + (count - symoffset) * 4:
            raise InputError(f"{where}: DT_GNU_HASH is shorter than its {count} symbols need")
        table = cls(
            symoffset=symoffset,
            bloom_shift=bloom_shift,
            bloom=_words(data[16:buckets_at], "Q" if bits == 64 else "I", little),
            buckets=buckets,
            chains=_words(data[chains_at : chains_at + (count - symoffset) * 4], "I", little),
            bloom_bits=bits,
            little=little,
        )
        if any(b and not symoffset <= b < count for b in table.buckets):
            raise InputError(f"{where}: DT_GNU_HASH has a bucket past its {count} symbols")
        return table

    @staticmethod
    def front_size(head: bytes, bits: int, little: bool) -> int:
        """Bytes of the header, bloom filter and buckets, from the 16-byte header."""
        nbuckets, _, bloom_size, _ = _words(head[:16], "I", little)
        return 16 + bloom_size * bits // 8 + nbuckets * 4

    @staticmethod
    def size(front: bytes, count: int, bits: int, little: bool) -> int:
        """Bytes a table of `count` symbols occupies, from its header, bloom and buckets.

        No chains when every bucket is empty (see `parse`).
        """
        nbuckets, symoffset, _, _ = _words(front[:16], "I", little)
        buckets = _words(front[len(front) - nbuckets * 4 :], "I", little)
        return len(front) + (max(count - symoffset, 0) * 4 if any(buckets) else 0)

    def lookup(self, name: bytes, name_of: Callable[[int], bytes]) -> int | None:
        """Index of the symbol called `name`, as the loader finds it (name_of: index -> bytes)."""
        h = gnu_hash(name)
        index = self.buckets[h % len(self.buckets)]
        if not index:
            return None
        while index - self.symoffset < len(self.chains):
            value = self.chains[index - self.symoffset]
            if value | 1 == h | 1 and name_of(index) == name:
                return index
            if value & 1:
                return None
            index += 1
        return None

    def insert_position(self, name: bytes) -> int:
        """The index a new symbol called `name` must take: the end of its bucket's run."""
        count = self.symoffset + len(self.chains)
        bucket = gnu_hash(name) % len(self.buckets)
        first = self.buckets[bucket]
        if first:
            index = first
            while index < count - 1 and not self.chains[index - self.symoffset] & 1:
                index += 1
            return index + 1
        later = [b for b in self.buckets[bucket + 1 :] if b]
        return min(later) if later else count

    def insert(self, position: int, name: bytes) -> None:
        """Account for a symbol called `name` inserted at `position` (from insert_position)."""
        h = gnu_hash(name)
        bucket = h % len(self.buckets)
        for number, first in enumerate(self.buckets):
            if first >= position:
                self.buckets[number] = first + 1
        if self.buckets[bucket]:
            self.chains[position - 1 - self.symoffset] &= ~1 & 0xFFFFFFFF
        else:
            self.buckets[bucket] = position
        self.chains.insert(position - self.symoffset, h | 1)
        bits = self.bloom_bits
        word = (h // bits) % len(self.bloom)
        self.bloom[word] |= (1 << (h % bits)) | (1 << ((h >> self.bloom_shift) % bits))

    def to_bytes(self) -> bytes:
        header = array("I", [len(self.buckets), self.symoffset, len(self.bloom), self.bloom_shift])
        return b"".join(
            _raw(part, self.little) for part in (header, self.bloom, self.buckets, self.chains)
        )


@dataclass
class SysvHashTable:
    """DT_HASH: nbucket, nchain, buckets and chains of symbol indices.

    Entries are 32-bit words, except on 64-bit s390 and Alpha, where they are 64-bit.
    """

    buckets: array[int]
    chains: array[int]
    little: bool

    @classmethod
    def parse(cls, data: bytes, count: int, code: str, little: bool, where: str) -> SysvHashTable:
        word = array(code).itemsize
        if len(data) < 2 * word:
            raise InputError(f"{where}: DT_HASH is truncated")
        nbucket, nchain = _words(data[: 2 * word], code, little)
        if not nbucket or nchain != count:
            raise InputError(
                f"{where}: DT_HASH has {nbucket} buckets and {nchain} chains for {count} symbols"
            )
        if len(data) < (2 + nbucket + nchain) * word:
            raise InputError(f"{where}: DT_HASH is shorter than its header says")
        body = _words(data[2 * word : (2 + nbucket + nchain) * word], code, little)
        return cls(body[:nbucket], body[nbucket:], little)

    @staticmethod
    def size(data: bytes, code: str, little: bool) -> int:
        word = array(code).itemsize
        nbucket, nchain = _words(data[: 2 * word], code, little)
        return (2 + nbucket + nchain) * word

    def lookup(self, name: bytes, name_of: Callable[[int], bytes]) -> int | None:
        index = self.buckets[sysv_hash(name) % len(self.buckets)]
        for _ in range(len(self.chains)):
            if not index or index >= len(self.chains):
                return None
            if name_of(index) == name:
                return index
            index = self.chains[index]
        return None

    def insert(self, position: int, name: bytes) -> None:
        """Renumber for a symbol inserted at `position`, then put it at the head of its bucket."""
        chains = array(self.chains.typecode, bytes(self.chains.itemsize * (len(self.chains) + 1)))
        for index, following in enumerate(self.chains):  # position >= 1: index 0 stays 0
            chains[shifted(index, position)] = shifted(following, position)
        for number, first in enumerate(self.buckets):
            if first:
                self.buckets[number] = shifted(first, position)
        bucket = sysv_hash(name) % len(self.buckets)
        chains[position] = self.buckets[bucket]
        self.buckets[bucket] = position
        self.chains = chains

    def widen(self) -> None:
        """Use 64-bit entries from now on."""
        self.buckets, self.chains = array("Q", self.buckets), array("Q", self.chains)

    def to_bytes(self) -> bytes:
        header = array(self.chains.typecode, [len(self.buckets), len(self.chains)])
        return b"".join(_raw(part, self.little) for part in (header, self.buckets, self.chains))


def renumbered_relocations(
    raw: bytes, entry_size: int, bits: int, little: bool, position: int
) -> bytes:
    """REL/RELA entries with every r_info symbol index at or past `position` raised by one.

    r_info holds the index in its high 32 bits (ELFCLASS64) or high 24 bits (ELFCLASS32),
    the relocation type below; offsets and addends are left alone.
    """
    words = _words(raw, "Q" if bits == 64 else "I", little)
    width = 32 if bits == 64 else 8
    for number in range(1, len(words), entry_size // (bits // 8)):
        if words[number] >> width >= position:
            words[number] += 1 << width
    return _raw(words, little)


def relocation_symbol_end(raw: bytes, entry_size: int, bits: int, little: bool) -> int:
    """One past the largest r_info symbol index of the REL/RELA entries in `raw` (0: none)."""
    words = _words(raw, "Q" if bits == 64 else "I", little)
    width = 32 if bits == 64 else 8
    top = max(words[1 :: entry_size // (bits // 8)], default=None)
    return 0 if top is None else (top >> width) + 1
