"""The check corpus, fixtures/bin/check/: each library breaks exactly one rule, named by its
file name's prefix (`b100_truncated.so` -> B100, `ok.so` -> nothing), and both `ffitool check`
and `ffitool inspect` report exactly that code.

Every output format of `check` names the same one code, and per fixture and format a golden
under tests/golden/check/ holds the exit code, stdout and stderr.

The corpus is discovered by globbing, so a new fixture is a new file, not an edit here. The
expected blob offsets come from the table in fixtures/README.md, which must list every fixture:
the documentation and the binaries cannot drift apart. The runtime tests load the libraries
with the real tvm_ffi, each in its own child process, and show what the code claims.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import FIXTURES, GOLDEN, ROOT, ffitool, golden, require_tvm_ffi

from ffitool.rules import RULES

CHECK = FIXTURES / "check"
CORPUS = sorted(CHECK.glob("*.so"))

# A row of the corpus table in fixtures/README.md:
# | `check/NAME.so` | what is broken | CODE | OFFSET | runtime |
_ROW = re.compile(r"^\| `check/([^`]+\.so)` \|[^|]*\| (none|[BL]\d{3}) \| (\d+|-) \|", re.M)


def expected_code(library: Path) -> str | None:
    """The one code a fixture must produce: its name's prefix, upper-cased; none for `ok`."""
    prefix = library.stem.split("_", 1)[0]
    return None if prefix == "ok" else prefix.upper()


def readme_table() -> dict[str, tuple[str | None, int | None]]:
    """file name -> (code, blob offset) as fixtures/README.md documents them."""
    text = (ROOT / "fixtures" / "README.md").read_text()
    return {
        name: (None if code == "none" else code, None if offset == "-" else int(offset))
        for name, code, offset in _ROW.findall(text)
    }


def inspected(library: Path) -> dict[str, Any]:
    """The single library record `ffitool inspect --json` gives for a fixture."""
    result = ffitool("inspect", "--json", str(library))
    assert (result.returncode, result.stderr) == (0, "")
    (record,) = json.loads(result.stdout)["files"]
    (lib,) = record["libraries"]
    return lib


def all_findings(lib: dict[str, Any]) -> list[dict[str, Any]]:
    """The library's findings and those of every blob in it."""
    blobs = [lib["library_bin"], *lib["system_lib_bins"]]
    return [*lib["findings"], *(f for blob in blobs if blob for f in blob["findings"])]


def test_the_corpus_is_there_and_documented() -> None:
    table = readme_table()
    assert "ok.so" in table  # the table was found; it must name exactly the files globbed
    assert sorted(table) == [p.name for p in CORPUS]
    for library in CORPUS:
        assert table[library.name][0] == expected_code(library), library.name


@pytest.mark.parametrize("library", CORPUS, ids=[p.stem for p in CORPUS])
def test_inspect_reports_exactly_the_fixtures_code(library: Path) -> None:
    code = expected_code(library)
    _, offset = readme_table()[library.name]
    findings = all_findings(inspected(library))
    expected = [] if code is None else [(code, offset)]
    assert [(f["code"], f["offset"]) for f in findings] == expected


def checked(library: Path, *options: str) -> tuple[int, list[dict[str, Any]]]:
    """Exit code and findings of `ffitool check --format json` on one fixture."""
    result = ffitool("check", "--format", "json", *options, str(library))
    assert result.stderr == ""
    document = json.loads(result.stdout)
    assert document["exit_code"] == result.returncode
    (record,) = document["files"]
    assert record["path"] == str(library)
    return result.returncode, record["findings"]


@pytest.mark.parametrize("library", CORPUS, ids=[p.stem for p in CORPUS])
@pytest.mark.slow
def test_check_reports_exactly_the_fixtures_code(library: Path) -> None:
    code = expected_code(library)
    _, offset = readme_table()[library.name]
    returncode, findings = checked(library)
    if code is None:
        assert (returncode, findings) == (0, [])
        assert checked(library, "--strict") == (0, [])
        return
    severity = RULES[code].severity.value
    assert [(f["code"], f["severity"], f["offset"]) for f in findings] == [(code, severity, offset)]
    # Errors fail; warnings fail only with --strict; info never does.
    assert returncode == (1 if severity == "error" else 0)
    strict_code, _ = checked(library, "--strict")
    assert strict_code == (0 if severity == "info" else 1)


FORMATS = ("text", "json", "sarif", "github")

