"""Give a Windows DLL an exported `__tvm_ffi__library_bin`, moving no section.

The blob goes into one new section, `.tvmffi` (initialized, read-only data), appended after the
last section: its header takes the free slot after the section table, its address follows the
last section's, rounded to SectionAlignment, and its file bytes follow the input's, rounded to
FileAlignment. Data past the last section that is not a certificate (an overlay, a COFF symbol
table) keeps its file offset: the new section's bytes go after it.

`GetProcAddress` finds a name only through the export directory, so the directory is rebuilt in
the new section, after the blob: every export keeps its ordinal and address, every name its
ordinal, every forwarder its string (copied: a forwarder is recognised by an address inside the
export directory's range, which moves). `__tvm_ffi__library_bin` is added at the ordinal after
the last (Base + NumberOfFunctions), its name inserted where the byte-wise sorted name table
wants it; if the DLL exports that name already, its address table entry is re-pointed at the
new blob instead, so that no ordinal or slot changes. The old directory's bytes stay where
they were, unreferenced.

Then the headers: NumberOfSections, SizeOfInitializedData, SizeOfImage, the export data
directory and the checksum (computed over the written file, `write_pe_edit`). An Authenticode
certificate, which covers the old bytes, is dropped (a warning says so). Repacking a DLL whose
last section is ffitool's `.tvmffi` rewrites that section in place.

Everything is decided from the headers and the export tables before a byte is written
(`plan_pe_edit`); section contents other than the export directory's are never read, nor is
any payload. Every value written is first checked to fit its field (a blob over 4 GiB, a last
section near RVA 0xFFFFFFFF are refused, naming the field), and alignments the PE/COFF
specification does not allow are refused (`check_alignments`). So the output is bounded:

    output <= input + blob + E + 2 x (FileAlignment - 1) + 7,   FileAlignment <= 64 KiB

where E, the rebuilt export directory, is at most the input's export tables and strings plus
73 bytes (the blob's entry, name and a new header), and those are refused when they take more
bytes than the input has (`layout.export_table`): whatever the headers say, the output is at most
2 x input + blob + 131,150 bytes.
"""

from __future__ import annotations

import bisect
import os
import struct
from dataclasses import dataclass, field

from ffitool.edit.fileedit import BlobWriter, FileEdit
from ffitool.edit.plan import align
from ffitool.errors import InputError
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
    EXPORT_DIRECTORY,
    EXPORT_ENTRY,
    MAX_SECTIONS,  # the reader's limit: the packed file must be read back
    SECTION_HEADER,
    SECURITY_ENTRY,
    PeFile,
    PeMalformed,
)
from ffitool.symbols import LIBRARY_BIN

SECTION_NAME = ".tvmffi"
SECTION_FLAGS = 0x40 | 0x40000000
"""IMAGE_SCN_CNT_INITIALIZED_DATA | IMAGE_SCN_MEM_READ: read-only data."""
NAME = LIBRARY_BIN.encode()

FORCE_INTEGRITY = 0x80
"""IMAGE_DLLCHARACTERISTICS_FORCE_INTEGRITY: the loader refuses the DLL unless its signature
verifies, which no rewrite keeps."""
_DIRECTORY_ALIGN = 8
FIELD_MAX = 0xFFFFFFFF
"""Every RVA, size and file offset the writer sets is a 32-bit field."""
PAGE_SIZE = 0x1000
"""The page size of every machine a DLL is packed for (x86, x86-64, ARM, arm64)."""
MIN_FILE_ALIGNMENT = 0x200
MAX_FILE_ALIGNMENT = 0x10000
_MAX_ORDINAL = 0xFFFF


@dataclass(frozen=True)
class PePlacement:
    """Where the blob went: its file offset, RVA and size, and the new section's index."""

    file_offset: int
    address: int
    size: int
    section: int


