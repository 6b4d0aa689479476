"""What every object-format reader hands to the model: images, symbols, file locations.

An *image* is one thing with its own symbol table: a shared library, an object, one member of
a static archive, one slice of a Mach-O universal file. Readers keep only FFI-related symbols,
so the model never sees the thousands of others.

What the model needs to know about a symbol's reach is format-neutral and decided by the
reader (`exported`, `external`, `hidden_because`): each format has its own rules for what a
dynamic loader finds (ELF: binding, visibility and the dynamic table; Mach-O: N_EXT, N_PEXT
and the export trie). Binding, visibility and type stay as the format spells them, for display.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum


class SymbolTable(str, Enum):
    """Where a symbol was listed. ELF's dynamic table is what `dlsym` searches; a Mach-O
    image has one symbol table (STATIC), whose exported entries the export trie confirms;
    a PE image's export directory is what `GetProcAddress` searches (EXPORTS)."""

    DYNAMIC = "dynsym"
    STATIC = "symtab"
    EXPORTS = "exports"


@dataclass(frozen=True, slots=True)
class Symbol:
    """One symbol as the object file records it (names without any format decoration)."""

    name: str
    table: SymbolTable
    binding: str
    """The format's own word for the symbol's linkage (ELF STB_*, Mach-O EXTERNAL/...)."""
    type: str
    visibility: str
    address: int
    size: int
    section: str | None
    """Section name, or None for an undefined symbol."""
    nobits: bool = False
    """The symbol lives in a section with no file contents (`.bss`)."""
    executable: bool | None = None
    """The symbol's section holds code (ELF SHF_EXECINSTR); None when the reader cannot
    tell (a special section index, or no section headers)."""
    exported: bool = False
    """A loadable image's dynamic loader finds this record (`dlsym` resolves it); always
    False in objects and archive members, which nothing loads."""
    external: bool = False
    """Visible to the static linker outside its object (ELF GLOBAL/WEAK, Mach-O N_EXT): what
    counts as a function of an object or archive member."""
    hidden_because: str = ""
    """Why a loader would not find this record, in words for a finding; empty if exported."""
    raw_name: str = ""
    """The name as the file spells it when the format decorates C names (Mach-O prepends
    `_`); empty when it is `name`."""

    @property
    def file_name(self) -> str:
        """The name in the file's own spelling: what `nm` prints."""
        return self.raw_name or self.name

    @property
    def defined(self) -> bool:
        return self.section is not None


@dataclass(frozen=True)
class Location:
    """Bytes of a symbol in the file: where they start and how many the file backs from there."""

    file_offset: int
    available: int
    in_section: int | None = None
    """Bytes from the symbol to the end of its section, where the format tells (ELF); None
    otherwise. `available` may run on past the section, through the rest of a segment."""


@dataclass(frozen=True)
class Slice:
    """Where one architecture's image lies in a universal (fat) Mach-O file."""

    arch: str
    """The architecture as lipo and `--arch` name it: x86_64, x86_64h, arm64, arm64e."""
    offset: int
    size: int


@dataclass(frozen=True)
class Image:
    """One symbol-table-bearing unit of an input file, as a reader sees it."""

    member: str | None
    """Archive member name, or None when the image is the whole file."""
    format: str
    kind: str
    loadable: bool
    """True for files that `dlopen` loads: only their dynamic table is visible to the runtime."""
    machine: str
    bits: int
    endianness: str
    symbols: tuple[Symbol, ...]
    tables: tuple[SymbolTable, ...]
    """Symbol tables present in the image (an empty tuple for a fully stripped file)."""
    locations: dict[tuple[str, SymbolTable], Location] = field(default_factory=dict)
    """File locations of the data symbols the model may need to read, keyed by name and table."""
    signature: str | None = None
    """Code-signature state of a Mach-O image: "none", "ad-hoc", "linker-signed",
    "certificate" (or "unknown" flags); of a PE image: "none" or "certificate"
    (Authenticode); None for formats that have no signatures."""
    slice: Slice | None = None
    """The image's place in a universal file; None for a thin file or an archive member."""
    debug_only: bool = False
    """A debug companion (a dSYM): the symbol table and section headers of a library kept
    elsewhere, and debug info, but none of its code or data; never loaded, never linked."""