# Where each format names a finding's code: text `  CODE severity: ...`, SARIF `ruleId`, GitHub
# `::level file=...,title=CODE::...`.
_TEXT_CODE = re.compile(r"^  ([BLR]\d{3}) (?:error|warning|info): ", re.M)
_GITHUB_CODE = re.compile(r"^::(?:error|warning|notice) file=[^,]*,title=([BLR]\d{3})::", re.M)


def codes_in(fmt: str, stdout: str) -> list[str]:
    """The finding codes one output format names, in order."""
    if fmt == "text":
        return _TEXT_CODE.findall(stdout)
    if fmt == "github":
        return _GITHUB_CODE.findall(stdout)
    document = json.loads(stdout)
    if fmt == "json":
        return [f["code"] for record in document["files"] for f in record["findings"]]
    return [result["ruleId"] for result in document["runs"][0]["results"]]


def golden_text(fmt: str, relative: str, result: subprocess.CompletedProcess[str]) -> str:
    """What a golden holds: the command, its exit code, stdout and stderr. In SARIF the
    driver's rule metadata is the whole registry, the same for every fixture: it is replaced by
    the rule ids (asserted to be the registry's) so that a reworded rule is one golden edit, not
    one per fixture."""
    stdout = result.stdout
    if fmt == "sarif":
        document = json.loads(stdout)
        driver = document["runs"][0]["tool"]["driver"]
        assert [rule["id"] for rule in driver["rules"]] == list(RULES)
        driver["rules"] = "<the ids of RULES, in order>"
        stdout = json.dumps(document, indent=2) + "\n"
    return (
        f"$ ffitool check --format {fmt} {relative}\n"
        f"exit code: {result.returncode}\n"
        f"--- stdout\n{stdout}--- stderr\n{result.stderr}"
    )


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("library", CORPUS, ids=[p.stem for p in CORPUS])
def test_every_format_reports_the_one_code_as_its_golden_holds(library: Path, fmt: str) -> None:
    relative = library.relative_to(ROOT).as_posix()
    result = ffitool("check", "--format", fmt, relative)
    code = expected_code(library)
    assert codes_in(fmt, result.stdout) == ([] if code is None else [code])
    failing = code is not None and RULES[code].severity.value == "error"
    assert result.returncode == (1 if failing else 0)
    golden(f"check/{library.stem}.{fmt}", golden_text(fmt, relative, result))


def test_no_golden_without_its_fixture() -> None:
    expected = {f"{p.stem}.{fmt}" for p in CORPUS for fmt in FORMATS}
    assert {p.name for p in (GOLDEN / "check").iterdir()} == expected


@pytest.mark.slow
def test_blob_offsets_are_the_same_byte_in_json_sarif_and_inspect() -> None:
    """A blob finding's file offset is where the blob starts plus the README's blob offset,
    and SARIF's region starts there."""
    for library in CORPUS:
        _, offset = readme_table()[library.name]
        if offset is None:
            continue
        blob_at = inspected(library)["library_bin"]["file_offset"]
        _, findings = checked(library)
        assert [f["file_offset"] for f in findings] == [blob_at + offset], library.name
        sarif = json.loads(ffitool("check", "--format", "sarif", str(library)).stdout)
        (result,) = sarif["runs"][0]["results"]
        region = result["locations"][0]["physicalLocation"]["region"]
        assert region["byteOffset"] == blob_at + offset, library.name


def test_ok_holds_what_the_requirement_options_look_for() -> None:
    lib = inspected(CHECK / "ok.so")
    assert [f["name"] for f in lib["functions"]] == ["add_one"]
    blob = lib["library_bin"]
    assert [(m["kind"], m["imports"]) for m in blob["modules"]] == [("_lib", [1]), ("cuda_ptx", [])]
    assert (blob["nbytes"], blob["symbol_size"]) == (136, 144)


# Loads argv[1] with tvm_ffi after registering a `cuda_ptx` loader that records each payload
# and returns a fresh load of libffi_legacy.so (a library module without any FFI function, so
# a function found below really comes from the fixture). Prints one JSON line.
_LOAD = """
import json, sys
import tvm_ffi
stand_in, path = sys.argv[1], sys.argv[2]
payloads = []
def load(payload):
    payloads.append(bytes(payload).hex())
    return tvm_ffi.load_module(stand_in)
tvm_ffi.register_global_func("ffi.Module.load_from_bytes.cuda_ptx", load, override=True)
try:
    module = tvm_ffi.load_module(path)
except Exception as error:
    print(json.dumps({"error": str(error).splitlines()[0], "payloads": payloads}))
    sys.exit(0)
found = {}
for name in ("add_one", "hidden_add_one", "not_a_function", "ghost"):
    try:
        module.get_function(name)
        found[name] = True
    except AttributeError:
        found[name] = False
add_one = module["add_one"](5) if found["add_one"] else None
print(json.dumps({"imports": len(module.imports), "payloads": payloads, "found": found,
                  "add_one": add_one}))
"""


