#!/usr/bin/env python3
"""Benchmark `ffitool pack` on hosts and payloads as large as the ones it must handle.

`ffitool pack LIB --add KIND:FILE -o OUT` writes a copy of LIB with FILE added as a module,
verifies it and renames it over OUT (without fsync, like cp, strip and patchelf). Unit tests
on small fixtures cannot show what that costs on big inputs; here the promises of issue 6
are checked, ratios always between medians measured in the same run:

* a 1 MiB payload into a host shaped like libtorch_cpu.so (~400 MiB, 75k dynamic
  symbols, a ~530k-entry `.symtab`, a big `.bss`, TLS; see LibShape in _common.py): at
  most 1.5x `cp` of the host, peak RSS under 100 MB whatever the host size;
* a 1 GiB payload into a small host: at most 1.5x `cp big.bin copy.bin && sync copy.bin`
  (the disk write a durable copy costs), peak RSS under 100 MB;
* every packed library loads in tvm_ffi and its loader receives exactly the payload
  (sha256), and `ffitool inspect` of it reports the payload's sha256, so the speed is
  not that of a wrong answer.

Plain `cp` of the payload and `objcopy --add-section` of it (what a user would do without
ffitool) are timed as well, for information, and a 256 MiB payload shows how it scales.
With --libtorch (opt-in, never in CI) the real libtorch_cpu.so of the torch 2.13.0 wheel
is packed too, loaded (next to libc10.so and libgomp.so.1 from the same wheel) and inspected.

Hosts and payloads are generated here (the libtorch-shaped host is cached between runs
and shared with bench/inspect.py, see --cache-dir), so nothing is downloaded unless
--libtorch asks for it. Usage, from the repo root, with a python in which ffitool (and,
for the load checks, apache-tvm-ffi) is installed:

    python bench/pack.py [--workdir DIR] [--keep] [--repeat N] [--check] [--libtorch [WHEEL]]

The output is a report: the exit status is 0 unless --check is given and a target is
missed (a target that could not be measured counts as missed under --check). The script
uses only the standard library; Linux, gcc, cp and objcopy are assumed, strace is used
if present.
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
import hashlib
import importlib.util
import json
import platform
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from _common import (
    BENCH_DIR,
    FFITOOL,
    GEN_DIR,
    GIB,
    MIB,
    PAYLOAD_KIND,
    LibShape,
    Meter,
    Series,
    Target,
    add_libtorch_argument,
    add_shape_arguments,
    blob_module_report,
    build_libtorch_shaped,
    cache_root,
    describe_elf,
    describe_failure,
    ffi_exports_object,
    fmt_s,
    load_manifest,
    log,
    print_summary,
    real_libtorch,
    run_checked,
    shape_from_args,
    time_series,
    write_random_file,
)

DEFAULT_SIZES_MIB = (256, 1024)
TARGET_SIZE = 1 * GIB  # the targets are defined for this payload; other sizes are info
# Each target bounds ffitool's median over a reference's median: `cp + sync` of the payload
# for TARGET_SIZE, `cp` of the host for the big hosts.
RATIO_TARGET = 1.5
RSS_TARGET_MB = 100.0

# Free space never to be used: a benchmark must not bring the disk near full.
DISK_MARGIN = 1 * GIB
# Outputs that may coexist, in units of the largest payload: one output (the previous
# run's is deleted first), the temporary file a tool writes and renames, one to spare.
OUTPUTS_ROOM = 3

# Small payload: ffitool's fixed cost, which syscalls copy, and what is packed into the
# libtorch-shaped and real hosts.
PROBE_SIZE = 1 * MIB

# Bump when what the payload generator produces changes, so cached payloads are rebuilt.
PAYLOAD_VERSION = 1

REPO_ROOT = BENCH_DIR.parent
# The module the load check's loader returns (a loader must return a Module).
STAND_IN = REPO_ROOT / "fixtures" / "bin" / "libffi_cpp.so"
LOAD_CHECK = GEN_DIR / "tvm_load_check.py"

# The labels of the compared commands. ffitool comes last in each round, so its output
# is still there after timing, for the load check.
CP = "cp"
CP_SYNC = "cp + sync"
OBJCOPY = "objcopy --add-section"
PACK = "ffitool pack"


def fmt_size(size: int) -> str:
    """1 GiB rather than 1024 MiB: the targets are stated that way."""
    return f"{size // GIB} GiB" if size % GIB == 0 else f"{size / MIB:g} MiB"


# --------------------------------------------------------------------------- inputs


@dataclass(frozen=True)
class Payload:
    """A generated payload file and the sha256 computed while writing it."""

    path: Path
    size: int
    sha256: str


def payload_path(workdir: Path, size: int) -> Path:
    """One file per size, so that a kept work dir serves later runs."""
    return workdir / f"payload_{size // MIB}MiB.bin"


def affordable_sizes(workdir: Path, sizes: Sequence[int]) -> list[int]:
    """The payload sizes the free space allows, largest dropped first, with a message.

    Needed: the payloads not yet on disk, room for OUTPUTS_ROOM outputs of the largest
    size and DISK_MARGIN; ~5 GiB for the default sizes on a fresh work dir. Checked up
    front because a full disk fails late and messily, possibly in another program.
    """
    free = shutil.disk_usage(workdir).free
    chosen = sorted(set(sizes))
    while chosen:
        present = 0
        for size in chosen:
            path = payload_path(workdir, size)
            present += min(path.stat().st_size, size) if path.is_file() else 0
        need = sum(chosen) - present + OUTPUTS_ROOM * chosen[-1] + DISK_MARGIN
        if free >= need:
            break
        log(
            f"SKIP the {fmt_size(chosen[-1])} case: {free / GIB:.1f} GiB free in {workdir}, "
            f"need {need / GIB:.1f} GiB (payloads, {OUTPUTS_ROOM} outputs, "
            f"{DISK_MARGIN / GIB:.0f} GiB margin)"
        )
        chosen.pop()
    return chosen


def ensure_payload(workdir: Path, size: int) -> Payload:
    """Generate the payload of `size` bytes (or reuse a kept one with its sha256).

    The sha256 is computed from the chunks as they are written, so the 1 GiB file is
    never held in memory nor read back; the manifest keeps it for a later run.
    """
    path = payload_path(workdir, size)
    manifest_path = path.with_suffix(".json")
    expected = {"version": PAYLOAD_VERSION, "size": size}
    manifest = load_manifest(manifest_path, expected)
    if (
        manifest is not None
        and isinstance(manifest.get("sha256"), str)
        and path.is_file()
        and path.stat().st_size == size
    ):
        log(f"reusing {path}")
        return Payload(path, size, manifest["sha256"])
    manifest_path.unlink(missing_ok=True)
    path.unlink(missing_ok=True)  # free its space before writing the new one
    started = time.perf_counter()
    hasher = hashlib.sha256()
    staging = path.with_suffix(".bin.tmp")
    write_random_file(staging, size, seed=size // MIB, on_chunk=hasher.update)
    staging.replace(path)  # an interrupted run leaves no half payload under the real name
    sha256 = hasher.hexdigest()
    manifest_path.write_text(json.dumps({**expected, "sha256": sha256}))
    seconds = time.perf_counter() - started
    log(f"generated {path.name} in {seconds:.1f}s (sha256 {sha256[:16]}...)")
    return Payload(path, size, sha256)


def build_host(workdir: Path) -> Path:
    """A small shared library with five __tvm_ffi_* packed functions and no blob yet: the
    library a build has just linked and that pack gives its first module."""
    obj = workdir / "pack_host.o"
    host = workdir / "pack_host.so"
    ffi_exports_object(obj, embed_example_blob=False)
    run_checked(["gcc", "-shared", "-o", str(host), str(obj)])
    obj.unlink()
    return host


# --------------------------------------------------------------------------- context


def first_line(argv: Sequence[str]) -> str:
    """A tool's version line for the report; the figures depend on the versions."""
    try:
        proc = subprocess.run(list(argv), capture_output=True, text=True, check=False)
    except OSError as exc:
        return f"{argv[0]}: {exc.strerror}"
    lines = proc.stdout.splitlines()
    return lines[0] if lines else f"{argv[0]}: no version"


