"""Give a Mach-O dylib or bundle an exported `___tvm_ffi__library_bin`, moving no code or data.

Each packed slice gets one new read-only segment, `__TVM_FFI` with the single section
`__tvm_ffi_blob`, at the address and file offset where `__LINKEDIT` began; `__LINKEDIT` follows
it, one page-rounded blob later. `__LINKEDIT` holds no addressed content (the load commands
find its tables by file offset), so it is the only segment whose address changes, and every
section, symbol value, code and data byte of the other segments stays where it was. This is
what the linker would have produced had the blob been linked in as the last segment.

`__LINKEDIT` is rebuilt piece by piece in its original order: tables the edit does not touch
are copied verbatim, and the symbol table (one external symbol added among the external
definitions), the string table (its name appended), the export trie (re-encoded with the new
entry; every old entry keeps its bytes), the indirect symbol table and the external
relocations (symbol indices renumbered past the insertion) are written new. The code
signature, which covers every byte before it, is laid out last and computed once the rest of
the slice is written (`write_macho_edit`).

Repacking a slice whose last segment before `__LINKEDIT` is ffitool's `__TVM_FFI` reuses that
segment in place. In a universal file every slice (or those `--arch` names) is packed;
others are copied unchanged, and slices are laid out again at their alignment.

Everything is decided from the input's load commands and `__LINKEDIT` before a byte is written
(`plan_macho_edit`); only the tables of `__LINKEDIT` are read into memory, never code or data.
"""

from __future__ import annotations

import bisect
import os
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field

from ffitool.edit.fileedit import BlobWriter, FileEdit
from ffitool.edit.plan import align
from ffitool.errors import InputError
from ffitool.formats.macho.codesign import CS_LINKER_SIGNED, SignatureError, signature_state
from ffitool.formats.macho.commands import (
    CPU_ARM64,
    CPU_X86_64,
    FAT_ARCH,
    FAT_HEADER,
    HEADER,
    LC_CODE_SIGNATURE,
    LC_DYLD_CHAINED_FIXUPS,
    LC_DYLD_EXPORTS_TRIE,
    LC_DYLD_INFO,
    LC_DYLD_INFO_ONLY,
    LC_DYSYMTAB,
    LC_NOTE,
    LC_SEGMENT_64,
    LC_SYMTAB,
    LC_TWOLEVEL_HINTS,
    N_EXT,
    N_PEXT,
    N_SECT,
    N_TYPE,
    NLIST,
    SECTION,
    SEGMENT,
    Command,
    MachoError,
    Segment,
    parse_fat_header,
)
from ffitool.formats.macho.image import ARCH_NAMES, MachoSlice, symbol_name
from ffitool.formats.macho.sign import (
    AdhocSignature,
    build_signature,
    resign_parameters,
    signature_size,
)
from ffitool.formats.macho.trie import encode_trie, regular_export
from ffitool.formats.sniff import HEAD_SIZE, UNIVERSAL_FILE, sniff
from ffitool.symbols import LIBRARY_BIN

SEGMENT_NAME = "__TVM_FFI"
SECTION_NAME = "__tvm_ffi_blob"
RAW_NAME = b"_" + LIBRARY_BIN.encode()
"""The blob's name as the file spells it: C names carry a leading underscore."""

_PAGE = {CPU_X86_64: 0x1000, CPU_ARM64: 0x4000}
"""Segment alignment: the page size of the platform's kernel (16 KiB on Apple silicon)."""
_MH_DYLIB = 6
_MH_BUNDLE = 8
_PACKABLE = {_MH_DYLIB: "dylib", _MH_BUNDLE: "bundle"}

LINKEDIT_DATA = {
    LC_CODE_SIGNATURE: "code signature",
    0x1E: "segment split info",
    0x26: "function starts",
    0x29: "data in code",
    0x2B: "code signing DRs",
    0x2E: "linker optimization hints",
    LC_DYLD_EXPORTS_TRIE: "export trie",
    LC_DYLD_CHAINED_FIXUPS: "chained fixups",
    0x36: "atom info",
    0x37: "function variants",
    0x38: "function variant fixups",
}
_DYLD_INFO_TABLES = ("rebase", "bind", "weak bind", "lazy bind", "export trie")

_INDIRECT_SPECIAL = 0xC0000000  # INDIRECT_SYMBOL_LOCAL | INDIRECT_SYMBOL_ABS
_R_EXTERN = 1 << 27
_R_SYMBOLNUM = 0xFFFFFF

_VM_PROT_READ = 0x1
_BLOB_ALIGN_LOG2 = 4
_SIGNATURE_ALIGN = 16
_TABLE_ALIGN = 8


