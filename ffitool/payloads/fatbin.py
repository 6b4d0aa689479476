"""An NVIDIA fatbin: a container of cubins and PTX, one entry per architecture, read with struct.

A fatbin is one or more containers back to back (a host library's `.nv_fatbin` section holds
one per translation unit). A container is a 16-byte header (magic 0xBA55ED50, version, header
size, the size of the entries that follow) and entries, each a header (at least 64 bytes:
kind 1 PTX or 2 ELF, its header size, the payload's padded size, the compressed size, code
version, SM number, an object name, flags, the uncompressed size) then the payload. The flags
say 64-bit (0x1), debug (0x2), compressed (0x2000 NVIDIA's LZ format, 0x8000 zstd, both from
nvcc's `--compress-mode` and `-Xfatbin -compress-all`; nvcc 13 compresses PTX by default), and
the `a` (0x100000) or `f` (0x200000) variant of the architecture.

Cubins are decoded with `decode_cubin`, PTX with the decoder the registry names "ptx" when there
is one, after inflating LZ4 entries (`lz4.py`, bounded by the size the header says and by
`INFLATE_LIMIT`). zstd entries are listed with both sizes and not inflated: zstd is not in the
standard library before Python 3.14, and a decoder of it is a parser of its own to bound and
prove; the entry says `compression`.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from ffitool.payloads import _DECODERS, Details, JsonValue, PayloadError, _decoder, _is_fatbin
from ffitool.payloads.cubin import decode_cubin
from ffitool.payloads.lz4 import inflate_block

__all__ = ["FatbinDetails", "FatbinEntry", "decode_fatbin"]

FATBIN_MAGIC = 0xBA55ED50
KIND_PTX = 1
KIND_ELF = 2
FLAG_DEBUG = 0x2
FLAG_COMPRESSED_LZ = 0x2000
FLAG_COMPRESSED_ZSTD = 0x8000
FLAG_ACCELERATED = 0x100000
FLAG_FAMILY = 0x200000
ENTRY_LIMIT = 4096
"""Entries decoded per fatbin (all containers); the rest are counted."""
SUMMARY_LABELS = 8
INFLATE_LIMIT = 256 << 20
"""The largest entry inflated (a cubin of flashinfer's is a few MB, libcublas's tens)."""
LZ4_RATIO = 256
"""LZ4 writes at most 255 bytes of output per byte of input: a larger claim is false."""
PTX_DECODER = "ptx"
"""The registry's name of the PTX decoder, used when it is registered (payloads/ptx.py)."""

_CONTAINER = struct.Struct("<IHHQ")
_ENTRY = struct.Struct("<HHIQIIHHIIIQQQ")


@dataclass(frozen=True)
class FatbinEntry:
    """One entry: what its header says, and its payload decoded when it can be."""

    kind: str
    """"ptx", "elf", or "kind <n>" for a kind this decoder does not know."""
    offset: int
    """Where the entry's payload starts in the fatbin."""
    arch: str
    """The SM the header names, with the `a`/`f` variant its flags give ("sm_100f")."""
    code_version: str
    debug: bool
    compression: str | None
    """None, "lz" or "zstd"."""
    size: int
    """The payload's size in the fatbin (compressed when compressed)."""
    uncompressed_size: int | None
    details: Details | None
    error: str | None
    """Why the payload's decoder refused it."""

    def to_json(self) -> dict[str, JsonValue]:
        return {
            "kind": self.kind,
            "offset": self.offset,
            "arch": self.arch,
            "code_version": self.code_version,
            "debug": self.debug,
            "compression": self.compression,
            "size": self.size,
            "uncompressed_size": self.uncompressed_size,
            "details": None if self.details is None else self.details.to_json(),
            "error": self.error,
        }


@dataclass(frozen=True)
class FatbinDetails:
    """The entries of every container in the fatbin."""

    containers: int
    entries: tuple[FatbinEntry, ...]
    entry_count: int
    """All the entries, including those past `ENTRY_LIMIT` that `entries` leaves out."""
    decoder = "fatbin"

    def summary(self) -> str:
        """The distinct entries in order ("sm_80, sm_90a, ptx sm_100*"), a repeated one counted
        ("12x sm_100a") and at most `SUMMARY_LABELS` of them, so that a line stays a line."""
        counts: dict[str, int] = {}
        for entry in self.entries:
            label = entry.arch if entry.kind == "elf" else f"{entry.kind} {entry.arch}"
            label += "*" if entry.compression else ""
            counts[label] = counts.get(label, 0) + 1
        labels = [f"{n}x {label}" if n > 1 else label for label, n in counts.items()]
        listed = ", ".join(labels[:SUMMARY_LABELS])
        if len(labels) > SUMMARY_LABELS or self.entry_count > len(self.entries):
            listed += ", ..."
        compressed = " (* compressed)" if any(e.compression for e in self.entries) else ""
        plural = "y" if self.entry_count == 1 else "ies"
        return f"fatbin, {self.entry_count} entr{plural}: {listed}{compressed}"

    def to_json(self) -> dict[str, JsonValue]:
        return {
            "decoder": self.decoder,
            "containers": self.containers,
            "entry_count": self.entry_count,
            "entries": [entry.to_json() for entry in self.entries],
        }


