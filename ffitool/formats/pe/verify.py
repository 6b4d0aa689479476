"""Checks a packed DLL must pass before it replaces anything.

The staged file is read again and compared with the original:

- the blob decodes to exactly the planned modules and bytes, at the planned offset, and the
  inspecting reader finds it through the export directory;
- no certificate is left (the security data directory is empty);
- the header bytes are the original's but for the fields the writer owns (NumberOfSections,
  SizeOfInitializedData, SizeOfImage, CheckSum, the export and security data directories and
  the new section header); every original section header and every original section's bytes
  are unchanged, and so are the bytes between and after them (an overlay);
- the new section is the last, read-only initialized data, holding the blob at its start, at
  the planned RVA and file offset, aligned, ending the file and the image (SizeOfImage), and
  SizeOfInitializedData grew by its file size;
- every original export resolves as before: each ordinal to the same RVA or the same forwarder
  string, each name to the same ordinal; the name table is sorted by byte value; Base is the
  original's; `__tvm_ffi__library_bin` is the one name added (or re-pointed) and resolves to
  the blob (`check_blob` finds it there through the export directory);
- the optional header's CheckSum is the file's.
"""

from __future__ import annotations

import itertools
import os
from pathlib import Path

from ffitool.edit.plan import PayloadSource, align
from ffitool.edit.stream import same_bytes
from ffitool.edit.verification import fail
from ffitool.formats.pe.layout import (
    CHECKSUM,
    INITIALIZED_DATA,
    SIZE_OF_IMAGE,
    ExportTable,
    PeLayout,
    export_table,
    pe_checksum,
)
from ffitool.formats.pe.reader import (
    EXPORT_ENTRY,
    SECTION_HEADER,
    SECURITY_ENTRY,
    PeFile,
    PeMalformed,
)
from ffitool.formats.pe.writer import NAME, SECTION_FLAGS, SECTION_NAME, PeEdit


def verify_pe(staging: Path, original: Path, edit: PeEdit) -> None:
    """Raise VerificationError, naming the first difference, unless `staging` is right (the
    pack flow has checked its blob)."""
    with open(original, "rb") as old_file, open(staging, "rb") as new_file:
        try:
            old = PeLayout.read(
                PeFile(old_file, old_file.fileno(), os.fstat(old_file.fileno()).st_size)
            )
            new = PeLayout.read(
                PeFile(new_file, new_file.fileno(), os.fstat(new_file.fileno()).st_size)
            )
            if new.directory(SECURITY_ENTRY) != (0, 0):
                fail("a certificate table is still declared")
            if new.pe.size != edit.size:
                fail(f"the file has {new.pe.size} bytes, planned {edit.size}")
            _check_headers(old, new, edit, str(original), str(staging))
            _check_section(old, new, edit)
            before, after = export_table(old.pe), export_table(new.pe)
            assert after is not None  # check_blob found the blob through it
            _check_exports(before, after)
            actual = pe_checksum(new_file.fileno(), new.pe.size, new.optional_at + CHECKSUM)
            if new.checksum != actual:
                fail(
                    f"the optional header's CheckSum is {new.checksum:#x}, the file's is"
                    f" {actual:#x}"
                )
        except PeMalformed as exc:
            fail(str(exc))


def _owned_ranges(layout: PeLayout, edit: PeEdit) -> list[tuple[int, int]]:
    """The header bytes the writer may change: (offset, length), in file order."""
    assert edit.placement is not None
    return sorted(
        [
            (layout.signature_at + 6, 2),  # NumberOfSections
            (layout.optional_at + INITIALIZED_DATA, 4),
            (layout.optional_at + SIZE_OF_IMAGE, 4),
            (layout.optional_at + CHECKSUM, 4),
            (layout.directory_at(EXPORT_ENTRY), 8),
            (layout.directory_at(SECURITY_ENTRY), 8),
            (layout.table_at + SECTION_HEADER.size * edit.placement.section, SECTION_HEADER.size),
        ]
    )


