"""Checks a packed file must pass before it replaces anything.

The staged file is re-read with ffitool's own readers: the blob must decode to exactly the
planned tree with exactly the planned bytes, the loader's hash-table lookup must land on it,
and everything the dynamic loader relied on in the original must still be there.
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

from ffitool.errors import InputError
from ffitool.findings import Severity
from ffitool.formats.elf import ElfFile, SectionNames, program_headers, section_headers
from ffitool.formats.elf_dynamic import DynamicView, read_dynamic
from ffitool.library import inspect_path
from ffitool.pack.elf_writer import Placement
from ffitool.pack.plan import Plan
from ffitool.pack.stream import same_bytes
from ffitool.symbols import LIBRARY_BIN

_MIN_PAGE = 0x1000
_LOOKUP_SAMPLE = 512


class VerificationError(InputError):
    """The packed file is not what was intended; the original is left untouched."""


def verify(staging: Path, original: Path, plan: Plan, placement: Placement) -> None:
    """Raise VerificationError, naming the first difference, unless `staging` is right."""
    _check_blob(staging, plan, placement)
    with open(original, "rb") as old, open(staging, "rb") as new:
        before = read_dynamic(old, os.fstat(old.fileno()).st_size)
        after = read_dynamic(new, os.fstat(new.fileno()).st_size)
        _check_lookup(after, placement)
        _check_preserved(before, after)
    _check_layout(original, staging)


def _fail(message: str) -> None:
    raise VerificationError(f"packed file failed verification: {message}")


def _check_blob(staging: Path, plan: Plan, placement: Placement) -> None:
    (library,) = inspect_path(staging, digests=False).libraries  # bytes are compared below
    found = library.library_bin
    if found is None or found.symbol.symbol.name != LIBRARY_BIN:
        _fail("no __tvm_ffi__library_bin")
        return
    if not found.symbol.dynamic:
        _fail("__tvm_ffi__library_bin is not exported")
    errors = [f.message for f in found.findings if f.severity is Severity.ERROR]
    if errors:
        _fail("; ".join(errors))
    if found.file_offset != placement.file_offset:
        _fail(f"blob at file offset {found.file_offset}, planned {placement.file_offset}")
    got = [(m.kind, m.imports, m.size) for m in found.modules]
    want = [(m.kind, m.imports, None if m.source is None else m.source.size) for m in plan.modules]
    if got != want:
        _fail(f"modules {got} differ from the plan {want}")
    for module, planned in zip(found.modules, plan.modules, strict=True):
        if planned.source is None or module.payload_offset is None:
            continue
        if not same_bytes(
            planned.source, str(staging), placement.file_offset + module.payload_offset
        ):
            _fail(f"module {module.index} ({module.kind}) payload bytes differ from the source")


def _check_lookup(after: DynamicView, placement: Placement) -> None:
    """Find the blob as ld.so does: through every hash table the file has."""
    if not (after.has_gnu_hash or after.has_sysv_hash):
        _fail("no DT_GNU_HASH or DT_HASH: dlsym could not find anything")
    for label, present, lookup in (
        ("DT_GNU_HASH", after.has_gnu_hash, after.lookup_gnu),
        ("DT_HASH", after.has_sysv_hash, after.lookup_sysv),
    ):
        if not present:
            continue
        symbol = lookup(LIBRARY_BIN)
        if symbol is None or (symbol.value, symbol.size) != (placement.address, placement.size):
            _fail(f"{label} lookup of {LIBRARY_BIN} gives {symbol}, not the new blob")
            return
        if symbol.version is not None and (symbol.version & 0x7FFF == 0 or symbol.version & 0x8000):
            _fail(f"{LIBRARY_BIN} has symbol version {symbol.version:#x}: local or hidden")


def _check_preserved(before: DynamicView, after: DynamicView) -> None:
    for label in ("needed", "soname", "rpath", "runpath"):
        if getattr(before, label) != getattr(after, label):
            _fail(f"{label} changed from {getattr(before, label)} to {getattr(after, label)}")
    old = [(name, symbol) for name, symbol in before.symbols() if name != LIBRARY_BIN]
    kept = Counter((name, symbol.size, symbol.defined) for name, symbol in old)
    kept -= Counter((name, symbol.size, symbol.defined) for name, symbol in after.symbols())
    if kept:
        _fail(f"dynamic symbols lost or changed: {sorted(kept)[:5]}")
    lookup_before = before.lookup_gnu if before.has_gnu_hash else before.lookup_sysv
    lookup_after = after.lookup_gnu if after.has_gnu_hash else after.lookup_sysv
    defined = sorted({name for name, symbol in old if symbol.defined})
    # The table comparison above covers every symbol; the hash tables, walked in Python,
    # are probed with an evenly spread sample: a stale or misbuilt table fails nearly all.
    step = max(1, len(defined) // _LOOKUP_SAMPLE)
    for name in defined[::step]:
        # Compare lookups with lookups: a versioned name (foo@V1, foo@@V2) resolves to one
        # of its definitions, the same one before and after.
        was = lookup_before(name)
        now = lookup_after(name)
        if was is not None and (now is None or now.size != was.size or not now.defined):
            _fail(f"dynamic symbol {name} is no longer found through the hash table")


def _check_layout(original: Path, staging: Path) -> None:
    """Program headers kept, segments page-aligned, every allocated section inside its segment.

    The last check is what catches a stale `.bss` header, which `strip` would turn into a
    crashing library.
    """
    with open(original, "rb") as handle:
        before = program_headers(ElfFile(handle), os.fstat(handle.fileno()).st_size)
    with open(staging, "rb") as handle:
        size = os.fstat(handle.fileno()).st_size
        elf = ElfFile(handle)
        after = program_headers(elf, size)
        sections = section_headers(elf, size)
        names = SectionNames(elf, sections, size)
    lost = Counter(str(p["p_type"]) for p in before) - Counter(str(p["p_type"]) for p in after)
    if lost:
        _fail(f"program headers lost: {sorted(lost)}")
    loads = [p for p in after if p["p_type"] == "PT_LOAD"]
    addresses = [load["p_vaddr"] for load in loads]
    if addresses != sorted(addresses):
        _fail("PT_LOAD entries are not in ascending address order")
    for load in loads:
        if load["p_align"] < _MIN_PAGE:
            _fail(f"PT_LOAD at {load['p_vaddr']:#x} is aligned to {load['p_align']}, not a page")
        if (
            load["p_align"] > 1
            and load["p_offset"] % load["p_align"] != load["p_vaddr"] % load["p_align"]
        ):
            _fail(f"PT_LOAD at {load['p_vaddr']:#x} is misaligned")
    for index, header in enumerate(sections):
        if not header["sh_flags"] & 0x2 or header["sh_size"] == 0:
            continue
        start, end = header["sh_addr"], header["sh_addr"] + header["sh_size"]
        nobits = header["sh_type"] == "SHT_NOBITS"
        if not any(_inside(load, start, end, header["sh_offset"], nobits) for load in loads):
            _fail(f"section {names[index]} [{start:#x}, {end:#x}) lies outside its segment")


def _inside(load, start: int, end: int, offset: int, nobits: bool) -> bool:
    base = load["p_vaddr"]
    if not (base <= start and end <= base + load["p_memsz"]):
        return False
    return nobits or (end <= base + load["p_filesz"] and offset - load["p_offset"] == start - base)
