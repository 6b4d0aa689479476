"""Embedded code signatures of Mach-O images: the super blob, its code directories, its state.

One parser for both sides: the reader classifies a slice's signature (none, ad-hoc,
linker-signed, certificate) and the pack writer re-signs and verifies slices with the same
structures. All fields are big-endian, as Apple's code-signing format stores them whatever
the architecture. Every count and offset is checked against the bytes at hand before it is
used, so a lying blob ends in a `SignatureError`, never in a read past the data or a huge
allocation.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

CSMAGIC_EMBEDDED_SIGNATURE = 0xFADE0CC0
CSMAGIC_CODEDIRECTORY = 0xFADE0C02
CSMAGIC_BLOBWRAPPER = 0xFADE0B01
"""The CMS signature's wrapper; an ad hoc signature made by codesign carries an empty one."""

CSSLOT_CODEDIRECTORY = 0
CSSLOT_REQUIREMENTS = 2
CSSLOT_ENTITLEMENTS = 5
CSSLOT_DER_ENTITLEMENTS = 7
CSSLOT_ALTERNATE_CODEDIRECTORIES = range(0x1000, 0x1005)
CSSLOT_SIGNATURESLOT = 0x10000
SPECIAL_SLOTS = range(1, 8)
"""Slot types whose blob's hash the code directory keeps at index -type (Info.plist = 1)."""

CS_ADHOC = 0x2
CS_LINKER_SIGNED = 0x20000
CS_EXECSEG_MAIN_BINARY = 0x1

CS_HASHTYPE_SHA256 = 2
HASH_TYPES = {1: ("sha1", 20), 2: ("sha256", 32), 3: ("sha256", 20), 4: ("sha384", 48)}
"""hashType -> (hashlib name, hashSize); type 3 is SHA-256 truncated to 20 bytes."""

SUPERBLOB = struct.Struct(">III")
BLOB_INDEX = struct.Struct(">II")
BLOB_HEADER = struct.Struct(">II")
CODE_DIRECTORY = struct.Struct(">IIIIIIIIIBBBBIIIIQQQQ")
"""A version 0x20400 code directory header (88 bytes): through the executable segment."""
CODE_DIRECTORY_VERSION = 0x20400
_MIN_CODE_DIRECTORY = 44
"""The oldest header (version 0x20001): through spare2."""
_EXEC_SEGMENT_VERSION = 0x20400


class SignatureError(ValueError):
    """The signature's structure is broken; the message says where."""


@dataclass(frozen=True)
class Blob:
    """One entry of the super blob's index."""

    slot: int
    offset: int
    """Where the blob starts in the super blob."""
    magic: int
    length: int


@dataclass(frozen=True)
class CodeDirectory:
    """The fields of one code directory (those past its version's header read as 0)."""

    offset: int
    """Where the code directory starts in the super blob."""
    length: int
    version: int
    flags: int
    hash_offset: int
    ident_offset: int
    special_slots: int
    code_slots: int
    code_limit: int
    hash_size: int
    hash_type: int
    platform: int
    page_shift: int
    exec_segment: tuple[int, int, int]
    identifier: bytes

    def hash_at(self, data: bytes, index: int) -> bytes:
        """The stored hash of slot `index` (negative: special slots) in the super blob."""
        start = self.offset + self.hash_offset + index * self.hash_size
        return data[start : start + self.hash_size]


def blobs(data: bytes) -> list[Blob]:
    """The super blob's index, each blob's header inside the super blob's stated length."""
    if len(data) < SUPERBLOB.size:
        raise SignatureError(f"it is too short ({len(data)} bytes) for a super blob")
    magic, length, count = SUPERBLOB.unpack_from(data)
    if magic != CSMAGIC_EMBEDDED_SIGNATURE:
        raise SignatureError(f"bad super blob magic {magic:#x}")
    if length > len(data) or length < SUPERBLOB.size:
        raise SignatureError(f"super blob length {length} exceeds its {len(data)} bytes")
    if SUPERBLOB.size + count * BLOB_INDEX.size > length:
        raise SignatureError(f"super blob index of {count} entries exceeds its {length} bytes")
    index = []
    for number in range(count):
        slot, offset = BLOB_INDEX.unpack_from(data, SUPERBLOB.size + number * BLOB_INDEX.size)
        if offset + BLOB_HEADER.size > length:
            raise SignatureError(f"blob {number} (slot {slot:#x}) starts past the super blob")
        magic, size = BLOB_HEADER.unpack_from(data, offset)
        if size < BLOB_HEADER.size or offset + size > length:
            raise SignatureError(f"blob {number} (slot {slot:#x}) has a bad length {size}")
        index.append(Blob(slot, offset, magic, size))
    return index


def code_directory(data: bytes, blob: Blob) -> CodeDirectory:
    """The code directory `blob` of the super blob `data`, its hash table and identifier
    checked to lie inside it."""
    if blob.magic != CSMAGIC_CODEDIRECTORY:
        raise SignatureError(f"slot {blob.slot:#x} holds {blob.magic:#x}, not a code directory")
    if blob.length < _MIN_CODE_DIRECTORY:
        raise SignatureError(f"code directory is too short ({blob.length} bytes)")
    header = data[blob.offset : blob.offset + min(blob.length, CODE_DIRECTORY.size)]
    fields = CODE_DIRECTORY.unpack(header.ljust(CODE_DIRECTORY.size, b"\0"))
    (_, length, version, flags, hash_offset, ident_offset, special, slots, limit) = fields[:9]
    hash_size, hash_type, platform, page_shift = fields[9:13]
    exec_segment = fields[18:21] if version >= _EXEC_SEGMENT_VERSION else (0, 0, 0)
    if hash_offset < special * hash_size or hash_offset + slots * hash_size > length:
        raise SignatureError(
            f"code directory hash table ({special} special and {slots} code slots of"
            f" {hash_size} bytes at {hash_offset}) exceeds its {length} bytes"
        )
    end = data.find(b"\0", blob.offset + ident_offset, blob.offset + length)
    if ident_offset >= length or end < 0:
        raise SignatureError("code directory identifier is not a string inside it")
    return CodeDirectory(
        blob.offset, length, version, flags, hash_offset, ident_offset, special, slots, limit,
        hash_size, hash_type, platform, page_shift, exec_segment,
        data[blob.offset + ident_offset : end],
    )  # fmt: skip


def primary_code_directory(data: bytes, index: list[Blob]) -> CodeDirectory:
    """The code directory in slot 0."""
    for blob in index:
        if blob.slot == CSSLOT_CODEDIRECTORY:
            return code_directory(data, blob)
    raise SignatureError("it has no code directory")


def is_certificate(index: list[Blob]) -> bool:
    """Whether a CMS signature is present: a wrapper in the signature slot with content (an ad
    hoc signature made by codesign carries an empty wrapper)."""
    return any(b.slot == CSSLOT_SIGNATURESLOT and b.length > BLOB_HEADER.size for b in index)


def signature_state(data: bytes) -> str:
    """certificate, linker-signed, ad-hoc or unknown, from an embedded signature's bytes."""
    index = blobs(data)
    if is_certificate(index):
        return "certificate"
    flags = primary_code_directory(data, index).flags
    if flags & CS_LINKER_SIGNED:
        return "linker-signed"
    return "ad-hoc" if flags & CS_ADHOC else "unknown"
