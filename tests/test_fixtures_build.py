"""The committed fixture binaries are exactly what fixtures/build.py builds from the sources."""

from __future__ import annotations

import shutil
import subprocess
import sys

from conftest import ROOT, require_tool, require_tvm_ffi, require_zig


def test_build_script_reproduces_every_committed_binary(tmp_path):
    for tool in ("gcc", "g++", "ar", "strip"):
        require_tool(tool)
    require_tvm_ffi()
    require_zig()
    copy = tmp_path / "fixtures"
    shutil.copytree(ROOT / "fixtures", copy, ignore=shutil.ignore_patterns("bin"))
    subprocess.run(
        [sys.executable, str(copy / "build.py")], check=True, capture_output=True, timeout=600
    )
    committed = {p.name: p.read_bytes() for p in (ROOT / "fixtures" / "bin").iterdir()}
    rebuilt = {p.name: p.read_bytes() for p in (copy / "bin").iterdir()}
    assert sorted(rebuilt) == sorted(committed)
    differing = [name for name in committed if committed[name] != rebuilt[name]]
    assert differing == []
    generated = ROOT / "fixtures" / "src" / "generated"
    for header in generated.iterdir():
        assert (copy / "src" / "generated" / header.name).read_bytes() == header.read_bytes()
