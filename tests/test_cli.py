"""The command line: exit codes, JSON against the schema, goldens of JSON and terminal output."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib import resources

import jsonschema
import pytest
from conftest import ELF_FIXTURES, FIXTURES, ROOT, golden
from conftest import ffitool as run_ffitool


def ffitool(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run the real console entry point, as a user would, from the repository root."""
    base = {k: v for k, v in os.environ.items() if k not in ("FORCE_COLOR", "NO_COLOR", "TERM")}
    base.update({"COLUMNS": "100", **(env or {})})
    return run_ffitool(*args, env=base, timeout=120)


def schema(name: str) -> dict:
    return json.loads(resources.files("ffitool").joinpath("schemas", name).read_text())


@pytest.mark.parametrize("name", ELF_FIXTURES)
def test_inspect_json_is_valid_and_matches_golden(name):
    result = ffitool("inspect", "--json", f"fixtures/bin/{name}")
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    document = json.loads(result.stdout)
    jsonschema.validate(document, schema("inspect-3.json"))
    assert document["schema"] == "ffitool.inspect/3"
    golden(f"inspect-{name}.json", result.stdout)


@pytest.mark.parametrize("name", ELF_FIXTURES)
def test_inspect_terminal_rendering_matches_golden(name):
    result = ffitool("inspect", f"fixtures/bin/{name}")
    assert result.returncode == 0, result.stderr
    assert "\x1b[" not in result.stdout, "no colour when stdout is not a terminal"
    golden(f"inspect-{name}.txt", result.stdout)


def test_json_content_of_the_c_library():
    document = json.loads(ffitool("inspect", "--json", "fixtures/bin/libffi_c.so").stdout)
    (library,) = document["files"][0]["libraries"]
    assert [(f["name"], f["symbol"]) for f in library["functions"]] == [
        ("add_one", "__tvm_ffi_add_one"),
        ("main", "__tvm_ffi_main"),
        ("sum3", "__tvm_ffi_sum3"),
    ]
    assert {s["symbol"]: s["role"] for s in library["symbols"]} == {
        "__tvm_ffi_add_one": "function",
        "__tvm_ffi_main": "function",
        "__tvm_ffi_sum3": "function",
        "__tvm_ffi__cubin_demo": "cubin",
        "__tvm_ffi__cubin_demo_end": "cubin_end",
        "__tvm_ffi__library_bin": "library_bin",
        "__tvm_ffi__library_ctx": "library_ctx",
    }
    blob = library["library_bin"]
    raw = (FIXTURES / "ffi_c.blob").read_bytes()
    data = (FIXTURES / "libffi_c.so").read_bytes()
    assert data[blob["file_offset"] : blob["file_offset"] + len(raw)] == raw
    assert (blob["symbol"], blob["nbytes"], blob["symbol_size"]) == (
        "__tvm_ffi__library_bin",
        451,
        459,
    )
    assert [(m["index"], m["kind"], m["size"], m["imports"]) for m in blob["modules"]] == [
        (0, "_lib", None, [1, 2]),
        (1, "test_alpha", 16, [2]),
        (2, "test_beta", 300, []),
    ]
    import hashlib

    assert blob["modules"][1]["sha256"] == hashlib.sha256(b"alpha-payload\x00\x01\x02").hexdigest()
    assert (
        blob["modules"][2]["sha256"]
        == hashlib.sha256(bytes(i % 251 for i in range(300))).hexdigest()
    )
    assert blob["findings"] == []


def test_archive_has_one_library_per_member():
    document = json.loads(ffitool("inspect", "--json", "fixtures/bin/libffi_static.a").stdout)
    libraries = document["files"][0]["libraries"]
    assert [lib["member"] for lib in libraries] == ["ffi_c.o", "plain.o", "syslib.o"]
    syslib = libraries[2]
    assert [(f["name"], f["prefix"]) for f in syslib["functions"]] == [
        ("add_one", "mylib_"),
        ("main", "mylib_"),
    ]
    # A prefixed blob is a system-lib blob, in an object as in a shared library.
    assert syslib["library_bin"] is None
    (blob,) = syslib["system_lib_bins"]
    assert (blob["symbol"], blob["prefix"]) == ("mylib___tvm_ffi__library_bin", "mylib_")
    assert [m["kind"] for m in blob["modules"]] == ["_lib", "test_sys"]


@pytest.mark.slow
def test_blob_decode_json_and_text():
    result = ffitool("blob", "decode", "--json", "fixtures/bin/ffi_c.blob")
    assert result.returncode == 0
    document = json.loads(result.stdout)
    jsonschema.validate(document, schema("blob-2.json"))
    assert (document["nbytes"], [m["kind"] for m in document["modules"]]) == (
        451,
        ["_lib", "test_alpha", "test_beta"],
    )
    golden("blob-decode-ffi_c.txt", ffitool("blob", "decode", "fixtures/bin/ffi_c.blob").stdout)


@pytest.mark.slow
def test_exit_code_3_for_unreadable_and_unsupported_inputs(tmp_path):
    text_file = tmp_path / "notes.txt"
    text_file.write_text("hello\n")
    result = ffitool("inspect", str(tmp_path / "missing.so"), str(text_file))
    assert result.returncode == 3
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        f"ffitool: error: {tmp_path / 'missing.so'}: cannot open: No such file or directory",
        f"ffitool: error: {text_file}: not an ELF file, Mach-O file, PE file or ar archive",
    ]
    # A directory is walked (tests/test_targets.py); one without objects is a note, not an error.
    result = ffitool("inspect", str(tmp_path))
    assert (result.returncode, result.stdout) == (0, "")
    assert result.stderr == (
        f"ffitool: note: {tmp_path}: skipped: no ELF, Mach-O or PE file, ar archive or wheel"
        " in this directory\n"
    )


