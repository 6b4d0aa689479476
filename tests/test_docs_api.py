"""The public Python API: docs/api.md runs as written, names every export, and the entry point
reports what the command line reports."""

from __future__ import annotations

import doctest
import inspect
import re
import subprocess
import sys
import zipfile

import pytest
from conftest import FIXTURES, ROOT, ffitool

import ffitool as api
from ffitool.report import inspect_document, write_json
from ffitool.targets import Inspected, Skipped, Unreadable

GUIDE = ROOT / "docs" / "api.md"


def test_the_guide_runs_as_written(monkeypatch):
    monkeypatch.chdir(ROOT)  # its paths are relative to the repository root, as a reader's
    result = doctest.testfile(str(GUIDE), module_relative=False, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0
    assert result.failed == 0  # doctest printed each failure above


def test_every_public_name_is_in_the_guide():
    text = GUIDE.read_text()
    missing = [name for name in api.__all__ if not re.search(rf"(?<!\w){name}(?!\w)", text)]
    assert missing == []


@pytest.mark.parametrize("name", api.__all__)
def test_every_public_name_resolves_and_says_what_it_is_for(name):
    value = getattr(api, name)
    if inspect.isclass(value) or inspect.isroutine(value):
        doc = inspect.getdoc(value) or ""
        # A dataclass without a docstring gets its signature, `Name(field, ...)`, as one.
        assert doc and not doc.startswith(f"{name}("), f"{name} has no docstring"


def test_dir_lists_the_public_names_before_any_is_loaded():
    code = (
        "import sys, ffitool\n"
        "listed = dir(ffitool)\n"
        "print(sorted(set(ffitool.__all__) - set(listed)))\n"
        "print(sorted(m for m in sys.modules if m.startswith('ffitool')))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60
    )
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout == "[]\n['ffitool']\n"
    assert len(set(api.__all__)) == len(api.__all__)


def test_inspect_reports_what_the_command_reports(tmp_path):
    """Files, directories, a wheel and inputs that are no object file: the same document,
    notes and errors, in the same order, from the API as from `ffitool inspect --json`."""
    wheel = tmp_path / "demo-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.write(FIXTURES / "libffi_c.so", "demo/libffi_c.so")
        archive.write(FIXTURES / "libffi_static.a", "demo/libffi_static.a")
        archive.writestr("demo/broken.so", b"\x7fELF" + bytes(8))
    (tmp_path / "empty").mkdir()
    paths = [
        "fixtures/bin/check",
        "fixtures/bin/macho",
        "fixtures/bin/libffi_static.a",
        "fixtures/README.md",
        str(wheel),
        str(tmp_path / "empty"),
    ]
    cli = ffitool("inspect", "--json", *paths)

    files, errors, lines = [], [], []
    for result in api.inspect(*paths):
        if isinstance(result, Inspected):
            files.append(result.file)
        elif isinstance(result, Skipped):
            lines.append(f"ffitool: note: {result.name}: skipped: {result.reason}")
        else:
            assert isinstance(result, Unreadable)
            errors.append((result.name, result.message))
    lines += [f"ffitool: error: {message}" for _, message in errors]

    document: list[str] = []
    write_json(inspect_document(files, errors), document.append)
    assert cli.stdout == "".join(document) + "\n"
    assert cli.stderr.splitlines() == lines
    assert len(errors) == 2 and len(lines) == 3  # each kind of result was met


def test_each_library_carries_the_findings_inspect_shows_for_it():
    for path in sorted((FIXTURES / "check").glob("l2*.so")):
        (library,) = api.inspect_path(path).libraries
        assert [f.code for f in library.findings] == [path.name[:4].upper()]
        assert all(isinstance(f, api.Finding) for f in library.findings)
        assert isinstance(library.findings, tuple)
    (library,) = api.inspect_path(FIXTURES / "libffi_c.so").libraries
    assert library.findings == ()


def test_inspect_refuses_a_list_when_called_not_when_iterated():
    with pytest.raises(TypeError, match="list"):
        api.inspect(["fixtures/bin/libffi_c.so"])  # type: ignore[arg-type]


def test_the_guide_names_only_public_names_after_ffitool_dot():
    used = set(re.findall(r"\bffitool\.([A-Za-z_]\w*)", GUIDE.read_text()))
    assert used - set(api.__all__) == {"__all__"}
