#!/usr/bin/env python3
"""Local check (not a CI test): ffitool reads the MSVC-built DLL of the real win_amd64 wheel.

The apache-tvm-ffi win_amd64 wheel ships `tvm_ffi/lib/tvm_ffi_testing.dll`, built by MSVC,
which no zig fixture imitates exactly. Every `__tvm_ffi_` export that `llvm-readobj
--coff-exports` lists must be an FFI symbol in `ffitool inspect --json`, at the same RVA, and
every function with its getters. Both commands are timed as well.

Usage (from the repo root; downloads the wheel once with pip, into the benchmark cache):

    python bench/pe_wheel_check.py [--wheel PATH] [--repeat N]

Exit status 0 when ffitool and llvm-readobj agree, 1 when they do not, 2 when the wheel or
llvm-readobj could not be had. Only the standard library is used.
"""

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

WHEEL = "apache_tvm_ffi-0.1.15.post2-cp311-cp311-win_amd64.whl"
MEMBER = "tvm_ffi/lib/tvm_ffi_testing.dll"
CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "ffitool-bench"


def wheel_path(option: Path | None) -> Path | None:
    """The wheel given, or the cached download (made with pip when missing)."""
    if option is not None:
        return option
    wheel = CACHE / "wheels" / WHEEL
    if not wheel.exists():
        command = [
            *(sys.executable, "-m", "pip", "download", "apache-tvm-ffi==0.1.15.post2"),
            *("--no-deps", "--only-binary=:all:", "--platform", "win_amd64"),
            *("-d", str(wheel.parent)),
        ]
        if subprocess.run(command, check=False).returncode != 0:
            return None
    return wheel


def readobj_ffi_exports(readobj: str, dll: Path) -> dict[str, int]:
    """Name -> RVA of each export whose name carries the FFI prefix."""
    listing = subprocess.run(
        [readobj, "--coff-exports", str(dll)], check=True, capture_output=True, text=True
    ).stdout
    found = re.findall(r"Name: (__tvm_ffi_\S*)\s*RVA: (0x[0-9A-Fa-f]+)", listing)
    return {name: int(rva, 16) for name, rva in found}


def ffitool_document(dll: Path) -> dict:
    result = subprocess.run(
        [sys.executable, "-m", "ffitool", "inspect", "--json", str(dll)],
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(result.stdout)


def median_seconds(argv: list[str], repeat: int) -> float:
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)  # warm the page cache
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--wheel", type=Path, help=f"the wheel (default: {WHEEL}, downloaded)")
    parser.add_argument("--repeat", type=int, default=7, help="timed runs per command (median)")
    args = parser.parse_args()
    readobj = shutil.which("llvm-readobj")
    wheel = wheel_path(args.wheel)
    if readobj is None or wheel is None:
        print("llvm-readobj or the wheel is missing", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="ffitool-pe-wheel-") as tmp:
        dll = Path(tmp) / Path(MEMBER).name
        with zipfile.ZipFile(wheel) as archive:
            dll.write_bytes(archive.read(MEMBER))
        expected = readobj_ffi_exports(readobj, dll)
        (library,) = ffitool_document(dll)["files"][0]["libraries"]
        found = {s["symbol"]: s["address"] for s in library["symbols"] if s["exported"]}
        functions = {f["name"]: (f["metadata"], f["doc"]) for f in library["functions"]}
        print(f"{MEMBER} of {wheel.name}: {library['kind']}, {library['machine']}")
        print(f"  llvm-readobj FFI exports: {len(expected)}; ffitool FFI symbols: {len(found)}")
        for name, (metadata, doc) in sorted(functions.items()):
            print(f"  function {name}: metadata={metadata} doc={doc}")
        agree = found == expected
        getters = {
            name
            for name in expected
            if name.startswith(("__tvm_ffi__metadata_", "__tvm_ffi__doc_"))
        }
        described = {
            f"__tvm_ffi__{kind}_{name}"
            for name, flags in functions.items()
            for kind, flag in zip(("metadata", "doc"), flags, strict=True)
            if flag
        }
        agree = agree and getters == described
        print(f"  names, RVAs and getters agree: {'yes' if agree else 'NO'}")
        if not agree:
            print(f"  only llvm-readobj: {sorted(set(expected.items()) - set(found.items()))}")
            print(f"  only ffitool:      {sorted(set(found.items()) - set(expected.items()))}")
        reference = median_seconds([readobj, "--coff-exports", str(dll)], args.repeat)
        ours = median_seconds(
            [sys.executable, "-m", "ffitool", "inspect", "--json", str(dll)], args.repeat
        )
        print(
            f"  median: llvm-readobj --coff-exports {reference * 1000:.1f} ms,"
            f" ffitool inspect --json {ours * 1000:.1f} ms"
        )
    return 0 if agree else 1


if __name__ == "__main__":
    sys.exit(main())
