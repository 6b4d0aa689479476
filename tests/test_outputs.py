"""Outputs whatever the input: valid UTF-8 in every format, bounded cells and messages, `-`
for sizes a format does not record, one error line for every bad path, and a quiet exit 141
when the reader of the output goes away."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import FIXTURES, ROOT, require_tool

from ffitool.blob import Blob, Module, encode
from ffitool.cli.inspect_run import run_inspect
from ffitool.cli.main import run_app
from ffitool.cli.output import delivered
from ffitool.errors import EXIT_BAD_INPUT, EXIT_OUTPUT_CLOSED
from ffitool.findings import listed, printable

BAD_KIND = b"\xff\xfe".decode("utf-8", "surrogateescape")
BAD_NAME = b"__tvm_ffi_\xff\xfex"
"""A function whose symbol name is not UTF-8 (what a hostile or broken toolchain may emit)."""


def run(*args: str | Path, **options) -> subprocess.CompletedProcess[bytes]:
    """The real command line, as bytes: nothing here decodes the output for the test."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "ffitool", *map(str, args)]
    return subprocess.run(command, capture_output=True, env=env, cwd=ROOT, timeout=300, **options)


def build_library(directory: Path, blob: bytes, names: tuple[bytes, ...] = ()) -> Path:
    """A shared library exporting `blob` as `__tvm_ffi__library_bin` (assembled with
    `.incbin`, so a megabyte blob costs no C array) and a function under each raw name."""
    gcc = require_tool("gcc")
    (directory / "blob.bin").write_bytes(blob)
    lines = [
        '__asm__(".section .rodata\\n.globl __tvm_ffi__library_bin\\n'
        ".type __tvm_ffi__library_bin,@object\\n__tvm_ffi__library_bin:\\n"
        f'.incbin \\"{directory / "blob.bin"}\\"\\n'
        '.size __tvm_ffi__library_bin, .-__tvm_ffi__library_bin\\n.text\\n");'
    ]
    for number, name in enumerate(names):
        label = "".join(f"\\{byte:03o}" for byte in name)
        lines.append(
            f'__attribute__((visibility("default"))) int f{number}(void) __asm__("{label}");'
        )
        lines.append(f"int f{number}(void) {{ return {number}; }}")
    (directory / "lib.c").write_text("\n".join(lines) + "\n")
    library = directory / "lib.so"
    subprocess.run(
        [gcc, "-shared", "-fPIC", "-o", library, directory / "lib.c"], check=True, timeout=300
    )
    return library


def strings(value: object) -> list[str]:
    """Every string (keys too) of a decoded JSON document."""
    if isinstance(value, dict):
        return [*value, *(s for v in value.values() for s in strings(v))]
    if isinstance(value, list):
        return [s for v in value for s in strings(v)]
    return [value] if isinstance(value, str) else []


def strict_json(output: bytes) -> object:
    """The document, after checking that the bytes are UTF-8 and that no string holds a lone
    surrogate (a `\\udcff` escape decodes to one; encoding it as UTF-8 then fails)."""
    document = json.loads(output.decode("utf-8"))
    for text in strings(document):
        text.encode("utf-8")
    return document


# --- 1. valid UTF-8 whatever the input ---------------------------------------------------


@pytest.fixture(scope="module")
def bad_bytes(tmp_path_factory) -> tuple[Path, Path]:
    """A raw blob with a module of kind b"\\xff\\xfe", and a library carrying it and a function
    whose symbol name has the bytes ff fe."""
    directory = tmp_path_factory.mktemp("bad-bytes")
    blob = encode(Blob((Module("_lib", None, (1,)), Module(BAD_KIND, b"payload", ()))))
    path = directory / "bad.blob"
    path.write_bytes(blob)
    return path, build_library(directory, blob, (BAD_NAME,))


