"""The file edit every format's writer applies (ffitool/edit/fileedit.py): what lands where,
in which order, and what is left a hole."""

from __future__ import annotations

import os
from pathlib import Path

from ffitool.edit.fileedit import FileEdit


def _apply(tmp_path: Path, edit: FileEdit, **hooks) -> bytes:
    source = tmp_path / "input"
    source.write_bytes(bytes(range(1, 65)))
    out = tmp_path / "output"
    fd = os.open(out, os.O_RDWR | os.O_CREAT | os.O_EXCL)
    try:
        edit.apply(str(source), fd, lambda fd, at: os.pwrite(fd, b"BLOB", at), **hooks)
    finally:
        os.close(fd)
    return out.read_bytes()


def test_copies_patches_and_blobs_land_at_their_offsets_in_a_file_of_the_planned_size(
    tmp_path: Path,
) -> None:
    edit = FileEdit(
        size=200,
        copies=[(0, 16, 0), (32, 8, 100), (40, 0, 150)],
        patches=[(4, b"PP"), (120, b"new")],
        blobs=[60, 180],
    )
    data = _apply(tmp_path, edit)
    expected = bytearray(200)
    expected[0:16] = bytes(range(1, 17))
    expected[4:6] = b"PP"
    expected[100:108] = bytes(range(33, 41))
    expected[120:123] = b"new"
    expected[60:64] = expected[180:184] = b"BLOB"
    assert data == bytes(expected)


def test_copied_bytes_are_rewritten_before_the_patches_land(tmp_path: Path) -> None:
    """ELF renumbers relocations in the copied bytes: a patch over them keeps its bytes."""
    seen = []

    def rewrite(fd: int) -> None:
        seen.append(os.pread(fd, 4, 0))
        os.pwrite(fd, b"rrrr", 0)

    edit = FileEdit(size=8, copies=[(0, 8, 0)], patches=[(2, b"P")])
    data = _apply(tmp_path, edit, rewrite_copied=rewrite)
    assert seen == [bytes(range(1, 5))]
    assert data == b"rrPr" + bytes(range(5, 9))
