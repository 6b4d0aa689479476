#!/usr/bin/env python3
"""Benchmark `ffitool check` on many small libraries, against `nm -D` run on each file.

The performance promise of `ffitool check` (issue 8): on a directory of 1,000 small FFI
libraries and on a wheel of 200, it checks at least as many files per second as running
`nm -D` once per file, as a shell loop would, in the same run. For the wheel the reference
is extracting its members with unzip (or Python's zipfile) and then `nm -D` on each.
`readelf --dyn-syms` per file is shown too (not a target): GNU nm's cost per file is mostly
loading BFD plugins, which readelf does not, so it shows how much margin that leaves. Worker
processes are how ffitool gets there on small files, so `--jobs 1` and `--jobs 2` are both
measured and the speedup of two workers over one is reported, next to what two CPU-bound
processes gain over one on the machine at that moment (its ceiling on a shared machine).

The libraries are built here with gcc (bench/gen/ffi_exports.c and bench/gen/check_findings.c):
a handful of objects compiled once, linked into 1,000 variants that differ in their FFI part
(blob or not, FFI functions or none), their findings (L210, L212, B201) and a varying number of
extra symbols. They and the wheel are cached between runs (see --cache-dir), keyed by the
parameters and the sources.

Usage (from the repo root, with a python in which ffitool is installed):

    python bench/check.py [--repeat N] [--check] [--libraries N] [--wheel-members N]

The output is a report: the exit status is 0 unless --check is given and a target is missed
(a target that could not be measured counts as missed under --check). Only the standard
library is used; Linux (ELF, gcc, nm) is assumed.
"""

import os
import sys

# Running this file puts bench/ first on sys.path, where bench/inspect.py would shadow the
# standard library's `inspect` (dataclasses imports it). Move that entry to the end before
# anything imports `inspect`: there it still provides bench/_common.py but shadows nothing.
if sys.path and os.path.realpath(sys.path[0] or os.curdir) == os.path.dirname(
    os.path.realpath(__file__)
):
    sys.path.pop(0)
sys.path.append(os.path.dirname(os.path.realpath(__file__)))

import argparse
import base64
import hashlib
import json
import random
import shutil
import subprocess
import tempfile
import time
import zipfile
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from _common import (
    BUILD_JOBS,
    FFI_EXPORTS_SOURCE,
    FFITOOL,
    GEN_DIR,
    Meter,
    Series,
    Target,
    cache_root,
    compile_object,
    ffi_exports_object,
    load_manifest,
    log,
    print_series,
    print_summary,
    run_checked,
    time_series,
    write_lines,
)

CHECK_FINDINGS_SOURCE = GEN_DIR / "check_findings.c"
# Bump when what build_corpus produces changes: it is part of the cache key.
CORPUS_VERSION = 1
DEFAULT_LIBRARIES = 1000
DEFAULT_WHEEL_MEMBERS = 200
WHEEL_NAME = "bench_pkg-1.0-py3-none-linux_x86_64.whl"
WHEEL_LIB_DIR = "pkg/lib"
DIST_INFO = "bench_pkg-1.0.dist-info"

NM_RATIO_TARGET = 1.0

# The -D switch of check_findings.c behind each object, and the finding it brings.
VARIANTS = {
    "plain": ("BENCH_PLAIN", None),
    "hidden": ("BENCH_HIDDEN_FUNCTION", "L210"),
    "orphan": ("BENCH_ORPHAN_METADATA", "L212"),
    "trailing": ("BENCH_TRAILING_BLOB", "B201"),
}


def library_parts(index: int) -> list[str]:
    """The objects library `index` is linked from: every library has plain code; three in
    four have the FFI functions (two of those with the example blob); one in twenty has a
    blob with trailing bytes and no functions; one in ten a hidden FFI function, one in ten
    an orphan metadata getter. A fixed pattern, so the expected findings are known."""
    parts = ["plain"]
    ffi = index % 4
    if ffi in (0, 2):
        parts.append("ffi_blob")
    elif ffi == 1:
        parts.append("ffi")
    elif index % 20 == 3:
        parts.append("trailing")
    if index % 10 == 7:
        parts.append("hidden")
    if index % 10 == 9:
        parts.append("orphan")
    return parts


