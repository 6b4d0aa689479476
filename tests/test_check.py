"""`ffitool check`: the rule registry, each check over the model, settings and their sources,
and the four output formats (JSON and SARIF validated against their schemas)."""

from __future__ import annotations

import ast
import importlib
import json
import re
import struct
import subprocess
import zipfile
from collections.abc import Iterator
from pathlib import Path

import jsonschema
import pytest
from conftest import FIXTURES, ROOT, ffitool, require_tool

from ffitool import checks
from ffitool.check_config import KEYS
from ffitool.rules import PREFIXES, RULES, matching
from ffitool.rules_doc import DOC_PATH, REGENERATE, render

SCHEMAS = ROOT / "ffitool" / "schemas"
SARIF_SCHEMA = json.loads((ROOT / "tests" / "schemas" / "sarif-schema-2.1.0.json").read_text())


def check(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return ffitool("check", *args, cwd=cwd)


def check_json(*args: str, cwd: Path = ROOT) -> tuple[dict, int]:
    result = check("--format", "json", *args, cwd=cwd)
    document = json.loads(result.stdout)
    jsonschema.validate(document, json.loads((SCHEMAS / "check-1.json").read_text()))
    assert document["exit_code"] == result.returncode
    return document, result.returncode


def codes(document: dict) -> list[str]:
    return [f["code"] for file in document["files"] for f in file["findings"]]


def build(tmp_path: Path, name: str, source: str, suffix: str = ".c") -> Path:
    """A shared library built with gcc from `source` (C, or assembly with suffix .s)."""
    gcc = require_tool("gcc")
    src = tmp_path / f"{name}{suffix}"
    src.write_text(source)
    out = tmp_path / f"{name}.so"
    subprocess.run([gcc, "-shared", "-fPIC", "-o", out, src], check=True, capture_output=True)
    return out


# --- the registry -----------------------------------------------------------------------


def test_docs_rules_md_is_generated_from_the_registry():
    committed = (ROOT / DOC_PATH).read_bytes().decode("utf-8")
    assert committed == render(), f"{DOC_PATH} is stale: regenerate it with `{REGENERATE}`"
    rows = re.findall(r"^\| \[([BLR]\d{3})\]\(#\w+\) \| (\w+) \| (.+) \|$", committed, re.M)
    assert rows == [(r.code, r.severity.value, r.title) for r in RULES.values()]
    assert re.findall(r"^## ([BLR]\d{3})$", committed, re.M) == list(RULES)


_CODE = re.compile(r"[BLR]\d{3}")
# The runners that make a registered check's findings under the code it is registered with.
_RELAYS = {
    "ffitool.checks:_requirement_findings",
    "ffitool.checks:_blob_requirement_findings",
    "ffitool.checks:_device_findings",
}


def _calls_by_function(tree: ast.Module, module: str) -> Iterator[tuple[str, ast.Call]]:
    """Every call in a module with the function it is in (`module:qualname`; a nested
    function counts as the function around it, as `add` in `blob._tree_findings`)."""

    def visit(node: ast.AST, scope: str, in_function: bool) -> Iterator[tuple[str, ast.Call]]:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.FunctionDef | ast.ClassDef) and not in_function:
                name = f"{scope}.{child.name}" if scope else child.name
                yield from visit(child, name, isinstance(child, ast.FunctionDef))
                continue
            if isinstance(child, ast.Call):
                yield f"{module}:{scope or '<module>'}", child
            yield from visit(child, scope, in_function)

    yield from visit(tree, "", False)