@dataclass(frozen=True)
class SlicePlacement:
    """Where one slice's blob went, and what became of its signature."""

    arch: str
    slice_offset: int
    """The slice's start in the output (0 for a thin file)."""
    file_offset: int
    """The blob's first byte, absolute in the output file."""
    address: int
    size: int
    signature: str
    """The slice's signature state after packing: "none", "ad-hoc" or "linker-signed"."""


@dataclass(frozen=True)
class _Signing:
    """A signature to compute once the slice is written."""

    slice_offset: int
    code_limit: int
    parameters: AdhocSignature


@dataclass
class MachoEdit:
    """Everything the writer does, decided before a byte is written."""

    copies: list[tuple[int, int, int]] = field(default_factory=list)
    """(input offset, length, output offset)."""
    patches: list[tuple[int, bytes]] = field(default_factory=list)
    """New bytes at output offsets."""
    placements: list[SlicePlacement] = field(default_factory=list)
    signings: list[_Signing] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    size: int = 0
    exports: dict[int, dict[bytes, bytes]] = field(default_factory=dict)
    """The export trie entries of each packed slice as the writer wrote them, by the slice's
    output offset (decoded once, for the writer and its verifier)."""
    slices: list[tuple[int, int, int, int, SlicePlacement | None]] = field(default_factory=list)
    """Every slice in file order: (input offset, input size, output offset, output size,
    its placement, or None for a slice copied unchanged)."""


@dataclass(frozen=True)
class _Piece:
    """A table of `__LINKEDIT` named by a load command field."""

    command: int
    """Index of the load command."""
    at: int
    """Byte offset of the (uint32 offset, uint32 count) pair in the command."""
    unit: int
    """Bytes per counted entry (1 when the count is a size)."""
    offset: int
    length: int
    what: str


