"""The PE seam of the pack flow (`writer`, `verify`)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from ffitool.formats.pe.writer import PeEdit, PePlacement, plan_pe_edit, write_pe_edit


class PePacker:
    """Plan, write and verify the edit of one DLL."""

    def plan(self, handle: BinaryIO, size: int, display: str, blob_size: int) -> PeEdit:
        return plan_pe_edit(handle.fileno(), size, display, blob_size)

    def write(self, source: str, fd: int, edit: PeEdit, blob: Callable[[int, int], None]) -> None:
        write_pe_edit(source, fd, edit, blob)

    def blob_offsets(self, edit: PeEdit) -> list[int | None]:
        return [self._placement(edit).file_offset]

    def verify(self, staging: Path, source: Path, edit: PeEdit) -> None:
        from ffitool.formats.pe.verify import verify_pe

        verify_pe(staging, source, edit)

    def result(self, edit: PeEdit) -> tuple[PePlacement, tuple[str, ...]]:
        return self._placement(edit), tuple(edit.warnings)

    @staticmethod
    def _placement(edit: PeEdit) -> PePlacement:
        assert edit.placement is not None  # plan_pe_edit always places the blob
        return edit.placement