def build_exports(table: ExportTable, at: int, blob_rva: int) -> bytes:
    """The export directory rebuilt at RVA `at` with the blob exported at `blob_rva`: the
    export data directory's bytes (the directory, its tables and strings).

    The old directory's fields are kept but for the table addresses and counts; the name table
    stays sorted by byte value, which is what the loader's binary search compares.
    """
    addresses = list(table.addresses)
    names = list(table.names)
    existing = next((position for name, position in names if name == NAME), None)
    if existing is None:
        position = len(addresses)
        if table.base + position > _MAX_ORDINAL:
            raise PeMalformed(f"no ordinal is free after {table.base + position - 1}")
        addresses.append(blob_rva)
        bisect.insort(names, (NAME, position), key=lambda entry: entry[0])
    else:
        addresses[existing] = blob_rva
    count, named = len(addresses), len(names)
    eat = at + EXPORT_DIRECTORY.size
    pointers = eat + 4 * count
    ordinals = pointers + 4 * named
    strings = bytearray()
    strings_at = ordinals + 2 * named

    def string(data: bytes) -> int:
        offset = strings_at + len(strings)
        strings.extend(data + b"\0")
        return offset

    dll_name = string(table.dll_name) if table.header[3] else 0
    name_rvas = [string(name) for name, _ in names]
    for position, forwarder in sorted(table.forwarders.items()):
        if position != existing:
            addresses[position] = string(forwarder)
    _field(strings_at + len(strings), "the export directory's end RVA")
    header = list(table.header)
    header[3] = dll_name
    header[6:11] = [count, named, eat, pointers, ordinals]
    data = (
        EXPORT_DIRECTORY.pack(*header)
        + struct.pack(f"<{count}I", *addresses)
        + struct.pack(f"<{named}I", *name_rvas)
        + struct.pack(f"<{named}H", *(position for _, position in names))
        + strings
    )
    return data


@dataclass(kw_only=True)
class PeEdit(FileEdit):
    """Everything the writer does, decided before a byte is written: the file edit, and where
    the checksum goes once it is written."""

    placement: PePlacement | None = None
    kept: int = 0
    """Input bytes [0, kept) are the output's, but for the patched header fields."""
    checksum_at: int = 0
    reused: bool = False
    """The input's last section was ffitool's and is rewritten in place."""
    warnings: list[str] = field(default_factory=list)


def plan_pe_edit(fd: int, size: int, display: str, blob_size: int) -> PeEdit:
    """Lay out the packed DLL, or refuse with one line saying why."""
    try:
        with os.fdopen(os.dup(fd), "rb") as stream:
            return _plan(PeFile(stream, fd, size), blob_size)
    except PeMalformed as exc:
        raise InputError(f"{display}: cannot pack this PE file: {exc}") from None
    except OSError as exc:
        raise InputError(f"{display}: read error: {exc.strerror or exc}") from None