def filesystem_of(path: Path) -> str:
    """The type of the file system holding `path`: on btrfs or XFS, copy_file_range can
    share extents (reflink) instead of copying, which changes what `cp` costs."""
    real = os.path.realpath(path)
    best, fstype = "", "unknown"
    try:
        mounts = Path("/proc/self/mounts").read_text().splitlines()
    except OSError:
        return fstype
    for line in mounts:
        fields = line.split()
        if len(fields) < 3:
            continue
        mount_point = fields[1].replace("\\040", " ")
        inside = real == mount_point or real.startswith(mount_point.rstrip("/") + "/")
        if inside and len(mount_point) >= len(best):
            best, fstype = mount_point, fields[2]
    return fstype


def kernel_copied_bytes(argv: Sequence[str], trace: Path) -> tuple[int, int] | None:
    """(calls, bytes) of the copy_file_range calls `argv` makes, traced with strace.

    Tells whether a tool copies in the kernel or through user space, which is what its
    time is made of; None when strace is missing or the traced command fails.
    """
    strace = shutil.which("strace")
    if strace is None:
        return None
    argv = [strace, "-f", "-qq", "-e", "trace=copy_file_range", "-o", str(trace), *argv]
    proc = subprocess.run(argv, capture_output=True, check=False)
    try:
        lines = trace.read_text().splitlines()
    except OSError:
        return None
    finally:
        trace.unlink(missing_ok=True)
    if proc.returncode != 0:
        return None
    calls = copied = 0
    for line in lines:
        if "copy_file_range" not in line:
            continue
        result = re.search(r"=\s+(-?\d+)", line.rsplit(")", 1)[-1])
        if result is None:
            continue  # the first half of a call another thread interrupted
        calls += 1
        copied += max(int(result.group(1)), 0)
    return calls, copied


