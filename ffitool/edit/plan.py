"""Planning a new blob: pure functions from the existing modules and the requested edits.

Nothing here touches a file. Payload bytes are named by `PayloadSource` (a byte range of some
file), resolved and checked beforehand, so a plan is cheap to build, print (`--dry-run`) and
test, and the writer streams each source exactly once.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ffitool.blob import LIB_KIND, ModuleShape, reachable_from, unreachable_from
from ffitool.errors import UsageError
from ffitool.findings import listed, printable

if TYPE_CHECKING:
    from ffitool.edit.stream import InputFile


@dataclass(frozen=True)
class PayloadSource:
    """A module's bytes: `size` bytes at `offset` in the file at `path`."""

    path: str
    offset: int
    size: int
    identity: tuple[int, int, int, int] | None = None
    """(st_dev, st_ino, st_size, st_mtime_ns) of the file when the range was found in it: a
    writer must not copy the range from a file that no longer matches."""
    held: InputFile | None = field(default=None, compare=False, repr=False)
    """The descriptor the file was checked through, read instead of opening `path` again."""


def align(value: int, alignment: int) -> int:
    """`value` rounded up to a multiple of `alignment`: every writer lays out by it."""
    return -(-value // alignment) * alignment


def file_identity(info: os.stat_result) -> tuple[int, int, int, int]:
    """What tells a file, and a modification of it, apart: device, inode, size, mtime."""
    return info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns


@dataclass(frozen=True)
class PlannedModule:
    """One module of the new blob and where its bytes come from (None for `_lib`)."""

    kind: str
    source: PayloadSource | None
    imports: tuple[int, ...]
    origin: str
    """How it got here, for the plan shown to people: "kept 3", "added", "replaced 2"."""


@dataclass(frozen=True)
class Plan:
    """The blob to write, module by module."""

    modules: tuple[PlannedModule, ...]

    def shapes(self) -> list[ModuleShape]:
        return [
            ModuleShape(m.kind, None if m.source is None else m.source.size, m.imports)
            for m in self.modules
        ]


@dataclass(frozen=True)
class ExistingModule:
    """A module already in the library's blob, with the file range of its payload."""

    kind: str
    source: PayloadSource | None
    imports: tuple[int, ...]


@dataclass(frozen=True)
class Edits:
    """What `pack` was asked to do. Selectors are a kind or a decimal index."""

    add: tuple[tuple[str, PayloadSource], ...] = ()
    replace: tuple[tuple[str, PayloadSource], ...] = ()
    remove: tuple[str, ...] = ()
    parent: int | None = None
    cascade: bool = False


def validate_kind(kind: str) -> str:
    """A kind names a loader, `ffi.Module.load_from_bytes.<kind>`: printable, no colon."""
    if not kind:
        raise UsageError("a module kind cannot be empty")
    if kind == LIB_KIND:
        raise UsageError("`_lib` is the library itself, not a kind that can be added")
    if not kind.isprintable() or ":" in kind:
        raise UsageError(f"invalid kind '{printable(kind)}': use printable characters, no ':'")
    return kind


def plan_edits(existing: Sequence[ExistingModule] | None, edits: Edits) -> Plan:
    """Apply edits to the existing modules (or to none) and return the new blob's plan.

    Existing modules keep their bytes and imports; removal re-indexes the tree and refuses to
    orphan modules unless `cascade`; added modules are imported by `_lib` (or the root), or
    by `edits.parent`.
    """
    for kind, _ in edits.add:
        validate_kind(kind)
    if not existing:
        if edits.replace or edits.remove:
            raise UsageError("the library has no blob: nothing to replace or remove")
        if edits.parent not in (None, 0):
            raise UsageError(f"--parent {edits.parent}: a new blob has only module 0 (`_lib`)")
        added = tuple(PlannedModule(kind, source, (), "added") for kind, source in edits.add)
        lib = PlannedModule(LIB_KIND, None, tuple(range(1, len(added) + 1)), "new")
        return Plan((lib, *added))
    modules = [
        PlannedModule(m.kind, m.source, m.imports, f"kept {i}") for i, m in enumerate(existing)
    ]
    for selector, source in edits.replace:
        index = _select(existing, selector, "--replace")
        if modules[index].kind == LIB_KIND:
            raise UsageError(f"--replace {selector}: `_lib` has no payload to replace")
        replaced = modules[index]
        modules[index] = PlannedModule(replaced.kind, source, replaced.imports, f"replaced {index}")
    removed = {_select(existing, s, "--remove") for s in edits.remove}
    if 0 in removed:
        raise UsageError("--remove: module 0 is the root that load_module returns")
    if any(existing[i].kind == LIB_KIND for i in removed):
        raise UsageError("--remove: `_lib` stands for the library's own functions")
    removed |= _orphans(existing, removed, edits.cascade)
    if any(existing[i].kind == LIB_KIND for i in removed):
        raise UsageError("--remove --cascade would remove `_lib`, the library's own functions")
    parent = _parent(existing, edits.parent, removed)
    new_index = {
        old: new for new, old in enumerate(i for i in range(len(modules)) if i not in removed)
    }
    kept = []
    for old, module in enumerate(modules):
        if old in removed:
            continue
        imports = tuple(new_index[c] for c in module.imports if c not in removed)
        kept.append(PlannedModule(module.kind, module.source, imports, module.origin))
    first_added = len(kept)
    added_indices = tuple(range(first_added, first_added + len(edits.add)))
    target = new_index[parent]
    kept[target] = PlannedModule(
        kept[target].kind,
        kept[target].source,
        kept[target].imports + added_indices,
        kept[target].origin,
    )
    kept.extend(PlannedModule(kind, source, (), "added") for kind, source in edits.add)
    unreachable = unreachable_from([m.imports for m in kept])
    if unreachable:
        raise UsageError(
            f"module(s) {listed(unreachable)} would not be reachable from the root (B206: the"
            " runtime drops them); --remove them, or rewrite the tree with --manifest"
        )
    return Plan(tuple(kept))


def plan_from_modules(modules: Sequence[ExistingModule]) -> Plan:
    """A plan that writes exactly the given modules (from a manifest)."""
    return Plan(tuple(PlannedModule(m.kind, m.source, m.imports, "manifest") for m in modules))


def _select(existing: Sequence[ExistingModule], selector: str, option: str) -> int:
    """Resolve a kind or an index to one module; an ambiguous kind lists its indices."""
    if selector.isascii() and selector.isdigit():
        index = int(selector)
        if index >= len(existing):
            raise UsageError(f"{option} {selector}: there are {len(existing)} modules")
        return index
    matches = [i for i, m in enumerate(existing) if m.kind == selector]
    if not matches:
        raise UsageError(f"{option} {printable(selector)}: no module of that kind")
    if len(matches) > 1:
        raise UsageError(
            f"{option} {printable(selector)}: ambiguous, modules {matches} have that kind;"
            " give an index instead"
        )
    return matches[0]


def _orphans(existing: Sequence[ExistingModule], removed: set[int], cascade: bool) -> set[int]:
    """Modules reachable now that would no longer be once `removed` are gone."""
    before = reachable_from(_skeleton(existing, set()))
    after = reachable_from(_skeleton(existing, removed))
    orphans = before - after - removed
    if orphans and not cascade:
        raise UsageError(
            f"--remove would orphan module(s) {sorted(orphans)}; add --cascade to remove them too"
        )
    return orphans


def _skeleton(existing: Sequence[ExistingModule], removed: set[int]) -> list[tuple[int, ...]]:
    """The import tree alone, with removed modules' edges cut, for reachability."""
    return [
        () if i in removed else tuple(c for c in m.imports if c not in removed)
        for i, m in enumerate(existing)
    ]


def _parent(existing: Sequence[ExistingModule], parent: int | None, removed: set[int]) -> int:
    if parent is None:
        return next((i for i, m in enumerate(existing) if m.kind == LIB_KIND), 0)
    if not 0 <= parent < len(existing) or parent in removed:
        raise UsageError(f"--parent {parent}: no such module in the result")
    return parent
