"""Checks a packed file must pass before it replaces anything.

The staged file is re-read with ffitool's own readers and compared with the original, so that
each promise of the writer is checked on the bytes it produced, not on its intentions:

- the loader's lookup through every hash table lands on the blob (which the pack flow has
  decoded to exactly the planned tree and bytes), visible to dlsym;
- the dynamic symbols are the original's plus the blob's, each resolvable as before; the
  dynamic entries are the original's, with only the tags of re-placed tables changed; every
  relocation names the same symbol as before;
- every section the writer did not deliberately re-place is where it was with the same bytes
  (`.symtab` among them); re-placed notes keep their bytes; program headers are the original's
  plus one PT_LOAD;
- the layout is one ld.so maps and `strip` keeps: every allocated section inside exactly one
  PT_LOAD at the matching offset, no overlaps between sections or between segments, PT_LOADs in
  address order and aligned.
"""

from __future__ import annotations

import os
import struct
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

from elftools.construct.lib.container import Container

from ffitool.edit.plan import PayloadSource
from ffitool.edit.stream import same_bytes
from ffitool.edit.verification import fail
from ffitool.formats.elf.dynamic import (
    DynamicError,
    DynamicView,
    read_dynamic,
    unmapped_segments,
)
from ffitool.formats.elf.reader import ElfFile, SectionNames, program_headers, section_headers
from ffitool.formats.elf.tables import (
    entry_chunks,
    relocation_symbol_end,
    renumbered_relocations,
)
from ffitool.formats.elf.writer import BLOB_SECTION, RETAGGED, Placement
from ffitool.symbols import LIBRARY_BIN

_MIN_PAGE = 0x1000
_LOOKUP_SAMPLE = 256
_SHF_ALLOC = 0x2
_SHF_TLS = 0x400
# Sections the writer may re-place: their new copies are checked by content or meaning.
_REPLACEABLE = (
    "SHT_DYNSYM", "SHT_STRTAB", "SHT_GNU_HASH", "SHT_HASH", "SHT_GNU_versym",
    "SHT_GNU_verdef", "SHT_GNU_verneed", "SHT_NOTE",
)  # fmt: skip
# Sections the writer patches where they are; their meaning is checked instead of their bytes.
_PATCHED = ("SHT_DYNAMIC", "SHT_RELA", "SHT_REL", "SHT_DYNSYM", "SHT_GNU_versym")
# Program headers that may follow a re-placed range of bytes.
_MOVABLE_SEGMENTS = ("PT_NOTE", "PT_GNU_PROPERTY", "PT_INTERP")


def verify(staging: Path, original: Path, placement: Placement) -> None:
    """Raise VerificationError, naming the first difference, unless `staging` is right (the
    pack flow has checked its blob)."""
    with open(original, "rb") as old, open(staging, "rb") as new:
        try:
            _check_dynamic(old, new, placement)
        except DynamicError as exc:  # the writer read the input this way: the output is wrong
            fail(str(exc))
        old_file, new_file = _Headers(old), _Headers(new)
    _check_segments(old_file, new_file, original, staging)
    _check_sections(old_file, new_file, original, staging)
    _check_layout(old_file, new_file)


def _check_dynamic(old: BinaryIO, new: BinaryIO, placement: Placement) -> None:
    """What the loader reads, through the dynamic segments of both files."""
    before = read_dynamic(old, os.fstat(old.fileno()).st_size)
    after = read_dynamic(new, os.fstat(new.fileno()).st_size)
    _check_lookup(after, placement)
    counts = _symbol_count(before), _symbol_count(after)
    index = _check_preserved(before, after, counts)
    _check_relocations(before, after, index if counts[1] != counts[0] else None)


class _Headers:
    """Program and section headers and section names of one file."""

    def __init__(self, handle: BinaryIO) -> None:
        size = os.fstat(handle.fileno()).st_size
        elf = ElfFile(handle)
        self.phentsize = elf["e_phentsize"]
        self.phdrs = program_headers(elf, size)
        self.sections = section_headers(elf, size)
        names = SectionNames(elf, self.sections, size)
        self.names = [names[i] for i in range(len(self.sections))]


