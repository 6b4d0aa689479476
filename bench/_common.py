"""Helpers shared by the benchmarks in bench/: building inputs, measuring, reporting.

Each benchmark is a stand-alone script (`python bench/NAME.py`); what they have in common
lives here so that every benchmark measures and reports the same way: the same launcher for
peak RSS, the same warm-up and median, the same summary table.

Only the standard library is used, so the benchmarks run before ffitool's own dependencies
are settled. Linux (ELF, gcc) is assumed.

Importing it: the scripts move bench/ from the front of sys.path to its end before importing
anything else, because bench/inspect.py would otherwise shadow the standard library's
`inspect` (which dataclasses imports); at the end, bench/ still provides this module.
"""

import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
GEN_DIR = BENCH_DIR / "gen"
FFI_EXPORTS_SOURCE = GEN_DIR / "ffi_exports.c"
PEAK_RSS_SOURCE = GEN_DIR / "peak_rss.c"

MIB = 1 << 20
GIB = 1 << 30
CHUNK = 4 * MIB  # write unit for generated data: bounded memory whatever the size

PAYLOAD_KIND = "bench_payload"

FFITOOL = [sys.executable, "-m", "ffitool"]

_START = time.perf_counter()


def log(message: str) -> None:
    """Progress lines carry the elapsed time so a slow step is visible at a glance."""
    print(f"[{time.perf_counter() - _START:7.1f}s] {message}", flush=True)


# --------------------------------------------------------------------------- building