def library_name(index: int) -> str:
    return f"libbench_{index:04d}.so"


def expected_findings(indices: Sequence[int]) -> Counter[str]:
    """Finding codes the libraries `indices` must produce, from their parts."""
    codes: Counter[str] = Counter()
    for index in indices:
        for part in library_parts(index):
            code = VARIANTS.get(part, (None, None))[1]
            if code is not None:
                codes[code] += 1
    return codes


def link_argv(index: int, objects: dict[str, Path], out: Path) -> list[str]:
    """gcc -shared for library `index`: its own soname and 0-24 extra absolute symbols
    (`--defsym`, exported like any global), so the 1,000 files differ in content and in
    the size of their dynamic symbol table without 1,000 compilations."""
    rng = random.Random(index)
    extra = [f"-Wl,--defsym=bench_lib{index}_sym{k}=0x{k:x}" for k in range(rng.randint(0, 24))]
    parts = [str(objects[part]) for part in library_parts(index)]
    soname = f"-Wl,-soname,{library_name(index)}"
    return ["gcc", "-shared", "-o", str(out), soname, *extra, *parts]


def corpus_key(libraries: int, wheel_members: int) -> str:
    digest = hashlib.sha256(
        json.dumps([CORPUS_VERSION, libraries, wheel_members]).encode()
        + FFI_EXPORTS_SOURCE.read_bytes()
        + CHECK_FINDINGS_SOURCE.read_bytes()
    )
    return digest.hexdigest()[:12]


def record_line(name: str, data: bytes) -> str:
    """A wheel RECORD row: urlsafe base64 sha256 without padding, then the size."""
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{name},sha256={digest},{len(data)}"


def write_wheel(path: Path, members: Sequence[Path]) -> None:
    """A wheel as pip would install it: the libraries under pkg/lib/, DEFLATED, and a
    .dist-info with METADATA, WHEEL and a RECORD that lists them."""
    record: list[str] = []
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as wheel:

        def add(name: str, data: bytes) -> None:
            wheel.writestr(name, data)
            record.append(record_line(name, data))

        for lib in members:
            add(f"{WHEEL_LIB_DIR}/{lib.name}", lib.read_bytes())
        add(f"{DIST_INFO}/METADATA", b"Metadata-Version: 2.1\nName: bench-pkg\nVersion: 1.0\n")
        add(
            f"{DIST_INFO}/WHEEL",
            b"Wheel-Version: 1.0\nGenerator: bench/check.py\nRoot-Is-Purelib: false\n"
            b"Tag: py3-none-linux_x86_64\n",
        )
        wheel.writestr(f"{DIST_INFO}/RECORD", "\n".join([*record, f"{DIST_INFO}/RECORD,,", ""]))


