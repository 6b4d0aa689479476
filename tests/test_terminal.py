"""Nothing from an input reaches a terminal raw: checked on the bytes ffitool writes to a pty.

Kinds, symbol and section names and paths are built to be hostile: rich markup (`[/]` used to
raise MarkupError, `[link=...]` made a hyperlink), an OSC sequence that retitles the terminal,
an SGR sequence, and a right-to-left override. Each must appear escaped, as text, in the
exact bytes a real terminal receives, with colour on (rich sees a terminal).
"""

from __future__ import annotations

import os
import pty
import re
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import FIXTURES, ROOT, require_tool

from ffitool.blob import Blob, Module, encode

MARKUP = "[bold red]x[/][link=http://e]y[/link]"
OSC = "\x1b]0;pwned\x07"  # sets the window title
SGR = "\x1b[5;7m"  # blink, reverse video
RLO = "\u202e"  # right-to-left override
KINDS = ("[/]", MARKUP, f"k{OSC}{RLO}z")
RAW = (OSC.encode(), SGR.encode(), RLO.encode(), b"\x1b]8;")  # 8: a rich hyperlink


def escaped(text: str) -> bytes:
    """What the terminal must show instead: Python's escapes, as ffitool writes them."""
    return "".join(
        c if c.isprintable() else c.encode("unicode_escape").decode() for c in text
    ).encode()


def run_in_terminal(
    *args: str | Path, timeout: float = 60, columns: int = 400
) -> tuple[int, bytes]:
    """Run ffitool with stdin, stdout and stderr on a pseudo-terminal `columns` wide; return
    its bytes."""
    master, slave = pty.openpty()
    env = {k: v for k, v in os.environ.items() if k not in ("FORCE_COLOR", "NO_COLOR")}
    env.update(TERM="xterm-256color", COLUMNS=str(columns), LINES="50")
    process = subprocess.Popen(
        [sys.executable, "-m", "ffitool", *map(str, args)],
        stdin=slave,
        stdout=slave,
        stderr=slave,
        cwd=ROOT,
        env=env,
    )
    os.close(slave)
    chunks = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 1.0)
            if not ready:
                if process.poll() is not None:
                    break
                continue
            try:
                data = os.read(master, 1 << 16)
            except OSError:  # EIO: the child closed the terminal
                break
            if not data:
                break
            chunks.append(data)
        code = process.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        os.close(master)
        if process.poll() is None:
            process.kill()
    return code, b"".join(chunks)


def assert_clean(code: int, out: bytes, *shown: str) -> None:
    assert code == 0, out.decode(errors="replace")
    assert b"\x1b[" in out  # rich saw a terminal: the test exercises styled output
    assert b"Traceback" not in out and b"MarkupError" not in out, out
    for raw in RAW:
        assert raw not in out, (raw, out)
    for text in shown:
        assert escaped(text) in out, (text, out)


def hostile_blob() -> bytes:
    modules = [Module("_lib", None, (1, 2, 3))]
    modules += [Module(kind, kind.encode(), ()) for kind in KINDS]
    return encode(Blob(tuple(modules)))


@pytest.fixture(scope="module")
def hostile_library(tmp_path_factory) -> Path:
    """A library whose FFI symbols, blob section and module kinds are all hostile."""
    gcc = require_tool("gcc")
    directory = tmp_path_factory.mktemp("terminal")
    data = ", ".join(str(b) for b in hostile_blob())

    def c_name(name: str) -> str:
        return "".join(f"\\{b:03o}" for b in name.encode())

    source = [
        '#define EXPORT __attribute__((visibility("default")))',
        f'EXPORT __attribute__((section("\\"{c_name(".ro[/]" + SGR)}\\"")))',
        'const unsigned char blob[] __asm__("__tvm_ffi__library_bin") = {' + data + "};",
    ]
    for number, name in enumerate(("[/]", MARKUP, f"e{OSC}{RLO}z")):
        label = c_name(f"__tvm_ffi_{name}")
        source.append(f'EXPORT int f{number}(void) __asm__("\\"{label}\\"");')
        source.append(f"int f{number}(void) {{ return {number}; }}")
    (directory / "hostile.c").write_text("\n".join(source) + "\n")
    library = directory / "libhostile.so"
    subprocess.run(
        [gcc, "-shared", "-fPIC", "-o", library, directory / "hostile.c"],
        check=True,
        capture_output=True,
    )
    return library


def test_inspect_shows_hostile_names_as_escaped_text(hostile_library):
    code, out = run_in_terminal("inspect", hostile_library)
    assert_clean(code, out, *KINDS, f"__tvm_ffi_e{OSC}{RLO}z", f".ro[/]{SGR}")
    # Markup is shown as the characters it is made of, not applied.
    assert b"__tvm_ffi_[/]" in out and f"__tvm_ffi_{MARKUP}".encode() in out


def test_blob_decode_shows_hostile_kinds_as_escaped_text(tmp_path):
    path = tmp_path / "hostile.blob"
    path.write_bytes(hostile_blob())
    code, out = run_in_terminal("blob", "decode", path)
    assert_clean(code, out, *KINDS)


def test_pack_dry_run_shows_hostile_kinds_as_escaped_text(hostile_library, tmp_path):
    payload = tmp_path / "payload.bin"
    payload.write_bytes(b"payload")
    code, out = run_in_terminal("pack", hostile_library, "--add", f"[/]:{payload}", "--dry-run")
    assert_clean(code, out, *KINDS)
    assert out.count(b"[/]") >= 3  # the kept module, the added one, the section's name


def test_errors_escape_the_path_they_quote(tmp_path):
    path = tmp_path / f"lib{OSC}{RLO}[red].so"
    path.write_bytes(b"not an object file")
    code, out = run_in_terminal("inspect", path)
    assert code == 3
    line = (
        b"ffitool: error: "
        + escaped(str(path))
        + b": not an ELF file, Mach-O file, PE file or ar archive\r\n"
    )
    assert out == line, out
    for raw in RAW:
        assert raw not in out


def test_check_on_a_narrow_terminal_keeps_each_finding_on_one_line():
    code, output = run_in_terminal("check", FIXTURES / "libffi_hidden_blob.so", columns=40)
    assert code == 1
    plain = re.sub(rb"\x1b\[[0-9;]*m", b"", output).decode()
    assert (
        "  L101 error: __tvm_ffi__library_bin is only in .symtab, not in the dynamic symbol"
        " table: dlsym, and so the runtime, will not find it (file offset 0x2040)\r\n"
    ) in plain
