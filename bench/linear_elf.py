#!/usr/bin/env python3
"""Benchmark: `ffitool inspect --json` grows linearly with the input, and 100k functions
take under 2 s (issue 17, item 1).

Libraries of 25k, 50k, 100k and 200k exported `__tvm_ffi_f<i>` functions (gcc-built, as
tests/test_bounds.py builds them) and `ar` archives of 25 to 200 objects of 1,000 functions
each are inspected; for each the median wall time, peak RSS and time per megabyte are
printed, beside `nm -D` (libraries) or `nm` (archives) on the same file. Targets: the
100k-function library under 2 s, and time per megabyte at the largest size at most twice
that at the smallest (linear, not quadratic). The hostile inputs (names shared by thousands
of symbols, repeated headers, aliased blobs) are tests: tests/test_linear_elf.py.

Usage (from the repo root): python bench/linear_elf.py [--workdir DIR] [--repeat N] [--check]
Exit status 0 unless --check is given and a target is missed.
"""

from __future__ import annotations

import os
import sys

# bench/ holds inspect.py, which would shadow the standard library's `inspect` (dataclasses
# imports it): bench/ goes last on sys.path, as bench/inspect.py does for itself.
if sys.path and os.path.realpath(sys.path[0] or os.curdir) == os.path.dirname(
    os.path.realpath(__file__)
):
    sys.path.append(sys.path.pop(0))

import argparse
import subprocess
import tempfile
from pathlib import Path

from _common import (
    FFITOOL,
    Meter,
    Target,
    print_series,
    print_summary,
    time_series,
)

SIZES = (25_000, 50_000, 100_000, 200_000)
MEMBERS = (25, 50, 100, 200)
SECONDS_TARGET = 2.0
LINEARITY_TARGET = 2.0


def functions_asm(path: Path, count: int, first: int = 0) -> Path:
    with open(path, "w") as out:
        out.write(".text\n")
        for i in range(first, first + count):
            name = f"__tvm_ffi_f{i}"
            out.write(f".globl {name}\n.type {name},@function\n{name}: ret\n")
    return path


def library(workdir: Path, count: int) -> Path:
    path = workdir / f"lib{count}.so"
    if not path.exists():
        source = functions_asm(workdir / f"lib{count}.s", count)
        subprocess.run(["gcc", "-shared", "-nostdlib", "-o", path, source], check=True)
    return path


def archive(workdir: Path, members: int) -> Path:
    path = workdir / f"lib{members}.a"
    if not path.exists():
        objects = []
        for m in range(members):
            obj = workdir / f"m{m}.o"
            if not obj.exists():
                source = functions_asm(workdir / f"m{m}.s", 1000, m * 1000)
                subprocess.run(["gcc", "-c", "-o", obj, source], check=True)
            objects.append(str(obj))
        subprocess.run(["ar", "rcS", path, *objects], check=True)
    return path


def scaling(
    meter: Meter, files: list[Path], nm: list[str], repeat: int, what: str
) -> tuple[list[Target], dict[Path, float]]:
    """Time inspect and nm on each file; rows of MB, seconds, seconds per MB, peak RSS."""
    per_mb: dict[Path, float] = {}
    seconds: dict[Path, float] = {}
    for path in files:
        series = time_series(
            meter,
            {
                f"inspect --json {path.name}": [*FFITOOL, "inspect", "--json", str(path)],
                f"{' '.join(nm)} {path.name}": [*nm, str(path)],
            },
            repeat,
        )
        print_series(series)
        ours, theirs = series.values()
        size_mb = path.stat().st_size / 1e6
        if ours.ok:
            seconds[path] = ours.median_s
            per_mb[path] = ours.median_s / size_mb
            ratio = ours.median_s / theirs.median_s if theirs.ok else float("nan")
            print(
                f"    {what} {path.name}: {size_mb:.1f} MB, {per_mb[path] * 1000:.0f} ms/MB,"
                f" peak RSS {ours.peak_rss_mb:.0f} MB, {ratio:.1f}x {nm[0]}"
            )
    targets = []
    if len(per_mb) == len(files):
        growth = per_mb[files[-1]] / per_mb[files[0]]
        targets.append(
            Target(
                f"{what}: s/MB at {files[-1].name} vs {files[0].name}",
                f"{growth:.2f}x",
                f"<= {LINEARITY_TARGET:.1f}x",
                growth <= LINEARITY_TARGET,
            )
        )
    return targets, seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, help="keep the built inputs here")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--check", action="store_true", help="exit 1 if a target is missed")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        workdir = args.workdir or Path(scratch)
        workdir.mkdir(parents=True, exist_ok=True)
        meter = Meter(workdir)
        print("== libraries of N exported functions")
        libraries = [library(workdir, count) for count in SIZES]
        targets, seconds = scaling(meter, libraries, ["nm", "-D"], args.repeat, "library")
        hundred = libraries[SIZES.index(100_000)]
        measured = seconds.get(hundred)
        targets.append(
            Target(
                "inspect --json, 100k functions",
                "failed" if measured is None else f"{measured:.2f} s",
                f"< {SECONDS_TARGET:.1f} s",
                None if measured is None else measured < SECONDS_TARGET,
            )
        )
        print("== archives of N objects of 1,000 functions")
        archives = [archive(workdir, members) for members in MEMBERS]
        more, _ = scaling(meter, archives, ["nm"], args.repeat, "archive")
        targets.extend(more)
    print_summary(targets)
    missed = [t for t in targets if t.counts and not t.passed]
    return 1 if args.check and missed else 0


if __name__ == "__main__":
    sys.exit(main())
