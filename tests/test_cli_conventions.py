"""The conventions a new user meets first (issue 8, item 6), each checked on the real command.

Piped output is never folded; sizes read `414.1 MiB`; every error is one line,
`ffitool: error: PATH: what went wrong`, click's usage errors included; `--version`, `-h` and
shell completion work; `blob decode` on an object file points at `inspect`; `extract` into
earlier output refuses or replaces it whole; the README's Python example runs.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest
from conftest import FIXTURES, ROOT, ffitool
from rich.progress import Progress
from test_terminal import run_in_terminal

from ffitool.cli.render import SizeColumn, SpeedColumn
from ffitool.units import format_size

ANSI = re.compile(rb"\x1b\[[0-9;?]*[A-Za-z]")
ONE_ERROR = re.compile(r"ffitool: error: [^\n]+: [^\n]+\n")


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def copy_fixture(tmp_path: Path, name: str) -> Path:
    target = tmp_path / name
    shutil.copyfile(FIXTURES / name, target)
    return target


def refused(result: subprocess.CompletedProcess[str], code: int, stderr: str) -> None:
    """Exactly this one error line and exit code, nothing on stdout."""
    assert (result.returncode, result.stderr, result.stdout) == (code, stderr, "")
    assert ONE_ERROR.fullmatch(result.stderr)


# --- piped output is never folded -----------------------------------------------------------


def test_piped_output_keeps_every_name_on_one_line():
    """The issue's reproduction: `inspect syslib.o | grep -c mylib___tvm_ffi__library_bin`
    found 1 of 2, because rich folded the table cell and the blob line at 80 columns."""
    env = {**os.environ, "COLUMNS": "80"}  # what rich falls back to without a terminal
    result = ffitool("inspect", "fixtures/bin/syslib.o", env=env)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert sum("mylib___tvm_ffi__library_bin" in line for line in lines) == 2
    assert (
        "System-lib blob mylib___tvm_ffi__library_bin (prefix mylib_, tvm_ffi) in .rodata at 0x0,"
        " file offset 0xe0, symbol size 95, nbytes 87"
    ) in lines


def test_piped_findings_keep_their_message_on_one_line():
    message = (
        "__tvm_ffi__library_bin is only in .symtab, not in the dynamic symbol table: dlsym,"
        " and so the runtime, will not find it"
    )
    result = ffitool(
        "inspect", "fixtures/bin/libffi_hidden_blob.so", env=os.environ | {"COLUMNS": "40"}
    )
    assert result.returncode == 0, result.stderr
    assert any(f"│ {message} │" in line for line in result.stdout.splitlines())


def test_a_terminal_still_gets_lines_that_fit_it():
    """With a terminal the width is the terminal's: tables fold to fit 60 columns."""
    code, out = run_in_terminal("inspect", "fixtures/bin/syslib.o", columns=60)
    assert code == 0, out
    lines = ANSI.sub(b"", out).decode().splitlines()
    assert max(len(line) for line in lines) <= 60, lines
    assert sum("mylib___tvm_ffi__library_bin" in line for line in lines) < 2  # folded


# --- sizes ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("size", "text"),
    [
        (0, "0 B"),
        (1023, "1023 B"),
        (1024, "1.0 KiB"),
        (1920, "1.9 KiB"),
        ((1 << 20) - 1, "1.0 MiB"),  # rounds up into the next unit, never `1024.0 KiB`
        (434_184_792, "414.1 MiB"),  # the issue's `424008.6 KiB`
        (5 << 30, "5.0 GiB"),
        (1 << 70, "1024.0 EiB"),
    ],
)
def test_sizes_use_the_largest_binary_unit_that_fits(size, text):
    assert format_size(size) == text


@pytest.mark.slow
def test_inspect_headings_use_binary_units():
    result = ffitool("inspect", "fixtures/bin/libffi_c.so")
    assert result.stdout.splitlines()[0] == "fixtures/bin/libffi_c.so   ELF, 15.1 KiB"
    raw = ffitool("blob", "decode", "fixtures/bin/ffi_c.blob")
    assert raw.stdout.splitlines()[0] == "fixtures/bin/ffi_c.blob   raw blob, 459 B, nbytes 451"


def test_progress_columns_use_binary_units():
    with Progress(SizeColumn(), SpeedColumn(), auto_refresh=False) as progress:
        task = progress.add_task("packing", total=434_184_792)
        assert str(SizeColumn().render(progress.tasks[task])) == "0 B/414.1 MiB"
        assert str(SpeedColumn().render(progress.tasks[task])) == "?"
        progress.advance(task, 3 << 20)
        assert str(SizeColumn().render(progress.tasks[task])) == "3.0 MiB/414.1 MiB"