def _plan(pe: PeFile, blob_size: int) -> PeEdit:
    layout = PeLayout.read(pe)
    sections = pe.headers.sections
    if layout.directory_count <= SECURITY_ENTRY:
        raise PeMalformed(f"only {layout.directory_count} data directories: no export directory")
    check_alignments(layout.section_alignment, layout.file_alignment)
    edit = PeEdit()
    kept = _without_certificate(layout, edit)
    reused = bool(sections) and sections[-1].name == SECTION_NAME
    previous = sections[:-1] if reused else sections
    for section in previous:
        if section.raw_size and section.raw_offset + section.raw_size > kept:
            raise PeMalformed(f"section {section.name}'s bytes run past the file's end")
    old_raw = 0
    if reused:
        kept, old_raw = _reusable(layout, kept)
    if len(previous) >= MAX_SECTIONS:
        raise PeMalformed(
            f"it has {len(previous)} sections: a new one would pass the PE specification's"
            f" {MAX_SECTIONS}"
        )
    header_at = layout.table_at + SECTION_HEADER.size * len(previous)
    first_raw = min((s.raw_offset for s in previous if s.raw_size), default=kept)
    if header_at + SECTION_HEADER.size > min(layout.size_of_headers, first_raw):
        raise PeMalformed(
            "no room for another section header before the first section's data"
            f" ({header_at + SECTION_HEADER.size} > {min(layout.size_of_headers, first_raw)})"
        )
    if not reused and any(pe.read(header_at, SECTION_HEADER.size, "header slot")):
        raise PeMalformed("the bytes after the section table are in use")
    end = max((s.virtual_address + s.extent for s in previous), default=0)
    placed = _Placed.lay_out(layout, export_table(pe), end, kept, blob_size)
    new_initialized = _field(
        layout.initialized_data - old_raw + placed.raw_size, "SizeOfInitializedData"
    )
    index = len(previous)
    header = SECTION_HEADER.pack(
        SECTION_NAME.encode(),
        placed.content,
        placed.rva,
        placed.raw_size,
        placed.raw_offset,
        *(0, 0, 0, 0, SECTION_FLAGS),
    )
    edit.copies.append((0, kept, 0))
    edit.patches += [
        (layout.signature_at + 6, struct.pack("<H", index + 1)),
        (layout.optional_at + INITIALIZED_DATA, struct.pack("<I", new_initialized)),
        (layout.optional_at + SIZE_OF_IMAGE, struct.pack("<I", placed.size_of_image)),
        (
            layout.directory_at(EXPORT_ENTRY),
            struct.pack("<II", placed.exports_rva, placed.exports_size),
        ),
        (header_at, header),
        (placed.raw_offset + placed.exports_rva - placed.rva, placed.exports),
    ]
    if all(layout.directory(SECURITY_ENTRY)):
        edit.patches.append((layout.directory_at(SECURITY_ENTRY), bytes(8)))
    edit.placement = PePlacement(placed.raw_offset, placed.rva, blob_size, index)
    edit.blobs.append(placed.raw_offset)
    edit.size = placed.raw_offset + placed.raw_size
    edit.kept = kept
    edit.checksum_at = layout.optional_at + CHECKSUM
    edit.reused = reused
    return edit


def check_alignments(section_alignment: int, file_alignment: int) -> None:
    """Refuse the alignments the PE/COFF specification does not allow: FileAlignment a power
    of 2 from 512 to 64 KiB, SectionAlignment a power of 2 no smaller; below the page size,
    SectionAlignment must equal FileAlignment (the one case where FileAlignment is under 512).

    Besides keeping the output a file Windows maps, this bounds the padding the writer adds
    to 2 x (64 KiB - 1) bytes: a FileAlignment of 1 GiB would turn a 2 KB DLL into 2 GiB.
    """
    for name, value in (("SectionAlignment", section_alignment), ("FileAlignment", file_alignment)):
        if value <= 0 or value & (value - 1):
            raise PeMalformed(f"{name} {value:#x} is not a power of 2")
    if section_alignment < PAGE_SIZE:
        if file_alignment != section_alignment:
            raise PeMalformed(
                f"FileAlignment {file_alignment:#x} differs from SectionAlignment"
                f" {section_alignment:#x}, which is below the page size"
            )
    elif not MIN_FILE_ALIGNMENT <= file_alignment <= MAX_FILE_ALIGNMENT:
        raise PeMalformed(
            f"FileAlignment {file_alignment:#x} is outside {MIN_FILE_ALIGNMENT:#x}"
            f"..{MAX_FILE_ALIGNMENT:#x}"
        )
    elif section_alignment < file_alignment:
        raise PeMalformed(
            f"SectionAlignment {section_alignment:#x} is below FileAlignment {file_alignment:#x}"
        )


def _field(value: int, what: str) -> int:
    """`value`, if the 32-bit header field `what` can hold it: else a refusal naming the field,
    before anything is written (struct.pack would fail halfway, or a mask would wrap)."""
    if not 0 <= value <= FIELD_MAX:
        raise PeMalformed(f"{what} would be {value:#x}, which its 32-bit field cannot hold")
    return value