def test_json_reports_unreadable_inputs_next_to_good_ones(tmp_path):
    missing = str(tmp_path / "missing.so")
    result = ffitool("inspect", "--json", "fixtures/bin/libplain.so", missing)
    assert result.returncode == 3
    document = json.loads(result.stdout)
    jsonschema.validate(document, schema("inspect-3.json"))
    assert document["files"][1] == {
        "path": missing,
        "error": f"{missing}: cannot open: No such file or directory",
    }


def test_malformed_blob_in_a_library_is_a_finding_with_exit_0(tmp_path):
    data = bytearray((FIXTURES / "libffi_c.so").read_bytes())
    document = json.loads(ffitool("inspect", "--json", "fixtures/bin/libffi_c.so").stdout)
    offset = document["files"][0]["libraries"][0]["library_bin"]["file_offset"]
    data[offset + 8 : offset + 16] = (999).to_bytes(8, "little")  # indptr count far too large
    broken = tmp_path / "broken.so"
    broken.write_bytes(data)
    result = ffitool("inspect", "--json", str(broken))
    assert result.returncode == 0
    (library,) = json.loads(result.stdout)["files"][0]["libraries"]
    assert library["library_bin"]["findings"] == [
        {
            "code": "B100",
            "severity": "error",
            "message": "indptr count 999 needs 7992 bytes, 443 left",
            "offset": 8,
        }
    ]


def test_blob_decode_of_a_malformed_blob_names_file_and_offset(tmp_path):
    path = tmp_path / "bad.blob"
    path.write_bytes((FIXTURES / "ffi_c.blob").read_bytes()[:100])
    result = ffitool("blob", "decode", str(path))
    assert result.returncode == 3
    assert result.stderr == (
        f"ffitool: error: {path}: nbytes 451 exceeds the 92 bytes available at blob offset 0\n"
    )


@pytest.mark.slow
def test_usage_errors_exit_2():
    assert ffitool("inspect").returncode == 2
    assert ffitool("inspect", "--no-such-flag", "x").returncode == 2
    assert ffitool("no-such-command").returncode == 2


@pytest.mark.slow
def test_help_documents_the_exit_codes():
    commands = [[], ["inspect"], ["pack"], ["extract"], ["blob"], ["blob", "decode"]]
    commands += [["blob", "encode"], ["blob", "emit-c"]]
    for command in commands:
        result = ffitool(*command, "--help")
        assert result.returncode == 0
        flat = " ".join(result.stdout.split())
        assert (
            "0 success; 1 a check failed; 2 usage error; 3 an input could not be read or is not"
            " a supported object file, or an output could not be written or failed verification"
            " (the input is then unchanged); 141 the reader of the output closed it (| head)."
        ) in flat, command


@pytest.mark.slow
def test_colour_follows_force_color_and_no_color():
    coloured = ffitool("inspect", "fixtures/bin/libffi_hidden_blob.so", env={"FORCE_COLOR": "1"})
    assert "\x1b[1;31m" in coloured.stdout  # the error finding in bold red
    plain = ffitool(
        "inspect", "fixtures/bin/libffi_hidden_blob.so", env={"FORCE_COLOR": "1", "NO_COLOR": "1"}
    )
    assert "31m" not in plain.stdout  # no colours; bold and italic may remain


def test_public_api_is_complete_and_lazy():
    code = (
        "import sys, ffitool\n"
        "assert 'ffitool.library' not in sys.modules and 'elftools' not in sys.modules\n"
        "missing = [n for n in ffitool.__all__ if getattr(ffitool, n, None) is None]\n"
        "assert not missing, missing\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


@pytest.mark.parametrize(
    "args",
    [
        ["inspect", "--json", "fixtures/bin/libffi_c.so", "fixtures/bin/libffi_static.a"],
        ["inspect", "./fixtures//bin/syslib.o"],
        ["inspect", "fixtures/bin/missing.so", "--json", "fixtures/bin/ffi_c.o"],
    ],
)
@pytest.mark.slow
def test_inspect_without_typer_prints_what_the_typer_command_prints(args):
    """`inspect` with paths and --json only skips importing typer; nothing else may differ."""
    fast = ffitool(*args)
    probe = (
        "import sys, atexit\n"
        "atexit.register(lambda: sys.stderr.write(f'typer:{\"typer\" in sys.modules}'))\n"
        "from ffitool.cli.main import main\n"
        "main()\n"
    )
    imported = subprocess.run(
        [sys.executable, "-c", probe, *args], cwd=ROOT, capture_output=True, text=True
    )
    assert imported.stderr.endswith("typer:False")
    # The typer app itself, as every other command line reaches it.
    typer_route = subprocess.run(
        [sys.executable, "-c", "from ffitool.cli.app import app; app(prog_name='ffitool')", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": "100"},
    )
    assert (fast.returncode, fast.stdout, fast.stderr) == (
        typer_route.returncode,
        typer_route.stdout,
        typer_route.stderr,
    )
    assert fast.returncode == (3 if "fixtures/bin/missing.so" in args else 0)