@pytest.mark.slow
def test_pack_progress_bar_and_summary_use_binary_units(tmp_path):
    """A blob over 64 MiB on a terminal shows the bar; its sizes are MiB, never MB."""
    lib = copy_fixture(tmp_path, "libpack_host_gnu.so")
    payload = tmp_path / "big.bin"
    payload.write_bytes(os.urandom(1 << 20) * 65)
    code, out = run_in_terminal(
        "pack", lib, "--add", f"test_alpha:{payload}", "-o", tmp_path / "out.so"
    )
    text = ANSI.sub(b"", out).decode()
    assert code == 0, text
    assert "0 B/65.0 MiB" in text
    assert " MB" not in text and "MB/s" not in text
    assert f"packed 2 modules (65.0 MiB) into {tmp_path / 'out.so'}" in text


# --- errors: one line, `ffitool: error: PATH: what went wrong` ------------------------------


def test_a_bad_kind_is_escaped_once(tmp_path):
    """It read `'bad\\\\tkind'`: printable escaped the tab, then repr doubled the backslash."""
    lib = copy_fixture(tmp_path, "libffi_c.so")
    before = sha256(lib)
    result = ffitool("pack", str(lib), "--add", f"bad\tkind:{FIXTURES / 'ffi_c.blob'}")
    refused(
        result,
        2,
        f"ffitool: error: {lib}: invalid kind 'bad\\tkind': use printable characters, no ':'\n",
    )
    assert sha256(lib) == before


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "nothing to do: give --add, --replace, --remove or --manifest"),
        (["--cascade"], "--parent and --cascade only qualify --add and --remove"),
        (["--remove", "0"], "--remove: module 0 is the root that load_module returns"),
        (["--add", "noseparator"], "--add 'noseparator': expected KIND:FILE"),
        (["--replace", "9:fixtures/bin/ffi_c.blob"], "--replace 9: there are 3 modules"),
    ],
)
def test_pack_usage_errors_name_the_library(tmp_path, args, message):
    lib = copy_fixture(tmp_path, "libffi_c.so")
    refused(ffitool("pack", str(lib), *args), 2, f"ffitool: error: {lib}: {message}\n")


@pytest.mark.slow
def test_an_orphaning_removal_names_the_library(tmp_path):
    lib = copy_fixture(tmp_path, "libpack_host_gnu.so")
    for edit in (["--add", "test_alpha:fixtures/bin/ffi_c.blob"],
                 ["--add", "test_beta:fixtures/bin/ffi_c.blob", "--parent", "1"]):  # fmt: skip
        assert ffitool("pack", str(lib), *edit).returncode == 0
    before = sha256(lib)
    refused(
        ffitool("pack", str(lib), "--remove", "test_alpha"),
        2,
        f"ffitool: error: {lib}: --remove would orphan module(s) [2];"
        " add --cascade to remove them too\n",
    )
    assert sha256(lib) == before


def test_a_failed_verification_names_the_library(tmp_path, monkeypatch, capsys):
    """A real verify() on a really damaged output: the blob writer flips the blob's last byte.
    In process, because no honest input makes the writer wrong."""
    import ffitool.pack as packing
    from ffitool.cli.main import main
    from ffitool.edit.stream import blob_size

    lib = copy_fixture(tmp_path, "libpack_host_gnu.so")
    before = sha256(lib)
    write_blob = packing.write_blob

    def damaging(fd, offset, plan, progress):
        write_blob(fd, offset, plan, progress)
        end = offset + blob_size(plan) - 1
        os.pwrite(fd, bytes([os.pread(fd, 1, end)[0] ^ 0xFF]), end)

    monkeypatch.setattr(packing, "write_blob", damaging)
    monkeypatch.setattr(
        sys, "argv", ["ffitool", "pack", str(lib), "--add", "k:fixtures/bin/ffi_c.blob"]
    )
    monkeypatch.chdir(ROOT)
    with pytest.raises(SystemExit) as exited:
        main()
    assert exited.value.code == 3
    captured = capsys.readouterr()
    assert (captured.out, sha256(lib)) == ("", before)
    assert captured.err == (
        f"ffitool: error: {lib}: packed file failed verification: module 1 (k) payload"
        " bytes differ from the source; nothing was written\n"
    )


@pytest.mark.parametrize(
    ("args", "stderr"),
    [
        (["pack", "--bogus", "x"], "pack: No such option: --bogus (see 'ffitool pack -h')"),
        (["inspect"], "inspect: Missing argument 'PATHS...' (see 'ffitool inspect -h')"),
        (["nosuch"], "No such command 'nosuch' (see 'ffitool -h')"),
        (
            ["pack", "x.so", "--parent", "one"],
            "pack: Invalid value for '--parent': 'one' is not a valid integer"
            " (see 'ffitool pack -h')",
        ),
        (
            ["blob", "decode"],
            "blob decode: Missing argument 'PATH' (see 'ffitool blob decode -h')",
        ),
    ],
)
def test_click_usage_errors_are_one_line_with_exit_2(args, stderr):
    """Click printed a usage block, a hint and `Error: ...` over four lines."""
    result = ffitool(*args)
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr == f"ffitool: error: {stderr}\n"


