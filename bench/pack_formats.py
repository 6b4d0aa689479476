#!/usr/bin/env python3
"""Benchmark `ffitool pack` on Mach-O and PE libraries with tens of thousands of exports.

The ELF writer is measured by bench/pack.py on a libtorch-shaped host. Mach-O and PE packing
rebuild an export table (the Mach-O export trie and symbol table, the PE export directory),
so their cost grows with the number of exports rather than with the file: here a 1 MiB
payload is packed into the zig-built arm64 dylib with 75k exports that bench/inspect.py
times, and into its DLL with 65,535 exports (the most PE's 16-bit ordinals allow). In the same
run, as references, `cp` of the library and the tool that lists its exports (`llvm-nm
--extern-only --defined-only`, `llvm-readobj --coff-exports`); ratios are printed against both.
Each packed output is inspected once first: it must hold the payload as its last module.

Usage, from the repo root: python bench/pack_formats.py [--repeat N] [--cache-dir DIR]

Both libraries are built with zig and cached like bench/inspect.py's (the dylib takes about
2.5 min to build the first time). The output is a report; the exit status is 0 unless a
library could not be built or a pack failed.
"""

import os
import sys

# Keep bench/ from shadowing the standard library's `inspect` (see bench/inspect.py).
if sys.path and os.path.realpath(sys.path[0] or os.curdir) == os.path.dirname(
    os.path.realpath(__file__)
):
    sys.path.pop(0)
sys.path.append(os.path.dirname(os.path.realpath(__file__)))

import argparse
import hashlib
import importlib.util
import json
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

from _common import FFITOOL, Meter, cache_root, fmt_s, json_libraries, log, print_series
from _common import time_series as timed
from _pe import build_pe_exports

MACHO_EXPORTS = 75_000
PAYLOAD_SIZE = 1 << 20


def _bench_inspect():
    """bench/inspect.py as a module (its name would shadow the standard library's)."""
    path = Path(__file__).with_name("inspect.py")
    spec = importlib.util.spec_from_file_location("bench_inspect", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def manifest_for(workdir: Path, payload: Path) -> Path:
    """A manifest of one `_lib` importing the payload: the DLL's own blob export is not a
    blob pack can keep module by module, so its blob is replaced whole."""
    manifest = workdir / "manifest.json"
    digest = hashlib.sha256(payload.read_bytes()).hexdigest()
    modules = [
        {"index": 0, "kind": "_lib", "imports": [1]},
        {"index": 1, "kind": "cuda_ptx", "imports": [], "file": payload.name,
         "size": payload.stat().st_size, "sha256": digest},
    ]  # fmt: skip
    manifest.write_text(json.dumps({"schema": "ffitool.manifest/1", "modules": modules}))
    return manifest


def bench_library(
    meter: Meter,
    label: str,
    library: Path,
    reference: list[str],
    pack_options: list[str],
    repeat: int,
    workdir: Path,
    payload: Path,
) -> bool:
    """Time cp, the reference lister and ffitool pack on `library`; print the ratios."""
    out = workdir / f"packed-{library.name}"
    pack = [*FFITOOL, "pack", str(library), *pack_options, "-o", str(out), "--quiet"]
    check = meter.measure(pack)
    if not check.ok:
        log(f"FAILED ffitool pack on {library.name}")
        return False
    inspected = meter.measure([*FFITOOL, "inspect", "--json", str(out)], stdout=workdir / "i.json")
    (packed,) = json_libraries(json.loads((workdir / "i.json").read_text()))
    modules = packed["library_bin"]["modules"] if inspected.ok and packed["library_bin"] else []
    if not modules or modules[-1]["size"] != payload.stat().st_size:
        log(f"WRONG output for {library.name}: the payload is not its last module")
        return False
    print(f"\n== {label}: {library} ({library.stat().st_size / (1 << 20):.1f} MiB)")
    commands = {
        "cp": ["cp", str(library), str(workdir / "copy")],
        Path(reference[0]).name: reference,
        "ffitool pack": pack,
    }
    series = timed(meter, commands, repeat)
    print_series(series)
    ours = series["ffitool pack"]
    for name in ("cp", Path(reference[0]).name):
        if series[name].ok and ours.ok:
            ratio = ours.median_s / series[name].median_s
            print(
                f"    ratio ffitool pack/{name}: {ratio:.1f} ({fmt_s(ours.median_s).strip()}"
                f" over {fmt_s(series[name].median_s).strip()})"
            )
    return ours.ok


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3, help="timed runs per command (median)")
    parser.add_argument("--cache-dir", type=Path, default=None, help="bench cache directory")
    args = parser.parse_args(argv)
    cache = cache_root(args.cache_dir)
    dylib = _bench_inspect().build_macho_dylib(cache, MACHO_EXPORTS)
    dll = build_pe_exports(cache)
    nm, readobj = shutil.which("llvm-nm"), shutil.which("llvm-readobj")
    if dylib is None or dll is None or nm is None or readobj is None:
        log("cannot run: a library could not be built, or llvm-nm/llvm-readobj is missing")
        return 1
    with tempfile.TemporaryDirectory(prefix="ffitool-bench-pack-formats-") as tmp:
        workdir = Path(tmp)
        payload = workdir / "payload.bin"
        payload.write_bytes(os.urandom(PAYLOAD_SIZE))
        meter = Meter(workdir)
        ok = bench_library(
            meter, "Mach-O arm64 dylib, 75k exports", dylib,
            [nm, "--extern-only", "--defined-only", str(dylib)],
            ["--add", f"cuda_ptx:{payload}"], args.repeat, workdir, payload,
        )  # fmt: skip
        ok = bench_library(
            meter, "PE DLL, 65,535 exports", dll, [readobj, "--coff-exports", str(dll)],
            ["--manifest", str(manifest_for(workdir, payload))], args.repeat, workdir, payload,
        ) and ok  # fmt: skip
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