def _check_lookup(after: DynamicView, placement: Placement) -> None:
    """Find the blob as ld.so does: through every hash table the file has."""
    if not (after.has_gnu_hash or after.has_sysv_hash):
        fail("no DT_GNU_HASH or DT_HASH: dlsym could not find anything")
    for label, present, lookup in (
        ("DT_GNU_HASH", after.has_gnu_hash, after.lookup_gnu),
        ("DT_HASH", after.has_sysv_hash, after.lookup_sysv),
    ):
        if not present:
            continue
        symbol = lookup(LIBRARY_BIN)
        if symbol is None or (symbol.value, symbol.size) != (placement.address, placement.size):
            fail(f"{label} lookup of {LIBRARY_BIN} gives {symbol}, not the new blob")
        if symbol.version is not None and (symbol.version & 0x7FFF == 0 or symbol.version & 0x8000):
            fail(f"{LIBRARY_BIN} has symbol version {symbol.version:#x}: local or hidden")


def _relocation_chunks(view: DynamicView) -> Iterator[tuple[int, int, int]]:
    """(address, length, entry size) of the view's relocations, a bounded chunk at a time."""
    for address, size, entry in view.relocation_tables():
        for start, length in entry_chunks(size, entry):
            yield address + start, length, entry


def _symbol_count(view: DynamicView) -> int:
    """Entries of DT_SYMTAB the loader reads: those the hash tables count, and those that
    relocations name.

    The hash tables alone may count fewer: a GNU hash table never counts the symbols below
    its symoffset, and bfd's table for a library that exports nothing hashes no symbol and
    says symoffset 1, while relocations name the undefined symbols past it.
    """
    bits = 8 * struct.calcsize(view.word_format)
    little = view.endian == "<"
    count = view.symbol_count
    for address, length, entry in _relocation_chunks(view):
        raw = view.memory(address, length)
        count = max(count, relocation_symbol_end(raw, entry, bits, little))
    return count


