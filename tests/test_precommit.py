"""The pre-commit hook of `.pre-commit-hooks.yaml`, installed and run by `pre-commit try-repo`
exactly as a user's pre-commit would: a fresh virtualenv with this working tree pip-installed
into it, over a scratch git repository. It picks the libraries out of a repository by name and
fails the commit on a library that would not load, with the rule's line in its output."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import FIXTURES, ROOT, require, require_tool

# Each test pip-installs this tree into a fresh virtualenv (pre-commit try-repo).
pytestmark = pytest.mark.slow

HIDDEN_BLOB_LINE = (
    "  L101 error: __tvm_ffi__library_bin is only in .symtab, not in the dynamic symbol table:"
    " dlsym, and so the runtime, will not find it (file offset 0x2040)"
)


def scratch_repository(path: Path, files: dict[str, bytes], links: dict[str, str]) -> Path:
    """A git repository at `path` with one commit: `files` (name -> content) and symbolic
    `links` (name -> target)."""
    git = require_tool("git")
    path.mkdir()
    for name, content in files.items():
        (path / name).parent.mkdir(parents=True, exist_ok=True)
        (path / name).write_bytes(content)
    for name, target in links.items():
        (path / name).symlink_to(target)
    identity = ["-c", "user.name=ffitool tests", "-c", "user.email=tests@ffitool.invalid"]
    for command in (
        ["init", "--quiet"],
        ["add", "--all"],
        [*identity, "-c", "commit.gpgsign=false", "commit", "--quiet", "-m", "libraries"],
    ):
        subprocess.run([git, *command], cwd=path, check=True, env=_environment())
    return path


def fixture(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def try_repo(repository: Path) -> subprocess.CompletedProcess[str]:
    """`pre-commit try-repo ROOT ffitool-check --all-files --verbose` in `repository`
    (--verbose shows the check's output when it passes too), with pre-commit's home beside it
    instead of in ~/.cache."""
    require(importlib.util.find_spec("pre_commit") is not None, "pre-commit is not installed")
    require((ROOT / ".git").exists(), f"{ROOT} is not a git checkout, which try-repo needs")
    command = [sys.executable, "-m", "pre_commit", "try-repo", str(ROOT), "ffitool-check"]
    return subprocess.run(
        [*command, "--all-files", "--verbose", "--color", "never"],
        cwd=repository,
        capture_output=True,
        text=True,
        timeout=600,
        env={**_environment(), "PRE_COMMIT_HOME": str(repository.parent / "pre-commit-home")},
    )


def _environment() -> dict[str, str]:
    """This environment without what would redirect git (GIT_DIR and the like, set when the
    tests run inside a git hook) or colour the output the tests compare."""
    environment = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("GIT_") and key not in ("FORCE_COLOR", "PRE_COMMIT_COLOR")
    }
    return {**environment, "NO_COLOR": "1"}


def test_hook_passes_good_libraries_and_picks_libraries_by_name(tmp_path: Path) -> None:
    repository = scratch_repository(
        tmp_path / "repository",
        {
            "fixtures/bin/libffi_c.so": fixture("libffi_c.so"),
            "lib/libffi_c.so.1.2": fixture("libffi_c.so"),
            "lib/ffi_c.o": fixture("ffi_c.o"),
            "lib/libffi_static.a": fixture("libffi_static.a"),
            "bin/ffi_pe.dll": fixture("pe/ffi_pe.x86_64.dll"),
            # Check would fail on these three (exit 3), so they must not be passed to it: a binary
            # that is not a library, a Microsoft import library, and a text file (a GNU ld
            # script) with a library's name.
            "data/ffi_c.blob": fixture("ffi_c.blob"),
            "bin/ffi_pe.lib": fixture("pe/ffi_pe.x86_64.lib"),
            "lib/libffi_script.so.0": b"/* GNU ld script */\nINPUT(libffi_c.so.1.2)\n",
        },
        # A symlink is not checked a second time.
        {"lib/libffi_c.so.1": "libffi_c.so.1.2"},
    )
    result = try_repo(repository)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert re.fullmatch(
        r"ffitool check\.+Passed", lines[lines.index("- hook id: ffitool-check") - 1]
    )
    # One check over all five: the two .so names, the object, the archive and the DLL.
    assert "5 files checked: 0 errors, 0 warnings, 0 info; passed" in lines


def test_hook_fails_a_library_whose_blob_the_runtime_cannot_find(tmp_path: Path) -> None:
    repository = scratch_repository(
        tmp_path / "repository",
        {
            "fixtures/bin/libffi_c.so": fixture("libffi_c.so"),
            "fixtures/bin/libffi_hidden_blob.so": fixture("libffi_hidden_blob.so"),
        },
        {},
    )
    result = try_repo(repository)
    assert result.returncode == 1, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert re.fullmatch(
        r"ffitool check\.+Failed", lines[lines.index("- hook id: ffitool-check") - 1]
    )
    assert "- exit code: 1" in lines
    start = lines.index("fixtures/bin/libffi_hidden_blob.so")
    assert lines[start + 1 : start + 2] == [HIDDEN_BLOB_LINE]
    assert "2 files checked: 1 error, 0 warnings, 0 info; failed" in lines