@pytest.mark.slow
def test_an_emit_c_usage_error_names_the_manifest(tmp_path):
    manifest = tmp_path / "m" / "manifest.json"
    assert (
        ffitool("extract", "fixtures/bin/libffi_c.so", "-d", str(manifest.parent)).returncode == 0
    )
    result = ffitool("blob", "emit-c", str(manifest), "-o", str(tmp_path / "x.c"),
                     "--symbol-prefix", "1\tx")  # fmt: skip
    refused(
        result,
        2,
        f"ffitool: error: {manifest}: --symbol-prefix '1\\tx': not the start of a C identifier\n",
    )


# --- --version, -h, completion --------------------------------------------------------------


def test_version_comes_from_the_installed_metadata():
    result = ffitool("--version")
    assert (result.returncode, result.stdout, result.stderr) == (
        0,
        f"ffitool {version('ffitool')}\n",
        "",
    )
    assert version("ffitool") == "0.1.0"


@pytest.mark.parametrize(
    "command", [[], ["inspect"], ["pack"], ["extract"], ["blob"], ["blob", "decode"]]
)
def test_dash_h_is_help_everywhere(command):
    short, long = ffitool(*command, "-h"), ffitool(*command, "--help")
    assert (short.returncode, short.stderr) == (0, "")
    assert short.stdout == long.stdout
    assert "-h, --help" in short.stdout


@pytest.mark.slow
def test_shell_completion_is_offered_and_answers():
    help_text = ffitool("-h").stdout
    assert "--install-completion" in help_text and "--show-completion" in help_text
    script = ffitool(env={**os.environ, "_FFITOOL_COMPLETE": "source_bash"})
    assert script.returncode == 0
    assert "complete -o default -F _ffitool_completion ffitool" in script.stdout
    # What the installed bash function runs on <TAB>, through cli.main's fast-path check.
    answers = [("ffitool pa", "1", "pack\n"), ("ffitool pack --re", "2", "--replace\n--remove\n")]
    for words, cword, expected in answers:
        env = os.environ | {"_FFITOOL_COMPLETE": "complete_bash"}
        env |= {"COMP_WORDS": words, "COMP_CWORD": cword}
        answer = ffitool(env=env)
        assert (answer.returncode, answer.stdout) == (0, expected)


# --- blob decode on an object file ----------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "what"),
    [
        ("libffi_c.so", "an ELF shared library/object file"),
        ("ffi_c.o", "an ELF shared library/object file"),
        ("libffi_static.a", "a static (ar) archive"),
    ],
)
def test_blob_decode_on_an_object_file_points_at_inspect(name, what):
    path = f"fixtures/bin/{name}"
    refused(
        ffitool("blob", "decode", path),
        3,
        f"ffitool: error: {path}: this is {what}, not a raw blob; use 'ffitool inspect {path}'\n",
    )


# --- extract into earlier output ------------------------------------------------------------


@pytest.mark.slow
def test_extract_over_earlier_output_refuses_or_replaces_it_whole(tmp_path):
    """Already so before issue 8 (checked by a real run): without --force a directory holding an
    earlier extract is refused untouched; with it, no earlier payload stays beside the manifest."""
    directory = tmp_path / "out"
    assert ffitool("extract", "fixtures/bin/libffi_c.so", "-d", str(directory)).returncode == 0
    earlier = {p.name: p.read_bytes() for p in directory.iterdir()}
    assert sorted(earlier) == ["001-test_alpha.bin", "002-test_beta.bin", "manifest.json"]

    refused(
        ffitool("extract", "fixtures/bin/syslib.o", "-d", str(directory)),
        3,
        f"ffitool: error: {directory}: directory is not empty; use --force to replace the"
        " files extract writes\n",
    )
    assert {p.name: p.read_bytes() for p in directory.iterdir()} == earlier

    result = ffitool("extract", "fixtures/bin/syslib.o", "-d", str(directory), "--force")
    assert (result.returncode, result.stderr) == (0, "")
    assert sorted(p.name for p in directory.iterdir()) == ["001-test_sys.bin", "manifest.json"]
    assert (directory / "001-test_sys.bin").read_bytes() == b"sys"


# --- the README's Python example ------------------------------------------------------------


def test_the_readme_python_example_runs_on_real_files():
    readme = (ROOT / "README.md").read_text()
    section = readme.split("\n## Python API\n", 1)[1].split("\n## ", 1)[0]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    assert '"lib.so"' in code and '"x.blob"' in code
    code = code.replace('"lib.so"', '"fixtures/bin/libffi_c.so"')
    code = code.replace('"x.blob"', '"fixtures/bin/ffi_c.blob"')
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60
    )
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout == (
        "['add_one', 'main', 'sum3']\n"
        "[(0, '_lib', None), (1, 'test_alpha', 16), (2, 'test_beta', 300)]\n"
        "['_lib', 'test_alpha', 'test_beta'] 459\n"
    )
