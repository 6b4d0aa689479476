"""One thin 64-bit Mach-O image as the pack side sees it: every load command's raw bytes.

The inspecting reader (`ffitool.formats.macho.reader`) keeps only what the model needs; the writer,
its verifier and the signature checks need the load commands themselves, read here once,
with every size checked against the image before anything is read.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass

from ffitool.formats.macho.codesign import LC_CODE_SIGNATURE
from ffitool.formats.macho.reader import (
    HEADER,
    LC_DYLD_EXPORTS_TRIE,
    LC_DYLD_INFO,
    LC_DYLD_INFO_ONLY,
    LC_SEGMENT_64,
    LC_SYMTAB,
    MAX_COMMANDS_SIZE,
    NLIST,
    SECTION,
)
from ffitool.formats.macho.trie import TrieError, decode_trie

MAGIC_64 = 0xFEEDFACF
FAT_MAGIC = 0xCAFEBABE
FAT_MAGIC_64 = 0xCAFEBABF
CPU_X86_64 = 0x01000007
CPU_ARM64 = 0x0100000C
ARCH_NAMES = {CPU_X86_64: "x86_64", CPU_ARM64: "arm64"}
SEGMENT = struct.Struct("<II16sQQQQiiII")
"""A whole LC_SEGMENT_64 command, cmd and cmdsize included (the reader's skips them)."""

LC_DYSYMTAB = 0xB
LC_DYLD_CHAINED_FIXUPS = 0x80000034
LC_TWOLEVEL_HINTS = 0x16
LC_NOTE = 0x31
LC_ID_DYLIB = 0xD


class MachoError(Exception):
    """A reason the image cannot be packed or checked; each caller turns it into its own
    error (one InputError naming the file, a verification failure, a signature problem)."""


@dataclass
class Command:
    """One load command: its type and raw bytes."""

    cmd: int
    data: bytes

    def field(self, offset: int, fmt: str = "<I") -> int:
        return struct.unpack_from(fmt, self.data, offset)[0]


@dataclass(frozen=True)
class Segment:
    """A 64-bit segment command, decoded."""

    index: int
    """Position among the load commands."""
    name: str
    vmaddr: int
    vmsize: int
    fileoff: int
    filesize: int
    nsects: int


@dataclass
class MachoSlice:
    """The load commands of one thin 64-bit image, and reads of its bytes by slice offset.

    Shared by the writer, its verifier and the signature checks: they need every command's
    raw bytes, which the inspecting reader does not keep.
    """

    fd: int
    start: int
    size: int
    cputype: int
    filetype: int
    commands: list[Command]
    sizeofcmds: int
    header: bytes

    @classmethod
    def read(cls, fd: int, start: int, size: int) -> MachoSlice:
        if size < HEADER.size:
            raise MachoError("too short for a Mach-O header")
        header = os.pread(fd, HEADER.size, start)
        magic, cputype, _, filetype, ncmds, sizeofcmds, _, _ = HEADER.unpack(header)
        if magic != MAGIC_64:
            raise MachoError("not a 64-bit Mach-O image")
        if sizeofcmds > min(size - HEADER.size, MAX_COMMANDS_SIZE):
            raise MachoError(f"load commands claim {sizeofcmds} bytes, the image has {size}")
        data = os.pread(fd, sizeofcmds, start + HEADER.size)
        if len(data) != sizeofcmds:
            raise MachoError("the file shrank while it was being read")
        commands, at = [], 0
        for index in range(ncmds):
            if at + 8 > sizeofcmds:
                raise MachoError(f"load command {index} starts past the load commands")
            cmd, cmdsize = struct.unpack_from("<II", data, at)
            if cmdsize < 8 or at + cmdsize > sizeofcmds:
                raise MachoError(f"load command {index} has a bad size {cmdsize}")
            commands.append(Command(cmd, data[at : at + cmdsize]))
            at += cmdsize
        return cls(fd, start, size, cputype, filetype, commands, sizeofcmds, header)

    def pread(self, offset: int, length: int, what: str) -> bytes:
        if offset < 0 or length < 0 or offset + length > self.size:
            raise MachoError(
                f"{what} ({length} bytes at {offset}) extends past the end of the image"
            )
        data = os.pread(self.fd, length, self.start + offset)
        if len(data) != length:
            raise MachoError("the file shrank while it was being read")
        return data

    def segments(self) -> list[Segment]:
        found = []
        for index, command in enumerate(self.commands):
            if command.cmd != LC_SEGMENT_64:
                continue
            if len(command.data) < SEGMENT.size:
                raise MachoError(f"segment command {index} is too short")
            _, _, name, vmaddr, vmsize, fileoff, filesize, _, _, nsects, _ = SEGMENT.unpack_from(
                command.data
            )
            if SEGMENT.size + nsects * SECTION.size > len(command.data):
                raise MachoError(
                    f"segment command {index} claims {nsects} sections it does not hold"
                )
            text = name.split(b"\0", 1)[0].decode("ascii", "replace")
            found.append(Segment(index, text, vmaddr, vmsize, fileoff, filesize, nsects))
        return found

    def sections(self) -> list[tuple[str, str, int, int, int, int]]:
        """(segment, section, address, size, offset, flags) in n_sect order."""
        found = []
        for segment in self.segments():
            data = self.commands[segment.index].data
            for number in range(segment.nsects):
                raw = SECTION.unpack_from(data, SEGMENT.size + number * SECTION.size)
                names = [n.split(b"\0", 1)[0].decode("ascii", "replace") for n in raw[:2]]
                found.append((names[1], names[0], raw[2], raw[3], raw[4], raw[8]))
        return found

    def command(self, cmd: int) -> Command | None:
        matches = [c for c in self.commands if c.cmd == cmd]
        if len(matches) > 1:
            raise MachoError(f"more than one load command {cmd:#x}")
        return matches[0] if matches else None

    def trie_command(self) -> tuple[Command, int] | None:
        """The command holding the export trie and the byte offset of its (offset, size)."""
        for cmd in (LC_DYLD_INFO, LC_DYLD_INFO_ONLY):
            found = self.command(cmd)
            if found is not None and found.field(44):
                return found, 40
        found = self.command(LC_DYLD_EXPORTS_TRIE)
        if found is not None:
            return found, 8
        return None

    def trie(self) -> dict[bytes, bytes]:
        where = self.trie_command()
        if where is None:
            return {}
        command, at = where
        offset, size = struct.unpack_from("<II", command.data, at)
        try:
            return decode_trie(self.pread(offset, size, "export trie"))
        except TrieError as exc:
            raise MachoError(str(exc)) from None

    def symtab(self) -> tuple[int, int, int, int]:
        command = self.command(LC_SYMTAB)
        if command is None or len(command.data) < 24:
            raise MachoError("no symbol table (LC_SYMTAB)")
        return struct.unpack_from("<4I", command.data, 8)

    def dysymtab(self) -> list[int]:
        command = self.command(LC_DYSYMTAB)
        if command is None or len(command.data) < 80:
            raise MachoError("no dynamic symbol table command (LC_DYSYMTAB)")
        return list(struct.unpack_from("<18I", command.data, 8))

    def symbols(self) -> tuple[bytes, bytes]:
        """The raw nlist array and string table."""
        symoff, nsyms, stroff, strsize = self.symtab()
        return (
            self.pread(symoff, nsyms * NLIST.size, "symbol table"),
            self.pread(stroff, strsize, "string table"),
        )

    def signature(self) -> tuple[int, int] | None:
        """(dataoff, datasize) of LC_CODE_SIGNATURE, or None without one."""
        command = self.command(LC_CODE_SIGNATURE)
        if command is None:
            return None
        if len(command.data) < 16:
            raise MachoError("LC_CODE_SIGNATURE is too short")
        return struct.unpack_from("<II", command.data, 8)

    def install_name(self) -> bytes | None:
        command = self.command(LC_ID_DYLIB)
        if command is None or len(command.data) < 24:
            return None
        offset = command.field(8)
        if not 24 <= offset < len(command.data):
            return None
        return command.data[offset:].split(b"\0", 1)[0]


def symbol_name(strings: bytes, offset: int) -> bytes:
    """The NUL-terminated name at `offset` of a string table (empty when out of range)."""
    if not 0 <= offset < len(strings):
        return b""
    end = strings.find(b"\0", offset)
    return strings[offset : end if end != -1 else len(strings)]