# --------------------------------------------------------------------------- measuring


def pack_argv(host: Path, payload: Path, out: Path) -> list[str]:
    """The ffitool command under test, --quiet so that no progress bar is drawn."""
    add = f"{PAYLOAD_KIND}:{payload}"
    return [*FFITOOL, "pack", str(host), "--add", add, "-o", str(out), "--quiet"]


def output_paths(workdir: Path) -> dict[str, Path]:
    """Where each compared command writes; the same names for every payload size."""
    return {
        CP: workdir / "out.cp.bin",
        CP_SYNC: workdir / "out.cp_sync.bin",
        OBJCOPY: workdir / "out.objcopy.so",
        PACK: workdir / "out.ffitool.so",
    }


def case_commands(host: Path, payload: Path, outputs: dict[str, Path]) -> dict[str, list[str]]:
    """The compared commands on one payload, in the order they run in each round.

    `cp + sync` is cp followed by an fsync of its output (coreutils `sync FILE`): neither
    cp nor ffitool fsyncs, so this row shows what making the copy durable would add.
    """
    cp_then_sync = 'cp -- "$1" "$2" && sync -- "$2"'
    section = ".tvm_ffi_blob"
    return {
        CP: ["cp", str(payload), str(outputs[CP])],
        CP_SYNC: ["sh", "-c", cp_then_sync, "sh", str(payload), str(outputs[CP_SYNC])],
        OBJCOPY: [
            "objcopy",
            "--add-section",
            f"{section}={payload}",
            "--set-section-flags",
            f"{section}=alloc,readonly",
            str(host),
            str(outputs[OBJCOPY]),
        ],
        PACK: pack_argv(host, payload, outputs[PACK]),
    }


def delete_outputs(outputs: dict[str, Path]) -> None:
    """Delete every output and flush what is still dirty, untimed, before every run.

    With no output left, each run writes a new file (no tool renames over an old one) and
    the disk holds one output at a time; after os.sync() no run pays for the writeback
    of an earlier run's (or the payload generator's) data.
    """
    for path in outputs.values():
        path.unlink(missing_ok=True)
    os.sync()


@dataclass
class Case:
    """The measurements on one payload and host; `copied` is what each command writes
    (the payload, or the host for the big-host cases), for the throughput column."""

    payload: Payload
    series: dict[str, Series]
    copied: int

    def ratio(self, numerator: str, denominator: str) -> float | None:
        """Median over median, or None if either command failed."""
        top, bottom = self.series.get(numerator), self.series.get(denominator)
        if top is None or bottom is None or not (top.ok and bottom.ok):
            return None
        return top.median_s / bottom.median_s


