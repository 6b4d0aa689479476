"""A cubin: NVIDIA device code as an ELF file with e_machine EM_CUDA (190), read with struct.

What a kernel engineer asks of a cubin is the architecture it runs on, its kernels and their
sizes, and whether it is a debug (-G) or relocatable (-rdc / -dc) build. The architecture is
spread over three places, which toolkits have moved between:

- `e_flags`, in two layouts chosen by EI_OSABI. ELFOSABI_CUDA (0x33, ABI version 7, toolkits
  before 13) keeps the SM number in bits 0-7, the virtual (PTX) SM in bits 16-23 and the `a`
  variant in 0x800. The layout of ABI version 8 (EI_OSABI 0x41, toolkit 13) keeps the SM number
  from bit 8 on (sm_100 is 0x6006402; cuobjdump 13.5 reads bits 8-23) and names 0x8 the `a`
  variant (LLVM's EF_CUDA_ACCELERATORS: flashinfer's 0x1000670c is sm_103a), which ptxas 13.5
  does not set.
- `.nv.compat` (section type 0x70000086): attributes of 4 bytes or more (format, attribute,
  value). ptxas 13.5 leaves e_flags identical for sm_100, sm_100a and sm_100f and marks the `a`
  variant with attribute 9 = 1 here, which is what cuobjdump 13.5 reads.
- `.note.nv.tkinfo`: the ptxas command line (`-arch sm_100f -m 64`), the only place a family
  (`f`) build is named in the cubin; cuobjdump names such a cubin sm_100, and so does `arch`
  here, with `built_for` saying `sm_100f`.

The toolkit version is e_version in ABI 7 files (124 is 12.4), `.note.nv.cuinfo`'s in ABI 8
files (135 is 13.5); cuobjdump reads the same. The layout follows EI_OSABI as cuobjdump's does
(0x41 the new one, anything else the old), whatever EI_ABIVERSION says.

Kernels are the STT_FUNC symbols with STO_CUDA_ENTRY (0x10) in st_other, sized by the symbol
(or by their `.text.<kernel>` section when the symbol says 0). Names are not demangled: doing it
safely needs a demangler in process (spawning c++filt per name at inspect time is not
acceptable), and the mangled name is what a loader looks up.

Every offset and size is checked against the buffer, names are at most `NAME_LIMIT` bytes and
all the names read spell at most `NAME_EXPANSION` times their table (plus `NAME_LIMIT`), and at
most `KERNEL_LIMIT` kernels are kept (the rest are counted).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from itertools import pairwise

from ffitool.formats.strtab import NAME_EXPANSION, NAME_LIMIT
from ffitool.payloads import JsonValue, PayloadError, _is_cubin

__all__ = ["CubinDetails", "Kernel", "decode_cubin"]

EM_CUDA = 190
ELFOSABI_CUDA_V1 = 0x33
ELFOSABI_CUDA_V2 = 0x41
ET_REL = 1
SHT_SYMTAB = 2
SHT_NOTE = 7
SHT_CUDA_COMPAT = 0x70000086
STT_FUNC = 2
STO_CUDA_ENTRY = 0x10
EF_CUDA_ACCELERATORS_V1 = 0x800
EF_CUDA_ACCELERATORS_V2 = 0x8
COMPAT_ACCELERATED = 9
"""The `.nv.compat` attribute ptxas 13.5 sets to 1 for an `a` build (sm_100a, sm_90a)."""
NOTE_CUINFO = 1000
NOTE_TKINFO = 2000
KERNEL_LIMIT = 10_000
"""Kernels kept per cubin; flashinfer's largest cubins hold a few hundred."""

_NOTE_SECTIONS = (".note.nv.cuinfo", ".note.nv.tkinfo")
_COMPAT = ".nv.compat"
_ROLES = frozenset({*_NOTE_SECTIONS, _COMPAT, ".symtab"})
"""The sections read, the first of each only: work stays linear in the section headers
however many of them point at the same bytes."""
_ELF_HEADER = struct.Struct("<16sHHIQQQIHHHHHH")
_SECTION = struct.Struct("<IIQQQQIIQQ")
_SYMBOL = struct.Struct("<IBBHQQ")
_NOTE = struct.Struct("<III")


@dataclass(frozen=True)
class Kernel:
    """One kernel (an entry function): its mangled name and code size in bytes."""

    name: str
    size: int