def test_every_code_is_passed_to_a_call_exactly_in_the_functions_its_rule_names():
    """`Rule.emitted_by` is where the code is written: `finding("L104", ...)`, or a check's
    registration `@_registered(GROUP_REQUIREMENTS, "R101")`. A finding made from a code held in
    a variable only happens in the functions that emit it or in the check runners."""
    emitted: dict[str, set[str]] = {}
    emitters = {name for rule in RULES.values() for name in rule.emitted_by}
    for path in sorted((ROOT / "ffitool").rglob("*.py")):
        if path.name == "rules.py":
            continue
        module = ".".join(path.relative_to(ROOT).with_suffix("").parts)
        for function, call in _calls_by_function(ast.parse(path.read_text()), module):
            for arg in call.args:
                if isinstance(arg, ast.Constant) and _CODE.fullmatch(str(arg.value)):
                    emitted.setdefault(arg.value, set()).add(function)
            makes_finding = isinstance(call.func, ast.Name) and call.func.id == "finding"
            if makes_finding and not isinstance(call.args[0], ast.Constant):
                assert function in emitters | _RELAYS, f"{function} makes findings of any code"
    registered = {code: set(rule.emitted_by) for code, rule in RULES.items()}
    differ = {c for c in emitted.keys() | registered.keys() if emitted.get(c) != registered.get(c)}
    # code -> (where it is passed to a call, where its rule says), for each code that differs
    assert {c: (emitted.get(c), registered.get(c)) for c in sorted(differ)} == {}


def test_every_registered_emitter_exists_and_every_check_is_registered_by_its_code():
    for rule in RULES.values():
        for name in rule.emitted_by:
            module, qualname = name.split(":")
            target: object = importlib.import_module(module)
            for part in qualname.split("."):
                target = getattr(target, part)
            assert callable(target), name
    for table in (checks.GROUP_REQUIREMENTS, checks.BLOB_REQUIREMENTS, checks.DEVICE_REQUIREMENTS):
        for code, check in table.items():
            assert f"{check.__module__}:{check.__qualname__}" in RULES[code].emitted_by


def test_requirement_rules_name_their_setting_and_only_they_do():
    assert {code: rule.requires for code, rule in RULES.items() if rule.requires} == {
        "R100": "require-ffi",
        "R101": "require-function",
        "R102": "require-kind",
        "R103": "allow-kind",
        "R104": "max-blob-size",
        "R105": "require-arch",
    }
    assert {rule.requires for rule in RULES.values()} - {""} <= set(KEYS)
    assert {code[0] for code in RULES} == set(PREFIXES)


def test_every_code_in_the_package_is_registered_and_every_rule_is_used():
    used: set[str] = set()
    for path in (ROOT / "ffitool").rglob("*.py"):
        if path.name != "rules.py":
            used |= set(re.findall(r'"([BLR]\d{3})"', path.read_text()))
    assert used == set(RULES)


def test_selectors_are_codes_or_prefixes_and_unknown_ones_fail():
    assert matching(("b2", "L101")) == {c for c in RULES if c.startswith("B2")} | {"L101"}
    with pytest.raises(ValueError, match="X1"):
        matching(("X1",))
    with pytest.raises(ValueError):
        matching(("",))


@pytest.mark.slow
def test_list_rules_and_explain():
    listed = check("--list-rules")
    assert listed.returncode == 0
    assert [line.split()[:2] for line in listed.stdout.splitlines()] == [
        [r.code, r.severity.value] for r in RULES.values()
    ]
    explained = check("--explain", "l103")
    assert explained.returncode == 0
    assert explained.stdout.startswith("L103 (error): the blob lives in a NOBITS section")
    assert RULES["L103"].explanation in explained.stdout
    unknown = check("--explain", "L999")
    assert (unknown.returncode, unknown.stderr) == (
        2,
        "ffitool: error: --explain 'L999': no rule has this code\n",
    )


# --- checks over the model --------------------------------------------------------------


def _blob(indptr: list[int], children: list[int], *modules: bytes) -> bytes:
    """A blob: nbytes, the CSR vectors, then each module's length-prefixed key and payload."""
    words = [len(indptr), *indptr, len(children), *children]
    body = struct.pack(f"<{len(words)}Q", *words)
    for part in modules:
        body += struct.pack("<Q", len(part)) + part
    return struct.pack("<Q", len(body)) + body


