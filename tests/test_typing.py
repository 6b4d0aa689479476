"""The package is typed: it ships `py.typed`, and mypy passes with pyproject.toml's settings.

.ci/run runs mypy itself; the mypy test is here, marked slow, for a developer's full run.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import pytest
from conftest import ROOT, require, uninstrumented

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib


def test_py_typed_is_in_the_package_and_its_data() -> None:
    assert (ROOT / "ffitool" / "py.typed").is_file()
    settings = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "py.typed" in settings["tool"]["setuptools"]["package-data"]["ffitool"]


@pytest.mark.slow
def test_mypy_passes_with_the_project_settings(tmp_path) -> None:
    require(importlib.util.find_spec("mypy") is not None, "mypy is not installed")
    # A fresh cache: the result must not depend on what an earlier run left behind.
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--cache-dir", str(tmp_path)],
        cwd=ROOT,
        env=uninstrumented(),
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Success" in result.stdout