def run_loader(library: Path) -> subprocess.CompletedProcess[str]:
    require_tvm_ffi()
    return subprocess.run(
        [sys.executable, "-c", _LOAD, str(FIXTURES / "libffi_legacy.so"), str(library)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )


def load_in_child(library: Path) -> dict[str, Any]:
    result = run_loader(library)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


OK_BLOB = (CHECK / "ok.blob").read_bytes()
PTX = OK_BLOB[92:144]  # the cuda_ptx payload (fixtures/README.md: offset 92, to the end)
NONE_FOUND = {"add_one": False, "hidden_add_one": False, "not_a_function": False, "ghost": False}
ADD_ONE_ONLY = {**NONE_FOUND, "add_one": True}


def loaded(imports: int, payloads: list[bytes], found: dict[str, bool]) -> dict[str, Any]:
    return {
        "imports": imports,
        "payloads": [p.hex() for p in payloads],
        "found": found,
        "add_one": 6 if found["add_one"] else None,
    }


# What the real runtime does with each fixture (b100_truncated is left out: the runtime reads
# whatever memory follows its symbol, so the outcome depends on the layout of the process).
RUNTIME = {
    "ok": loaded(1, [PTX], ADD_ONE_ONLY),
    # Errors that the runtime refuses.
    "b100_child_out_of_range": {
        "error": "Check failed: (child_index < modules.size()) is false: ",
        "payloads": [PTX.hex()],
    },
    "l103_bss_blob": {
        "error": "Check failed: (stream.Read(&import_tree_indptr)) is false: ",
        "payloads": [],
    },
    # B208 is a warning, but no loader can be registered from Python under a kind that is not
    # text, and the runtime's error message, which quotes the kind, does not even decode.
    "b208_kind_not_utf8": {
        "error": "'utf-8' codec can't decode byte 0xff in position 39: invalid start byte",
        "payloads": [],
    },
    # An error the runtime does not refuse: a short string read is zero-filled.
    "b100_length_past_end": loaded(1, [PTX + bytes(1000 - len(PTX))], ADD_ONE_ONLY),
    # L101: the blob is invisible, so the library loads without its modules.
    "l101_hidden_blob": loaded(0, [], ADD_ONE_ONLY),
    # B206: both payloads are deserialized, but the root imports one; module 2 is dropped.
    "b206_unreachable": loaded(1, [PTX + b"1", PTX + b"2"], ADD_ONE_ONLY),
    # Warnings load.
    "b201_trailing": loaded(1, [PTX], ADD_ONE_ONLY),
    "b202_cycle": loaded(1, [PTX + b"1", PTX + b"2"], ADD_ONE_ONLY),
    "b207_indptr_decreasing": loaded(4, [PTX + b"%d" % i for i in range(1, 5)], ADD_ONE_ONLY),
    "b203_backward_import": loaded(2, [PTX + b"1", PTX + b"2"], ADD_ONE_ONLY),
    "b204_unsorted_imports": loaded(2, [PTX + b"1", PTX + b"2"], ADD_ONE_ONLY),
    "b205_two_libs": loaded(2, [PTX], ADD_ONE_ONLY),
    "l102_small_symbol": loaded(1, [PTX], ADD_ONE_ONLY),
    "l105_no_lib": loaded(0, [PTX], NONE_FOUND),  # the root is the cuda_ptx module
    "l210_hidden_function": loaded(1, [PTX], ADD_ONE_ONLY),
    "l211_data_object": loaded(1, [PTX], {**ADD_ONE_ONLY, "not_a_function": True}),
    "l212_orphan_getter": loaded(1, [PTX], ADD_ONE_ONLY),
    "l300_legacy": loaded(0, [], NONE_FOUND),
}


@pytest.mark.parametrize("name", sorted(RUNTIME))
def test_the_runtime_does_what_the_code_says(name: str) -> None:
    assert load_in_child(CHECK / f"{name}.so") == RUNTIME[name]


@pytest.mark.slow
def test_an_unbacked_blob_crashes_the_runtime() -> None:
    """L104: dlsym hands the runtime the absolute address 0x100000, which nothing maps."""
    result = run_loader(CHECK / "l104_absolute_blob.so")
    assert (result.returncode, result.stdout) == (-signal.SIGSEGV, "")