def test_blob_decode_json_escapes_a_kind_that_is_not_utf8_and_keeps_its_bytes(bad_bytes):
    result = run("blob", "decode", "--json", bad_bytes[0])
    assert result.returncode == 0, result.stderr
    module = strict_json(result.stdout)["modules"][1]
    assert (module["kind"], module["kind_hex"]) == ("\\xff\\xfe", "fffe")
    assert "kind_hex" not in strict_json(result.stdout)["modules"][0]  # `_lib` is UTF-8


def test_inspect_json_keeps_the_bytes_of_kinds_and_symbol_names(bad_bytes):
    result = run("inspect", "--json", bad_bytes[1])
    assert result.returncode == 0, result.stderr
    (library,) = strict_json(result.stdout)["files"][0]["libraries"]
    (function,) = library["functions"]
    assert function["symbol"] == "__tvm_ffi_\\xff\\xfex" and function["name"] == "\\xff\\xfex"
    assert bytes.fromhex(function["symbol_hex"]) == BAD_NAME
    symbol = next(s for s in library["symbols"] if s["role"] == "function")
    assert bytes.fromhex(symbol["symbol_hex"]) == BAD_NAME
    assert "symbol_hex" not in library["library_bin"]
    assert library["library_bin"]["modules"][1]["kind_hex"] == "fffe"


@pytest.mark.slow
def test_check_json_and_sarif_are_valid_utf8_with_the_bytes_escaped(bad_bytes):
    """R103 quotes the kind in its message: the message reads `\\xff\\xfe`, not `\\udcff`."""
    message = "module 1 of __tvm_ffi__library_bin has kind \\xff\\xfe, which is not allowed"
    result = run("check", "--format", "json", "--allow-kind", "k", bad_bytes[1])
    assert result.returncode == 1, result.stderr
    found = strict_json(result.stdout)["files"][0]["findings"]
    assert message in [f["message"] for f in found]
    result = run("check", "--format", "sarif", "--allow-kind", "k", bad_bytes[1])
    assert result.returncode == 1, result.stderr
    results = strict_json(result.stdout)["runs"][0]["results"]
    assert message in [r["message"]["text"] for r in results]


@pytest.mark.parametrize("output_format", ["text", "github"])
def test_check_text_and_github_show_the_bytes_escaped(bad_bytes, output_format):
    result = run("check", "--format", output_format, "--allow-kind", "k", bad_bytes[1])
    assert result.returncode == 1, result.stderr
    text = result.stdout.decode("utf-8")
    assert "has kind \\xff\\xfe, which" in text and "udc" not in text


@pytest.mark.slow
def test_text_output_shows_the_bytes_escaped(bad_bytes):
    for args in (["inspect", bad_bytes[1]], ["blob", "decode", bad_bytes[0]]):
        result = run(*args)
        assert result.returncode == 0, result.stderr
        text = result.stdout.decode("utf-8")
        assert "\\xff\\xfe" in text and "udc" not in text, args
    assert "__tvm_ffi_\\xff\\xfex" in run("inspect", bad_bytes[1]).stdout.decode()


def test_a_macho_export_whose_name_is_not_utf8_is_found_in_the_trie(tmp_path):
    """The export trie is searched with the name's own bytes: read back from `\\xff` text,
    the name was not found, and the exported function vanished from the list."""
    data = (FIXTURES / "macho" / "libffi_macho.x86_64.dylib").read_bytes()
    # `main` is one label of the trie and the tail of `___tvm_ffi_main` in the strings.
    assert data.count(b"\x01main\x00") == 1 and data.count(b"___tvm_ffi_main\x00") == 1
    data = data.replace(b"\x01main\x00", b"\x01\xff\xfein\x00")
    data = data.replace(b"___tvm_ffi_main\x00", b"___tvm_ffi_\xff\xfein\x00")
    path = tmp_path / "lib.dylib"
    path.write_bytes(data)
    (library,) = strict_json(run("inspect", "--json", path).stdout)["files"][0]["libraries"]
    function = next(f for f in library["functions"] if f["name"] == "\\xff\\xfein")
    assert function["exported"] is True
    assert bytes.fromhex(function["symbol_hex"]) == b"___tvm_ffi_\xff\xfein"