@pytest.mark.slow
def test_an_indptr_not_starting_at_0_loses_a_module_which_fails_the_check(tmp_path, runtime):
    """Child entry 0 is the only import of module 2; indptr starts at 1, so nothing imports it:
    the runtime deserializes it (its loader runs) and then drops it, hence B206 is an error."""
    tvm_ffi, received = runtime
    blob = _blob([1, 2, 2, 2], [2, 1], b"_lib", b"test_alpha", b"a", b"test_beta", b"b")
    library = build(
        tmp_path,
        "lost",
        '__attribute__((visibility("default"))) const unsigned char'
        f" __tvm_ffi__library_bin[{len(blob)}] = {{{', '.join(map(str, blob))}}};\n",
    )
    document, code = check_json(str(library))
    found = [(f["code"], f["severity"], f["message"]) for f in document["files"][0]["findings"]]
    assert (found, code) == (
        [
            ("B207", "warning", "indptr starts at 1, not 0"),
            ("B206", "error", "module(s) [2] are not reachable from the root"),
        ],
        1,
    )
    module = tvm_ffi.load_module(str(library))
    assert received == {"test_alpha": [b"a"], "test_beta": [b"b"]}  # both deserialized
    (alpha,) = module.imports  # the root holds module 1 only
    assert list(alpha.imports) == []


def test_l211_data_object_named_like_a_function(tmp_path):
    lib = build(tmp_path, "data", "int __tvm_ffi_counter = 1;\n")
    document, code = check_json(str(lib))
    assert codes(document) == ["L211"]
    assert (
        "__tvm_ffi_counter is a OBJECT symbol in .data"
        in document["files"][0]["findings"][0]["message"]
    )
    assert code == 1


def test_l211_function_outside_code(tmp_path):
    # A FUNC symbol in a writable, non-executable section: only assembly can say that.
    asm = (
        '.section .data.fn,"aw"\n.globl __tvm_ffi_f\n.type __tvm_ffi_f,@function\n'
        "__tvm_ffi_f:\n.byte 0xc3\n.size __tvm_ffi_f,1\n"
    )
    lib = build(tmp_path, "notcode", asm, ".s")
    document, code = check_json(str(lib))
    assert codes(document) == ["L211"]
    assert document["files"][0]["findings"][0]["message"] == (
        "__tvm_ffi_f is in .data, which is not an executable section"
    )
    assert code == 1


@pytest.mark.slow
def test_l212_getter_without_function(tmp_path):
    source = (
        'const char* __tvm_ffi__doc_gone(void) { return "x"; }\n'
        "int __tvm_ffi_here(void*a,const void*b,int c,void*d){return 0;}\n"
        'const char* __tvm_ffi__doc_here(void) { return "y"; }\n'
    )
    lib = build(tmp_path, "getter", source)
    document, code = check_json(str(lib))
    assert codes(document) == ["L212"]
    assert document["files"][0]["findings"][0]["message"] == (
        "__tvm_ffi__doc_gone describes __tvm_ffi_gone, which is not defined"
    )
    assert code == 0  # a warning
    assert check("--strict", str(lib)).returncode == 1


# --- requirements -----------------------------------------------------------------------

LIB = "fixtures/bin/libffi_c.so"


def test_requirements_met_report_nothing():
    document, code = check_json(
        LIB,
        "--require-function",
        "add_one",
        "--require-kind",
        "test_alpha",
        "--allow-kind",
        "test_alpha",
        "--allow-kind",
        "test_beta",
        "--max-blob-size",
        "459",
        "--require-ffi",
    )
    assert (codes(document), code) == ([], 0)


def test_requirements_missed_each_report_their_code():
    document, code = check_json(
        LIB,
        "--require-function",
        "nope",
        "--require-kind",
        "cuda_ptx",
        "--allow-kind",
        "test_alpha",
        "--max-blob-size",
        "458",
    )
    assert code == 1
    findings = document["files"][0]["findings"]
    assert [(f["code"], f["message"]) for f in findings] == [
        (
            "R104",
            "__tvm_ffi__library_bin occupies 459 B (459 bytes),"
            " over the limit of 458 B (458 bytes)",
        ),
        ("R103", "module 2 of __tvm_ffi__library_bin has kind test_beta, which is not allowed"),
        ("R101", "required function nope (__tvm_ffi_nope) is not exported"),
        ("R102", "no module of kind cuda_ptx in any blob"),
    ]
    blob_start = findings[0]["file_offset"]
    # The R103 offset is module 2's payload, at the offset the codec gives it in the blob.
    assert findings[1]["file_offset"] == blob_start + findings[1]["offset"]
    data = (FIXTURES / "libffi_c.so").read_bytes()
    assert data[blob_start : blob_start + 8] == (451).to_bytes(8, "little")