def _without_certificate(layout: PeLayout, edit: PeEdit) -> int:
    """Where the input's bytes that are kept end: before its certificate table, if any (the
    file's size otherwise); a warning says the certificate is dropped."""
    size = layout.pe.size
    cert_offset, cert_size = layout.directory(SECURITY_ENTRY)
    if not (cert_offset and cert_size):
        return size
    if cert_offset + cert_size > size:
        raise PeMalformed(f"the certificate table ends past the file's end ({size} bytes)")
    if cert_offset + cert_size < size:
        raise PeMalformed(f"{size - cert_offset - cert_size} bytes follow the certificate table")
    warning = (
        "its Authenticode certificate was removed: it signed the unpacked file; sign the"
        " output again to ship a signed DLL"
    )
    if layout.dll_characteristics & FORCE_INTEGRITY:
        warning += " (it is flagged FORCE_INTEGRITY: Windows loads it only once signed)"
    edit.warnings.append(warning)
    return cert_offset


def _reusable(layout: PeLayout, kept: int) -> tuple[int, int]:
    """(where the kept bytes end, the raw size dropped) when the last section is ffitool's
    `.tvmffi`, rewritten in place: it must end the file and hold nothing another directory
    points at."""
    ours = layout.pe.headers.sections[-1]
    if ours.raw_offset + ours.raw_size < kept:
        raise PeMalformed(f"data follows the {SECTION_NAME} section")
    for index in range(layout.directory_count):
        rva, length = layout.directory(index)
        inside = ours.virtual_address <= rva < ours.virtual_address + ours.extent
        if index not in (EXPORT_ENTRY, SECURITY_ENTRY) and length and inside:
            raise PeMalformed(f"data directory {index} points into {SECTION_NAME}")
    return ours.raw_offset, ours.raw_size


@dataclass(frozen=True)
class _Placed:
    """The new section's header fields and the export directory it holds, each checked to fit
    its 32-bit field."""

    rva: int
    content: int
    raw_offset: int
    raw_size: int
    size_of_image: int
    exports_rva: int
    exports: bytes

    @property
    def exports_size(self) -> int:
        return len(self.exports)

    @classmethod
    def lay_out(
        cls, layout: PeLayout, table: ExportTable | None, end: int, kept: int, blob_size: int
    ) -> _Placed:
        """The section after the image's `end` and the file's `kept` bytes: the blob, then the
        export directory. Its file size is at most the blob, the rebuilt directory and
        2 x (FileAlignment - 1) + 7 bytes of padding."""
        if table is None:
            table = ExportTable((0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0), b"", [], {}, [])
        rva = _field(align(end, layout.section_alignment), f"{SECTION_NAME}'s VirtualAddress")
        if blob_size > FIELD_MAX:
            raise PeMalformed(
                f"a blob of {blob_size} bytes does not fit in a section: {SECTION_NAME}'s"
                " VirtualSize is a 32-bit field"
            )
        exports_rva = _field(rva + align(blob_size, _DIRECTORY_ALIGN), "the export directory's RVA")
        exports = build_exports(table, exports_rva, rva)
        content = exports_rva - rva + len(exports)  # it fits: build_exports checked its end
        raw_offset = _field(
            align(kept, layout.file_alignment), f"{SECTION_NAME}'s PointerToRawData"
        )
        raw_size = align(content, layout.file_alignment)
        _field(raw_offset + raw_size, f"the end of {SECTION_NAME}'s file bytes")
        size_of_image = _field(align(rva + content, layout.section_alignment), "SizeOfImage")
        return cls(rva, content, raw_offset, raw_size, size_of_image, exports_rva, exports)


def write_pe_edit(source: str, out_fd: int, edit: PeEdit, write_blob: BlobWriter) -> None:
    """Write the packed DLL to `out_fd`: the input's bytes, the patches, the blob, then the
    checksum computed over the file as written."""
    edit.apply(source, out_fd, write_blob)
    checksum = pe_checksum(out_fd, edit.size, edit.checksum_at)
    os.pwrite(out_fd, struct.pack("<I", checksum), edit.checksum_at)
