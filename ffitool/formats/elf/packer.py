"""The ELF seam of the pack flow (`writer`, `verify`): pyelftools' parse errors become one line."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from ffitool.edit.verification import VerificationError
from ffitool.errors import InputError
from ffitool.formats.elf.reader import PARSE_ERRORS
from ffitool.formats.elf.verify import verify
from ffitool.formats.elf.writer import ElfEdit, Placement, plan_edit, write_edit


class ElfPacker:
    """Plan, write and verify the edit of one ELF shared library."""

    def plan(self, handle: BinaryIO, size: int, display: str, blob_size: int) -> ElfEdit:
        try:
            return plan_edit(handle, size, display, blob_size)
        except PARSE_ERRORS as exc:
            raise InputError(f"{display}: malformed ELF: {exc}") from None

    def write(self, source: str, fd: int, edit: ElfEdit, blob: Callable[[int, int], None]) -> None:
        write_edit(source, fd, edit, blob)

    def blob_offsets(self, edit: ElfEdit) -> list[int | None]:
        return [edit.placement.file_offset]

    def verify(self, staging: Path, source: Path, edit: ElfEdit) -> None:
        try:
            verify(staging, source, edit.placement)
        except PARSE_ERRORS as exc:
            raise VerificationError(f"packed file failed verification: {exc}") from None

    def result(self, edit: ElfEdit) -> tuple[Placement, tuple[str, ...]]:
        return edit.placement, ()
