"""Checks a packed Mach-O file must pass before it replaces anything.

The staged file is read again, slice by slice, and compared with the original:

- the blob decodes to exactly the planned modules and bytes, at the planned offset, and the
  inspecting reader finds it exported (external in the symbol table and in the export trie);
- every load command other than the ones the writer owns (`__LINKEDIT`'s segment, the
  symbol and dynamic symbol tables, the dyld info, the `__LINKEDIT` data commands) is the
  original's, byte for byte, in the same order: every other segment and section keeps its
  address, size and file offset; and every such segment's bytes are the original's;
- the new segment is one read-only section holding the blob, right before `__LINKEDIT`,
  which is last and ends the slice; the `__LINKEDIT` tables the writer did not rebuild keep
  their bytes;
- the symbol table is the original's plus (or with a re-pointed) `___tvm_ffi__library_bin`,
  the LC_DYSYMTAB ranges cover it consistently, and indirect symbols and external relocations
  name the same symbols as before; the export trie holds every original entry with its bytes,
  plus the blob's;
- a re-signed slice's signature verifies (every page hash recomputed); slices not packed are
  byte-identical.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

from ffitool.edit.plan import PayloadSource
from ffitool.edit.stream import same_bytes
from ffitool.edit.verification import fail
from ffitool.formats.macho.commands import (
    HEADER,
    LC_DYLD_CHAINED_FIXUPS,
    LC_DYLD_INFO,
    LC_DYLD_INFO_ONLY,
    LC_DYSYMTAB,
    LC_SEGMENT_64,
    LC_SYMTAB,
    N_EXT,
    N_PEXT,
    N_SECT,
    N_TYPE,
    NLIST,
    SECTION,
    SEGMENT,
    MachoError,
)
from ffitool.formats.macho.image import MachoSlice, symbol_name
from ffitool.formats.macho.sign import signature_problems
from ffitool.formats.macho.trie import regular_export
from ffitool.formats.macho.writer import (
    LINKEDIT_DATA,
    RAW_NAME,
    SECTION_NAME,
    SEGMENT_NAME,
    MachoEdit,
    SlicePlacement,
    linkedit_pieces,
    with_segment_start,
)

_OWNED = {LC_SYMTAB, LC_DYSYMTAB, LC_DYLD_INFO, LC_DYLD_INFO_ONLY, *LINKEDIT_DATA}
_REBUILT = {"symbol table", "string table", "export trie", "indirect symbol table",
            "external relocations", "code signature", "chained fixups"}  # fmt: skip


def verify_macho(staging: Path, original: Path, edit: MachoEdit) -> None:
    """Raise VerificationError, naming the first difference, unless `staging` is right (the
    pack flow has checked the blob of each packed slice)."""
    with open(original, "rb") as old, open(staging, "rb") as new:
        if os.fstat(new.fileno()).st_size != edit.size:
            fail(f"the file has {os.fstat(new.fileno()).st_size} bytes, planned {edit.size}")
        for start, size, at, length, placement in edit.slices:
            if placement is None:
                if not same_bytes(PayloadSource(str(original), start, size), str(staging), at):
                    fail(f"a slice that was not packed changed (at offset {at})")
                continue
            try:
                before = MachoSlice.read(old.fileno(), start, size)
                after = MachoSlice.read(new.fileno(), at, length)
                _check_slice(before, after, placement, str(original), str(staging))
                _check_exports(after, placement, edit.exports[at])
            except MachoError as exc:
                fail(f"{placement.arch} slice: {exc}")


def _check_slice(
    before: MachoSlice, after: MachoSlice, placement: SlicePlacement, original: str, staging: str
) -> None:
    label = placement.arch
    if before.header[:16] + before.header[24:] != after.header[:16] + after.header[24:]:
        fail(f"{label}: the Mach-O header changed beyond its command count and size")
    kept_before = [c.data for c in before.commands if not _owned(c.cmd, c.data)]
    kept_after = [c.data for c in after.commands if not _owned(c.cmd, c.data)]
    if kept_before != kept_after:
        fail(f"{label}: load commands other than the writer's differ from the original's")
    _check_segments(before, after, placement, original, staging)
    _check_tables(before, after, original, staging)
    _check_chained_fixups(before, after)
    _check_symbols(before, after, placement)
    signature = after.signature()
    if placement.signature == "none":
        if signature is not None:
            fail(f"{label}: an LC_CODE_SIGNATURE remains though the slice is unsigned")
    else:
        problems = signature_problems(after.fd, after.start, after.size)
        if problems:
            fail(f"{label}: the new code signature does not verify: {problems[0]}")


def _check_exports(
    after: MachoSlice, placement: SlicePlacement, planned: dict[bytes, bytes]
) -> None:
    """The new trie holds exactly the planned entries (the input's, decoded when the edit was
    planned from the same locked file, plus the blob's), the blob's pointing at the blob."""
    text = next(s for s in after.segments() if s.name == "__TEXT")
    if planned.get(RAW_NAME) != regular_export(placement.address - text.vmaddr):
        fail(f"{placement.arch}: the planned export of the blob does not point at it")
    if after.trie() != planned:
        fail(f"{placement.arch}: the export trie is not the original's plus the blob's entry")


def _owned(cmd: int, data: bytes) -> bool:
    """Commands the writer rewrites: `__LINKEDIT`'s and its own segment, and the tables'."""
    if cmd == LC_SEGMENT_64:
        name = SEGMENT.unpack_from(data)[2].split(b"\0", 1)[0]
        return name in (b"__LINKEDIT", SEGMENT_NAME.encode())
    return cmd in _OWNED


def _check_segments(
    before: MachoSlice, after: MachoSlice, placement: SlicePlacement, original: str, staging: str
) -> None:
    label = placement.arch
    segments = after.segments()
    if len(segments) < 2 or segments[-1].name != "__LINKEDIT" or segments[-2].name != SEGMENT_NAME:
        fail(f"{label}: {SEGMENT_NAME} is not the segment right before a last __LINKEDIT")
    blob, linkedit = segments[-2], segments[-1]
    data = after.commands[blob.index].data
    _, _, _, vmaddr, vmsize, fileoff, filesize, maxprot, initprot, nsects, _ = SEGMENT.unpack_from(
        data
    )
    section = SECTION.unpack_from(data, SEGMENT.size) if nsects == 1 else None
    names = (SECTION_NAME.encode().ljust(16, b"\0"), SEGMENT_NAME.encode().ljust(16, b"\0"))
    offset = placement.file_offset - placement.slice_offset
    expected = (*names, placement.address, placement.size, offset)
    if section is None or section[:5] != expected or (maxprot, initprot) != (1, 1):
        fail(f"{label}: {SEGMENT_NAME} is not one read-only section holding the blob")
    if (vmaddr, fileoff, filesize) != (placement.address, offset, placement.size):
        fail(f"{label}: {SEGMENT_NAME} does not map the blob")
    if linkedit.vmaddr < vmaddr + vmsize or linkedit.fileoff < fileoff + filesize:
        fail(f"{label}: __LINKEDIT overlaps {SEGMENT_NAME}")
    if linkedit.fileoff + linkedit.filesize != after.size:
        fail(f"{label}: __LINKEDIT does not end the slice")
    header_end = HEADER.size + max(before.sizeofcmds, after.sizeofcmds)
    for segment in before.segments():
        if segment.name in ("__LINKEDIT", SEGMENT_NAME):
            continue
        start = max(segment.fileoff, header_end)
        length = segment.fileoff + segment.filesize - start
        if length > 0 and not same_bytes(
            PayloadSource(original, before.start + start, length), staging, after.start + start
        ):
            fail(f"{label}: the bytes of segment {segment.name} changed")


def _tables(image: MachoSlice) -> dict[tuple[int, int, str], tuple[int, int]]:
    """(cmd, field offset, what) -> (offset, length) of each `__LINKEDIT` table."""
    return {
        (image.commands[p.command].cmd, p.at, p.what): (p.offset, p.length)
        for p in linkedit_pieces(image)
    }


def _check_tables(before: MachoSlice, after: MachoSlice, original: str, staging: str) -> None:
    old, new = _tables(before), _tables(after)
    for key, (offset, length) in old.items():
        if key[2] in _REBUILT:
            continue
        if key not in new or new[key][1] != length:
            fail(f"its {key[2]} changed size or disappeared")
        if length and not same_bytes(
            PayloadSource(original, before.start + offset, length),
            staging,
            after.start + new[key][0],
        ):
            fail(f"the bytes of its {key[2]} changed")


def _check_chained_fixups(before: MachoSlice, after: MachoSlice) -> None:
    """dyld wants one fixup-starts entry per segment: the new segment's is empty, the others'
    are the original's."""
    old, new = _tables(before), _tables(after)
    key = (LC_DYLD_CHAINED_FIXUPS, 8, "chained fixups")
    if key not in old:
        return
    if key not in new:
        fail("its chained fixups disappeared")
    data = before.pread(*old[key], "chained fixups")
    count = len(after.segments())
    expected = data if len(before.segments()) == count else with_segment_start(data, count - 2)
    if after.pread(*new[key], "chained fixups") != expected:
        fail("its chained fixups are not the original's with one empty segment entry")


def _check_symbols(before: MachoSlice, after: MachoSlice, placement: SlicePlacement) -> None:
    """The symbol table is the original's, byte for byte, plus (or with a re-pointed) blob
    symbol; names are only appended to the string table, so every other entry keeps its
    string offset and hence its name."""
    label = placement.arch
    old, old_strings = before.symbols()
    new, new_strings = after.symbols()
    if new_strings[: len(old_strings)] != old_strings:
        fail(f"{label}: the string table is not the original's with names appended")
    section = len(after.sections())
    index = next(
        (
            number
            for number, (strx, n_type, n_sect, _, n_value) in enumerate(NLIST.iter_unpack(new))
            if (n_type, n_sect, n_value) == (N_SECT | N_EXT, section, placement.address)
            and symbol_name(new_strings, strx) == RAW_NAME
        ),
        None,
    )
    if index is None:
        # unreachable: check_blob already found this export at the blob's address, and the
        # blob's section header was proved the planned one: no other section holds it.
        fail(f"{label}: the symbol table has no external {RAW_NAME.decode()} in the blob")
    at, size = index * NLIST.size, NLIST.size
    count = len(old) // size
    if len(new) == len(old) + size:
        mapping = [n if n < index else n + 1 for n in range(count)]
        if new[:at] + new[at + size :] != old:
            fail(f"{label}: symbols other than the blob's changed")
    elif len(new) == len(old):
        mapping = list(range(count))
        renamed = symbol_name(old_strings, NLIST.unpack_from(old, at)[0]) != RAW_NAME
        if new[:at] != old[:at] or new[at + size :] != old[at + size :] or renamed:
            fail(f"{label}: symbols other than the blob's changed")
    else:
        fail(f"{label}: {(len(new) - len(old)) // size} symbols were added")
    ilocal, nlocal, iextdef, nextdef, iundef, nundef = after.dysymtab()[:6]
    if not (ilocal + nlocal == iextdef and iextdef + nextdef == iundef
            and iundef + nundef == len(new) // size and iextdef <= index < iundef):  # fmt: skip
        fail(f"{label}: LC_DYSYMTAB's ranges do not cover the symbol table")
    for strx, n_type, *_ in NLIST.iter_unpack(new[iextdef * size : iundef * size]):
        if n_type & (N_EXT | N_PEXT) != N_EXT or not n_type & N_TYPE:
            name = symbol_name(new_strings, strx)
            fail(f"{label}: {name!r} is in the external definitions but is not one")
    for offset_at, unit, what in ((12, 4, "indirect symbols"), (14, 8, "external relocations")):
        _check_indices(before, after, offset_at, unit, what, mapping)


def _check_indices(
    before: MachoSlice, after: MachoSlice, at: int, unit: int, what: str, mapping: list[int]
) -> None:
    """Each entry of the table names the same symbol as before, through the index mapping."""
    old_fields, new_fields = before.dysymtab(), after.dysymtab()
    if old_fields[at + 1] != new_fields[at + 1]:
        fail(f"the number of {what} changed")
    if not old_fields[at + 1]:  # an empty table's offset means nothing, wherever it points
        return
    old = before.pread(old_fields[at], old_fields[at + 1] * unit, what)
    new = after.pread(new_fields[at], new_fields[at + 1] * unit, what)
    step = "<I" if unit == 4 else "<iI"
    for (*_, a), (*_, b) in zip(
        struct.iter_unpack(step, old), struct.iter_unpack(step, new), strict=True
    ):
        if unit == 4:
            expected = a if a & 0xC0000000 or a >= len(mapping) else mapping[a]
        elif a & (1 << 27) and a & 0xFFFFFF < len(mapping):
            expected = (a & ~0xFFFFFF) | mapping[a & 0xFFFFFF]
        else:
            expected = a
        if b != expected:
            fail(f"its {what} name other symbols than before")
    if unit == 8 and [r[0] for r in struct.iter_unpack(step, old)] != [
        r[0] for r in struct.iter_unpack(step, new)
    ]:
        fail(f"its {what} changed addresses")
