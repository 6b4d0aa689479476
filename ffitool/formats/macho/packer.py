"""The Mach-O seam of the pack flow (`writer`, `verify`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from ffitool.formats.macho.writer import (
    MachoEdit,
    SlicePlacement,
    plan_macho_edit,
    write_macho_edit,
)


@dataclass(frozen=True)
class MachoPacker:
    """Plan, write and verify the edit of a thin or universal file: the slices to pack, and
    whether their signatures are renewed or removed."""

    arches: tuple[str, ...]
    remove_signature: bool

    def plan(self, handle: BinaryIO, size: int, display: str, blob_size: int) -> MachoEdit:
        return plan_macho_edit(
            handle.fileno(), size, display, blob_size, self.arches, self.remove_signature
        )

    def write(
        self, source: str, fd: int, edit: MachoEdit, blob: Callable[[int, int], None]
    ) -> None:
        write_macho_edit(source, fd, edit, blob)

    def blob_offsets(self, edit: MachoEdit) -> list[int | None]:
        return [None if placed is None else placed.file_offset for *_, placed in edit.slices]

    def verify(self, staging: Path, source: Path, edit: MachoEdit) -> None:
        from ffitool.formats.macho.verify import verify_macho

        verify_macho(staging, source, edit)

    def result(self, edit: MachoEdit) -> tuple[list[SlicePlacement], tuple[str, ...]]:
        return edit.placements, tuple(edit.warnings)