def _check_headers(old: PeLayout, new: PeLayout, edit: PeEdit, original: str, staging: str) -> None:
    assert edit.placement is not None
    if (old.signature_at, old.optional_size, old.magic) != (
        new.signature_at,
        new.optional_size,
        new.magic,
    ):
        fail("the PE header moved or changed kind")
    index = edit.placement.section
    old_sections, new_sections = old.pe.headers.sections, new.pe.headers.sections
    if len(new_sections) != index + 1:
        fail(f"{len(new_sections)} sections, expected {index + 1}")
    table = SECTION_HEADER.size * index
    if new.raw_sections[:table] != old.raw_sections[:table]:
        changed = next(
            n
            for n in range(index)
            if new.raw_sections[SECTION_HEADER.size * n : SECTION_HEADER.size * (n + 1)]
            != old.raw_sections[SECTION_HEADER.size * n : SECTION_HEADER.size * (n + 1)]
        )
        fail(f"section header {changed} ({old_sections[changed].name}) changed")
    for section in old_sections[:index]:
        if section.raw_size and not same_bytes(
            PayloadSource(original, section.raw_offset, section.raw_size),
            staging,
            section.raw_offset,
        ):
            fail(f"the bytes of section {section.name} changed")
    start = 0
    for offset, length in [*_owned_ranges(old, edit), (edit.kept, 0)]:
        if offset > start and not same_bytes(
            PayloadSource(original, start, offset - start), staging, start
        ):
            what = "headers" if start < old.table_at else "bytes outside the sections"
            fail(f"the {what} changed between offsets {start} and {offset}")
        start = max(start, offset + length)


def _check_section(old: PeLayout, new: PeLayout, edit: PeEdit) -> None:
    """The new section: last, read-only data, holding the blob, ending the file and image."""
    placement = edit.placement
    assert placement is not None
    section = new.pe.headers.sections[-1]
    others = new.pe.headers.sections[:-1]
    if section.name != SECTION_NAME or section.flags != SECTION_FLAGS:
        fail(f"the last section is not a read-only {SECTION_NAME} (flags {section.flags:#x})")
    if (section.virtual_address, section.raw_offset) != (placement.address, placement.file_offset):
        fail(f"{SECTION_NAME} is not at the blob's RVA and file offset")
    end = max((s.virtual_address + s.extent for s in others), default=0)
    if section.virtual_address != align(end, new.section_alignment):
        # unreachable: the address was just proved the planned one, which the plan computed
        # from these same sections, proved unchanged by _check_headers (a second defence).
        fail(f"{SECTION_NAME} does not follow the last section at the section alignment")
    if section.raw_offset % new.file_alignment or section.raw_size % new.file_alignment:
        fail(f"{SECTION_NAME}'s file bytes are not aligned to FileAlignment")
    if section.raw_offset < edit.kept or section.raw_offset + section.raw_size != new.pe.size:
        fail(f"{SECTION_NAME}'s file bytes do not follow the original's and end the file")
    if not placement.size <= section.virtual_size <= section.raw_size:
        fail(
            f"{SECTION_NAME}'s VirtualSize {section.virtual_size} is not between the blob's"
            f" {placement.size} bytes and the section's {section.raw_size} file bytes"
        )
    rva, size = new.directory(EXPORT_ENTRY)
    if not (section.virtual_address + placement.size <= rva
            and rva + size <= section.virtual_address + section.virtual_size):  # fmt: skip
        fail(f"the export directory is not in {SECTION_NAME} after the blob")
    expected = align(section.virtual_address + section.virtual_size, new.section_alignment)
    if new.size_of_image != expected:
        fail(f"SizeOfImage is {new.size_of_image:#x}, the sections end at {expected:#x}")
    dropped = old.pe.headers.sections[-1].raw_size if edit.reused else 0
    before, after = old.initialized_data, new.initialized_data
    if after != (before - dropped + section.raw_size) & 0xFFFFFFFF:
        fail(f"SizeOfInitializedData is {after}, not {before} with {SECTION_NAME}'s bytes")


def _check_exports(before: ExportTable | None, after: ExportTable) -> None:
    names = [name for name, _ in after.names]
    if any(a >= b for a, b in itertools.pairwise(names)):
        fail("the export name table is not sorted")
    old_names = dict(before.names) if before is not None else {}
    new_names = dict(after.names)
    if before is not None:
        if after.base != before.base:
            fail(f"the ordinal base changed from {before.base} to {after.base}")
        if after.dll_name != before.dll_name or after.header[:3] != before.header[:3]:
            fail("the export directory's name, time stamp or version changed")
    added = set(new_names) - set(old_names)
    if added - {NAME} or len(after.names) != len(old_names) + (NAME not in old_names):
        fail("exports other than the blob's were added or dropped")
    resolved_before = before.resolved() if before is not None else {}
    resolved_after = after.resolved()
    ours = after.base + new_names[NAME]  # check_blob found it at the blob
    for ordinal, target in resolved_before.items():
        if ordinal != ours and resolved_after.get(ordinal) != target:
            fail(f"ordinal {ordinal} resolves to {resolved_after.get(ordinal)}, was {target}")
    for name, position in old_names.items():
        if name != NAME and new_names.get(name) != position:
            fail(f"export {name.decode(errors='replace')!r} names another ordinal than before")
    grown = len(after.addresses) - (len(before.addresses) if before is not None else 0)
    if grown != (NAME not in old_names) or (
        NAME in old_names and new_names[NAME] != old_names[NAME]
    ):
        fail("the export address table gained or lost entries other than the blob's")