def print_case(case: Case, fixed_cost_s: float | None) -> None:
    """Median, throughput, worst peak RSS and the untimed warm-up run of each command,
    then ffitool's ratios to the others.

    The warm-up is shown because it is the only run that may have read the payload from
    disk: a payload generated or reused a while ago need not be in the page cache any
    more (some machines reclaim idle page cache proactively). `fixed_cost_s` (ffitool on a
    tiny payload: interpreter, imports, ELF work) is subtracted in one more ratio, which
    tells the cost that grows with the payload from the cost that does not.
    """
    size = case.copied
    for s in case.series.values():
        if not s.ok:
            print(f"    {s.label:<26} FAILED")
            continue
        rate = size / GIB / s.median_s if s.median_s > 0 else float("inf")
        warm = fmt_s(s.warmup.wall_s) if s.warmup is not None else "-"
        print(
            f"    {s.label:<26} median {fmt_s(s.median_s)} ({rate:5.2f} GiB/s)   "
            f"peak RSS {s.peak_rss_mb:7.1f} MB   warm-up {warm}   ({len(s.runs)} runs)"
        )
    for label, other in ((CP, "cp"), (OBJCOPY, "objcopy"), (CP_SYNC, "(cp + sync)")):
        ratio = case.ratio(PACK, label)
        if ratio is not None:
            print(f"    ratio ffitool/{other:<12} {ratio:8.2f}")
    cp, pack = case.series.get(CP), case.series.get(PACK)
    if fixed_cost_s is not None and cp is not None and pack is not None and cp.ok and pack.ok:
        net = (pack.median_s - fixed_cost_s) / cp.median_s
        print(f"    (ffitool minus its fixed cost, over cp: {net:.2f})")


def bench_case(
    meter: Meter,
    host: Path,
    payload: Payload,
    workdir: Path,
    repeat: int,
    fixed_cost_s: float | None,
) -> Case:
    """Time cp, cp + sync, objcopy and ffitool pack on one payload, interleaved."""
    print(f"\n== {fmt_size(payload.size)} payload: {payload.path.name}")
    outputs = output_paths(workdir)
    commands = case_commands(host, payload.path, outputs)
    series = time_series(meter, commands, repeat, prepare=lambda _label: delete_outputs(outputs))
    case = Case(payload, series, payload.size)
    print_case(case, fixed_cost_s)
    return case


def probe(meter: Meter, host: Path, payload: Path, workdir: Path, repeat: int) -> float | None:
    """Informational lines that explain the big numbers: which tools copy in the kernel
    (strace) and what ffitool costs on a payload too small to matter (its fixed cost,
    returned as the median, or None if ffitool failed)."""
    print(f"\n== {fmt_size(PROBE_SIZE)} probe payload")
    outputs = output_paths(workdir)
    commands = case_commands(host, payload, outputs)
    trace = workdir / "strace.log"
    for label in (CP, OBJCOPY, PACK):
        delete_outputs(outputs)
        found = kernel_copied_bytes(commands[label], trace)
        if found is None:
            print(f"    {label:<26} copy_file_range: not traced (no strace, or it failed)")
        else:
            calls, copied = found
            print(
                f"    {label:<26} copy_file_range: {calls} call(s), "
                f"{copied}/{PROBE_SIZE} bytes copied in the kernel"
            )
    floor = time_series(
        meter, {PACK: commands[PACK]}, repeat, prepare=lambda _label: delete_outputs(outputs)
    )[PACK]
    if floor.ok:
        print(
            f"    {PACK + ' (fixed cost)':<26} median {fmt_s(floor.median_s)}   "
            f"peak RSS {floor.peak_rss_mb:7.1f} MB   ({len(floor.runs)} runs)"
        )
    else:
        print(f"    {PACK:<26} FAILED on the probe payload (see above)")
    delete_outputs(outputs)
    return floor.median_s if floor.ok else None


def library_env(library_dir: Path | None) -> dict[str, str] | None:
    """The environment for a child that loads a library whose dependencies lie in
    `library_dir` (libtorch_cpu.so finds libc10.so through RUNPATH $ORIGIN, which no longer
    holds once its packed copy is in the work dir); None: this process's own."""
    if library_dir is None:
        return None
    before = os.environ.get("LD_LIBRARY_PATH")
    path = str(library_dir) + (f":{before}" if before else "")
    return {**os.environ, "LD_LIBRARY_PATH": path}