@pytest.mark.slow
def test_require_ffi_on_a_plain_library():
    document, code = check_json("fixtures/bin/libplain.so", "--require-ffi")
    assert (codes(document), code) == (["R100"], 1)
    document, code = check_json("fixtures/bin/libplain.so")
    assert (codes(document), code) == ([], 0)


_NOTHING = "nothing to check: no ELF, Mach-O or PE file or ar archive was found in it"


def empty_wheel(path: Path) -> Path:
    with zipfile.ZipFile(path, "w") as wheel:
        wheel.writestr("pkg/__init__.py", "")
    return path


@pytest.mark.parametrize("kind", ["directory", "wheel", "directory with a wheel"])
@pytest.mark.slow
def test_require_ffi_fails_when_nothing_was_found_to_check(tmp_path, kind):
    """An empty build directory, or a wheel without libraries, passes no requirement: R100,
    as for a library without FFI symbols (exit 1). The note says what was looked for."""
    if kind == "wheel":
        given = empty_wheel(tmp_path / "pkg-1.0-py3-none-any.whl")
        note = f"ffitool: note: {given}: skipped: no ELF, Mach-O or PE file or ar archive in it\n"
    else:
        given = tmp_path / "build"
        given.mkdir()
        note = (
            f"ffitool: note: {given}: skipped: no ELF, Mach-O or PE file, ar archive or wheel"
            " in this directory\n"
        )
        if kind == "directory with a wheel":  # a wheel found in a walk is passed over quietly
            empty_wheel(given / "pkg-1.0-py3-none-any.whl")
            note = ""
    result = check("--require-ffi", str(given))
    assert (result.returncode, result.stdout, result.stderr) == (
        1,
        f"{given}\n  R100 error: {_NOTHING}\n1 file checked: 1 error, 0 warnings, 0 info; failed\n",
        note,
    )
    document, code = check_json("--require-ffi", str(given))
    assert (document["files"], code) == (
        [
            {
                "path": str(given),
                "findings": [
                    {
                        "member": None,
                        "code": "R100",
                        "severity": "error",
                        "message": _NOTHING,
                        "offset": None,
                        "file_offset": None,
                        "fails": True,
                    }
                ],
            }
        ],
        1,
    )
    result = check(str(given))
    assert (result.returncode, result.stdout, result.stderr) == (
        0,
        "0 files checked: 0 errors, 0 warnings, 0 info; passed\n",
        note,
    )


