"""The machine's own shared libraries packed and loaded: bench/system_libraries.py on a sample.

The whole survey (every loadable library of /usr/lib/x86_64-linux-gnu, about 540 on Debian
bookworm, 5 minutes on 2 cores) is a local benchmark; this runs it over 20 of them, among them
the six that `ffitool pack` refused before dynamic tags were classified by the gABI's rules
(each had DT_RELACOUNT equal to the address right after its program header table). Which of
them the machine has depends on its packages: those it lacks are not counted.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, require, require_tool, require_tvm_ffi

LIBDIR = Path("/usr/lib/x86_64-linux-gnu")
# Refused by issue 17's ffitool with "dynamic tag 0x6ffffff9 points right after the table".
REFUSED_BEFORE = [
    "libarchive.so.13", "libatk-1.0.so.0", "libblkid.so.1", "libgstrtsp-1.0.so.0",
    "libksba.so.8", "libnss_systemd.so.2",
]  # fmt: skip
# Common libraries of other shapes: C++, symbol versions, large, many exports, TLS.
OTHERS = [
    "libz.so.1", "libstdc++.so.6", "libcrypto.so.3", "libssl.so.3", "libsqlite3.so.0",
    "libexpat.so.1", "libffi.so.8", "libgmp.so.10", "liblzma.so.5", "libbz2.so.1.0",
    "libxml2.so.2", "libglib-2.0.so.0", "libsystemd.so.0", "libpcre2-8.so.0",
]  # fmt: skip


@pytest.mark.slow
def test_a_sample_of_the_machines_libraries_packs_and_loads():
    require_tool("gcc")
    require_tvm_ffi()
    present = [name for name in REFUSED_BEFORE + OTHERS if (LIBDIR / name).is_file()]
    require(bool(present), f"none of the sample is in {LIBDIR}")
    run = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "system_libraries.py"), "--check", "--json",
         "--only", ",".join(present)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=1800,  # a hang guard only
    )  # fmt: skip
    summary = json.loads(run.stdout)
    assert summary["failed"] == [], summary["failed"]
    assert run.returncode == 0, run.stderr
    # Every sample library loads as it is on a working system, and so must its packed copy.
    assert summary["not_loadable"] == {}
    assert summary["libraries"] == summary["loadable"] == summary["loaded"] == len(present)