@dataclass(frozen=True)
class CubinDetails:
    """What a cubin says of itself."""

    arch: str
    """The SM architecture as cuobjdump names it: "sm_80", "sm_90a", "sm_100"."""
    built_for: str | None
    """The ptxas `-arch` the toolkit note records ("sm_100f"), when there is one."""
    virtual_arch: str | None
    """The PTX architecture (ABI 7 e_flags bits 16-23), when there is one."""
    e_flags: int
    abi_version: int
    toolkit: str | None
    relocatable: bool
    debug: bool
    kernels: tuple[Kernel, ...]
    kernel_count: int
    """All the kernels, including those past `KERNEL_LIMIT` that `kernels` leaves out."""
    decoder = "cubin"

    def summary(self) -> str:
        arch = self.arch
        if self.built_for is not None and self.built_for != arch:
            arch += f" (built for {self.built_for})"
        traits = [f"toolkit {self.toolkit}"] if self.toolkit else []
        traits += ["relocatable"] * self.relocatable + ["debug"] * self.debug
        plural = "" if self.kernel_count == 1 else "s"
        return ", ".join([f"cubin {arch}", *traits, f"{self.kernel_count} kernel{plural}"])

    def to_json(self) -> dict[str, JsonValue]:
        return {
            "decoder": self.decoder,
            "arch": self.arch,
            "built_for": self.built_for,
            "virtual_arch": self.virtual_arch,
            "e_flags": self.e_flags,
            "abi_version": self.abi_version,
            "toolkit": self.toolkit,
            "relocatable": self.relocatable,
            "debug": self.debug,
            "kernel_count": self.kernel_count,
            "kernels": [{"name": k.name, "size": k.size} for k in self.kernels],
        }


@dataclass(frozen=True)
class _Section:
    name_offset: int
    type: int
    offset: int
    size: int
    link: int
    entsize: int


class _Names:
    """NUL-terminated names out of one table, bounded one by one and in all."""

    def __init__(self, data: memoryview, section: _Section, at: int) -> None:
        self._table = bytes(_contents(data, section, at))
        self._start = section.offset
        self._budget = NAME_EXPANSION * len(self._table) + NAME_LIMIT
        self._read: dict[int, str] = {}

    def name(self, offset: int) -> str:
        known = self._read.get(offset)
        if known is not None:
            return known
        if offset >= len(self._table):
            raise PayloadError("name offset past its string table", self._start)
        end = self._table.find(b"\0", offset, offset + NAME_LIMIT)
        if end < 0:
            raise PayloadError("name without a terminator", self._start + offset)
        self._budget -= end - offset
        if self._budget < 0:
            raise PayloadError("names spell more than their table can", self._start + offset)
        name = self._table[offset:end].decode("utf-8", "backslashreplace")
        self._read[offset] = name
        return name


def _within(data: memoryview, offset: int, size: int, what: str, at: int) -> None:
    if offset > len(data) or size > len(data) - offset:
        raise PayloadError(f"{what} past the end of the cubin", at)


def _sections(data: memoryview, shoff: int, shentsize: int, shnum: int) -> list[_Section]:
    if shnum == 0:
        return []
    if shentsize != _SECTION.size:
        raise PayloadError(f"section header size {shentsize}, not {_SECTION.size}", 58)
    _within(data, shoff, shnum * shentsize, "section header table", 40)
    sections = []
    for index in range(shnum):
        name, kind, _, _, offset, size, link, _, _, entsize = _SECTION.unpack_from(
            data, shoff + index * shentsize
        )
        sections.append(_Section(name, kind, offset, size, link, entsize))
    return sections


def _contents(data: memoryview, section: _Section, at: int) -> memoryview:
    _within(data, section.offset, section.size, "section", at)
    return data[section.offset : section.offset + section.size]


def _notes(data: memoryview, section: _Section, at: int) -> dict[int, bytes]:
    """The section's notes by type (the first of each), each checked to lie inside it."""
    body, cursor = _contents(data, section, at), 0
    found: dict[int, bytes] = {}
    while cursor + _NOTE.size <= len(body):
        namesz, descsz, kind = _NOTE.unpack_from(body, cursor)
        desc = cursor + _NOTE.size + (namesz + 3) // 4 * 4
        end = desc + (descsz + 3) // 4 * 4
        if end > len(body):
            raise PayloadError("note past its section", section.offset + cursor)
        found.setdefault(kind, bytes(body[desc : desc + descsz]))
        cursor = end
    return found


def _toolkit(notes: dict[int, bytes], e_version: int, layout_v1: bool) -> str | None:
    """ABI 7 files say it in e_version (124 is 12.4), ABI 8 files in `.note.nv.cuinfo`."""
    cuinfo = notes.get(NOTE_CUINFO, b"")
    if layout_v1 and e_version > 1:
        version = e_version
    elif len(cuinfo) >= 6:
        version = int.from_bytes(cuinfo[4:6], "little")
    else:
        return None
    return f"{version // 10}.{version % 10}"


def _built_for(notes: dict[int, bytes]) -> str | None:
    """The `-arch` option of the ptxas command line in the toolkit note."""
    words = notes.get(NOTE_TKINFO, b"").replace(b"\0", b" ").split()
    for option, value in pairwise(words):
        if option == b"-arch" and value.startswith(b"sm_") and len(value) <= 16:
            return value.decode("ascii", "backslashreplace")
    return None