def build_corpus(cache: Path, libraries: int, wheel_members: int) -> tuple[Path, Path]:
    """The directory of `libraries` small libraries and the wheel of the first
    `wheel_members`, built once and then reused from `cache`.

    Six objects are compiled; the libraries are linked from them BUILD_JOBS at a time.
    Everything is built in a scratch directory renamed into place when complete.
    """
    directory = cache / f"check-corpus-{corpus_key(libraries, wheel_members)}"
    expected = {"version": CORPUS_VERSION, "libraries": libraries, "wheel": wheel_members}
    manifest = load_manifest(directory / "manifest.json", expected)
    libs, wheel = directory / "libs", directory / WHEEL_NAME
    if manifest is not None and libs.is_dir() and wheel.is_file():
        log(f"reusing {directory} (its build took {manifest.get('build_seconds')} s)")
        return libs, wheel
    log(f"building {libraries} libraries and a wheel of {wheel_members} in {directory}")
    started = time.perf_counter()
    cache.mkdir(parents=True, exist_ok=True)
    build = Path(tempfile.mkdtemp(prefix="build-check-", dir=cache))
    try:
        with ThreadPoolExecutor(max_workers=BUILD_JOBS) as pool:
            jobs = {
                "ffi_blob": pool.submit(ffi_exports_object, build / "ffi_blob.o", True),
                "ffi": pool.submit(ffi_exports_object, build / "ffi.o", False),
            }
            for name, (macro, _) in VARIANTS.items():
                source = write_lines(
                    build / f"{name}.c",
                    iter([f"#define {macro}", f'#include "{CHECK_FINDINGS_SOURCE}"']),
                )
                jobs[name] = pool.submit(compile_object, source)
            objects = {name: job.result() for name, job in jobs.items()}
            (build / "libs").mkdir()
            outputs = [build / "libs" / library_name(i) for i in range(libraries)]
            argvs = [link_argv(i, objects, out) for i, out in enumerate(outputs)]
            list(pool.map(run_checked, argvs))
        write_wheel(build / WHEEL_NAME, outputs[:wheel_members])
        for obj in build.glob("*.[co]"):
            obj.unlink()
        seconds = time.perf_counter() - started
        (build / "manifest.json").write_text(
            json.dumps({**expected, "build_seconds": round(seconds, 1)})
        )
        shutil.rmtree(directory, ignore_errors=True)
        build.rename(directory)
    finally:
        shutil.rmtree(build, ignore_errors=True)
    log(f"built them in {seconds:.1f} s")
    return libs, wheel


# --------------------------------------------------------------------------- measuring


def supports_jobs() -> bool:
    """Whether this ffitool's `check` has --jobs: the worker comparison needs it."""
    proc = subprocess.run(
        [*FFITOOL, "check", "--help"], capture_output=True, text=True, check=False
    )
    return "--jobs" in proc.stdout


def findings_by_code(document: Any) -> tuple[int, Counter[str]]:
    """(files, findings per code) of an `ffitool check --format json` document."""
    files = document.get("files") if isinstance(document, dict) else None
    codes: Counter[str] = Counter()
    for entry in files if isinstance(files, list) else []:
        for found in entry.get("findings") or [] if isinstance(entry, dict) else []:
            if isinstance(found, dict):
                codes[str(found.get("code"))] += 1
    return len(files) if isinstance(files, list) else 0, codes


def sanity_check(meter: Meter, target: Path, count: int, expected: Counter[str]) -> bool:
    """One untimed JSON run: a fast but wrong answer would make the timing meaningless,
    so the files and findings it reports are compared with what was built."""
    out = meter.report.with_name(f"{target.name}.check.json")
    m = meter.measure([*FFITOOL, "check", "--format", "json", str(target)], stdout=out)
    try:
        files, codes = findings_by_code(json.loads(out.read_text()))
    except (OSError, ValueError):
        first = (m.stderr.strip().splitlines() or ["no output"])[-1]
        print(f"    ffitool check could not run on {target.name} (exit {m.returncode}): {first}")
        return False
    ok = files == count and codes == expected
    print(
        f"    ffitool found {files} files, findings {dict(sorted(codes.items()))}"
        f" ({'as built' if ok else f'expected {count} files, {dict(sorted(expected.items()))}'})"
    )
    return ok


def print_rates(series: dict[str, Series], files: int) -> None:
    """Files per second, the figure the promise is about."""
    for s in series.values():
        if s.ok:
            print(f"    {s.label:<34} {files / s.median_s:9.0f} files/s")