def load_check(
    meter: Meter, out: Path, payload: Payload, name: str, env: dict[str, str] | None = None
) -> list[Target]:
    """Load ffitool's output `out` with tvm_ffi in a child (bench/gen/tvm_load_check.py)
    and compare the sha256 its loader received with the one computed while generating
    the payload. `out` is the last timed run's output (ffitool runs last in each round)."""
    name = f"{name}: loads in tvm_ffi"
    if not out.is_file():
        return [Target(name, "pack failed", "sha256 ok", False)]
    print(f"\n== tvm_ffi load of {out.name} ({fmt_size(payload.size)} payload)")
    if importlib.util.find_spec("tvm_ffi") is None:
        print("    tvm_ffi is not installed in this python (pip install apache-tvm-ffi)")
        return [Target(name, "no tvm_ffi", "sha256 ok", None)]
    if not STAND_IN.is_file():
        print(f"    {STAND_IN} is missing: the loader has no module to return")
        return [Target(name, "no stand-in", "sha256 ok", None)]
    report_path = out.with_name("load_check.json")
    argv = [sys.executable, str(LOAD_CHECK), str(out), PAYLOAD_KIND, str(STAND_IN)]
    m = meter.measure(argv, stdout=report_path, env=env)
    if not m.ok:
        log(f"FAILED load check: {describe_failure(m)}")
        return [Target(name, "load failed", "sha256 ok", False)]
    try:
        report: dict[str, Any] = json.loads(report_path.read_text())
        received = [(int(r["size"]), str(r["sha256"])) for r in report["received"]]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        print(f"    unreadable report from the child: {exc}")
        return [Target(name, "bad report", "sha256 ok", False)]
    finally:
        report_path.unlink(missing_ok=True)
    ok = received == [(payload.size, payload.sha256)]
    for size, sha256 in received or [(0, "")]:
        print(
            f"    loader of {PAYLOAD_KIND!r} received {size} bytes, sha256 {sha256[:16]}... "
            f"(expected {payload.size} bytes, {payload.sha256[:16]}...)"
        )
    print(
        f"    root module kind {report.get('kind')!r}, {report.get('imports')} import(s); "
        f"{'OK' if ok else 'MISMATCH'}"
    )
    print(
        f"    child: wall {fmt_s(m.wall_s)}, peak RSS {m.peak_rss_mb:.1f} MB (the runtime "
        "copies the payload into memory, and Python once more: expected, not a target)"
    )
    return [Target(name, "OK" if ok else "MISMATCH", "sha256 ok", ok)]


def inspect_check(meter: Meter, out: Path, payload: Payload, name: str) -> list[Target]:
    """`ffitool inspect --json` of the packed output must report the payload's size and
    sha256: the file ffitool wrote is readable by its own reader, not only by the runtime."""
    name = f"{name}: inspect sees payload"
    if not out.is_file():
        return [Target(name, "pack failed", "sha256 ok", False)]
    report_path = out.with_name("inspect_check.json")
    m = meter.measure([*FFITOOL, "inspect", "--json", str(out)], stdout=report_path)
    try:
        if not m.ok:
            log(f"FAILED inspect of {out.name}: {describe_failure(m)}")
            return [Target(name, "inspect failed", "sha256 ok", False)]
        report, ok = blob_module_report(report_path, payload.sha256, payload.size)
    finally:
        report_path.unlink(missing_ok=True)
    print(f"\n== ffitool inspect --json {out.name}")
    print(f"    module {PAYLOAD_KIND}: {report}")
    print(f"    wall {fmt_s(m.wall_s)}, peak RSS {m.peak_rss_mb:.1f} MB")
    return [Target(name, "OK" if ok else "MISMATCH", "sha256 ok", ok)]