@pytest.mark.slow
def test_require_ffi_is_met_per_path_and_an_unreadable_path_is_exit_3_alone(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    missing = tmp_path / "missing.so"
    document, code = check_json("--require-ffi", str(empty), "fixtures/bin/libffi_c.so")
    assert [(f["path"], [x["code"] for x in f["findings"]]) for f in document["files"]] == [
        (str(empty), ["R100"]),
        ("fixtures/bin/libffi_c.so", []),
    ]
    assert code == 1
    document, code = check_json("--require-ffi", str(missing))
    assert (document["files"], code) == ([], 3)  # it was not checked: no R100 on top


def test_requirements_of_an_archive_are_met_by_any_member():
    # add_one is in ffi_c.o, not in syslib.o: the members are linked together.
    document, code = check_json(
        "fixtures/bin/libffi_static.a", "--require-function", "add_one", "--require-ffi"
    )
    assert (codes(document), code) == ([], 0)


@pytest.mark.parametrize(
    ("text", "size"),
    [("64MiB", 64 << 20), ("1.5G", 3 << 29), ("100kB", 100_000), ("459", 459), ("2 k", 2048)],
)
def test_sizes(text, size):
    from ffitool.check_config import parse_size

    assert parse_size(text, "x") == size


def test_bad_size_is_a_usage_error():
    result = check(LIB, "--max-blob-size", "64 parsecs")
    assert result.returncode == 2
    assert result.stderr.startswith("ffitool: error: command line: '64 parsecs' is not a size")


# --- selection and severity -------------------------------------------------------------


@pytest.mark.slow
def test_select_and_ignore_by_prefix():
    lib = "fixtures/bin/libffi_legacy.so"  # L300 and B301, both info
    assert codes(check_json(lib)[0]) == ["L300", "B301"]
    assert codes(check_json(lib, "--select", "B")[0]) == ["B301"]
    assert codes(check_json(lib, "--ignore", "B3,L")[0]) == []
    bad = check(lib, "--select", "Q1")
    assert (bad.returncode, bad.stderr) == (
        2,
        "ffitool: error: command line: select: 'Q1' matches no rule code\n",
    )


@pytest.mark.slow
def test_errors_fail_warnings_fail_only_when_strict(tmp_path):
    assert check("fixtures/bin/libffi_hidden_blob.so").returncode == 1  # L101
    assert check("fixtures/bin/libffi_legacy.so", "--strict").returncode == 0  # info only
    ignored = check("fixtures/bin/libffi_hidden_blob.so", "--ignore", "L101")
    assert ignored.returncode == 0


# --- pyproject.toml ---------------------------------------------------------------------


def project(tmp_path: Path, table: str) -> Path:
    (tmp_path / "pyproject.toml").write_text(
        f"[project]\nname='x'\n\n[tool.ffitool.check]\n{table}"
    )
    nested = tmp_path / "build" / "out"
    nested.mkdir(parents=True)
    return nested


@pytest.mark.slow
def test_pyproject_settings_are_found_upwards_and_the_command_line_wins(tmp_path):
    cwd = project(tmp_path, 'require-function = ["nope"]\nmax-blob-size = "1KiB"\nstrict = true\n')
    lib = str(FIXTURES / "libffi_c.so")
    document, code = check_json(lib, cwd=cwd)
    assert (codes(document), code) == (["R101"], 1)
    assert document["config"] == str(tmp_path / "pyproject.toml")
    assert document["strict"] is True
    document, code = check_json(lib, "--require-function", "add_one", cwd=cwd)
    assert (codes(document), code) == ([], 0)
    document, _ = check_json(lib, "--max-blob-size", "400", "--no-strict", cwd=cwd)
    assert codes(document) == ["R104", "R101"]
    assert document["strict"] is False


def test_a_pyproject_without_the_table_is_passed_over(tmp_path):
    cwd = project(tmp_path, 'require-function = ["nope"]\n')
    (cwd / "pyproject.toml").write_text("[tool.ruff]\nline-length = 1\n")
    document, code = check_json(str(FIXTURES / "libffi_c.so"), cwd=cwd)
    assert (codes(document), code) == (["R101"], 1)


def test_explicit_config_file(tmp_path):
    config = tmp_path / "ci.toml"
    config.write_text('[tool.ffitool.check]\nrequire-kind = ["cuda_ptx"]\n')
    document, _ = check_json(LIB, "--config", str(config))
    assert codes(document) == ["R102"]


@pytest.mark.slow
def test_an_integer_size_in_a_config_file_is_a_byte_count(tmp_path):
    """The blob of libffi_c.so occupies 8 + 451 bytes: 459 passes, 458 is over."""
    config = tmp_path / "ci.toml"
    config.write_text("[tool.ffitool.check]\nmax-blob-size = 459\n")
    assert check_json(LIB, "--config", str(config)) == (
        check_json(LIB)[0] | {"config": str(config)},
        0,
    )
    config.write_text("[tool.ffitool.check]\nmax-blob-size = 458\n")
    document, code = check_json(LIB, "--config", str(config))
    assert (codes(document), code) == (["R104"], 1)


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ('require-functions = ["x"]\n', "unknown key 'require-functions' in [tool.ffitool.check]"),
        ("select = 'B'\n", "select must be a list of strings"),
        ("strict = 1\n", "strict must be true or false"),
        ("max-blob-size = true\n", 'max-blob-size must be a size such as "64MiB"'),
        ('ignore = ["Z"]\n', "ignore: 'Z' matches no rule code"),
        ("strict = \n", "not valid TOML"),
    ],
)
def test_bad_settings_are_usage_errors(tmp_path, table, message):
    cwd = project(tmp_path, table)
    result = check(str(FIXTURES / "libffi_c.so"), cwd=cwd)
    assert result.returncode == 2
    assert result.stderr.startswith(f"ffitool: error: {tmp_path / 'pyproject.toml'}: ")
    assert message in result.stderr
    assert result.stdout == ""


