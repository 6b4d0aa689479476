"""The Mach-O header and load commands: their structs and constants, and the one parser of them.

The inspecting reader, the writer, its verifier and the signature checks all read a slice's
header and load commands here, so that a file one of them takes the others read the same way,
and each refusal is written once. Every size is checked against the bytes at hand before it
is used. Problems are `MachoError`s; each caller turns them into its own error (one
InputError naming the file, a verification failure, a signature problem).

The magic numbers are those of `ffitool.formats.sniff`, which tells the containers apart.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass

from ffitool.formats.sniff import FAT_64, MACHO_32, MACHO_64

HEADER = struct.Struct("<IiiIIIII")
"""mach_header_64: magic, cputype, cpusubtype, filetype, ncmds, sizeofcmds, flags, reserved."""
LOAD_COMMAND = struct.Struct("<II")
SEGMENT = struct.Struct("<II16sQQQQiiII")
"""A whole LC_SEGMENT_64 command, cmd and cmdsize included; its sections follow it."""
SECTION = struct.Struct("<16s16sQQIIIIIIII")
NLIST = struct.Struct("<IBBHQ")
FAT_HEADER = struct.Struct(">II")
FAT_ARCH = struct.Struct(">iiIII")
FAT_ARCH_64 = struct.Struct(">iiQQII")
SYMTAB = struct.Struct("<4I")
"""LC_SYMTAB past cmd and cmdsize: symoff, nsyms, stroff, strsize."""
DYSYMTAB = struct.Struct("<18I")
DYLD_INFO = struct.Struct("<10I")
"""LC_DYLD_INFO(_ONLY) past cmd and cmdsize: five (offset, size) pairs, the export trie last."""
LINKEDIT_DATA = struct.Struct("<2I")
"""A `linkedit_data_command` past cmd and cmdsize: dataoff, datasize."""

LC_SYMTAB = 0x2
LC_DYSYMTAB = 0xB
LC_ID_DYLIB = 0xD
LC_TWOLEVEL_HINTS = 0x16
LC_SEGMENT_64 = 0x19
LC_CODE_SIGNATURE = 0x1D
LC_DYLD_INFO = 0x22
LC_DYLD_INFO_ONLY = 0x80000022
LC_NOTE = 0x31
LC_DYLD_EXPORTS_TRIE = 0x80000033
LC_DYLD_CHAINED_FIXUPS = 0x80000034

CPU_X86_64 = 0x01000007
CPU_ARM64 = 0x0100000C

N_STAB = 0xE0
N_PEXT = 0x10
N_TYPE = 0x0E
N_EXT = 0x01
N_SECT = 0x0E

_SECTION_TYPE = 0xFF
_ZEROFILL_TYPES = {0x1, 0xC, 0x12}  # S_ZEROFILL, S_GB_ZEROFILL, S_THREAD_LOCAL_ZEROFILL

MAX_COMMANDS_SIZE = 16 << 20
MAX_SLICES = 64
"""The most architectures a universal header may list: far more than any real file holds."""


class MachoError(Exception):
    """A structural problem in a Mach-O image; the message says what, each caller where."""


def parse_fat_header(data: bytes) -> tuple[int, struct.Struct]:
    """The number of slices the universal header starting `data` (FAT_HEADER.size bytes)
    lists, checked, and the layout of its entries (fat_arch_64 after the 64-bit magic)."""
    count = FAT_HEADER.unpack_from(data)[1]
    if count == 0 or count > MAX_SLICES:
        raise MachoError(f"universal header claims {count} architectures (at most {MAX_SLICES})")
    return count, FAT_ARCH_64 if data[:4] == FAT_64 else FAT_ARCH


@dataclass(frozen=True)
class Header:
    """The fields of a 64-bit Mach-O header that its readers use, and its raw bytes."""

    cputype: int
    cpusubtype: int
    filetype: int
    ncmds: int
    sizeofcmds: int
    raw: bytes


def parse_header(data: bytes, label: str) -> Header:
    """The header in `data` (HEADER.size bytes) of the image `label` names ("file", "slice at
    offset N"): only a 64-bit little-endian image is read."""
    if data[:4] != MACHO_64:
        what = "a 32-bit Mach-O image" if data[:4] == MACHO_32 else "not a 64-bit Mach-O image"
        raise MachoError(f"the {label} is {what}, which is not supported")
    _, cputype, cpusubtype, filetype, ncmds, sizeofcmds, _, _ = HEADER.unpack(data)
    return Header(cputype, cpusubtype, filetype, ncmds, sizeofcmds, data)


def check_commands_size(header: Header, size: int) -> None:
    """Refuse load commands that the image of `size` bytes cannot hold, before they are read."""
    sizeofcmds = header.sizeofcmds
    if sizeofcmds > min(size - HEADER.size, MAX_COMMANDS_SIZE):
        raise MachoError(f"load commands claim {sizeofcmds} bytes, the image has {size}")
    if header.ncmds * LOAD_COMMAND.size > sizeofcmds:
        raise MachoError(f"{header.ncmds} load commands cannot fit in {sizeofcmds} bytes")


@dataclass(frozen=True)
class Command:
    """One load command: its position among the load commands, its type and raw bytes."""

    index: int
    cmd: int
    data: bytes

    def fields(self, layout: struct.Struct) -> tuple[int, ...]:
        """The command's fields past cmd and cmdsize, refused when it is too short for them."""
        if len(self.data) < LOAD_COMMAND.size + layout.size:
            raise MachoError(f"load command {self.index} is too short ({len(self.data)} bytes)")
        return layout.unpack_from(self.data, LOAD_COMMAND.size)

    def field(self, offset: int, fmt: str = "<I") -> int:
        return struct.unpack_from(fmt, self.data, offset)[0]


def trie_field(command: Command) -> int | None:
    """Where in `command` the export trie's (offset, size) pair is: LC_DYLD_EXPORTS_TRIE's
    data, the last pair of LC_DYLD_INFO(_ONLY); None when the command states no trie."""
    if command.cmd in (LC_DYLD_INFO, LC_DYLD_INFO_ONLY):
        return LOAD_COMMAND.size + 32 if command.fields(DYLD_INFO)[9] else None
    if command.cmd == LC_DYLD_EXPORTS_TRIE:
        command.fields(LINKEDIT_DATA)
        return LOAD_COMMAND.size
    return None


def parse_commands(data: bytes, ncmds: int) -> Iterator[Command]:
    """The `ncmds` load commands in `data` (sizeofcmds bytes), each checked to lie inside it
    as it is reached: a caller that decodes each command in turn refuses the first broken
    one, before a bad size misplaces those after it."""
    at = 0
    for index in range(ncmds):
        if at + LOAD_COMMAND.size > len(data):
            raise MachoError(f"load command {index} starts past the end of the load commands")
        cmd, cmdsize = LOAD_COMMAND.unpack_from(data, at)
        if cmdsize < LOAD_COMMAND.size or at + cmdsize > len(data):
            raise MachoError(f"load command {index} has a bad size {cmdsize}")
        yield Command(index, cmd, data[at : at + cmdsize])
        at += cmdsize


@dataclass(frozen=True)
class Section:
    segment: str
    name: str
    address: int
    size: int
    offset: int
    flags: int
    in_file: bool
    """Whether the file holds the section's bytes: inside its segment's file range. A dSYM
    keeps its library's section headers with the bytes left out (offset 0, or a segment
    with no file size)."""

    @property
    def label(self) -> str:
        return f"{self.segment},{self.name}"

    @property
    def zerofill(self) -> bool:
        return self.flags & _SECTION_TYPE in _ZEROFILL_TYPES


@dataclass(frozen=True)
class Segment:
    """A 64-bit segment command, decoded, with its sections."""

    index: int
    """Position among the load commands."""
    name: str
    vmaddr: int
    vmsize: int
    fileoff: int
    filesize: int
    sections: tuple[Section, ...]

    @property
    def nsects(self) -> int:
        return len(self.sections)


def parse_segment(command: Command) -> Segment:
    """The LC_SEGMENT_64 `command`, its section headers checked to lie inside it."""
    data, index = command.data, command.index
    if len(data) < SEGMENT.size:
        raise MachoError(f"segment command {index} is too short ({len(data)} bytes)")
    _, _, name, vmaddr, vmsize, fileoff, filesize, _, _, nsects, _ = SEGMENT.unpack_from(data)
    if SEGMENT.size + nsects * SECTION.size > len(data):
        raise MachoError(f"segment command {index} claims {nsects} sections it does not hold")
    sections = []
    for number in range(nsects):
        raw = SECTION.unpack_from(data, SEGMENT.size + number * SECTION.size)
        size, offset = raw[3], raw[4]
        in_file = fileoff <= offset and offset + size <= fileoff + filesize
        names = _text(raw[1]), _text(raw[0])
        sections.append(Section(*names, raw[2], size, offset, raw[8], in_file))
    return Segment(index, _text(name), vmaddr, vmsize, fileoff, filesize, tuple(sections))


def _text(field: bytes) -> str:
    return field.split(b"\0", 1)[0].decode("utf-8", "backslashreplace")