def linkedit_pieces(image: MachoSlice) -> list[_Piece]:
    """Every `__LINKEDIT` table that a load command points at."""
    pieces = []
    for index, command in enumerate(image.commands):
        fields: list[tuple[int, int, str]] = []
        if command.cmd == LC_SYMTAB:
            fields = [(8, NLIST.size, "symbol table"), (16, 1, "string table")]
        elif command.cmd == LC_DYSYMTAB:
            dysymtab = image.dysymtab()
            for count_at, what in ((36, "table of contents"), (44, "module table"),
                                   (52, "external reference table")):  # fmt: skip
                if dysymtab[(count_at - 8) // 4]:
                    raise MachoError(f"it has a {what}, which only old static linkers wrote")
            fields = [(56, 4, "indirect symbol table"), (64, 8, "external relocations"),
                      (72, 8, "local relocations")]  # fmt: skip
        elif command.cmd in (LC_DYLD_INFO, LC_DYLD_INFO_ONLY):
            if len(command.data) < 48:
                raise MachoError("LC_DYLD_INFO is too short")
            fields = [(8 + 8 * n, 1, what) for n, what in enumerate(_DYLD_INFO_TABLES)]
        elif command.cmd in LINKEDIT_DATA:  # too short: refused below, as every other
            fields = [(8, 1, LINKEDIT_DATA[command.cmd])]
        elif command.cmd == LC_TWOLEVEL_HINTS:
            fields = [(8, 4, "two-level hints")]
        elif command.cmd == LC_NOTE:
            raise MachoError("it has an LC_NOTE, whose data ffitool does not relocate")
        if fields and len(command.data) < fields[-1][0] + 8:
            raise MachoError(f"load command {index} is too short")
        for at, unit, what in fields:
            offset, count = struct.unpack_from("<II", command.data, at)
            pieces.append(_Piece(index, at, unit, offset, count * unit, what))
    return pieces


@dataclass
class _SliceOutput:
    """One packed slice: its bytes as copies and patches relative to the slice's start."""

    copies: list[tuple[int, int, int]]
    patches: list[tuple[int, bytes]]
    blob_offset: int
    address: int
    blob_size: int
    size: int
    signing: tuple[int, AdhocSignature] | None
    signature: str
    warning: str | None
    exports: dict[bytes, bytes]


def plan_macho_edit(
    fd: int,
    size: int,
    display: str,
    blob_size: int,
    arches: Sequence[str] = (),
    remove_signature: bool = False,
) -> MachoEdit:
    """Lay out the packed file: every slice (or those named in `arches`) gets the blob."""
    edit = MachoEdit()
    try:
        head = os.pread(fd, HEAD_SIZE, 0)
        if sniff(head) == UNIVERSAL_FILE:
            _plan_universal(fd, size, blob_size, arches, remove_signature, edit)
        else:
            image = MachoSlice.read(fd, 0, size)
            arch = ARCH_NAMES.get(image.cputype, f"cputype {image.cputype:#x}")
            if arches and arch not in arches:
                raise MachoError(f"it is a thin {arch} file; --arch names {', '.join(arches)}")
            out = _plan_slice(image, blob_size, remove_signature, display)
            _add_slice(edit, out, 0, arch)
            edit.size = out.size
            edit.slices.append((0, size, 0, out.size, edit.placements[-1]))
    except MachoError as exc:
        raise InputError(f"{display}: cannot pack this Mach-O file: {exc}") from None
    return edit


def _add_slice(edit: MachoEdit, out: _SliceOutput, at: int, arch: str) -> None:
    edit.copies += [(start, length, at + to) for start, length, to in out.copies]
    edit.patches += [(at + to, data) for to, data in out.patches]
    if out.signing is not None:
        code_limit, parameters = out.signing
        edit.signings.append(_Signing(at, code_limit, parameters))
    edit.exports[at] = out.exports
    if out.warning:
        edit.warnings.append(f"{arch}: {out.warning}")
    edit.placements.append(
        SlicePlacement(arch, at, at + out.blob_offset, out.address, out.blob_size, out.signature)
    )


def _plan_universal(
    fd: int,
    size: int,
    blob_size: int,
    arches: Sequence[str],
    remove_signature: bool,
    edit: MachoEdit,
) -> None:
    if size < FAT_HEADER.size:
        raise MachoError("too short for a universal header")
    count, layout = parse_fat_header(os.pread(fd, FAT_HEADER.size, 0))
    table_size = FAT_HEADER.size + count * layout.size
    if table_size > size:
        raise MachoError(f"the universal header claims {count} architectures")
    table = os.pread(fd, table_size, 0)
    entries = [
        list(layout.unpack_from(table, FAT_HEADER.size + n * layout.size)) for n in range(count)
    ]
    names = [ARCH_NAMES.get(e[0], f"cputype {e[0]:#x}") for e in entries]
    kinds = [(e[0], e[1] & 0xFFFFFF) for e in entries]  # cputype, subtype without capabilities
    twice = next((names[n] for n, kind in enumerate(kinds) if kind in kinds[:n]), None)
    if twice is not None:  # lipo refuses it; each copy would get the blob, as many as 64
        raise MachoError(f"its universal header lists the {twice} slice twice")
    unknown = sorted(set(arches) - set(names))
    if unknown:
        raise MachoError(f"no {', '.join(unknown)} slice (it has {', '.join(names)})")
    cursor = table_size
    for entry, arch in zip(entries, names, strict=True):
        offset, length, align_log2 = entry[2], entry[3], entry[4]
        if offset < table_size or offset + length > size or align_log2 > 16:
            raise MachoError(f"the {arch} slice lies outside the file")
        at = align(cursor, 1 << align_log2)
        if arches and arch not in arches:
            edit.copies.append((offset, length, at))
            edit.slices.append((offset, length, at, length, None))
            new_length = length
        else:
            image = MachoSlice.read(fd, offset, length)
            if image.cputype != entry[0]:
                raise MachoError(f"the {arch} slice holds an image of cputype {image.cputype:#x}")
            out = _plan_slice(image, blob_size, remove_signature, arch)
            _add_slice(edit, out, at, arch)
            new_length = out.size
            edit.slices.append((offset, length, at, new_length, edit.placements[-1]))
        if layout is FAT_ARCH and at + new_length > 0xFFFFFFFF:
            raise MachoError(
                "the packed slices would pass 4 GiB, which a 32-bit universal header cannot address"
            )
        entry[2], entry[3] = at, new_length
        cursor = at + new_length
    header = table[: FAT_HEADER.size] + b"".join(layout.pack(*e) for e in entries)
    edit.patches.insert(0, (0, header))
    edit.size = cursor


def _plan_slice(
    image: MachoSlice, blob_size: int, remove_signature: bool, label: str
) -> _SliceOutput:
    """The output of one thin image, relative to its start."""
    if image.filetype not in _PACKABLE:
        raise MachoError(f"only dylibs and bundles can be packed (file type {image.filetype})")
    page = _PAGE.get(image.cputype)
    if page is None:
        raise MachoError(f"unsupported CPU type {image.cputype:#x}")
    segments, linkedit, reused, text = _segments(image, page)
    start = reused.fileoff if reused else linkedit.fileoff
    address = reused.vmaddr if reused else linkedit.vmaddr
    grown = align(blob_size, page)

    pieces = linkedit_pieces(image)
    symbols = _SymbolEdit(image)
    sections = len(image.sections())
    if not reused and sections >= 255:
        raise MachoError(f"it has {sections} sections; a symbol cannot name a new one past 255")
    symbols.place(sections if reused else sections + 1, address)
    trie_where, entries = _trie_with_blob(image, address - text.vmaddr)

    blob, warning = _signature_before(image, remove_signature)
    # arm64 macOS loads no unsigned code, so an arm64 slice is always signed (as its linker
    # does); an unsigned x86-64 slice stays unsigned.
    sign = not remove_signature and (blob is not None or image.cputype == CPU_ARM64)

    # Load commands: the new segment's before __LINKEDIT's; the signature's changes or goes.
    segment_command = _segment_command(address, grown, start, blob_size)
    new_commands, signature_index, add_signature_command = _new_commands(
        image, segments, reused, segment_command, sign
    )

    # __LINKEDIT, piece by piece, then the signature.
    new_linkedit = start + grown
    replaced = {
        _find(pieces, LC_SYMTAB, 8, image): symbols.table,
        _find(pieces, LC_SYMTAB, 16, image): symbols.strings,
        _find(pieces, trie_where[0].cmd, trie_where[1], image): encode_trie(entries),
        **_renumbered_tables(image, pieces, symbols, len(segments) if not reused else None),
    }
    layout = _layout_linkedit(image, pieces, linkedit, new_linkedit, replaced)
    end = layout.end
    signing = None
    state = "none"
    if sign:
        signing, length = _new_signature(image, blob, label, text, end)
        code_limit, parameters = signing
        end = code_limit + length
        state = signature_state_of(parameters)
        if signature_index is not None:
            layout.fields[(signature_index, 8)] = (code_limit, length)
    if end > 0xFFFFFFFF:
        raise MachoError(
            "the packed image would pass 4 GiB, which 32-bit table offsets cannot reach"
        )
    if address + grown + align(end - new_linkedit, page) > 1 << 64:
        raise MachoError("the moved __LINKEDIT would end past the 64-bit address space")
    for (index, at), values in layout.fields.items():
        command = new_commands[index]
        if command is not None:
            struct.pack_into("<II", command, at, *values)
    linkedit_size = end - new_linkedit
    dysymtab = _command_index(image, LC_DYSYMTAB)
    assert dysymtab is not None  # _SymbolEdit read it, or refused the image
    symbols.patch_dysymtab(new_commands[dysymtab])
    linkedit_command = new_commands[linkedit.index]
    assert linkedit_command is not None  # only the signature's command is dropped
    struct.pack_into(
        "<QQQQ", linkedit_command, 24,
        address + grown, align(linkedit_size, page), new_linkedit, linkedit_size,
    )  # fmt: skip
    ordered: list[bytes] = []
    for index, command in enumerate(new_commands):
        if index == linkedit.index and not reused:
            ordered.append(segment_command)
        if command is not None:
            ordered.append(bytes(command))
    if add_signature_command:
        assert signing is not None
        ordered.append(struct.pack("<IIII", LC_CODE_SIGNATURE, 16, signing[0], end - signing[0]))
    body = b"".join(ordered)
    magic, cputype, subtype, filetype, _, _, flags, reserved = HEADER.unpack(image.header)
    header = HEADER.pack(
        magic, cputype, subtype, filetype, len(ordered), len(body), flags, reserved
    )
    head = header + body + bytes(max(0, image.sizeofcmds - len(body)))
    return _SliceOutput(
        # The bytes after the load commands up to the blob: every segment but __LINKEDIT.
        copies=[(image.start + len(head), start - len(head), len(head)), *layout.copies],
        patches=[(0, head), *layout.patches],
        blob_offset=start,
        address=address,
        blob_size=blob_size,
        size=end,
        signing=signing,
        signature=state,
        warning=warning,
        exports=entries,
    )


def _segments(
    image: MachoSlice, page: int
) -> tuple[list[Segment], Segment, Segment | None, Segment]:
    """The segments, `__LINKEDIT` (last, page-aligned, ending the image), ffitool's own
    `__TVM_FFI` right before it when there is one to reuse, and the `__TEXT` that maps the
    header; anything else is refused."""
    segments = image.segments()
    linkedit = next((s for s in segments if s.name == "__LINKEDIT"), None)
    if linkedit is None or segments[-1] is not linkedit:
        raise MachoError("__LINKEDIT is not its last segment")
    for segment in segments[:-1]:
        if (
            segment.fileoff + segment.filesize > linkedit.fileoff
            or segment.vmaddr + segment.vmsize > linkedit.vmaddr
        ):
            raise MachoError(f"segment {segment.name} lies past __LINKEDIT")
    if linkedit.fileoff % page or linkedit.vmaddr % page:
        raise MachoError("__LINKEDIT is not page-aligned")
    end = linkedit.fileoff + linkedit.filesize
    if end != image.size:
        raise MachoError(
            f"{image.size - end} bytes follow __LINKEDIT, which ffitool would not carry"
        )
    reused = segments[-2] if len(segments) > 1 and segments[-2].name == SEGMENT_NAME else None
    if reused is not None and (
        reused.nsects != 1
        or reused.fileoff % page
        or reused.vmaddr % page
        or any(
            s.fileoff + s.filesize > reused.fileoff or s.vmaddr + s.vmsize > reused.vmaddr
            for s in segments[:-2]
        )
    ):  # reusing it would write the blob over other segments, or renumber sections
        raise MachoError(f"its {SEGMENT_NAME} segment is not one that ffitool wrote")
    text = next((s for s in segments if s.name == "__TEXT" and s.fileoff == 0), None)
    if text is None:
        raise MachoError("no __TEXT segment maps the Mach-O header")
    return segments, linkedit, reused, text


def _signature_before(image: MachoSlice, remove_signature: bool) -> tuple[bytes | None, str | None]:
    """The slice's current signature blob, and the warning owed when it carries a
    certificate, which no rewrite can keep."""
    existing = image.signature()
    blob = image.pread(*existing, "code signature") if existing else None
    try:
        old_state = "none" if blob is None else signature_state(blob)
    except SignatureError as exc:
        raise MachoError(f"its code signature is malformed: {exc}") from None
    if old_state != "certificate":
        return blob, None
    replacement = "removed" if remove_signature else "replaced by an ad hoc signature"
    return blob, f"its certificate signature was {replacement}; sign it again to distribute it"


_CHAINED_HEADER = struct.Struct("<7I")


def with_segment_start(data: bytes, index: int) -> bytes:
    """Chained fixups with an empty entry for a segment inserted at `index`.

    dyld requires the fixups' `dyld_chained_starts_in_image` to list exactly one entry per
    segment. The entry (0: no fixups) goes into the array; 8 bytes are inserted after the
    array, so that what follows keeps its 8-byte alignment, and every offset that points
    past the array moves by those 8 bytes.
    """
    if len(data) < _CHAINED_HEADER.size:
        raise MachoError("its chained fixups header is truncated")
    header = list(_CHAINED_HEADER.unpack_from(data))
    starts = header[1]
    if not _CHAINED_HEADER.size <= starts <= len(data) - 4:
        raise MachoError("its chained fixups starts lie outside the fixups")
    count = struct.unpack_from("<I", data, starts)[0]
    end = starts + 4 + 4 * count
    if end > len(data) or count != index + 1:  # dyld wants one entry per segment
        raise MachoError(f"its chained fixups list {count} segments, not {index + 1}")
    offsets = list(struct.unpack_from(f"<{count}I", data, starts + 4))
    if max(starts + max(offsets, default=0), header[2], header[3]) > len(data):
        raise MachoError("its chained fixups point past their end")
    offsets = [o + 8 if o else 0 for o in offsets]
    offsets.insert(index, 0)
    for number in (2, 3):  # imports_offset, symbols_offset
        if header[number] >= end:
            header[number] += 8
    array = struct.pack(f"<I{count + 1}I", count + 1, *offsets) + bytes(4)
    return _CHAINED_HEADER.pack(*header) + data[_CHAINED_HEADER.size : starts] + array + data[end:]


def _trie_with_blob(
    image: MachoSlice, offset: int
) -> tuple[tuple[Command, int], dict[bytes, bytes]]:
    """Where the export trie is (its command and the offset of its (offset, size) pair), and
    its entries plus the blob's, at `offset` from __TEXT."""
    trie_where = image.trie_command()
    if trie_where is None:
        raise MachoError("it has no export trie to add the blob's name to")
    entries = image.trie()
    if b"" in entries:  # a terminal at the root, which no trie encoder writes back
        raise MachoError("its export trie root exports an empty name")
    entries[RAW_NAME] = regular_export(offset)
    return trie_where, entries


def _new_signature(
    image: MachoSlice, blob: bytes | None, label: str, text: Segment, end: int
) -> tuple[tuple[int, AdhocSignature], int]:
    """((code limit, parameters), size) of the ad hoc signature laid out after `end`, renewed
    from the slice's current signature `blob` (or made anew)."""
    code_limit = align(end, _SIGNATURE_ALIGN)
    try:
        parameters = resign_parameters(
            blob,
            identifier=_identifier(image, label),
            text_segment=(text.fileoff, text.filesize),
            executable=False,
            cputype=image.cputype,
        )
    except ValueError as exc:  # SignatureError included
        raise MachoError(f"its code signature cannot be renewed: {exc}") from None
    return (code_limit, parameters), signature_size(parameters, code_limit)


def _new_commands(
    image: MachoSlice,
    segments: list[Segment],
    reused: Segment | None,
    segment_command: bytes,
    sign: bool,
) -> tuple[list[bytearray | None], int | None, bool]:
    """The slice's load commands as they will be (None: dropped), the index of its
    LC_CODE_SIGNATURE, and whether one is to be added: refused when they would not fit
    before the first section's bytes."""
    new_commands: list[bytearray | None] = [bytearray(c.data) for c in image.commands]
    extra = 0 if reused else len(segment_command)
    if reused:
        new_commands[reused.index] = bytearray(segment_command)
    signature_index = _command_index(image, LC_CODE_SIGNATURE)
    if signature_index is not None and not sign:
        new_commands[signature_index] = None
        extra -= len(image.commands[signature_index].data)
    add_signature_command = sign and signature_index is None
    if add_signature_command:
        extra += 16
    room = _first_content(image, segments)
    if HEADER.size + image.sizeofcmds + extra > room:
        free = room - HEADER.size - image.sizeofcmds
        raise MachoError(
            f"no room for {extra} more bytes of load commands ({free} free before the first"
            " section); relink it with -headerpad_max_install_names"
        )
    return new_commands, signature_index, add_signature_command


def _renumbered_tables(
    image: MachoSlice, pieces: list[_Piece], symbols: _SymbolEdit, segment_count: int | None
) -> dict[int, bytes]:
    """The tables rewritten for the edit besides the symbols, strings and trie: the chained
    fixups, given an entry for the new segment (`segment_count` segments before it is
    added; None when the segment is reused), and the tables that name symbols by index,
    renumbered past the inserted one."""
    replaced = {}
    if image.command(LC_DYLD_CHAINED_FIXUPS) is not None and segment_count is not None:
        number = _find(pieces, LC_DYLD_CHAINED_FIXUPS, 8, image)
        data = image.pread(pieces[number].offset, pieces[number].length, "chained fixups")
        replaced[number] = with_segment_start(data, segment_count - 1)
    if symbols.inserted is not None:
        for at, renumbered in ((56, symbols.indirect), (64, symbols.external_relocations)):
            number = _find(pieces, LC_DYSYMTAB, at, image)
            if pieces[number].length:
                replaced[number] = renumbered(image)
    return replaced


def _command_index(image: MachoSlice, cmd: int) -> int | None:
    return next((i for i, c in enumerate(image.commands) if c.cmd == cmd), None)


def _segment_command(address: int, vmsize: int, fileoff: int, size: int) -> bytes:
    """LC_SEGMENT_64 of `__TVM_FFI` with its one section, read-only, blob-aligned."""
    segment = SEGMENT.pack(
        LC_SEGMENT_64, SEGMENT.size + SECTION.size, SEGMENT_NAME.encode(),
        address, vmsize, fileoff, size, _VM_PROT_READ, _VM_PROT_READ, 1, 0,
    )  # fmt: skip
    section = SECTION.pack(
        SECTION_NAME.encode(), SEGMENT_NAME.encode(), address, size, fileoff,
        _BLOB_ALIGN_LOG2, 0, 0, 0, 0, 0, 0,
    )  # fmt: skip
    return segment + section


def _first_content(image: MachoSlice, segments: list[Segment]) -> int:
    """Where the first byte after the load commands is used: the end of the header pad."""
    starts = [s.fileoff for s in segments if s.fileoff > 0 and s.filesize > 0]
    starts += [s.offset for s in image.sections() if s.size and s.offset and not s.zerofill]
    return min(starts, default=image.size)


def _identifier(image: MachoSlice, label: str) -> bytes:
    """A new signature's identifier: the install name's file name, as the linker records the
    output's name; else the file's."""
    name = image.install_name()
    if name:
        return name.rsplit(b"/", 1)[-1]
    return os.path.basename(label).encode("utf-8", "surrogateescape")


def _find(pieces: list[_Piece], cmd: int, at: int, image: MachoSlice) -> int:
    for number, piece in enumerate(pieces):
        if image.commands[piece.command].cmd == cmd and piece.at == at:
            return number
    # unreachable: every caller names a table the plan already requires: the symbol and
    # dynamic symbol tables (_SymbolEdit), the trie (trie_command), the fixups (checked present).
    raise MachoError(f"load command {cmd:#x} is missing")


@dataclass
class _Layout:
    copies: list[tuple[int, int, int]]
    patches: list[tuple[int, bytes]]
    fields: dict[tuple[int, int], tuple[int, int]]
    """(command index, byte offset) -> the new (offset, count) pair."""
    end: int
    """Slice offset after the last table (where a signature may follow)."""


def _layout_linkedit(
    image: MachoSlice,
    pieces: list[_Piece],
    linkedit: Segment,
    new_start: int,
    replaced: dict[int, bytes],
) -> _Layout:
    """Copy `__LINKEDIT` to `new_start`, writing `replaced` pieces new.

    Bytes between tables are carried as they are; a table that grows pushes everything after
    it by its growth rounded up to 8 bytes, so every table keeps its alignment. The code
    signature is left out: it is laid out after the rest.
    """
    old_start = linkedit.fileoff
    old_end = old_start + linkedit.filesize
    signature = _find_optional(pieces, LC_CODE_SIGNATURE, image)
    solid = sorted(
        (n for n, p in enumerate(pieces) if (p.length or n in replaced) and n != signature),
        key=lambda n: (pieces[n].offset, pieces[n].length),
    )
    previous_end = old_start
    for number in solid:
        piece = pieces[number]
        if piece.offset < previous_end or piece.offset + piece.length > old_end:
            raise MachoError(f"{piece.what}: overlaps another table or lies outside __LINKEDIT")
        previous_end = piece.offset + piece.length
    if signature is not None and pieces[signature].length:
        piece = pieces[signature]
        if piece.offset < previous_end or piece.offset + piece.length != old_end:
            raise MachoError("its code signature is not the last thing in __LINKEDIT")
        old_end = piece.offset
    copies: list[tuple[int, int, int]] = []
    patches: list[tuple[int, bytes]] = []
    shifts: list[tuple[int, int, int, int]] = []  # replaced: (start, end, shift before, after)
    cursor, shift = old_start, new_start - old_start
    for number in solid:
        piece = pieces[number]
        if number not in replaced:
            continue
        data = replaced[number]
        copies.append((image.start + cursor, piece.offset - cursor, cursor + shift))
        growth = align(max(0, len(data) - piece.length), _TABLE_ALIGN)
        patches.append((piece.offset + shift, data + bytes(piece.length + growth - len(data))))
        cursor = piece.offset + piece.length
        shifts.append((piece.offset, cursor, shift, shift + growth))
        shift += growth
    copies.append((image.start + cursor, old_end - cursor, cursor + shift))
    end = old_end + shift
    fields = {}
    for number, piece in enumerate(pieces):
        if number == signature:
            continue
        count = piece.length // piece.unit
        if number in replaced:
            count = len(replaced[number]) // piece.unit
        offset = piece.offset
        if old_start <= offset <= old_end:
            offset += _shift_at(shifts, offset, new_start - old_start)
        fields[(piece.command, piece.at)] = (offset, count)
    if signature is not None:
        fields[(pieces[signature].command, pieces[signature].at)] = (end, 0)
    return _Layout(copies, patches, fields, end)


def _find_optional(pieces: list[_Piece], cmd: int, image: MachoSlice) -> int | None:
    return next((n for n, p in enumerate(pieces) if image.commands[p.command].cmd == cmd), None)


def _shift_at(shifts: list[tuple[int, int, int, int]], offset: int, base: int) -> int:
    """How far an old `__LINKEDIT` offset moves: past a replaced table's end, by the shift
    after its growth; at or inside its start, by the shift before it."""
    moved = base
    for start, end, before, after in shifts:
        if offset >= end and end > start:
            moved = after
        elif offset >= start:
            moved = before
    return moved


def signature_state_of(parameters: AdhocSignature) -> str:
    return "linker-signed" if parameters.flags & CS_LINKER_SIGNED else "ad-hoc"


class _SymbolEdit:
    """The symbol table with `___tvm_ffi__library_bin` defined in the blob's section.

    An external definition of that name is re-pointed; otherwise one is inserted among the
    external definitions at its place in name order (where the linker sorts them), and
    every symbol index from there on (indirect symbols, external relocations, the start of
    the undefined symbols) moves up by one.
    """

    def __init__(self, image: MachoSlice) -> None:
        self.table, self.strings = image.symbols()
        self.dysymtab = image.dysymtab()
        ilocal, nlocal, iextdef, nextdef, iundef, nundef = self.dysymtab[:6]
        nsyms = len(self.table) // NLIST.size
        if not (ilocal + nlocal == iextdef and iextdef + nextdef == iundef
                and iundef + nundef == nsyms):  # fmt: skip
            raise MachoError("LC_DYSYMTAB's symbol ranges do not fit the symbol table")
        types = self.table[iextdef * NLIST.size + 4 : iundef * NLIST.size : NLIST.size]
        if any(t & (N_EXT | N_PEXT) != N_EXT or not t & N_TYPE for t in set(types)):
            raise MachoError("LC_DYSYMTAB's external definitions hold a symbol that is not one")
        self.inserted: int | None = None

    def _name(self, index: int) -> bytes:
        return symbol_name(self.strings, NLIST.unpack_from(self.table, index * NLIST.size)[0])

    def place(self, section: int, address: int) -> None:
        iextdef, nextdef = self.dysymtab[2], self.dysymtab[3]
        # Only a table that holds the name at all can have an entry for it.
        present = RAW_NAME + b"\0" in self.strings
        for index in range(iextdef, iextdef + nextdef if present else iextdef):
            if self._name(index) == RAW_NAME:
                at = index * NLIST.size
                strx, _, _, desc, _ = NLIST.unpack_from(self.table, at)
                entry = NLIST.pack(strx, N_SECT | N_EXT, section, desc, address)
                self.table = self.table[:at] + entry + self.table[at + NLIST.size :]
                return
        names = _Names(self, iextdef, nextdef)
        index = iextdef + bisect.bisect_left(names, RAW_NAME)
        strings = self.strings + RAW_NAME + b"\0"
        self.strings = strings + bytes(-len(strings) % _TABLE_ALIGN)
        entry = NLIST.pack(len(strings) - len(RAW_NAME) - 1, N_SECT | N_EXT, section, 0, address)
        at = index * NLIST.size
        self.table = self.table[:at] + entry + self.table[at:]
        self.inserted = index

    def indirect(self, image: MachoSlice) -> bytes:
        """The indirect symbol table with indices past the insertion moved up."""
        offset, count = self.dysymtab[12], self.dysymtab[13]
        values = struct.unpack(f"<{count}I", image.pread(offset, count * 4, "indirect symbols"))
        position = self.inserted
        assert position is not None
        return struct.pack(
            f"<{count}I",
            *(v + 1 if not v & _INDIRECT_SPECIAL and v >= position else v for v in values),
        )

    def external_relocations(self, image: MachoSlice) -> bytes:
        """External relocations with symbol numbers past the insertion moved up."""
        offset, count = self.dysymtab[14], self.dysymtab[15]
        raw = image.pread(offset, count * 8, "external relocations")
        words = list(struct.unpack(f"<{2 * count}I", raw))
        position = self.inserted
        assert position is not None
        for index in range(1, len(words), 2):
            info = words[index]
            if info & _R_EXTERN and info & _R_SYMBOLNUM >= position:
                if info & _R_SYMBOLNUM == _R_SYMBOLNUM:
                    raise MachoError("an external relocation's symbol number would overflow")
                words[index] = info + 1
        return struct.pack(f"<{2 * count}I", *words)

    def patch_dysymtab(self, command: bytearray | None) -> None:
        if self.inserted is None or command is None:
            return
        struct.pack_into("<I", command, 20, self.dysymtab[3] + 1)  # nextdefsym
        struct.pack_into("<I", command, 24, self.dysymtab[4] + 1)  # iundefsym


class _Names(Sequence[bytes]):
    """The names of a range of symbols, read on demand: bisect looks at a few of them."""

    def __init__(self, symbols: _SymbolEdit, first: int, count: int) -> None:
        self._symbols, self._first, self._count = symbols, first, count

    def __len__(self) -> int:
        return self._count

    # Only bisect indexes it, with an int: no slices, unlike the Sequence it stands in for.
    def __getitem__(self, index: int) -> bytes:  # type: ignore[override]
        return self._symbols._name(self._first + index)


def write_macho_edit(source: str, out_fd: int, edit: MachoEdit, write_blob: BlobWriter) -> None:
    """Write the packed file to `out_fd`: copies, new tables, blobs, then each signature,
    computed over the slice's bytes as written."""
    blobs = [placement.file_offset for placement in edit.placements]
    written = FileEdit(size=edit.size, copies=edit.copies, patches=edit.patches, blobs=blobs)
    written.apply(source, out_fd, write_blob)
    for signing in edit.signings:
        data = build_signature(out_fd, signing.slice_offset, signing.code_limit, signing.parameters)
        os.pwrite(out_fd, data, signing.slice_offset + signing.code_limit)