def _check_preserved(before: DynamicView, after: DynamicView, counts: tuple[int, int]) -> int:
    """Dynamic entries and symbols: the original's, plus the blob symbol, nothing else.

    Checked on the raw tables, `counts` entries long (before, after): `.dynsym` and
    `.gnu.version` must be the original's with one entry inserted (or the old blob entry
    re-pointed), and `.dynstr` must start with the original's, so every old entry names the
    same string. Returns the blob entry's index.
    """
    for label in ("needed", "soname", "rpath", "runpath"):
        if getattr(before, label) != getattr(after, label):
            fail(f"{label} changed from {getattr(before, label)} to {getattr(after, label)}")
    old_tags, new_tags = before.entries, after.entries
    if [t for t, _ in old_tags] != [t for t, _ in new_tags]:
        fail("the dynamic section's tags changed")
    for (number, old_value), (_, new_value) in zip(old_tags, new_tags, strict=True):
        if number not in RETAGGED and old_value != new_value:
            fail(f"dynamic entry {number:#x} changed from {old_value:#x} to {new_value:#x}")
    (old_strings, old_size), (new_strings, new_size) = before.string_table, after.string_table
    if new_size < old_size or before.memory(old_strings, old_size) != after.memory(
        new_strings, old_size
    ):
        fail(".dynstr does not start with the original's strings")
    found = after.lookup_gnu(LIBRARY_BIN) if after.has_gnu_hash else after.lookup_sysv(LIBRARY_BIN)
    index = 0 if found is None else found.index
    for tag, size in (("DT_SYMTAB", before.symbol_entry_size), ("DT_VERSYM", 2)):
        old, new = before.raw_table(tag, size, counts[0]), after.raw_table(tag, size, counts[1])
        if len(new) == len(old) + size:
            new = new[: index * size] + new[(index + 1) * size :]
        elif len(new) == len(old):  # re-pointed: the old blob entry may differ
            new = (
                new[: index * size]
                + old[index * size : (index + 1) * size]
                + new[(index + 1) * size :]
            )
        if new != old:
            fail(f"{tag} holds other symbols than the original's and the blob's")
    lookup_before = before.lookup_gnu if before.has_gnu_hash else before.lookup_sysv
    lookup_after = after.lookup_gnu if after.has_gnu_hash else after.lookup_sysv
    # The tables are equal; the hash tables, walked in Python, are probed with an evenly
    # spread sample of the defined symbols: a stale or misbuilt table fails nearly all.
    count = counts[0]
    for number in range(1, count, max(1, count // _LOOKUP_SAMPLE)):
        raw, symbol = before.symbol(number)
        name = raw.decode("utf-8", "surrogateescape")
        if not symbol.defined or name == LIBRARY_BIN:
            continue
        # Compare lookups with lookups: a versioned name (foo@V1, foo@@V2) resolves to one
        # of its definitions, the same one before and after.
        was = lookup_before(name)
        now = lookup_after(name)
        if was is not None and now != was:
            fail(f"dynamic symbol {name} is no longer found through the hash table")
    return index


def _check_relocations(before: DynamicView, after: DynamicView, inserted: int | None) -> None:
    """Every relocation is where it was, of the same type and addend, naming the same symbol.

    With the symbol tables equal but for the blob entry at `inserted` (None: nothing was
    inserted), a relocation's symbol index must be the original's, plus one from there on.
    """
    # The same tables in the output: _check_preserved found their DT_* entries unchanged.
    bits = 8 * struct.calcsize(before.word_format)
    little = before.endian == "<"
    for address, length, entry in _relocation_chunks(before):
        was = before.memory(address, length)
        now = after.memory(address, length)
        if inserted is not None:
            was = renumbered_relocations(was, entry, bits, little, inserted)
        if was != now:
            fail(f"a relocation in [{address:#x}, +{length:#x}) changed")


def _section_map(before: _Headers, after: _Headers) -> list[int]:
    """The output index of each input section: the same, past the one section ffitool adds."""
    extra = len(after.sections) - len(before.sections)
    if extra not in (0, 1):
        fail(f"{extra} sections were added")
    added = next((i for i, name in enumerate(after.names) if extra and name == BLOB_SECTION), None)
    mapping = [i if added is None or i < added else i + 1 for i in range(len(before.sections))]
    for index, target in enumerate(mapping):
        if before.names[index] != after.names[target]:
            fail(f"section {before.names[index]} became {after.names[target]}")
    return mapping


def _check_sections(before: _Headers, after: _Headers, original: Path, staging: Path) -> None:
    """Sections stay where they were with their bytes, unless re-placed as a whole."""
    for index, target in enumerate(_section_map(before, after)):
        old, new, name = before.sections[index], after.sections[target], before.names[index]
        if name == BLOB_SECTION:
            continue  # the old blob's section now holds the new blob, checked on its own
        if old["sh_type"] != new["sh_type"] or old["sh_flags"] != new["sh_flags"]:
            fail(f"section {name} changed its type or flags")
        if old["sh_type"] == "SHT_NOBITS" or not old["sh_size"]:
            if (old["sh_addr"], old["sh_size"]) != (new["sh_addr"], new["sh_size"]):
                fail(f"section {name} moved or changed size")
            continue
        moved = (old["sh_addr"], old["sh_offset"], old["sh_size"]) != (
            new["sh_addr"],
            new["sh_offset"],
            new["sh_size"],
        )
        allocated = old["sh_flags"] & _SHF_ALLOC
        replaceable = old["sh_type"] in _REPLACEABLE or name == ".interp" or not allocated
        if moved and not replaceable:
            fail(f"section {name} moved from {old['sh_addr']:#x}, offset {old['sh_offset']:#x}")
        growable = ("SHT_STRTAB", "SHT_GNU_HASH", "SHT_HASH", "SHT_DYNSYM", "SHT_GNU_versym")
        if old["sh_size"] != new["sh_size"] and old["sh_type"] not in growable:
            fail(f"section {name} changed size")
        if old["sh_type"] in _PATCHED or old["sh_type"] in ("SHT_GNU_HASH", "SHT_HASH"):
            continue  # rewritten or patched: checked through the dynamic view
        # Others keep their bytes; a grown string table starts with the old one.
        source = PayloadSource(str(original), old["sh_offset"], old["sh_size"])
        if not same_bytes(source, str(staging), new["sh_offset"]):
            fail(f"section {name} has different bytes")


def _pair_segments(before: _Headers, after: _Headers) -> tuple[list[Container], list[Container]]:
    """(input headers not found unchanged in the output, output headers left to match them).

    PT_PHDR is never matched as it was: it must describe the table, which may have grown.
    """

    def key(phdr: Container) -> tuple[tuple[str, Any], ...]:
        return tuple(sorted(phdr.items()))

    kept = Counter(key(p) for p in after.phdrs if p["p_type"] != "PT_PHDR")
    changed = []
    for phdr in before.phdrs:
        if phdr["p_type"] != "PT_PHDR" and kept[key(phdr)]:
            kept[key(phdr)] -= 1
        else:
            changed.append(phdr)
    new = []
    for phdr in after.phdrs:
        if phdr["p_type"] == "PT_PHDR":
            new.append(phdr)
        elif kept[key(phdr)]:
            kept[key(phdr)] -= 1
            new.append(phdr)
    return changed, new


def _check_segments(before: _Headers, after: _Headers, original: Path, staging: Path) -> None:
    """The input's program headers, plus one PT_LOAD (or one grown, when repacking)."""
    changed, new = _pair_segments(before, after)
    for phdr in changed:
        kind = phdr["p_type"]
        twins = [p for p in new if p["p_type"] == kind]
        if kind == "PT_NULL":
            continue
        if not twins:
            fail(f"program header {kind} at {phdr['p_vaddr']:#x} was lost")
        new.remove(twins[0])
        _check_changed_segment(before, after, phdr, twins[0], (original, staging))
    if [p["p_type"] for p in new] not in ([], ["PT_LOAD"]):
        fail(f"program headers added: {[p['p_type'] for p in new]}")
    for phdr in new:
        if phdr["p_flags"] & 0x3:
            fail("the new PT_LOAD is writable or executable")


def _check_changed_segment(
    before: _Headers, after: _Headers, phdr: Container, twin: Container, files: tuple[Path, Path]
) -> None:
    """An input program header that changed, against its output twin: only PT_PHDR (grown
    with the table), the last PT_LOAD (grown by a repack) and moved notes may differ."""
    kind = phdr["p_type"]
    if kind == "PT_PHDR":
        grown = (len(after.phdrs) - len(before.phdrs)) * before.phentsize
        if (twin["p_filesz"], twin["p_memsz"]) != (
            phdr["p_filesz"] + grown,
            phdr["p_memsz"] + grown,
        ) or (twin["p_offset"], twin["p_vaddr"]) != (phdr["p_offset"], phdr["p_vaddr"]):
            fail("PT_PHDR does not describe the grown program header table")
    elif kind == "PT_LOAD":  # only the last one, in size, when a repack reuses it
        loads = [p for p in before.phdrs if p["p_type"] == "PT_LOAD"]
        fixed = ("p_offset", "p_vaddr", "p_paddr", "p_flags", "p_align")
        reused = len(loads) == sum(p["p_type"] == "PT_LOAD" for p in after.phdrs)
        last = phdr is max(loads, key=lambda p: p["p_vaddr"])
        if not (reused and last) or any(twin[k] != phdr[k] for k in fixed):
            fail(f"PT_LOAD at {phdr['p_vaddr']:#x} changed")
    elif kind in _MOVABLE_SEGMENTS:
        original, staging = files
        source = PayloadSource(str(original), phdr["p_offset"], phdr["p_filesz"])
        if twin["p_filesz"] != phdr["p_filesz"] or not same_bytes(
            source, str(staging), twin["p_offset"]
        ):
            fail(f"{kind} does not hold the bytes it held")
    else:
        fail(f"program header {kind} at {phdr['p_vaddr']:#x} changed")


def _violations(headers: _Headers) -> set[str]:
    """What ld.so or strip would trip over in this layout, as comparable sentences."""
    found = set(unmapped_segments(headers.phdrs))
    loads = [p for p in headers.phdrs if p["p_type"] == "PT_LOAD"]
    addresses = [load["p_vaddr"] for load in loads]
    if addresses != sorted(addresses):
        found.add("PT_LOAD entries are not in ascending address order")
    for load in loads:
        align = load["p_align"]
        if align < _MIN_PAGE or align & (align - 1):
            found.add(f"PT_LOAD at {load['p_vaddr']:#x} is aligned to {align}, not a page")
        elif load["p_offset"] % align != load["p_vaddr"] % align:
            found.add(f"PT_LOAD at {load['p_vaddr']:#x} is misaligned")
        if load["p_filesz"] > load["p_memsz"]:
            found.add(f"PT_LOAD at {load['p_vaddr']:#x} has more file than memory bytes")
    for first, second in _overlapping(
        [(p["p_offset"], p["p_offset"] + p["p_filesz"], f"{p['p_vaddr']:#x}") for p in loads]
    ):
        found.add(f"PT_LOADs at {first} and {second} overlap in the file")
    for first, second in _overlapping(
        [(p["p_vaddr"], p["p_vaddr"] + p["p_memsz"], f"{p['p_vaddr']:#x}") for p in loads]
    ):
        found.add(f"PT_LOADs at {first} and {second} overlap in memory")
    allocated = [
        (name, h)
        for name, h in zip(headers.names, headers.sections, strict=True)
        if h["sh_flags"] & _SHF_ALLOC
        and h["sh_size"]
        and not (h["sh_type"] == "SHT_NOBITS" and h["sh_flags"] & _SHF_TLS)  # .tbss: no memory
    ]
    for name, header in allocated:
        start, end = header["sh_addr"], header["sh_addr"] + header["sh_size"]
        nobits = header["sh_type"] == "SHT_NOBITS"
        holders = [load for load in loads if _inside(load, start, end, header["sh_offset"], nobits)]
        if len(holders) != 1:
            found.add(f"section {name} [{start:#x}, {end:#x}) lies outside its segment")
    for first, second in _overlapping(
        [(h["sh_addr"], h["sh_addr"] + h["sh_size"], name) for name, h in allocated]
    ):
        found.add(f"sections {first} and {second} overlap in memory")
    for first, second in _overlapping(
        [
            (h["sh_offset"], h["sh_offset"] + h["sh_size"], name)
            for name, h in allocated
            if h["sh_type"] != "SHT_NOBITS"
        ]
    ):
        found.add(f"sections {first} and {second} overlap in the file")
    return found


def _overlapping(ranges: list[tuple[int, int, str]]) -> list[tuple[str, str]]:
    """Pairs (the range reaching furthest so far, a range starting before it ends), sorted."""
    pairs = []
    reach: tuple[int, str] | None = None
    for start, end, name in sorted(r for r in ranges if r[1] > r[0]):
        if reach is not None and start < reach[0]:
            pairs.append((reach[1], name))
        if reach is None or end > reach[0]:
            reach = (end, name)
    return pairs


def _inside(load: Container, start: int, end: int, offset: int, nobits: bool) -> bool:
    base = load["p_vaddr"]
    if not (base <= start and end <= base + load["p_memsz"]):
        return False
    if nobits:
        return start >= base + load["p_filesz"]
    return end <= base + load["p_filesz"] and offset - load["p_offset"] == start - base


def _check_layout(before: _Headers, after: _Headers) -> None:
    """The output breaks no layout rule that the input kept."""
    new = _violations(after) - _violations(before)
    if new:
        fail(sorted(new)[0])
