"""Ad hoc code signatures for rewritten Mach-O slices, and their verification.

No `codesign` exists off macOS, and arm64 macOS loads no code whose signature does not
verify, so the writer signs what it writes here. An ad hoc signature is a super blob whose
code directory holds one SHA-256 hash per page of the slice's first `codeLimit` bytes (all
of it up to the signature itself); the kernel checks each page as it maps it.

What a re-signed slice gets (the decisions, in `resign_parameters`):
- linker-signed input (ld64, ld-prime, zig): the same shape the linker wrote, one code
  directory flagged CS_ADHOC | CS_LINKER_SIGNED, with its identifier, page size and padding
  alignment, so re-signing an unmodified slice reproduces the linker's bytes;
- ad hoc input made by codesign: CS_ADHOC, identifier and page size kept, and its
  requirements, entitlements and empty CMS wrapper blobs kept verbatim (their hashes in the
  special slots), so only the code hashes change;
- certificate-signed input: ad hoc, CS_ADHOC only, identifier and page size kept; the
  requirements (they name the signer's certificate), entitlements and CMS signature are
  dropped, and so are alternate code directories and a team identifier: no ad hoc signature
  can vouch for them. The writer warns that such a slice must be signed again to distribute;
- unsigned input (when the writer signs it): CS_ADHOC, the identifier the caller names,
  4096-byte pages, the page size Apple's linker and codesign use on x86-64 and arm64 alike.
The code directory is always version 0x20400 with SHA-256 hashes and the executable segment
(__TEXT's file range; CS_EXECSEG_MAIN_BINARY for an executable), as the linkers write it.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from dataclasses import dataclass

from ffitool.edit.plan import align
from ffitool.files import CHUNK
from ffitool.formats.macho.codesign import (
    BLOB_INDEX,
    CODE_DIRECTORY,
    CODE_DIRECTORY_VERSION,
    CS_ADHOC,
    CS_EXECSEG_MAIN_BINARY,
    CS_HASHTYPE_SHA256,
    CS_LINKER_SIGNED,
    CSMAGIC_CODEDIRECTORY,
    CSMAGIC_EMBEDDED_SIGNATURE,
    CSSLOT_ALTERNATE_CODEDIRECTORIES,
    CSSLOT_CODEDIRECTORY,
    CSSLOT_DER_ENTITLEMENTS,
    CSSLOT_ENTITLEMENTS,
    CSSLOT_REQUIREMENTS,
    CSSLOT_SIGNATURESLOT,
    HASH_TYPES,
    SPECIAL_SLOTS,
    SUPERBLOB,
    Blob,
    CodeDirectory,
    SignatureError,
    blobs,
    code_directory,
    is_certificate,
    primary_code_directory,
    signature_state,
)
from ffitool.formats.macho.commands import CPU_ARM64, CPU_X86_64, MachoError
from ffitool.formats.macho.image import MachoSlice

__all__ = [
    "AdhocSignature",
    "SignatureError",
    "build_signature",
    "resign_parameters",
    "signature_problems",
    "signature_size",
    "signature_state",
]

DEFAULT_PAGE_SIZE = 4096
_HASH_SIZE = 32
_CPU_TYPES = (CPU_X86_64, CPU_ARM64)
"""x86-64 and arm64: the slices the writer packs, whose signatures this module makes."""
_KEPT_SLOTS = (
    CSSLOT_REQUIREMENTS,
    CSSLOT_ENTITLEMENTS,
    CSSLOT_DER_ENTITLEMENTS,
    CSSLOT_SIGNATURESLOT,  # without a certificate: the empty CMS wrapper codesign writes
)
MAX_RESERVE = 1 << 16
"""The most reserved padding kept from an existing signature: a lying datasize gets no
more than this much of nothing."""
_PAGE_SHIFTS = range(12, 17)
"""4 KiB to 64 KiB pages: what a code directory of a loadable slice may state."""
_MAX_REPORTED_PAGES = 3


@dataclass(frozen=True)
class AdhocSignature:
    """What an ad hoc signature states besides the page hashes."""

    identifier: bytes
    """The code directory identifier, without NUL."""
    page_size: int
    """4096 or 16384: the page size of the signature being replaced, else 4096."""
    flags: int
    """CS_ADHOC, plus CS_LINKER_SIGNED when the original was linker-signed."""
    exec_segment: tuple[int, int, int]
    """execSegBase, execSegLimit, execSegFlags."""
    alignment: int = 16
    """The LC_CODE_SIGNATURE datasize is the super blob's length rounded up to this: 16 as
    ld64 and codesign pad, 8 as zig pads (kept from the original's datasize)."""
    blobs: tuple[tuple[int, bytes], ...] = ()
    """(slot type, bytes) of blobs kept verbatim after the code directory, in slot order:
    the requirements, entitlements and empty CMS wrapper of a codesign-made ad hoc signature."""
    directory_alignment: int = 1
    """The code directory starts at the end of the super blob's index rounded up to this: 8
    as lld writes it, 1 (right after the index) as ld64, zig and codesign do."""
    hash_alignment: int = 1
    """Zero bytes after the identifier put the hash table at a multiple of this in the super
    blob: 16 as lld writes it, 1 (none) as the others do."""
    reserve: int = 0
    """Zero bytes after the aligned super blob: the room codesign reserves (18,000 bytes on
    the Apple-signed dylibs measured), kept for a codesign-made ad hoc signature (at most
    MAX_RESERVE), none from a linker."""

    @property
    def special_slots(self) -> int:
        return max((slot for slot, _ in self.blobs if slot in SPECIAL_SLOTS), default=0)


def resign_parameters(
    existing: bytes | None,
    *,
    identifier: bytes,
    text_segment: tuple[int, int],
    executable: bool,
    cputype: int,
) -> AdhocSignature:
    """Parameters of the new ad hoc signature for a slice: taken from the slice's current
    signature blob (the LC_CODE_SIGNATURE bytes, padding included) when it has one, else
    platform defaults (see the module docstring for what each kind of input gets).

    `text_segment` is __TEXT's (fileoff, filesize) in the new slice; `identifier` is used
    only for a slice that had no signature. Raises SignatureError for a broken `existing` and
    ValueError for a CPU type the format of this module is not known to serve.
    """
    if cputype not in _CPU_TYPES:
        raise ValueError(f"no ad hoc signing for CPU type {cputype:#x} (x86-64 and arm64 only)")
    exec_segment = (*text_segment, CS_EXECSEG_MAIN_BINARY if executable else 0)
    if existing is None:
        return AdhocSignature(identifier, DEFAULT_PAGE_SIZE, CS_ADHOC, exec_segment)
    index = blobs(existing)
    directory = primary_code_directory(existing, index)
    page_size = (
        1 << directory.page_shift if directory.page_shift in _PAGE_SHIFTS else DEFAULT_PAGE_SIZE
    )
    alignment = 8 if len(existing) % 16 else 16
    if is_certificate(index):
        return AdhocSignature(directory.identifier, page_size, CS_ADHOC, exec_segment, alignment)
    kept = tuple(
        (blob.slot, existing[blob.offset : blob.offset + blob.length])
        for blob in sorted(index, key=lambda blob: blob.slot)
        if blob.slot in _KEPT_SLOTS
    )
    flags = CS_ADHOC | directory.flags & CS_LINKER_SIGNED
    padded = align(SUPERBLOB.unpack_from(existing)[1], alignment)
    reserve = min(max(0, len(existing) - padded), MAX_RESERVE)
    return AdhocSignature(
        directory.identifier, page_size, flags, exec_segment, alignment, kept,
        *_lld_alignments(directory, len(index)), reserve,
    )  # fmt: skip


def _lld_alignments(directory: CodeDirectory, count: int) -> tuple[int, int]:
    """(directory_alignment, hash_alignment) that reproduce where the existing signature put
    its code directory and hash table: lld's 8 and 16 when its padding shows, else 1 and 1."""
    index_end = SUPERBLOB.size + count * BLOB_INDEX.size
    directory_alignment = 8 if directory.offset == align(index_end, 8) != index_end else 1
    padding = directory.hash_offset - directory.ident_offset - len(directory.identifier) - 1
    padding -= directory.special_slots * directory.hash_size
    hashes = directory.offset + directory.hash_offset
    hash_alignment = 16 if 0 < padding < 16 and hashes % 16 == 0 else 1
    return directory_alignment, hash_alignment


@dataclass(frozen=True)
class _Layout:
    """Where the parts of a signature go, for a slice whose signed code has `pages` pages."""

    directory_offset: int
    """Where the code directory starts in the super blob."""
    identifier: bytes
    """The identifier, its NUL and the zero bytes that align the hash table after it."""
    pages: int
    special_slots: int

    @property
    def hash_offset(self) -> int:
        return CODE_DIRECTORY.size + len(self.identifier) + self.special_slots * _HASH_SIZE

    @property
    def directory_size(self) -> int:
        return self.hash_offset + self.pages * _HASH_SIZE


def _layout(signature: AdhocSignature, code_limit: int) -> _Layout:
    if not 0 < code_limit < 1 << 32:
        raise ValueError(f"code limit {code_limit} is out of the 32-bit range of a slice")
    index_end = SUPERBLOB.size + (1 + len(signature.blobs)) * BLOB_INDEX.size
    directory_offset = align(index_end, signature.directory_alignment)
    special = signature.special_slots
    hashes = directory_offset + CODE_DIRECTORY.size + len(signature.identifier) + 1
    hashes += special * _HASH_SIZE
    padding = align(hashes, signature.hash_alignment) - hashes
    identifier = signature.identifier + bytes(1 + padding)
    return _Layout(directory_offset, identifier, -(-code_limit // signature.page_size), special)


def _superblob_size(signature: AdhocSignature, layout: _Layout) -> int:
    extra = sum(len(blob) for _, blob in signature.blobs)
    return layout.directory_offset + layout.directory_size + extra


def signature_size(signature: AdhocSignature, code_limit: int) -> int:
    """The LC_CODE_SIGNATURE datasize the blob occupies (including the linker's padding), so
    the writer can lay out __LINKEDIT before hashing."""
    size = _superblob_size(signature, _layout(signature, code_limit))
    return align(size, signature.alignment) + signature.reserve


def build_signature(fd: int, start: int, code_limit: int, signature: AdhocSignature) -> bytes:
    """The signature blob (exactly signature_size bytes) for the slice that begins at file
    offset `start` of the file open at `fd` and whose signed code is its first `code_limit`
    bytes; pages are read with os.pread in bounded chunks, never the whole file at once."""
    size = signature_size(signature, code_limit)
    layout = _layout(signature, code_limit)
    header = CODE_DIRECTORY.pack(
        CSMAGIC_CODEDIRECTORY, layout.directory_size, CODE_DIRECTORY_VERSION, signature.flags,
        layout.hash_offset, CODE_DIRECTORY.size, layout.special_slots, layout.pages, code_limit,
        _HASH_SIZE, CS_HASHTYPE_SHA256, 0, signature.page_size.bit_length() - 1,
        0, 0, 0, 0, 0, *signature.exec_segment,
    )  # fmt: skip
    kept = dict(signature.blobs)
    special_hashes = b"".join(
        hashlib.sha256(kept[slot]).digest() if slot in kept else bytes(_HASH_SIZE)
        for slot in range(layout.special_slots, 0, -1)
    )
    count = 1 + len(signature.blobs)
    index = [BLOB_INDEX.pack(CSSLOT_CODEDIRECTORY, layout.directory_offset)]
    at = layout.directory_offset + layout.directory_size
    for slot, blob in signature.blobs:
        index.append(BLOB_INDEX.pack(slot, at))
        at += len(blob)
    head = b"".join([SUPERBLOB.pack(CSMAGIC_EMBEDDED_SIGNATURE, at, count), *index])
    data = b"".join(
        [
            head.ljust(layout.directory_offset, b"\0"),
            header,
            layout.identifier,
            special_hashes,
            *_page_hashes(fd, start, code_limit, signature),
            *(blob for _, blob in signature.blobs),
        ]
    )
    return data.ljust(size, b"\0")


def _page_hashes(fd: int, start: int, code_limit: int, signature: AdhocSignature) -> list[bytes]:
    page = signature.page_size
    hashes: list[bytes] = []
    for chunk in _chunks(fd, start, code_limit, page):
        hashes.extend(
            hashlib.sha256(chunk[at : at + page]).digest() for at in range(0, len(chunk), page)
        )
    return hashes


def _chunks(fd: int, start: int, length: int, page: int) -> Iterator[bytes]:
    """The `length` bytes at `start`, in whole-page chunks of about CHUNK bytes."""
    step = max(page, CHUNK // page * page)
    for at in range(0, length, step):
        count = min(step, length - at)
        data = os.pread(fd, count, start + at)
        if len(data) != count:
            raise OSError(f"the file ends before byte {start + length} that the signature covers")
        yield data


def signature_problems(fd: int, start: int, size: int) -> list[str]:
    """Why the signature of the slice [start, start+size) does not verify (empty when it
    does): LC_CODE_SIGNATURE in range and at the end of __LINKEDIT, super blob and code
    directories well formed, codeLimit == dataoff, the page count, every page hash and every
    special slot hash (of a blob present) matching. Reads are bounded by the slice."""
    try:
        where, linkedit_end = _signature_command(fd, start, size)
    except SignatureError as exc:
        return [str(exc)]
    dataoff, datasize = where
    if dataoff + datasize > size:
        return [
            f"the signature ({datasize} bytes at {dataoff}) extends past the slice ({size} bytes)"
        ]
    problems = []
    if linkedit_end != dataoff + datasize:
        problems.append(
            f"the signature ends at {dataoff + datasize}, not at the end of __LINKEDIT"
            f" ({linkedit_end})"
        )
    data = os.pread(fd, datasize, start + dataoff)
    if len(data) != datasize:
        return [*problems, "the file ends inside the signature"]
    try:
        index = blobs(data)
        directories = [
            code_directory(data, blob)
            for blob in index
            if blob.slot == CSSLOT_CODEDIRECTORY or blob.slot in CSSLOT_ALTERNATE_CODEDIRECTORIES
        ]
    except SignatureError as exc:
        return [*problems, str(exc)]
    if not any(blob.slot == CSSLOT_CODEDIRECTORY for blob in index):
        problems.append("it has no code directory")
    for directory in directories:
        problems += _directory_problems(fd, start, dataoff, data, index, directory)
    return problems


def _directory_problems(
    fd: int, start: int, dataoff: int, data: bytes, index: list[Blob], directory: CodeDirectory
) -> list[str]:
    what = f"code directory at {directory.offset}"
    if (
        directory.hash_type not in HASH_TYPES
        or HASH_TYPES[directory.hash_type][1] != directory.hash_size
    ):
        return [f"{what}: unknown hash type {directory.hash_type} of {directory.hash_size} bytes"]
    if directory.page_shift not in _PAGE_SHIFTS:
        return [f"{what}: unsupported page size 2**{directory.page_shift}"]
    if directory.code_limit != dataoff:
        return [f"{what}: codeLimit {directory.code_limit} is not the signature's offset {dataoff}"]
    page = 1 << directory.page_shift
    pages = -(-directory.code_limit // page)
    if directory.code_slots != pages:
        return [f"{what}: {directory.code_slots} code slots for {pages} pages"]
    name, size = HASH_TYPES[directory.hash_type]
    problems = []
    for blob in index:
        if blob.slot in SPECIAL_SLOTS:
            if blob.slot > directory.special_slots:
                problems.append(f"{what}: no special slot for blob slot {blob.slot}")
                continue
            content = data[blob.offset : blob.offset + blob.length]
            if hashlib.new(name, content).digest()[:size] != directory.hash_at(data, -blob.slot):
                problems.append(f"{what}: the hash of blob slot {blob.slot} does not match")
    bad = []
    number = 0
    for chunk in _chunks(fd, start, directory.code_limit, page):
        for at in range(0, len(chunk), page):
            digest = hashlib.new(name, chunk[at : at + page]).digest()[:size]
            if digest != directory.hash_at(data, number):
                bad.append(number)
            number += 1
    if bad:
        shown = ", ".join(str(n) for n in bad[:_MAX_REPORTED_PAGES])
        more = (
            f" and {len(bad) - _MAX_REPORTED_PAGES} more" if len(bad) > _MAX_REPORTED_PAGES else ""
        )
        problems.append(f"{what}: the hash of page {shown}{more} (of {pages}) does not match")
    return problems


def _signature_command(fd: int, start: int, size: int) -> tuple[tuple[int, int], int | None]:
    """(dataoff, datasize) of the slice's LC_CODE_SIGNATURE and where __LINKEDIT's file range
    ends, from load commands checked against the slice."""
    try:
        image = MachoSlice.read(fd, start, size)
        signature = image.signature()
        linkedit = next((s for s in image.segments() if s.name == "__LINKEDIT"), None)
    except MachoError as exc:
        raise SignatureError(f"the slice's load commands: {exc}") from None
    if signature is None:
        raise SignatureError("the slice has no LC_CODE_SIGNATURE")
    return signature, None if linkedit is None else linkedit.fileoff + linkedit.filesize