def bench_host(
    meter: Meter,
    name: str,
    host: Path,
    payload: Payload,
    workdir: Path,
    repeat: int,
    library_dir: Path | None = None,
) -> list[Target]:
    """Pack `payload` into the big `host`, timed against `cp` (the target) and `cp + sync`
    of the host, interleaved; then check the last output with inspect and tvm_ffi."""
    print(f"\n== {fmt_size(payload.size)} payload into {name}: {host}\n    {describe_elf(host)}")
    outputs = output_paths(workdir)
    cp_then_sync = 'cp -- "$1" "$2" && sync -- "$2"'
    commands = {
        CP: ["cp", str(host), str(outputs[CP])],
        CP_SYNC: ["sh", "-c", cp_then_sync, "sh", str(host), str(outputs[CP_SYNC])],
        PACK: pack_argv(host, payload.path, outputs[PACK]),
    }
    series = time_series(meter, commands, repeat, prepare=lambda _label: delete_outputs(outputs))
    case = Case(payload, series, host.stat().st_size)
    print_case(case, None)
    targets = ratio_and_rss_targets(case, name, CP, counts=True)
    targets.extend(inspect_check(meter, outputs[PACK], payload, name))
    targets.extend(load_check(meter, outputs[PACK], payload, name, library_env(library_dir)))
    delete_outputs(outputs)
    return targets


# --------------------------------------------------------------------------- reporting


def ratio_and_rss_targets(case: Case, name: str, reference: str, counts: bool) -> list[Target]:
    """ffitool over `reference` (the target ratio) and ffitool's peak RSS, then ffitool
    over the other references the case measured, for information."""
    goal_ratio, goal_rss = f"<= {RATIO_TARGET}", f"< {RSS_TARGET_MB:.0f} MB"
    short = {CP: "cp", CP_SYNC: "(cp+sync)", OBJCOPY: "objcopy"}
    ratio = case.ratio(PACK, reference)
    targets = [
        Target(
            f"{name}: ffitool/{short[reference]}",
            "failed" if ratio is None else f"{ratio:.2f}",
            goal_ratio,
            None if ratio is None else ratio <= RATIO_TARGET,
            counts,
        )
    ]
    pack = case.series[PACK]
    rss = pack.peak_rss_mb if pack.ok else None
    targets.append(
        Target(
            f"{name}: ffitool peak RSS",
            "failed" if rss is None else f"{rss:.1f} MB",
            goal_rss,
            None if rss is None else rss < RSS_TARGET_MB,
            counts,
        )
    )
    for label in short:
        if label != reference and label in case.series:
            ratio = case.ratio(PACK, label)
            measured = "failed" if ratio is None else f"{ratio:.2f}"
            targets.append(Target(f"{name}: ffitool/{short[label]}", measured, "-", None, False))
    return targets


def case_targets(cases: dict[int, Case]) -> list[Target]:
    """The targets on the TARGET_SIZE case (ratio to cp + sync, peak RSS), then
    informational rows for every case (ratios to cp and objcopy, other sizes)."""
    targets: list[Target] = []
    if TARGET_SIZE not in cases:
        name = f"{fmt_size(TARGET_SIZE)} payload"
        targets.append(Target(f"{name}: ffitool/(cp+sync)", "not run", f"<= {RATIO_TARGET}", None))
        targets.append(
            Target(f"{name}: ffitool peak RSS", "not run", f"< {RSS_TARGET_MB:.0f} MB", None)
        )
    for size, case in sorted(cases.items(), key=lambda item: item[0] != TARGET_SIZE):
        name = f"{fmt_size(size)} payload"
        targets.extend(ratio_and_rss_targets(case, name, CP_SYNC, counts=size == TARGET_SIZE))
    return targets