# --- formats and exit codes -------------------------------------------------------------


def test_unreadable_input_is_exit_3_and_the_rest_is_still_checked(tmp_path):
    junk = tmp_path / "junk.so"
    junk.write_bytes(b"\x7fELF" + b"\0" * 10)
    document, code = check_json(str(junk), "fixtures/bin/libffi_hidden_blob.so")
    assert code == 3
    assert [e["path"] for e in document["errors"]] == [str(junk)]
    assert codes(document) == ["L101"]


def test_sarif_validates_against_the_official_schema_and_places_blob_findings(tmp_path):
    junk = tmp_path / "junk.so"
    junk.write_bytes(b"nothing")
    result = check(
        "--format", "sarif", "fixtures/bin/libffi_legacy.so", "fixtures/bin/libffi_static.a",
        str(junk), "--allow-kind", "test_alpha", "--strict",
    )  # fmt: skip
    assert result.returncode == 3
    log = json.loads(result.stdout)
    jsonschema.Draft4Validator(SARIF_SCHEMA).validate(log)
    run = log["runs"][0]
    assert [r["id"] for r in run["tool"]["driver"]["rules"]] == list(RULES)
    results = run["results"]
    assert [(r["ruleId"], r["level"]) for r in results] == [
        ("L300", "note"),
        ("B301", "note"),
        ("R103", "error"),
        ("R103", "error"),
    ]
    for result_ in results:
        assert run["tool"]["driver"]["rules"][result_["ruleIndex"]]["id"] == result_["ruleId"]
    legacy = results[0]["locations"][0]["physicalLocation"]
    assert legacy == {
        "artifactLocation": {"uri": "fixtures/bin/libffi_legacy.so"},
        "region": {"byteOffset": 0x2000, "byteLength": 1},
    }
    member = results[2]["locations"][0]
    assert member["logicalLocations"] == [{"name": "ffi_c.o", "kind": "module"}]
    assert results[2]["message"]["text"].startswith("ffi_c.o: module 2 of")
    assert results[3]["message"]["text"].startswith("syslib.o: module 1 of mylib___tvm_ffi__")
    invocation = run["invocations"][0]
    assert invocation["executionSuccessful"] is False
    assert [n["locations"][0]["physicalLocation"]["artifactLocation"]["uri"] for n in
            invocation["toolExecutionNotifications"]] == [f"file://{junk}"]  # fmt: skip


def test_github_annotations_escape_what_came_from_the_input(tmp_path):
    hostile = tmp_path / "a,b:c%\n::warning::owned.so"
    hostile.write_bytes((FIXTURES / "libffi_hidden_blob.so").read_bytes())
    result = check("--format", "github", str(hostile))
    assert result.returncode == 1
    escaped = str(tmp_path).replace(":", "%3A").replace(",", "%2C")
    assert result.stdout.splitlines() == [
        f"::error file={escaped}/a%2Cb%3Ac%25\\n%3A%3Awarning%3A%3Aowned.so,title=L101::"
        "__tvm_ffi__library_bin is only in .symtab, not in the dynamic symbol table: dlsym,"
        " and so the runtime, will not find it"
    ]


