"""Give an ELF shared library a loadable, dynamically exported `__tvm_ffi__library_bin`.

Two steps. LIEF does the structural part on a tiny placeholder section: a new PT_LOAD, the
symbol in `.dynsym` with GNU/SysV hash tables and symbol versions rebuilt. Then `place` moves
that section to a page-aligned region at the end of the file sized for the real blob, points
the symbol (and its `.symtab` twin) at it, and mends what LIEF is known to get wrong (segment
alignment, NOBITS section addresses). The blob itself is streamed in by the caller, so its
size never passes through LIEF, which would cost a minute and gigabytes for a 1 GiB payload.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from ffitool.errors import InputError
from ffitool.formats.elf import (
    ElfFile,
    SectionNames,
    entries_named,
    program_headers,
    section_headers,
)
from ffitool.symbols import LIBRARY_BIN

BLOB_SECTION = ".tvm_ffi_blob"
_PLACEHOLDER_SIZE = 16
_MIN_PAGE = 0x1000
_SHF_ALLOC = 0x2
_VER_NDX_GLOBAL = 1


@dataclass(frozen=True)
class Placement:
    """Where the blob goes: file offset and virtual address of its first byte, and its size."""

    file_offset: int
    address: int
    size: int


def prepare(source: Path, staging: Path, display: str) -> None:
    """Write to `staging` a copy of `source` that has a `.tvm_ffi_blob` section and symbol.

    A library packed before (it has our section and the symbol in `.dynsym`) is copied
    without LIEF; if its old blob is the tail of the file it is cut off, not kept. The caller
    has checked that `source` is an ELF shared library.
    """
    with open(source, "rb") as handle:
        size = os.fstat(handle.fileno()).st_size
        reused = _own_section_tail(handle, size)
    if reused is not None:
        _copy_prefix(source, staging, reused)
        return
    _add_with_lief(source, staging, display)


def _own_section_tail(handle: BinaryIO, size: int) -> int | None:
    """If the blob already lives in our own section, the number of bytes worth copying."""
    elf = ElfFile(handle)
    sections = section_headers(elf, size)
    names = SectionNames(elf, sections, size)
    ours = [h for i, h in enumerate(sections) if names[i] == BLOB_SECTION]
    exported = any(
        entries_named(elf, size, header, sections, LIBRARY_BIN)
        for header in sections
        if header["sh_type"] == "SHT_DYNSYM"
    )
    if len(ours) != 1 or not exported:
        return None
    start, end = ours[0]["sh_offset"], ours[0]["sh_offset"] + ours[0]["sh_size"]
    return start if end == size else size


def _copy_prefix(source: Path, staging: Path, length: int) -> None:
    with open(source, "rb") as src, open(staging, "wb") as dst:
        copied = 0
        while copied < length:
            sent = os.copy_file_range(src.fileno(), dst.fileno(), length - copied, copied, copied)
            if not sent:
                break
            copied += sent
        if copied < length:
            src.seek(copied)
            shutil.copyfileobj(src, dst, length - copied)


def _add_with_lief(source: Path, staging: Path, display: str) -> None:
    """Run the LIEF step in a forked child: LIEF can crash on malformed input, and a crash
    must end in a clean error, with the staged file still removed by the parent."""
    reader, writer = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report failures through the pipe, never return
        os.close(reader)
        code = 0
        try:
            _lief_step(source, staging, display)
        except InputError as exc:
            os.write(writer, str(exc).encode("utf-8", "backslashreplace"))
            code = 1
        except BaseException as exc:
            os.write(writer, f"{display}: LIEF failed: {exc}".encode("utf-8", "backslashreplace"))
            code = 1
        finally:
            os._exit(code)
    os.close(writer)
    with os.fdopen(reader, "rb") as messages:
        message = messages.read().decode("utf-8", "backslashreplace")
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        raise InputError(f"{display}: LIEF crashed (signal {os.WTERMSIG(status)}) on this file")
    if os.WEXITSTATUS(status):
        raise InputError(message or f"{display}: LIEF failed")


def _lief_step(source: Path, staging: Path, display: str) -> None:
    import lief

    lief.logging.disable()
    binary = lief.ELF.parse(str(source))
    if binary is None:
        raise InputError(f"{display}: LIEF cannot parse this ELF file")
    if binary.header.file_type != lief.ELF.Header.FILE_TYPE.DYN:
        raise InputError(f"{display}: only shared libraries (ET_DYN) can be packed")
    if not binary.has(lief.ELF.Segment.TYPE.DYNAMIC):
        raise InputError(f"{display}: no dynamic section, so dlsym could never find a blob")
    section = lief.ELF.Section(BLOB_SECTION, lief.ELF.Section.TYPE.PROGBITS)
    section.flags = lief.ELF.Section.FLAGS.ALLOC
    section.alignment = 16
    section.content = [0] * _PLACEHOLDER_SIZE
    added = binary.add(section, loaded=True)
    # Properties are set before adding: LIEF decides from them whether the symbol is an
    # export that the hash tables must cover.
    existing = binary.has_dynamic_symbol(LIBRARY_BIN)
    symbol = binary.get_dynamic_symbol(LIBRARY_BIN) if existing else lief.ELF.Symbol()
    symbol.name = LIBRARY_BIN
    symbol.type = lief.ELF.Symbol.TYPE.OBJECT
    symbol.binding = lief.ELF.Symbol.BINDING.GLOBAL
    symbol.visibility = lief.ELF.Symbol.VISIBILITY.DEFAULT
    symbol.value = added.virtual_address
    symbol.size = _PLACEHOLDER_SIZE
    # Defined in the new section: LIEF leaves undefined symbols out of the GNU hash table.
    symbol.shndx = [s.name for s in binary.sections].index(BLOB_SECTION)
    if not existing:
        binary.add_dynamic_symbol(symbol)
    binary.write(str(staging))


def place(staging: Path, original: Path, blob_size: int) -> Placement:
    """Point section, segment and symbols of `staging` at a fresh region for the blob.

    The region starts at the first page boundary past the end of the file and past every
    segment's memory, so it overlaps nothing; the caller writes the blob there.
    """
    with open(staging, "r+b") as handle:
        size = os.fstat(handle.fileno()).st_size
        elf = ElfFile(handle)
        sections = section_headers(elf, size)
        phdrs = program_headers(elf, size)
        names = SectionNames(elf, sections, size)
        found = [i for i, _ in enumerate(sections) if names[i] == BLOB_SECTION]
        if len(found) != 1:
            raise InputError(
                f"{original}: the rewritten file has {len(found)} {BLOB_SECTION} sections"
            )
        index = found[0]
        ours = sections[index]
        loads = [p for p in phdrs if p["p_type"] == "PT_LOAD"]
        own = [p for p in loads if _covers(p, ours["sh_addr"])]
        if len(own) != 1:
            raise InputError(f"{staging}: the blob section is not in exactly one PT_LOAD")
        segment = own[0]
        page = max([_MIN_PAGE, *(p["p_align"] for p in loads)])
        others = [p for p in loads if p is not segment]
        address = _align(max(p["p_vaddr"] + p["p_memsz"] for p in others), page)
        offset = _align(size, page)
        segment.update(
            p_offset=offset, p_vaddr=address, p_paddr=address,
            p_filesz=blob_size, p_memsz=blob_size, p_align=page,
        )  # fmt: skip
        ours.update(sh_addr=address, sh_offset=offset, sh_size=blob_size)
        # The gABI wants PT_LOAD entries in ascending address order, and glibc sizes the
        # whole mapping from the first and the last one: ours, now highest, must come last.
        slots = [i for i, p in enumerate(phdrs) if p["p_type"] == "PT_LOAD"]
        for slot, load in zip(slots, sorted(loads, key=lambda p: p["p_vaddr"]), strict=True):
            phdrs[slot] = load
        _write_headers(handle, elf, phdrs, "e_phoff", "e_phentsize", "Elf_Phdr")
        _mend_nobits(sections, names, original)
        _write_headers(handle, elf, sections, "e_shoff", "e_shentsize", "Elf_Shdr")
        _point_symbols(handle, elf, sections, size, index, address, blob_size)
    return Placement(offset, address, blob_size)


def _covers(phdr, address: int) -> bool:
    return phdr["p_vaddr"] <= address < phdr["p_vaddr"] + max(phdr["p_memsz"], 1)


def _align(value: int, alignment: int) -> int:
    return (value + alignment - 1) // alignment * alignment


def _write_headers(handle: BinaryIO, elf: ElfFile, headers: list, at: str, step: str, kind: str):
    layout = getattr(elf.structs, kind)
    for number, header in enumerate(headers):
        handle.seek(elf[at] + number * elf[step])
        handle.write(layout.build(header))


def _mend_nobits(sections: list, names: SectionNames, original: Path) -> None:
    """Put NOBITS sections (`.bss`) back where they belong: right after their segment's data.

    LIEF can leave `.bss` at a stale address past the segment; `strip`, which trusts section
    headers, then shrinks the RW segment and the library crashes on its first write there.
    Each is moved by the shift of the allocated section that preceded it in the original.
    """
    with open(original, "rb") as handle:
        size = os.fstat(handle.fileno()).st_size
        elf = ElfFile(handle)
        before = section_headers(elf, size)
        before_names = SectionNames(elf, before, size)
    old = {before_names[i]: h for i, h in enumerate(before)}
    new = {names[i]: h for i, h in enumerate(sections)}
    for name, header in new.items():
        if header["sh_type"] != "SHT_NOBITS" or not header["sh_flags"] & _SHF_ALLOC:
            continue
        if name not in old:
            continue
        anchor = max(
            (
                n
                for n, h in old.items()
                if h["sh_flags"] & _SHF_ALLOC
                and h["sh_type"] != "SHT_NOBITS"
                and h["sh_addr"] <= old[name]["sh_addr"]
                and n in new
            ),
            key=lambda n: old[n]["sh_addr"],
            default=None,
        )
        if anchor is None:
            continue
        shift = new[anchor]["sh_addr"] - old[anchor]["sh_addr"]
        header["sh_addr"] = old[name]["sh_addr"] + shift
        header["sh_offset"] = new[anchor]["sh_offset"] + (
            header["sh_addr"] - new[anchor]["sh_addr"]
        )


def _point_symbols(
    handle: BinaryIO, elf: ElfFile, sections: list, size: int, index: int, address: int, length: int
) -> None:
    """Every `__tvm_ffi__library_bin` in .dynsym and .symtab now names the new region."""
    layout = elf.structs.Elf_Sym
    for table_index, header in enumerate(sections):
        if header["sh_type"] not in ("SHT_DYNSYM", "SHT_SYMTAB"):
            continue
        entry_size = header["sh_entsize"] or layout.sizeof()
        for number in entries_named(elf, size, header, sections, LIBRARY_BIN):
            at = header["sh_offset"] + number * entry_size
            handle.seek(at)
            symbol = layout.parse(handle.read(layout.sizeof()))
            symbol["st_value"] = address
            symbol["st_size"] = length
            symbol["st_shndx"] = index
            if header["sh_type"] == "SHT_DYNSYM":
                symbol["st_info"]["bind"] = "STB_GLOBAL"
                symbol["st_info"]["type"] = "STT_OBJECT"
                symbol["st_other"]["visibility"] = "STV_DEFAULT"
                _set_global_version(handle, elf, sections, table_index, number)
            handle.seek(at)
            handle.write(layout.build(symbol))


def _set_global_version(
    handle: BinaryIO, elf: ElfFile, sections: list, dynsym_index: int, number: int
) -> None:
    """A `.gnu.version` entry of 0 (local) or with the hidden bit hides the symbol from dlsym."""
    order = "little" if elf.little_endian else "big"
    for header in sections:
        if header["sh_type"] == "SHT_GNU_versym" and header["sh_link"] == dynsym_index:
            at = header["sh_offset"] + 2 * number
            handle.seek(at)
            value = int.from_bytes(handle.read(2), order)
            if value & 0x7FFF == 0 or value & 0x8000:
                handle.seek(at)
                handle.write((value & 0x7FFF or _VER_NDX_GLOBAL).to_bytes(2, order))
            return