# --------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None) -> tuple[argparse.Namespace, LibShape]:
    """Sizes are options so that a quick smoke run is possible; the targets only mean
    something with the 1 GiB payload and the default host shape."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--workdir",
        type=Path,
        default=None,
        help="generate the payloads and write the outputs here (kept); default: "
        "a directory under the temp dir, removed unless --keep",
    )
    parser.add_argument(
        "--keep",
        action="store_true",
        help="keep the default work dir, so the next run reuses its payloads",
    )
    parser.add_argument("--repeat", type=int, default=3, help="timed runs per command (median)")
    parser.add_argument(
        "--check", action="store_true", help="exit 1 if a target is missed or could not be measured"
    )
    parser.add_argument(
        "--sizes-mib",
        type=int,
        nargs="+",
        default=list(DEFAULT_SIZES_MIB),
        metavar="MIB",
        help="payload sizes in MiB (default: %(default)s); the targets are for 1024",
    )
    add_libtorch_argument(parser)
    add_shape_arguments(parser)
    args = parser.parse_args(argv)
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    if any(size < 1 for size in args.sizes_mib):
        parser.error("--sizes-mib: sizes must be at least 1")
    return args, shape_from_args(parser, args)


def main(argv: Sequence[str] | None = None) -> int:
    """Generate, measure, report; the return value is the exit status."""
    args, shape = parse_args(argv)
    default_dir = args.workdir is None
    workdir: Path = args.workdir or Path(tempfile.gettempdir()) / "ffitool-bench-pack"
    workdir.mkdir(parents=True, exist_ok=True)
    log(f"work dir {workdir} ({filesystem_of(workdir)}); python {sys.executable}")
    try:
        return run(args, shape, workdir)
    finally:
        if default_dir and not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)


def host_room(workdir: Path, host: Path, name: str) -> bool:
    """Room for two outputs of the size of `host` (one plus ffitool's staged file) and
    the margin; the big-host case is skipped with a message otherwise."""
    need = 2 * host.stat().st_size + DISK_MARGIN
    free = shutil.disk_usage(workdir).free
    if free < need:
        log(f"SKIP {name}: {free / GIB:.1f} GiB free in {workdir}, need {need / GIB:.1f} GiB")
    return free >= need


def run(args: argparse.Namespace, shape: LibShape, workdir: Path) -> int:
    """Check the disk, generate the inputs, then measure: the probe, the big hosts, each
    payload size from the smallest, and the load check on the largest payload's output."""
    log(
        f"{first_line(['cp', '--version'])}; {first_line(['objcopy', '--version'])}; "
        f"Linux {platform.release()}; {os.cpu_count()} CPUs"
    )
    cache = cache_root(args.cache_dir)
    shaped = build_libtorch_shaped(shape, cache)
    libtorch = real_libtorch(args.libtorch, cache)
    if args.libtorch is None:
        log("the real libtorch_cpu.so is not measured (opt in with --libtorch)")
    sizes = affordable_sizes(workdir, [mib * MIB for mib in args.sizes_mib])
    host = build_host(workdir)
    meter = Meter(workdir)
    print(
        f"\nEach command runs once untimed first (warm-up), then {args.repeat} timed runs, "
        "interleaved;\nthe medians are compared. After the warm-up the input is in the "
        "page cache, so the\nfigures are for copying from memory, not from disk. Before "
        "every run (untimed) all outputs\nare deleted and os.sync() flushes pending "
        "writes, so no run pays for another's writeback."
    )
    small = ensure_payload(workdir, PROBE_SIZE)
    fixed_cost_s = probe(meter, host, small.path, workdir, args.repeat)
    targets: list[Target] = []
    big_hosts = [("libtorch-shaped host", shaped, None)]
    if args.libtorch is not None:
        big_hosts.append(("libtorch_cpu.so", libtorch, libtorch.parent if libtorch else None))
    for name, big_host, library_dir in big_hosts:
        if big_host is None or not host_room(workdir, big_host, name):
            targets.append(Target(f"{name}: ffitool/cp", "not had", f"<= {RATIO_TARGET}", None))
            continue
        targets.extend(bench_host(meter, name, big_host, small, workdir, args.repeat, library_dir))
    cases: dict[int, Case] = {}
    loaded = [
        Target(f"{fmt_size(TARGET_SIZE)} payload: loads in tvm_ffi", "not run", "sha256 ok", None)
    ]
    for size in sizes:
        payload = ensure_payload(workdir, size)
        cases[size] = bench_case(meter, host, payload, workdir, args.repeat, fixed_cost_s)
        if size == sizes[-1]:  # the largest: ffitool's output is still there
            name = f"{fmt_size(size)} payload"
            loaded = load_check(meter, output_paths(workdir)[PACK], payload, name)
        delete_outputs(output_paths(workdir))  # free the space before the next size
    if not sizes:
        log("no payload size fits on this disk: no payload case measured")
    targets.extend(case_targets(cases))
    targets.extend(loaded)
    print_summary(targets)
    if shape != LibShape() or TARGET_SIZE not in cases:
        print("    (non-default sizes or shape: the targets are defined for the defaults)")
    missed = [t for t in targets if t.counts and t.passed is not True]
    return 1 if args.check and missed else 0


if __name__ == "__main__":
    sys.exit(main())
