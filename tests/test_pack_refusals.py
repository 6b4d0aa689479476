"""The refusals of the pack flow and of the format-neutral editing pieces, each seen to fire.

The command line stops most of these bad requests before they reach the library (typer's
choices, `validate_kind` on `--add`), and the races they guard against need another process
to strike at the right moment; here each is reached through the Python API, which a program
can call with anything, or with the one system call it defends against answered the hostile
way.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from conftest import FIXTURES

import ffitool.files
import ffitool.pack as packing
from ffitool.edit import stream
from ffitool.edit.plan import Edits, ExistingModule, PayloadSource, plan_edits, validate_kind
from ffitool.edit.stream import copy_payload, payload_chunks
from ffitool.errors import InputError, UsageError
from ffitool.files import open_regular_file
from ffitool.pack import pack_library, payload_source

HOST = FIXTURES / "libpack_host_gnu.so"
MACHO = FIXTURES / "macho" / "libffi_macho.arm64.dylib"


def _payload(tmp_path: Path, size: int = 64) -> PayloadSource:
    path = tmp_path / "payload.bin"
    path.write_bytes(bytes(range(256))[:size])
    return PayloadSource(str(path), 0, size)


# --- plan: what no blob can be ------------------------------------------------------------


def test_an_empty_kind_is_refused():
    with pytest.raises(UsageError, match=r"^a module kind cannot be empty$"):
        validate_kind("")


def test_a_new_blob_has_no_parent_but_module_0(tmp_path):
    edits = Edits(add=(("test_alpha", _payload(tmp_path)),), parent=1)
    with pytest.raises(UsageError, match=r"^--parent 1: a new blob has only module 0 \(`_lib`\)$"):
        plan_edits(None, edits)


def test_lib_has_no_payload_to_replace(tmp_path):
    existing = [
        ExistingModule("test_alpha", _payload(tmp_path), (1,)),
        ExistingModule("_lib", None, ()),
    ]
    with pytest.raises(UsageError, match=r"^--replace 1: `_lib` has no payload to replace$"):
        plan_edits(existing, Edits(replace=(("1", _payload(tmp_path)),)))


def test_lib_cannot_be_removed_when_it_is_not_the_root(tmp_path):
    existing = [
        ExistingModule("test_alpha", _payload(tmp_path), (1,)),
        ExistingModule("_lib", None, ()),
    ]
    with pytest.raises(UsageError, match=r"^--remove: `_lib` stands for the library's own"):
        plan_edits(existing, Edits(remove=("_lib",)))


# --- stream: a payload cut short after it was checked -------------------------------------


def _truncated_after_the_check(monkeypatch: pytest.MonkeyPatch, path: str) -> None:
    """The payload is cut short by another process once its range has been checked."""
    real_check = stream._check_range

    def check_then_truncate(source: PayloadSource, fd: int) -> None:
        real_check(source, fd)
        os.truncate(path, 10)

    monkeypatch.setattr(stream, "_check_range", check_then_truncate)


def test_a_payload_that_ends_early_stops_the_copy(tmp_path, monkeypatch):
    payload = _payload(tmp_path, 100)
    _truncated_after_the_check(monkeypatch, payload.path)
    out = os.open(tmp_path / "out", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        with pytest.raises(InputError, match=r"payload\.bin: ended while its payload was copied$"):
            copy_payload(payload, out, 0)
    finally:
        os.close(out)


def test_a_payload_that_ends_early_stops_the_chunks(tmp_path, monkeypatch):
    payload = _payload(tmp_path, 100)
    _truncated_after_the_check(monkeypatch, payload.path)
    with pytest.raises(InputError, match=r"payload\.bin: ended inside its payload$"):
        list(payload_chunks(payload))


# --- files: a FIFO swapped in after the check ----------------------------------------------


def test_a_fifo_swapped_in_after_the_check_is_refused_on_the_descriptor(tmp_path, monkeypatch):
    """The path is checked before opening, and the descriptor again: a FIFO that takes the
    path's place in between is refused without blocking (O_NONBLOCK), not read."""
    regular = tmp_path / "regular"
    regular.write_bytes(b"x")
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    real_stat = os.stat

    def stat_of_the_file_checked(path, *args, **kwargs):  # the check saw a regular file
        return real_stat(regular if Path(path) == fifo else path, *args, **kwargs)

    monkeypatch.setattr(ffitool.files.os, "stat", stat_of_the_file_checked)
    with pytest.raises(InputError, match=f"^{fifo}: not a regular file$"):
        open_regular_file(fifo)


# --- the pack flow ------------------------------------------------------------------------


def test_an_unknown_signature_mode_is_refused(tmp_path):
    plan = plan_edits(None, Edits(add=(("test_alpha", payload_source(_payload(tmp_path).path)),)))
    with pytest.raises(UsageError, match=r"^--signature must be one of adhoc, remove$"):
        pack_library(MACHO, plan, tmp_path / "out.dylib", signature="sign-it-please")


def test_in_place_needs_permission_to_write_the_file(tmp_path, monkeypatch):
    """As root every file is writable, so the answer of access(2) a user would get is given."""
    library = tmp_path / "lib.so"
    shutil.copyfile(HOST, library)
    before = library.read_bytes()
    plan = plan_edits(None, Edits(add=(("test_alpha", payload_source(_payload(tmp_path).path)),)))
    monkeypatch.setattr(packing.os, "access", lambda *args, **kwargs: False)
    with pytest.raises(InputError, match=r"lib\.so: cannot write: Permission denied \(use -o"):
        pack_library(library, plan)
    assert library.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lib.so", "payload.bin"]


def test_an_input_that_disappears_while_packing_writes_nothing(tmp_path, monkeypatch):
    library = tmp_path / "lib.so"
    shutil.copyfile(HOST, library)
    plan = plan_edits(None, Edits(add=(("test_alpha", payload_source(_payload(tmp_path).path)),)))
    write_blob = packing.write_blob

    def removing(fd, offset, plan, progress):  # another process deletes the input meanwhile
        write_blob(fd, offset, plan, progress)
        library.unlink()

    monkeypatch.setattr(packing, "write_blob", removing)
    with pytest.raises(InputError, match=r"lib\.so: disappeared while packing: No such file"):
        pack_library(library, plan, tmp_path / "out.so")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["payload.bin"]
