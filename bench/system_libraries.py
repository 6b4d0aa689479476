#!/usr/bin/env python3
"""Pack a small payload into every loadable shared library of this machine, then load each one.

Issue 17 found real libraries that `ffitool pack` refused (libarchive, libatk: DT_RELACOUNT, a
count, read as an address). This is the survey that finds such cases: every ELF file matching
`*.so*` in the machine's own library directory (default /usr/lib/x86_64-linux-gnu, symlinks to
the same file counted once) is

1. loaded as it is, in a child (tests/hosts/dlopen_loader.c: dlopen, then dlsym of the blob).
   A library that does not load before packing (a plugin needing its host, a missing
   dependency) is counted and skipped: packing cannot be blamed for it;
2. copied and packed with `ffitool pack COPY --add test_alpha:PAYLOAD -o OUT`, the command a
   user runs;
3. loaded in a child: dlsym("__tvm_ffi__library_bin") must give exactly the bytes
   `ffitool blob encode` writes for the same manifest (nbytes and a 64-bit FNV-1a digest of the
   8 + nbytes bytes, compared with the digest of the encoded reference).

A library that already exports a blob is counted and skipped too. The report says how many
libraries there were, how many loaded before packing, how many packed and how many loaded
after, the time taken, and every failure with its message. A local benchmark, not a CI step:
it depends on what the machine has installed and takes minutes.
`tests/test_system_libraries.py` runs it (marked slow) over a fixed sample.

Usage, from the repo root:
    python bench/system_libraries.py [--libdir DIR] [--only NAME,...] [--jobs N] [--check]
        [--json]

`--check` exits 1 unless every library that loaded before packing packs and loads after;
`--json` prints the counts and failures as one JSON object instead of the report.
Needs gcc and the tvm_ffi package (for the loader's header).
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
import json
import shutil
import subprocess
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from _common import FFITOOL, log

REPO = Path(__file__).resolve().parent.parent
LOADER_SOURCE = REPO / "tests" / "hosts" / "dlopen_loader.c"
PAYLOAD = b"system library payload \x00\x01\xfe\xff" * 4
KIND = "test_alpha"
HANG_GUARD = 300  # seconds: only so that a library whose constructor blocks cannot stop the run


@dataclass
class Outcome:
    """What happened to one library: `stage` is where it stopped, `detail` why."""

    name: str
    stage: str
    """One of: not-loadable (before packing), has-blob (skipped), pack, load (after
    packing), ok."""
    detail: str = ""
    pack_seconds: float = 0.0


def candidates(libdir: Path, only: set[str] | None) -> tuple[list[Path], int]:
    """ELF files named *.so* in `libdir`, each file once; and how many non-ELF files were met."""
    seen: set[str] = set()
    found, not_elf = [], 0
    for path in sorted(libdir.glob("*.so*")):
        if only is not None and path.name not in only:
            continue
        if not path.is_file():
            continue
        real = os.path.realpath(path)
        if real in seen:
            continue
        seen.add(real)
        with open(real, "rb") as stream:
            if stream.read(4) != b"\x7fELF":
                not_elf += 1  # a linker script (libc.so) or a stray text file
                continue
        found.append(path)
    return found, not_elf


def fnv1a64(data: bytes) -> int:
    """The digest tests/hosts/dlopen_loader.c prints."""
    digest = 0xCBF29CE484222325
    for byte in data:
        digest = ((digest ^ byte) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return digest


def build_loader(workdir: Path) -> Path:
    """dlopen_loader.c for this machine; it defines the one runtime symbol hosts import."""
    import tvm_ffi

    loader = workdir / "dlopen_loader"
    include = tvm_ffi.libinfo.find_include_path()
    dlpack = tvm_ffi.libinfo.find_dlpack_include_path()
    subprocess.run(
        ["gcc", "-O2", "-rdynamic", f"-I{include}", f"-I{dlpack}", "-o", str(loader),
         str(LOADER_SOURCE), "-ldl"],
        check=True,
    )  # fmt: skip
    return loader


def reference_blob(workdir: Path, payload: Path) -> list[str]:
    """The loader's expected output for the blob pack writes, from `ffitool blob encode`."""
    manifest = workdir / "manifest.json"
    modules = [
        {"index": 0, "kind": "_lib", "imports": [1]},
        {"index": 1, "kind": KIND, "imports": [], "file": payload.name},
    ]
    manifest.write_text(json.dumps({"schema": "ffitool.manifest/1", "modules": modules}))
    blob = workdir / "reference.blob"
    subprocess.run(
        [*FFITOOL, "blob", "encode", str(manifest), "-o", str(blob)],
        check=True,
        capture_output=True,
    )
    data = blob.read_bytes()
    return [f"nbytes {len(data) - 8}", f"fnv1a64 {fnv1a64(data):016x}"]


def _load(loader: Path, library: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(loader), str(library)],
        capture_output=True,
        text=True,
        errors="backslashreplace",
        stdin=subprocess.DEVNULL,
        timeout=HANG_GUARD,
        cwd=library.parent,
    )