def run_checked(argv: Sequence[str]) -> None:
    """Run a build step; a failed build aborts with the tool's own message."""
    proc = subprocess.run(list(argv), capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(
            f"command failed ({proc.returncode}): {' '.join(argv)}\n{proc.stderr[-4000:]}"
        )


def write_random_file(
    path: Path,
    size: int,
    seed: int,
    prefix: bytes = b"",
    on_chunk: Callable[[bytes], object] | None = None,
) -> None:
    """Write `prefix` then `size` pseudo-random bytes, CHUNK at a time.

    Pseudo-random rather than zeros so that nothing (sparse files, compression,
    zero-page tricks) makes the data cheaper to read than real weights or kernels.
    `on_chunk`, if given, sees the random bytes only (not the prefix): fed to a hash,
    that is how the module payload's sha256 is known without reading the file back.
    """
    rng = random.Random(seed)
    with path.open("wb") as out:
        out.write(prefix)
        left = size
        while left > 0:
            chunk = rng.randbytes(min(CHUNK, left))
            if on_chunk is not None:
                on_chunk(chunk)
            out.write(chunk)
            left -= len(chunk)


def ffi_exports_object(obj: Path, embed_example_blob: bool) -> None:
    """Compile the __tvm_ffi_* functions (and optionally the 96-byte example blob)."""
    argv = ["gcc", "-c", "-O1", "-fPIC", "-w", str(FFI_EXPORTS_SOURCE), "-o", str(obj)]
    if embed_example_blob:
        argv.insert(1, "-DBENCH_EMBED_EXAMPLE_BLOB")
    run_checked(argv)


def check_free_space(directory: Path, needed: int, what: str) -> bool:
    """Building into a full disk fails late and messily; refuse up front instead."""
    free = shutil.disk_usage(directory).free
    if free < needed:
        log(f"SKIP {what}: {free / GIB:.1f} GiB free in {directory}, need {needed / GIB:.0f} GiB")
        return False
    return True


def load_manifest(path: Path, expected: dict[str, Any]) -> dict[str, Any] | None:
    """A cached input is reused only if it was built with the same parameters."""
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(manifest, dict):
        return None
    if any(manifest.get(key) != value for key, value in expected.items()):
        return None
    return manifest


# --------------------------------------------------------------------------- measuring


@dataclass
class Measurement:
    """One run of one command in its own child process."""

    argv: list[str]
    returncode: int
    wall_s: float
    peak_rss_mb: float
    stderr: str

    @property
    def ok(self) -> bool:
        return self.returncode == 0


class Meter:
    """Runs each measured command under bench/gen/peak_rss.c, one launcher per command.

    Why not os.wait4 here: on Linux a child's ru_maxrss includes the memory it shared
    with its parent before exec, and this script weighs 20-40 MB, which would hide any
    smaller peak (ffitool's included). The ~1 MB launcher forks the command itself and
    reports that child's own peak, exit code and wall time.
    """

    def __init__(self, workdir: Path) -> None:
        self.launcher = workdir / "peak_rss"
        self.report = workdir / "peak_rss.report"
        run_checked(["gcc", "-O2", "-o", str(self.launcher), str(PEAK_RSS_SOURCE)])

    def measure(self, argv: Sequence[str], stdout: Path | None = None) -> Measurement:
        """Run `argv` once; stdout goes to `stdout` or /dev/null, stderr to a file (a
        pipe could fill up and stall the command)."""
        self.report.unlink(missing_ok=True)
        with open(stdout or os.devnull, "wb") as out, tempfile.TemporaryFile() as err:
            subprocess.run(
                [str(self.launcher), str(self.report), *argv], stdout=out, stderr=err, check=False
            )
            err.seek(0)
            stderr = err.read().decode(errors="replace")
        try:
            code, maxrss_kib, wall_ns = (int(f) for f in self.report.read_text().split())
        except (OSError, ValueError):
            return Measurement(list(argv), 127, 0.0, 0.0, stderr or "launcher failed")
        return Measurement(list(argv), code, wall_ns / 1e9, maxrss_kib * 1024 / 1e6, stderr)


def describe_failure(m: Measurement) -> str:
    """The tail of stderr is where a Python traceback says what went wrong."""
    tail = "\n".join(m.stderr.strip().splitlines()[-6:])
    return f"exit {m.returncode}: {' '.join(m.argv)}\n    " + tail.replace("\n", "\n    ")


@dataclass
class Series:
    """Repeated runs of one command; the median is what is compared.

    `warmup` is the untimed first run, kept so that a report can show how much the
    page cache (and whatever else a first run pays for) changed the figure.
    """

    label: str
    runs: list[Measurement]
    warmup: Measurement | None = None

    @property
    def ok(self) -> bool:
        return bool(self.runs) and all(m.ok for m in self.runs)

    @property
    def median_s(self) -> float:
        return statistics.median(m.wall_s for m in self.runs)

    @property
    def peak_rss_mb(self) -> float:
        return max(m.peak_rss_mb for m in self.runs)


def time_series(
    meter: Meter,
    commands: dict[str, list[str]],
    repeat: int,
    prepare: Callable[[str], None] | None = None,
) -> dict[str, Series]:
    """Time several commands `repeat` times each, interleaved.

    One unmeasured warm-up run each puts the file in the page cache (the comparison is
    about the tools, not the disk), and interleaving spreads any machine noise over all
    of them instead of penalising whichever ran during it. A command that fails its
    warm-up is not repeated: its failure is reported once. `prepare`, if given, is
    called with the label before every run, warm-up included, untimed: that is where a
    benchmark deletes the previous run's output so that every run starts alike.
    """
    series: dict[str, Series] = {}
    for label, argv in commands.items():
        if prepare is not None:
            prepare(label)
        warm = meter.measure(argv)
        series[label] = Series(label, [] if warm.ok else [warm], warm)
        if not warm.ok:
            log(f"FAILED {label}: {describe_failure(warm)}")
    live = [label for label, s in series.items() if not s.runs]
    for _ in range(repeat):
        for label in live:
            if prepare is not None:
                prepare(label)
            series[label].runs.append(meter.measure(commands[label]))
    return series


# --------------------------------------------------------------------------- reporting


@dataclass
class Target:
    """A row of the final table; `passed` is None when it could not be measured."""

    name: str
    measured: str
    goal: str
    passed: bool | None
    counts: bool = True  # informational rows never fail --check

    @property
    def status(self) -> str:
        if not self.counts:
            return "info"
        return {True: "PASS", False: "MISS", None: "N/A"}[self.passed]


def fmt_s(seconds: float) -> str:
    """Milliseconds, aligned: every command measured here takes between 1 ms and 10 s."""
    return f"{seconds * 1000:9.1f} ms"


def print_series(series: dict[str, Series]) -> None:
    """Median time and worst peak RSS per command: the median resists a noisy run, the
    peak is what a memory target is about."""
    for s in series.values():
        if s.ok:
            print(
                f"    {s.label:<34} median {fmt_s(s.median_s)}   peak RSS "
                f"{s.peak_rss_mb:7.1f} MB   ({len(s.runs)} runs)"
            )
        else:
            print(f"    {s.label:<34} FAILED")


def print_summary(targets: list[Target]) -> None:
    """The table the lead reads first: one row per target, measured vs goal."""
    print("\n== summary")
    header = f"    {'target':<30} {'measured':>16} {'goal':>10}   status"
    print(header)
    print("    " + "-" * (len(header) - 4))
    for t in targets:
        print(f"    {t.name:<30} {t.measured:>16} {t.goal:>10}   {t.status}")