def test_text_groups_by_file_and_never_wraps():
    result = ffitool(
        "check", "fixtures/bin/libffi_hidden_blob.so", "fixtures/bin/libffi_c.so",
        "fixtures/bin/libffi_legacy.so", env={"COLUMNS": "40", "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert result.returncode == 1
    assert result.stdout == (
        "fixtures/bin/libffi_hidden_blob.so\n"
        "  L101 error: __tvm_ffi__library_bin is only in .symtab, not in the dynamic symbol table:"
        " dlsym, and so the runtime, will not find it (file offset 0x2040)\n"
        "fixtures/bin/libffi_legacy.so\n"
        "  L300 info: __tvm_dev_mblob is the pre-tvm-ffi blob; tvm-ffi ignores it"
        " (file offset 0x2000)\n"
        "  B301 info: legacy module 'legacy_unknown' has no length prefix; stopped reading here"
        " (file offset 0x2060)\n"
        "3 files checked: 1 error, 0 warnings, 2 info; failed\n"
    )


def test_usage_errors():
    assert check().returncode == 2
    bad = check("--format", "xml", LIB)
    assert (bad.returncode, bad.stderr) == (
        2,
        "ffitool: error: --format 'xml': choose one of text, json, sarif, github\n",
    )


@pytest.mark.slow
def test_workers_print_the_same_bytes_as_one_process(tmp_path):
    junk = tmp_path / "junk.so"
    junk.write_bytes(b"junk")
    targets = [str(p) for p in sorted(FIXTURES.glob("*.so"))] * 2 + [str(junk)]
    assert len(targets) > 8  # enough for the pool to be used
    one = check("--format", "json", "-j", "1", *targets)
    two = check("--format", "json", "-j", "2", *targets)
    assert one.returncode == two.returncode == 3
    assert (one.stdout, one.stderr) == (two.stdout, two.stderr)
    assert len(json.loads(one.stdout)["files"]) == len(targets) - 1


def test_a_corrupt_archive_member_is_reported_and_the_others_still_read(tmp_path):
    ar = require_tool("ar")
    (tmp_path / "good.o").write_bytes((FIXTURES / "ffi_c.o").read_bytes())
    (tmp_path / "bad.o").write_bytes(b"\x7fELF\x02\x01\x01" + b"junk" * 6)
    subprocess.run([ar, "rcS", "t.a", "good.o", "bad.o"], cwd=tmp_path, check=True)
    message = "t.a(bad.o): malformed ELF: expected 8, found 7"
    document, code = check_json("t.a", "--require-function", "add_one", cwd=tmp_path)
    assert code == 3
    assert document["errors"] == [{"path": "t.a(bad.o)", "error": message}]
    assert [f["path"] for f in document["files"]] == ["t.a"]
    assert codes(document) == []  # good.o exports add_one
    inspected = ffitool("inspect", "--json", "t.a", cwd=tmp_path)
    assert inspected.returncode == 3
    assert inspected.stderr == f"ffitool: error: {message}\n"
    files = json.loads(inspected.stdout)["files"]
    assert [f["path"] for f in files] == ["t.a", "t.a(bad.o)"]
    assert [lib["member"] for lib in files[0]["libraries"]] == ["good.o"]


def test_a_blob_section_past_the_end_of_the_file_is_l104_not_a_crash(tmp_path):
    """An object whose blob section claims an offset beyond the file: nothing to read there."""
    from elftools.elf.elffile import ELFFile

    data = bytearray((FIXTURES / "ffi_c.o").read_bytes())
    with (FIXTURES / "ffi_c.o").open("rb") as handle:
        elf = ELFFile(handle)
        (blob,) = elf.get_section_by_name(".symtab").get_symbol_by_name("__tvm_ffi__library_bin")
        header = elf["e_shoff"] + blob["st_shndx"] * elf["e_shentsize"]
    sh_offset = header + 24  # Elf64_Shdr: name, type (4 each), flags, addr (8 each), offset
    data[sh_offset : sh_offset + 8] = (1 << 63).to_bytes(8, "little")
    broken = tmp_path / "far.o"
    broken.write_bytes(bytes(data))
    document, code = check_json(str(broken))
    assert codes(document) == ["L104"]
    assert code == 1