def test_valid_names_carry_no_hex_field():
    result = run("inspect", "--json", FIXTURES / "libffi_c.so")
    assert b"_hex" not in result.stdout


def test_printable_escapes_a_byte_that_is_not_utf8_as_backslash_x():
    assert printable(f"a{BAD_KIND}\x1b\u202ez") == "a\\xff\\xfe\\x1b\\u202ez"
    assert printable("\ud800") == "\\ud800"  # a surrogate that stands for no byte


# --- 2. bounded cells and messages ---------------------------------------------------------


def test_printable_cuts_at_its_limit_and_counts_what_it_left_out():
    assert printable("x" * 20, 8) == "xxxxxxxx... (12 more characters)"
    assert printable("x" * 8, 8) == "x" * 8
    # The limit counts escapes, and an escape is never cut in half.
    assert printable("\x1b" * 5, 9) == "\\x1b\\x1b... (3 more characters)"


def test_listed_shows_the_first_items_and_counts_the_rest():
    assert listed(range(3)) == "[0, 1, 2]"
    assert listed(list(range(20)), 4) == "[0, 1, 2, 3, ... (16 more)]"


@pytest.fixture(scope="module")
def huge_blobs(tmp_path_factory) -> dict[str, Path]:
    directory = tmp_path_factory.mktemp("huge")
    blobs = {
        # the root imports module 1 200,000 times: a 1.8-million-character line before
        "imports": Blob((Module("_lib", None, (1,) * 200_000), Module("k", b"x", ()))),
        # modules 2..3000 are unreachable: B206 listed all 2999 of them
        "unreachable": Blob((Module("_lib", None, (1,)), *[Module("k", b"x")] * 3000)),
        "long-kind": Blob((Module("_lib", None, (1,)), Module("k" * 100_000, b"x"))),
    }
    paths = {}
    for name, blob in blobs.items():
        paths[name] = directory / f"{name}.blob"
        paths[name].write_bytes(encode(blob))
    return paths


def longest_line(output: bytes) -> int:
    return max(map(len, output.decode("utf-8").splitlines()))


def b204(more: int) -> str:
    return f"module 0 imports [{'1, ' * 16}... ({more} more)]: unsorted or duplicated"


B204 = b204(200_000 - 16)
B206 = "module(s) [" + ", ".join(map(str, range(2, 18))) + ", ... (2983 more)] are not"


@pytest.mark.slow
def test_a_cell_and_a_message_of_a_huge_import_list_are_bounded(huge_blobs):
    result = run("blob", "decode", huge_blobs["imports"])
    assert result.returncode == 0, result.stderr
    text = result.stdout.decode()
    assert " 1, 1 (+199936 more) " in text  # the imports cell: 64 shown
    assert B204 in text
    assert longest_line(result.stdout) < 2_000
    document = strict_json(run("blob", "decode", "--json", huge_blobs["imports"]).stdout)
    assert len(document["modules"][0]["imports"]) == 200_000  # JSON data keeps everything
    assert B204 in [f["message"] for f in document["findings"]]


@pytest.mark.slow
def test_b206_lists_the_first_unreachable_modules_and_counts_the_rest(huge_blobs):
    result = run("blob", "decode", huge_blobs["unreachable"])
    assert result.returncode == 0, result.stderr
    assert B206 in result.stdout.decode()
    assert longest_line(result.stdout) < 2_000
    document = strict_json(run("blob", "decode", "--json", huge_blobs["unreachable"]).stdout)
    assert len(document["modules"]) == 3001


