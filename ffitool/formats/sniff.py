"""The one place that tells inputs apart by their first bytes, before any reader is loaded.

The reader dispatch, the directory and wheel walk and the raw-blob guard all ask here, so that
a new container's magic is written once and telling formats apart costs no import of a reader
(the ELF reader loads pyelftools, a fifth of ffitool's start-up, which a Mach-O input never
uses).
"""

from __future__ import annotations

from typing import BinaryIO

HEAD_SIZE = 20
"""How many leading bytes `sniff` needs: up to an ELF header's e_machine, which tells a cubin
from a host ELF file."""

ELF = b"\x7fELF"
MACHO_64 = b"\xcf\xfa\xed\xfe"
"""MH_MAGIC_64 as a little-endian file stores it (x86-64 and arm64 are both little-endian)."""
MACHO_32 = b"\xce\xfa\xed\xfe"
FAT = b"\xca\xfe\xba\xbe"
FAT_64 = b"\xca\xfe\xba\xbf"
MZ = b"MZ"
AR = b"!<arch>\n"
THIN_AR = b"!<thin>\n"
ZIP = (b"PK\x03\x04", b"PK\x05\x06")
EM_CUDA = b"\xbe\x00"
"""An ELF file's e_machine for NVIDIA device code (190, little-endian), at offset 18."""
ELF_64_LITTLE = b"\x7fELF\x02\x01"
"""An ELF header's magic, ELFCLASS64 and ELFDATA2LSB: what ptxas writes a cubin as."""
FATBIN = b"\x50\xed\x55\xba"
"""The fatbin container's magic, 0xBA55ED50 little-endian."""
COFF_MACHINES = (b"\x64\x86", b"\x64\xaa", b"\x4c\x01", b"\xc4\x01")
"""The first two bytes of a COFF object for x86-64, arm64, x86 and ARMv7: its machine field."""
_LINKER_MEMBER = b"/" + b" " * 15
"""The name of an archive's symbol index; a Microsoft library (.lib) has two of them."""

# What `sniff` returns: the container the bytes start, by the name the reports give it.
ELF_FILE = "ELF"
MACHO_FILE = "Mach-O"
UNIVERSAL_FILE = "Mach-O universal"
PE_FILE = "PE"
ARCHIVE = "ar archive"
THIN_ARCHIVE = "thin ar archive"
MACHO_32_FILE = "32-bit Mach-O"
COFF_OBJECT = "COFF object"
CUBIN_FILE = "CUDA cubin"
FATBIN_FILE = "CUDA fatbin"
DEVICE_FILES = (CUBIN_FILE, FATBIN_FILE)
"""Containers of device code: read by the payload decoders, never as host libraries."""


def sniff(head: bytes) -> str | None:
    """The container that `head` (the first HEAD_SIZE bytes) starts, or None."""
    if head.startswith(ELF):
        return CUBIN_FILE if head.startswith(ELF_64_LITTLE) and head[18:20] == EM_CUDA else ELF_FILE
    if head.startswith(MACHO_64):
        return MACHO_FILE
    if head[:4] in (FAT, FAT_64):
        return UNIVERSAL_FILE
    if head.startswith(MZ):
        return PE_FILE
    if head.startswith(FATBIN):
        return FATBIN_FILE
    if head[:8] == AR:
        return ARCHIVE
    if head[:8] == THIN_AR:
        return THIN_ARCHIVE
    if head.startswith(MACHO_32):
        return MACHO_32_FILE
    if head[:2] in COFF_MACHINES:
        return COFF_OBJECT
    return None


def looks_like_object(head: bytes) -> bool:
    """Whether a file met while walking a directory or wheel is one ffitool reads.

    A Java class file starts with the universal magic too, followed by its version (major 45
    or more), where a universal file has its architecture count: few, as file(1) assumes.
    """
    found = sniff(head)
    if found == UNIVERSAL_FILE:
        return 0 < int.from_bytes(head[4:8], "big") < 45
    return found in (ELF_FILE, MACHO_FILE, PE_FILE, ARCHIVE, CUBIN_FILE, FATBIN_FILE)


def is_wheel(head: bytes, name: str) -> bool:
    """Whether a file is a wheel: a zip archive named as one."""
    return head.startswith(ZIP) and name.endswith(".whl")


def is_coff_library(stream: BinaryIO, size: int) -> bool:
    """Whether an ar archive is a Microsoft library (an import library or a static .lib of
    COFF objects): its first two members are both linker members, where a GNU or BSD archive
    has one symbol index at most."""
    stream.seek(8)
    first = stream.read(60)
    if len(first) < 60 or first[:16] != _LINKER_MEMBER or not first[48:58].strip().isdigit():
        return False
    second_at = 68 + int(first[48:58]) + int(first[48:58]) % 2
    if second_at + 16 > size:
        return False
    stream.seek(second_at)
    return stream.read(16) == _LINKER_MEMBER
