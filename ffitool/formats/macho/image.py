"""One thin 64-bit Mach-O image as the pack side sees it: every load command's raw bytes.

The inspecting reader (`ffitool.formats.macho.reader`) keeps only what the model needs; the writer,
its verifier and the signature checks need the load commands themselves, read here once
through the parser they share with the reader (`ffitool.formats.macho.commands`), with every
size checked against the image before anything is read.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from ffitool.formats.macho.commands import (
    CPU_ARM64,
    CPU_X86_64,
    DYSYMTAB,
    HEADER,
    LC_CODE_SIGNATURE,
    LC_DYLD_EXPORTS_TRIE,
    LC_DYLD_INFO,
    LC_DYLD_INFO_ONLY,
    LC_DYSYMTAB,
    LC_ID_DYLIB,
    LC_SEGMENT_64,
    LC_SYMTAB,
    LINKEDIT_DATA,
    NLIST,
    SYMTAB,
    Command,
    MachoError,
    Section,
    Segment,
    check_commands_size,
    parse_commands,
    parse_header,
    parse_segment,
    trie_field,
)
from ffitool.formats.macho.trie import TrieError, decode_trie

ARCH_NAMES = {CPU_X86_64: "x86_64", CPU_ARM64: "arm64"}
"""The slices the writer packs, by CPU type, named as `--arch` names them."""


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
        label = f"slice at offset {start}" if start else "file"
        header = parse_header(_pread(fd, HEADER.size, start), label)
        check_commands_size(header, size)
        data = _pread(fd, header.sizeofcmds, start + HEADER.size)
        commands = list(parse_commands(data, header.ncmds))
        return cls(
            fd, start, size, header.cputype, header.filetype, commands, header.sizeofcmds,
            header.raw,
        )  # fmt: skip

    def pread(self, offset: int, length: int, what: str) -> bytes:
        if offset < 0 or length < 0 or offset + length > self.size:
            raise MachoError(
                f"{what} ({length} bytes at {offset}) extends past the end of the image"
            )
        return _pread(self.fd, length, self.start + offset)

    def segments(self) -> list[Segment]:
        return [parse_segment(c) for c in self.commands if c.cmd == LC_SEGMENT_64]

    def sections(self) -> list[Section]:
        """Every section, in n_sect order."""
        return [section for segment in self.segments() for section in segment.sections]

    def command(self, cmd: int) -> Command | None:
        matches = [c for c in self.commands if c.cmd == cmd]
        if len(matches) > 1:
            raise MachoError(f"more than one load command {cmd:#x}")
        return matches[0] if matches else None

    def trie_command(self) -> tuple[Command, int] | None:
        """The command holding the export trie and the byte offset of its (offset, size)."""
        for cmd in (LC_DYLD_INFO, LC_DYLD_INFO_ONLY, LC_DYLD_EXPORTS_TRIE):
            found = self.command(cmd)
            if found is not None and (at := trie_field(found)) is not None:
                return found, at
        return None

    def trie(self) -> dict[bytes, bytes]:
        where = self.trie_command()
        if where is None:
            return {}
        command, at = where
        offset, size = command.field(at), command.field(at + 4)
        try:
            return decode_trie(self.pread(offset, size, "export trie"))
        except TrieError as exc:
            raise MachoError(str(exc)) from None

    def symtab(self) -> tuple[int, ...]:
        command = self.command(LC_SYMTAB)
        if command is None:
            raise MachoError("no symbol table (LC_SYMTAB)")
        return command.fields(SYMTAB)

    def dysymtab(self) -> list[int]:
        command = self.command(LC_DYSYMTAB)
        if command is None:
            raise MachoError("no dynamic symbol table command (LC_DYSYMTAB)")
        return list(command.fields(DYSYMTAB))

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
        dataoff, datasize = command.fields(LINKEDIT_DATA)
        return dataoff, datasize

    def install_name(self) -> bytes | None:
        command = self.command(LC_ID_DYLIB)
        if command is None or len(command.data) < 24:
            return None
        offset = command.field(8)
        if not 24 <= offset < len(command.data):
            return None
        return command.data[offset:].split(b"\0", 1)[0]


def _pread(fd: int, count: int, offset: int) -> bytes:
    data = os.pread(fd, count, offset)
    if len(data) != count:
        raise MachoError("the file shrank while it was being read")
    return data


def symbol_name(strings: bytes, offset: int) -> bytes:
    """The NUL-terminated name at `offset` of a string table (empty when out of range)."""
    if not 0 <= offset < len(strings):
        return b""
    end = strings.find(b"\0", offset)
    return strings[offset : end if end != -1 else len(strings)]