def _last_line(text: str) -> str:
    lines = text.strip().splitlines()
    return lines[-1] if lines else ""


def survey_one(
    library: Path, loader: Path, payload: Path, expected: list[str], scratch: Path
) -> Outcome:
    """Load, copy, pack and load again one library; its Outcome."""
    try:
        before = _load(loader, library)
    except subprocess.TimeoutExpired:
        return Outcome(library.name, "not-loadable", "dlopen did not return")
    if before.returncode == 0:  # its blob would be kept and added to: another expectation
        return Outcome(library.name, "has-blob", "already exports __tvm_ffi__library_bin")
    if "dlsym __tvm_ffi__library_bin" not in before.stderr:
        return Outcome(library.name, "not-loadable", _last_line(before.stderr))
    work = Path(tempfile.mkdtemp(dir=scratch))
    try:
        copy, out = work / library.name, work / f"packed.{library.name}"
        shutil.copyfile(library, copy)
        start = time.perf_counter()
        packed = subprocess.run(
            [*FFITOOL, "pack", str(copy), "--add", f"{KIND}:{payload}", "-o", str(out)],
            capture_output=True,
            text=True,
            timeout=HANG_GUARD,
            cwd=REPO,
        )
        seconds = time.perf_counter() - start
        if packed.returncode != 0:
            return Outcome(library.name, "pack", _last_line(packed.stderr), seconds)
        try:
            after = _load(loader, out)
        except subprocess.TimeoutExpired:
            return Outcome(library.name, "load", "dlopen did not return", seconds)
        got = after.stdout.splitlines()[-2:]  # a constructor may print before the loader does
        if after.returncode != 0 or got != expected:
            why = _last_line(after.stderr) or f"printed {got}, expected {expected}"
            return Outcome(library.name, "load", why, seconds)
        return Outcome(library.name, "ok", "", seconds)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--libdir", type=Path, default=Path("/usr/lib/x86_64-linux-gnu"))
    parser.add_argument("--only", help="comma-separated file names in LIBDIR (default: all)")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    parser.add_argument(
        "--check", action="store_true", help="exit 1 unless every loadable library packs and loads"
    )
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    args = parser.parse_args()
    only = None if args.only is None else set(filter(None, args.only.split(",")))
    libraries, not_elf = candidates(args.libdir, only)
    if not args.json:  # standard output is the JSON object alone
        log(f"{len(libraries)} ELF files in {args.libdir} ({not_elf} other *.so* files skipped)")
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="ffitool-syslibs-") as name:
        workdir = Path(name)
        payload = workdir / "payload.bin"
        payload.write_bytes(PAYLOAD)
        loader = build_loader(workdir)
        expected = reference_blob(workdir, payload)
        with ThreadPoolExecutor(max(1, args.jobs)) as pool:
            outcomes = list(
                pool.map(lambda lib: survey_one(lib, loader, payload, expected, workdir), libraries)
            )
    elapsed = time.perf_counter() - start
    summary = summarize(outcomes, elapsed)
    if args.json:
        print(json.dumps(summary, indent=1))
    else:
        report(summary)
    return 1 if args.check and summary["failed"] else 0


def summarize(outcomes: list[Outcome], elapsed: float) -> dict:
    """The counts, the failures and the libraries skipped, as plain data."""
    stages = Counter(o.stage for o in outcomes)
    loadable = len(outcomes) - stages["not-loadable"] - stages["has-blob"]
    pack_times = sorted(o.pack_seconds for o in outcomes if o.stage in ("ok", "load"))
    return {
        "libraries": len(outcomes),
        "not_loadable": {o.name: o.detail for o in outcomes if o.stage == "not-loadable"},
        "with_a_blob": [o.name for o in outcomes if o.stage == "has-blob"],
        "loadable": loadable,
        "packed": loadable - stages["pack"],
        "loaded": stages["ok"],
        "failed": [[o.name, o.stage, o.detail] for o in outcomes if o.stage in ("pack", "load")],
        "seconds": round(elapsed, 1),
        "median_pack_seconds": round(pack_times[len(pack_times) // 2], 2) if pack_times else 0,
    }


def report(summary: dict) -> None:
    """The summary as the text report the module docstring describes."""
    print(f"libraries (ELF files):        {summary['libraries']}")
    print(f"not loadable before packing:  {len(summary['not_loadable'])} (skipped)")
    print(f"exporting a blob already:     {len(summary['with_a_blob'])} (skipped)")
    print(f"loadable:                     {summary['loadable']}")
    print(f"packed:                       {summary['packed']}")
    print(f"loaded after packing:         {summary['loaded']}")
    print(
        f"time:                         {summary['seconds']} s"
        f" (median `ffitool pack` {summary['median_pack_seconds']} s)"
    )
    for name, detail in summary["not_loadable"].items():
        print(f"not loadable: {name}: {detail}")
    for name, stage, detail in summary["failed"]:
        print(f"FAILED at {stage}: {name}: {detail}")


if __name__ == "__main__":
    sys.exit(main())