@pytest.mark.slow
def test_a_long_kind_is_cut_in_its_cell_and_whole_in_json(huge_blobs):
    result = run("blob", "decode", huge_blobs["long-kind"])
    assert result.returncode == 0, result.stderr
    assert ("k" * 1024 + "... (98976 more characters)").encode() in result.stdout
    assert b"k" * 1025 not in result.stdout
    assert longest_line(result.stdout) < 2 * 1100  # the table row, the tree label
    document = strict_json(run("blob", "decode", "--json", huge_blobs["long-kind"]).stdout)
    assert document["modules"][1]["kind"] == "k" * 100_000


@pytest.fixture(scope="module")
def huge_library(tmp_path_factory, huge_blobs) -> Path:
    """A library whose blob has a 100,000-character kind and a root importing 1 200,000
    times (`check --allow-kind x` then quotes the kind in R103)."""
    blob = Blob(
        (
            Module("_lib", None, (1,) * 200_000 + (2,)),
            Module("k", b"x"),
            Module("k" * 100_000, b"x"),
        )
    )
    return build_library(tmp_path_factory.mktemp("huge-library"), encode(blob))


R103_CUT = "has kind " + "k" * (8192 - len("module 2 of __tvm_ffi__library_bin has kind "))


@pytest.mark.parametrize("output_format", ["text", "github", "sarif"])
def test_check_messages_are_bounded(huge_library, output_format):
    result = run("check", "--format", output_format, "--allow-kind", "x", huge_library)
    assert result.returncode == 1, result.stderr
    output = result.stdout.decode("utf-8")
    if output_format == "sarif":
        messages = [r["message"]["text"] for r in json.loads(output)["runs"][0]["results"]]
        output = "\n".join(messages)
    assert b204(200_001 - 16) in output
    assert f"{R103_CUT}... (" in output and "k" * 100_000 not in output
    assert longest_line(output.encode()) < 9_000


def test_check_json_messages_keep_the_whole_kind(huge_library):
    result = run("check", "--format", "json", "--allow-kind", "x", huge_library)
    messages = [f["message"] for f in strict_json(result.stdout)["files"][0]["findings"]]
    assert any("k" * 100_000 + ", which is not allowed" in m for m in messages)


# --- 3. sizes a format does not record -----------------------------------------------------

SIZELESS = [FIXTURES / "macho" / "libffi_macho.x86_64.dylib", FIXTURES / "pe" / "ffi_pe.x86_64.dll"]


@pytest.mark.parametrize("path", SIZELESS, ids=["macho", "pe"])
@pytest.mark.slow
def test_a_size_the_format_does_not_record_is_null_in_json_and_a_dash_in_text(path):
    (library,) = strict_json(run("inspect", "--json", path).stdout)["files"][0]["libraries"]
    assert library["functions"] and library["symbols"]
    assert {f["size"] for f in library["functions"]} == {None}
    assert {s["size"] for s in library["symbols"]} == {None}
    assert library["library_bin"]["symbol_size"] is None
    text = run("inspect", path).stdout.decode()
    add_one = next(line for line in text.splitlines() if line.startswith("│ add_one "))
    assert add_one.split("│")[4].strip() == "-"
    assert ", symbol size -, nbytes " in text


def test_an_elf_symbol_keeps_its_recorded_size():
    (library,) = strict_json(run("inspect", "--json", FIXTURES / "libffi_c.so").stdout)["files"][0][
        "libraries"
    ]
    assert all(isinstance(f["size"], int) and f["size"] > 0 for f in library["functions"])


# --- 4. one error line for every bad path, whatever the command ---------------------------

BAD_PATHS = ("missing", "dangling", "directory", "under-file")