def _compat(data: memoryview, section: _Section, at: int) -> dict[int, int]:
    """`.nv.compat` attributes with a 1- or 2-byte value, by attribute."""
    body, cursor = _contents(data, section, at), 0
    found: dict[int, int] = {}
    while cursor + 4 <= len(body):
        form, attribute = body[cursor], body[cursor + 1]
        if form == 2:
            found[attribute] = body[cursor + 2]
        elif form == 3:
            found[attribute] = int.from_bytes(body[cursor + 2 : cursor + 4], "little")
        elif form == 4:
            cursor += int.from_bytes(body[cursor + 2 : cursor + 4], "little")
        elif form != 1:
            raise PayloadError(f"unknown .nv.compat attribute format {form}", section.offset)
        cursor += 4
    return found


def _kernels(
    data: memoryview, sections: list[_Section], symtab: _Section, at: int
) -> tuple[list[Kernel], int]:
    """The entry functions of the symbol table whose section header is at `at`."""
    if symtab.entsize != _SYMBOL.size:
        raise PayloadError(f"symbol size {symtab.entsize}, not {_SYMBOL.size}", at)
    if symtab.link >= len(sections):
        raise PayloadError("symbol table linked to no section", at)
    body = _contents(data, symtab, at)
    names = _Names(data, sections[symtab.link], at)
    kernels: list[Kernel] = []
    count = 0
    for name, info, other, shndx, _, size in _SYMBOL.iter_unpack(body[: len(body) // 24 * 24]):
        if info & 0xF != STT_FUNC or not other & STO_CUDA_ENTRY:
            continue
        count += 1
        if len(kernels) < KERNEL_LIMIT:
            if size == 0 and shndx < len(sections):
                size = sections[shndx].size
            kernels.append(Kernel(names.name(name), size))
    return kernels, count


def _arch(flags: int, layout_v1: bool, accelerated: bool) -> tuple[str, str | None]:
    if layout_v1:
        sm, virtual = flags & 0xFF, (flags >> 16) & 0xFF
        variant = "a" if flags & EF_CUDA_ACCELERATORS_V1 or accelerated else ""
        return f"sm_{sm}{variant}", f"compute_{virtual}" if virtual else None
    sm = (flags >> 8) & 0xFFFF
    variant = "a" if flags & EF_CUDA_ACCELERATORS_V2 or accelerated else ""
    return f"sm_{sm}{variant}", None


def decode_cubin(data: memoryview) -> CubinDetails:
    """Decode a cubin's architecture, toolkit, kernels and build traits."""
    if len(data) < _ELF_HEADER.size:
        raise PayloadError("cubin shorter than an ELF header", 0)
    if not _is_cubin(data):
        raise PayloadError("not a 64-bit little-endian ELF file for EM_CUDA", 0)
    ident, e_type, _, e_version, _, _, shoff, flags, _, _, _, shentsize, shnum, shstrndx = (
        _ELF_HEADER.unpack_from(data, 0)
    )
    layout_v1 = ident[7] != ELFOSABI_CUDA_V2
    sections = _sections(data, shoff, shentsize, shnum)
    if sections and shstrndx >= len(sections):
        raise PayloadError("section name table index past the section headers", 62)
    section_names = (
        _Names(data, sections[shstrndx], shoff + shstrndx * shentsize) if sections else None
    )
    roles: dict[str, tuple[_Section, int]] = {}
    debug = False
    for index, section in enumerate(sections):
        name = section_names.name(section.name_offset) if section_names else ""
        debug = debug or name.startswith(".nv_debug") or name == ".debug_info"
        role = {SHT_NOTE: name, SHT_CUDA_COMPAT: _COMPAT, SHT_SYMTAB: name}.get(section.type)
        if role in _ROLES:
            roles.setdefault(role, (section, shoff + index * shentsize))
    notes: dict[int, bytes] = {}
    for role in _NOTE_SECTIONS:
        for kind, desc in (_notes(data, *roles[role]) if role in roles else {}).items():
            notes.setdefault(kind, desc)
    compat = _compat(data, *roles[_COMPAT]) if _COMPAT in roles else {}
    kernels, count = _kernels(data, sections, *roles[".symtab"]) if ".symtab" in roles else ([], 0)
    arch, virtual = _arch(flags, layout_v1, compat.get(COMPAT_ACCELERATED) == 1)
    return CubinDetails(
        arch=arch,
        built_for=_built_for(notes),
        virtual_arch=virtual,
        e_flags=flags,
        abi_version=ident[8],
        toolkit=_toolkit(notes, e_version, layout_v1),
        relocatable=e_type == ET_REL,
        debug=debug,
        kernels=tuple(kernels),
        kernel_count=count,
    )