def _arch(number: int, flags: int) -> str:
    variant = "a" if flags & FLAG_ACCELERATED else "f" if flags & FLAG_FAMILY else ""
    return f"sm_{number}{variant}"


def _compression(flags: int) -> str | None:
    if flags & FLAG_COMPRESSED_ZSTD:
        return "zstd"
    return "lz" if flags & FLAG_COMPRESSED_LZ else None


def _payload(
    data: memoryview, start: int, size: int, compressed: int, flags: int, inflated: int
) -> memoryview | PayloadError:
    """The entry's payload, inflated from LZ4 when it is (within `INFLATE_LIMIT`)."""
    if not flags & FLAG_COMPRESSED_LZ:
        return data[start : start + size]
    if compressed > size or inflated > min(INFLATE_LIMIT, LZ4_RATIO * compressed + 64):
        return PayloadError(f"LZ4 entry of {compressed} bytes said to inflate to {inflated}", 0)
    try:
        return memoryview(inflate_block(data[start : start + compressed], inflated))
    except PayloadError as exc:
        return exc


def _decode_entry(
    kind: int, payload: memoryview | PayloadError
) -> tuple[Details | None, str | None]:
    try:
        if isinstance(payload, PayloadError):
            raise payload
        if kind == KIND_ELF:
            return decode_cubin(payload), None
        if kind == KIND_PTX and PTX_DECODER in _DECODERS:
            text_end = bytes(payload).find(b"\0")
            return _decoder(PTX_DECODER)(
                payload[: text_end if text_end >= 0 else len(payload)]
            ), None
    except PayloadError as exc:
        return None, f"{exc.what} at offset {exc.offset} of the entry's payload"
    return None, None


def _entry(data: memoryview, offset: int, end: int, decode: bool) -> tuple[FatbinEntry, int]:
    """The entry at `offset` (its payload decoded if `decode`) and where the next one starts."""
    if offset + _ENTRY.size > end:
        raise PayloadError("fatbin entry header past its container", offset)
    (
        kind,
        _,
        header_size,
        size,
        compressed_size,
        _,
        minor,
        major,
        arch,
        _,
        _,
        flags,
        _,
        inflated,
    ) = _ENTRY.unpack_from(data, offset)
    if header_size < _ENTRY.size or size > end - offset or header_size > end - offset - size:
        raise PayloadError("fatbin entry past its container", offset)
    start = offset + header_size
    compression = _compression(flags)
    details, error = None, None
    if decode and compression != "zstd":
        details, error = _decode_entry(
            kind, _payload(data, start, size, compressed_size, flags, inflated)
        )
    entry = FatbinEntry(
        kind={KIND_PTX: "ptx", KIND_ELF: "elf"}.get(kind, f"kind {kind}"),
        offset=start,
        arch=_arch(arch, flags),
        code_version=f"{major}.{minor}",
        debug=bool(flags & FLAG_DEBUG),
        compression=compression,
        size=compressed_size if compression and compressed_size else size,
        uncompressed_size=inflated if compression else None,
        details=details,
        error=error,
    )
    return entry, start + size


def _container(data: memoryview, offset: int, entries: list[FatbinEntry]) -> tuple[int, int]:
    """Append the container's entries (up to `ENTRY_LIMIT` in all); its entry count and end."""
    if len(data) - offset < _CONTAINER.size:
        raise PayloadError("fatbin shorter than its header", offset)
    magic, _, header_size, entries_size = _CONTAINER.unpack_from(data, offset)
    if magic != FATBIN_MAGIC:
        raise PayloadError("not a fatbin (no 0xBA55ED50 magic)", offset)
    if header_size < _CONTAINER.size or header_size > len(data) - offset:
        raise PayloadError(f"fatbin header size {header_size}", offset)
    if entries_size > len(data) - offset - header_size:
        raise PayloadError("fatbin entries past the end of the payload", offset)
    cursor, end, count = offset + header_size, offset + header_size + entries_size, 0
    while cursor < end:
        entry, cursor = _entry(data, cursor, end, decode=len(entries) < ENTRY_LIMIT)
        if len(entries) < ENTRY_LIMIT:
            entries.append(entry)
        count += 1
    return count, end


def decode_fatbin(data: memoryview) -> FatbinDetails:
    """List every entry of every container, decoding the uncompressed cubins and PTX.

    Containers follow one another while the next bytes start with the magic; what follows the
    last (a section's padding) is not read."""
    entries: list[FatbinEntry] = []
    count, offset = _container(data, 0, entries)
    containers = 1
    while len(data) - offset >= _CONTAINER.size and _is_fatbin(data[offset:]):
        more, offset = _container(data, offset, entries)
        count += more
        containers += 1
    return FatbinDetails(containers, tuple(entries), count)