def ratio_target(
    name: str, series: dict[str, Series], tool: str, reference: str, counts: bool = True
) -> Target:
    """ffitool's median over the reference's: below 1.0, ffitool checks more files/s."""
    goal = f"<= {NM_RATIO_TARGET}"
    if not series[reference].ok:
        return Target(name, "reference failed", goal, None, counts)
    if tool not in series or not series[tool].ok:
        return Target(name, "ffitool failed", goal, None, counts)
    ratio = series[tool].median_s / series[reference].median_s
    return Target(name, f"{ratio:.2f}", goal, ratio <= NM_RATIO_TARGET, counts)


NM_LOOP = 'for f; do nm -D "$f" >/dev/null || exit 1; done'
# GNU nm opens every BFD plugin it finds for each file (LLVMgold.so alone costs ~20 ms
# where LLVM is installed); readelf loads none, so it shows the margin without them.
READELF = "readelf --dyn-syms, per file"
READELF_LOOP = 'for f; do readelf --dyn-syms "$f" >/dev/null || exit 1; done'


def wheel_reference(wheel: Path) -> list[str]:
    """Extract the wheel's libraries to a temporary directory, `nm -D` each, clean up:
    what a shell script without ffitool would do (unzip, or Python's zipfile if absent)."""
    if shutil.which("unzip"):
        extract = f'unzip -q "$1" "{WHEEL_LIB_DIR}/*" -d "$d"'
    else:
        extract = f'"{sys.executable}" -m zipfile -e "$1" "$d"'
    script = (
        f"d=$(mktemp -d) || exit 1; trap 'rm -rf \"$d\"' EXIT; {extract} || exit 1;"
        f' for f in "$d"/{WHEEL_LIB_DIR}/*; do nm -D "$f" >/dev/null || exit 1; done'
    )
    return ["sh", "-c", script, "sh", str(wheel)]


BURN = f'"{sys.executable}" -c "sum(range(20_000_000))"'


def free_cores(meter: Meter, repeat: int) -> Target:
    """How much two CPU-bound processes gain over one on this machine right now: the
    ceiling for the speedup of --jobs 2, which other load on a shared machine lowers."""
    series = time_series(
        meter,
        {
            "2 CPU burns, one after the other": ["sh", "-c", f"{BURN}; {BURN}"],
            "2 CPU burns, side by side": ["sh", "-c", f"{BURN} & {BURN}; wait"],
        },
        repeat,
    )
    print_series(series)
    serial, parallel = series.values()
    if not (serial.ok and parallel.ok):
        return Target("free cores (2 burns)", "failed", "-", None, False)
    gain = serial.median_s / parallel.median_s
    print(f"    two processes side by side gain {gain:.2f}x: the ceiling for --jobs 2")
    return Target("free cores (2 burns)", f"{gain:.2f}x", "-", None, False)


def bench_directory(meter: Meter, libs: Path, repeat: int, jobs: bool) -> list[Target]:
    """ffitool check on the directory (default jobs, and 1 and 2 workers) against the
    nm loop over the same files."""
    files = sorted(str(p) for p in libs.iterdir())
    print(f"\n== directory: {libs} ({len(files)} files)")
    sanity_check(meter, libs, len(files), expected_findings(range(len(files))))
    commands = {
        "nm -D, one process per file": ["sh", "-c", NM_LOOP, "sh", *files],
        READELF: ["sh", "-c", READELF_LOOP, "sh", *files],
        "ffitool check DIR": [*FFITOOL, "check", str(libs)],
    }
    if jobs:
        for n in (1, 2):
            commands[f"ffitool check --jobs {n} DIR"] = [*FFITOOL, "check", f"-j{n}", str(libs)]
    else:
        print("    (this ffitool check has no --jobs: only its default is measured)")
    series = time_series(meter, commands, repeat)
    print_series(series)
    print_rates(series, len(files))
    nm = "nm -D, one process per file"
    targets = [ratio_target("dir ffitool/nm", series, "ffitool check DIR", nm)]
    targets.append(ratio_target("dir ffitool/readelf", series, "ffitool check DIR", READELF, False))
    one, two = series.get("ffitool check --jobs 1 DIR"), series.get("ffitool check --jobs 2 DIR")
    if one is not None and two is not None:
        targets.append(ratio_target("dir --jobs 1 ffitool/nm", series, one.label, nm, counts=False))
        if one.ok and two.ok:
            speedup = one.median_s / two.median_s
            print(f"    speedup of --jobs 2 over --jobs 1: {speedup:.2f}x")
            targets.append(Target("dir speedup jobs 2/1", f"{speedup:.2f}x", "-", None, False))
            targets.append(
                Target("dir peak RSS --jobs 1", f"{one.peak_rss_mb:.1f} MB", "-", None, False)
            )
    default = series["ffitool check DIR"]
    if default.ok:
        # wait4 folds the peaks of reaped workers into their parent's: this is the
        # largest single process, not the sum over the workers.
        targets.append(
            Target("dir peak RSS (default jobs)", f"{default.peak_rss_mb:.1f} MB", "-", None, False)
        )
    return targets