@pytest.fixture
def places(tmp_path: Path) -> dict[str, Path]:
    """Good inputs to put the bad path between, and one bad path of each kind."""
    library = tmp_path / "lib.so"
    shutil.copy(FIXTURES / "libffi_c.so", library)
    payload = tmp_path / "payload.bin"
    payload.write_bytes(b"payload")
    manifest = tmp_path / "manifest.json"
    manifest.write_text(
        json.dumps(
            {
                "schema": "ffitool.manifest/1",
                "modules": [
                    {"index": 0, "kind": "_lib", "imports": [1]},
                    {"index": 1, "kind": "k", "imports": [], "file": "payload.bin"},
                ],
            }
        )
    )
    (tmp_path / "file").write_bytes(b"a file")
    (tmp_path / "directory").mkdir()
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    return {
        "lib": library,
        "payload": payload,
        "manifest": manifest,
        "missing": tmp_path / "missing",
        "dangling": tmp_path / "dangling",
        "directory": tmp_path / "directory",
        "under-file": tmp_path / "file" / "x.so",
        "out": tmp_path / "out.bin",
    }


# Each command with `{bad}` where a file is read; `{out}` where one is written, for which the
# bad path is a missing parent, the dangling link itself, a directory, or a path under a file.
INPUT_COMMANDS = [
    "inspect {bad}",
    "check {bad}",
    "check --config {bad} {lib}",
    "blob decode {bad}",
    "blob decode --json {bad}",
    "pack {bad} --add k:{payload} -o {out}",
    "pack {bad} --add k:{payload}",
    "pack {lib} --add k:{bad} -o {out}",
    "pack {lib} --replace test_alpha:{bad} -o {out}",
    "pack {lib} --manifest {bad} -o {out}",
    "extract {bad} -d {out}",
    "blob encode {bad} -o {out}",
    "blob emit-c {bad} -o {out}",
]
OUTPUT_COMMANDS = [
    "pack {lib} --add k:{payload} -o {bad}",
    "blob encode {manifest} -o {bad}",
    "blob emit-c {manifest} -o {bad}",
]
DIRECTORY_COMMANDS = ["extract {lib} -d {bad}"]
"""A directory is expected: missing is created, an existing one is used."""


def cases() -> list[tuple[str, str]]:
    found = []
    for command in INPUT_COMMANDS:
        directory_ok = command.startswith(("inspect", "check {bad}"))  # walked, not an error
        found += [(command, bad) for bad in BAD_PATHS if not (directory_ok and bad == "directory")]
    found += [(command, bad) for command in OUTPUT_COMMANDS for bad in BAD_PATHS]
    found += [
        (command, bad) for command in DIRECTORY_COMMANDS for bad in ("dangling", "under-file")
    ]
    return found


def bad_output(bad: str, places: dict[str, Path]) -> Path:
    """Where a written file cannot go: a missing parent, the dangling link, a directory, or
    a path under a file."""
    path = places[bad]
    return path / "out.bin" if bad == "missing" else path


@pytest.mark.parametrize(("command", "bad"), cases())
def test_every_command_answers_a_bad_path_with_one_line_and_exit_3(
    command, bad, places, monkeypatch, capsys
):
    """In process (64 cases), through the same `delivered` guard as the console script."""
    path = bad_output(bad, places) if command in OUTPUT_COMMANDS else places[bad]
    words = [word.format(bad=path, **places) for word in command.split()]
    monkeypatch.setattr(sys, "argv", ["ffitool", *words])
    monkeypatch.chdir(places["lib"].parent)
    if words[0] == "inspect" and "--json" not in words:
        code = delivered(lambda: run_inspect([Path(w) for w in words[1:]], False))
    else:
        code = delivered(run_app)
    out, err = capsys.readouterr()
    assert code == EXIT_BAD_INPUT, err
    # No report and no summary of a success; check's text report says the run failed.
    assert out == "" or (words[0] == "check" and out.endswith(" 1 unreadable; failed\n")), out
    assert err.count("\n") == 1 and err.startswith("ffitool: error: "), err
    named = err.removeprefix("ffitool: error: ").split(": ")[0]
    assert str(path) == named or Path(named) in Path(path).parents, err
    if bad == "under-file":  # the reason is the one the system gives, not a near miss
        assert err.endswith(": Not a directory\n"), err
    assert not places["out"].exists()


