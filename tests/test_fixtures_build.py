"""The committed fixture binaries are exactly what fixtures/build.py builds from the sources."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, require, require_tool, require_tvm_ffi, require_zig


@pytest.mark.slow
def test_build_script_reproduces_every_committed_binary(tmp_path):
    for tool in ("gcc", "g++", "ar", "strip", "llvm-ar"):
        require_tool(tool)
    lipo = shutil.which("llvm-lipo") or next(Path("/usr/bin").glob("llvm-lipo-[0-9]*"), None)
    require(lipo is not None, "llvm-lipo is not installed (Debian package llvm)")
    require_tvm_ffi()
    require_zig()
    copy = tmp_path / "fixtures"
    shutil.copytree(ROOT / "fixtures", copy, ignore=shutil.ignore_patterns("bin"))
    # The timeout only guards against a hang: on a busy 2-core machine the build takes minutes.
    subprocess.run(
        [sys.executable, str(copy / "build.py")], check=True, capture_output=True, timeout=3600
    )
    committed = _files(ROOT / "fixtures" / "bin")
    rebuilt = _files(copy / "bin")
    assert "check/ok.so" in committed  # the check corpus in its subfolder is covered too
    assert "macho/libffi_macho.universal.dylib" in committed  # and the Mach-O fixtures
    assert "pe/ffi_pe.x86_64.dll" in committed  # and the PE fixtures
    assert sorted(rebuilt) == sorted(committed)
    differing = [name for name in committed if committed[name] != rebuilt[name]]
    assert differing == []
    generated = ROOT / "fixtures" / "src" / "generated"
    for header in generated.iterdir():
        assert (copy / "src" / "generated" / header.name).read_bytes() == header.read_bytes()


def _files(folder: Path) -> dict[str, bytes]:
    """Every file under `folder`, subfolders included, by its path relative to `folder`."""
    return {
        path.relative_to(folder).as_posix(): path.read_bytes()
        for path in folder.rglob("*")
        if path.is_file()
    }