def bench_wheel(meter: Meter, wheel: Path, members: int, repeat: int) -> list[Target]:
    """ffitool check on the wheel against extracting it and running nm on each member."""
    print(f"\n== wheel: {wheel} ({members} libraries, {wheel.stat().st_size // 1024} KiB)")
    if not sanity_check(meter, wheel, members, expected_findings(range(members))):
        print("    the wheel case is reported but does not count until ffitool reads wheels")
    reference = "unzip + nm -D per member"
    commands = {
        reference: wheel_reference(wheel),
        "ffitool check WHEEL": [*FFITOOL, "check", str(wheel)],
    }
    series = time_series(meter, commands, repeat)
    print_series(series)
    print_rates(series, members)
    return [ratio_target("wheel ffitool/(unzip+nm)", series, "ffitool check WHEEL", reference)]


# --------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Sizes are options so that a quick smoke run is possible; the targets only mean
    something at the defaults."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=3, help="timed runs per command (median)")
    parser.add_argument(
        "--check", action="store_true", help="exit 1 if a target is missed or could not be measured"
    )
    parser.add_argument(
        "--libraries", type=int, default=DEFAULT_LIBRARIES, help="libraries in the directory"
    )
    parser.add_argument(
        "--wheel-members",
        type=int,
        default=DEFAULT_WHEEL_MEMBERS,
        help="libraries in the wheel (the first ones of the directory)",
    )
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=None,
        help="where the built libraries are kept between runs (default: as bench/inspect.py)",
    )
    parser.add_argument(
        "--build-only", action="store_true", help="build (or reuse) the inputs and stop"
    )
    args = parser.parse_args(argv)
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    if args.libraries < 1 or not 0 < args.wheel_members <= args.libraries:
        parser.error("need 1 <= --wheel-members <= --libraries")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Build, measure, report; the return value is the exit status."""
    args = parse_args(argv)
    libs, wheel = build_corpus(cache_root(args.cache_dir), args.libraries, args.wheel_members)
    if args.build_only:
        return 0
    with tempfile.TemporaryDirectory(prefix="ffitool-bench-check-") as workdir:
        meter = Meter(Path(workdir))
        print("\n== floors")
        floors = {
            f"{Path(sys.executable).name} -c pass": [sys.executable, "-c", "pass"],
            "ffitool --help": [*FFITOOL, "--help"],
        }
        print_series(time_series(meter, floors, args.repeat))
        parallelism = free_cores(meter, args.repeat)
        targets = [parallelism, *bench_directory(meter, libs, args.repeat, supports_jobs())]
        targets += bench_wheel(meter, wheel, args.wheel_members, args.repeat)
    print_summary(targets)
    if args.libraries != DEFAULT_LIBRARIES or args.wheel_members != DEFAULT_WHEEL_MEMBERS:
        print("    (non-default sizes: the targets are defined for the defaults)")
    missed = [t for t in targets if t.counts and t.passed is not True]
    return 1 if args.check and missed else 0


if __name__ == "__main__":
    sys.exit(main())