def test_a_missing_library_given_to_pack_is_one_line_not_a_traceback(tmp_path):
    """The case that printed 43 lines: pack stats the library before any of its checks."""
    payload = tmp_path / "payload.bin"
    payload.write_bytes(b"payload")
    result = run("pack", tmp_path / "missing.so", "--add", f"k:{payload}")
    assert result.returncode == EXIT_BAD_INPUT
    assert result.stderr.decode().startswith(f"ffitool: error: {tmp_path / 'missing.so'}: ")
    assert result.stderr.count(b"\n") == 1 and b"No such file or directory" in result.stderr


# --- 5. a closed pipe ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def big_payload(tmp_path_factory) -> tuple[Path, Path]:
    """A 2 MiB payload and a manifest embedding it: outputs far larger than a pipe holds."""
    directory = tmp_path_factory.mktemp("pipe")
    payload = directory / "big.bin"
    payload.write_bytes(os.urandom(2 << 20))
    manifest = directory / "manifest.json"
    manifest.write_text(
        json.dumps(
            {
                "schema": "ffitool.manifest/1",
                "modules": [
                    {"index": 0, "kind": "_lib", "imports": [1]},
                    {"index": 1, "kind": "k", "imports": [], "file": "big.bin"},
                ],
            }
        )
    )
    return payload, manifest


PIPED = {
    "inspect": ["inspect", FIXTURES / "macho"],  # the route without typer
    "inspect-json": ["inspect", "--json", FIXTURES / "macho" / "libmany.arm64.dylib"],
    "inspect-typer": ["inspect", "--", FIXTURES / "macho"],
    "check": ["check", FIXTURES / "libffi_c.so", *[f"--require-function=f{n}" for n in range(400)]],
    "check-sarif": ["check", "--format", "sarif", FIXTURES / "libffi_c.so"],
    "blob-decode": ["blob", "decode", "{unreachable}"],
}


def read_a_little(args: list[str | Path]) -> tuple[int, bytes]:
    """Run with stdout a pipe of one page whose reader takes 10 bytes and closes it; returns
    the exit code and everything written to stderr."""
    reader, writer = os.pipe()
    fcntl.fcntl(writer, fcntl.F_SETPIPE_SZ, 4096)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "ffitool", *map(str, args)]
    with subprocess.Popen(
        command, stdout=writer, stderr=subprocess.PIPE, env=env, cwd=ROOT
    ) as child:
        os.close(writer)
        assert len(os.read(reader, 10)) == 10
        os.close(reader)
        _, err = child.communicate(timeout=300)
    return child.returncode, err


@pytest.mark.parametrize("args", PIPED.values(), ids=PIPED.keys())
def test_a_closed_pipe_ends_with_exit_141_and_nothing_on_stderr(args, huge_blobs):
    code, err = read_a_little([str(a).format(**huge_blobs) for a in args])
    assert (code, err) == (EXIT_OUTPUT_CLOSED, b"")


@pytest.mark.parametrize("writer", ["pack", "encode", "emit-c"])
@pytest.mark.xdist_group("packs-elf-fixtures")  # see conftest.py
def test_a_writer_to_a_closed_pipe_claims_nothing(writer, big_payload):
    """`pack -o - | head -c 10`: no `packed ... into -` for bytes that were not delivered."""
    payload, manifest = big_payload
    args = {
        "pack": ["pack", FIXTURES / "libffi_c.so", "--add", f"k:{payload}", "-o", "-"],
        "encode": ["blob", "encode", manifest, "-o", "-"],
        "emit-c": ["blob", "emit-c", manifest, "-o", "-"],
    }[writer]
    code, err = read_a_little(args)
    assert (code, err) == (EXIT_OUTPUT_CLOSED, b"")
