#!/usr/bin/env python3
"""Benchmark `ffitool inspect` on libraries as large as the ones it must handle.

Two performance promises are checked here, because unit tests on small fixtures
cannot show them:

* on a library shaped like libtorch_cpu.so (~400 MiB, ~75k dynamic symbols, a ~530k-entry
  `.symtab` with a ~75 MB `.strtab`, TLS, a big `.bss`; see LibShape in _common.py),
  `inspect --json` costs at most 1.0x what `nm -D --defined-only` costs on it, in the
  same run: ffitool reads no more of the file than nm does;
* inspecting a library whose TVM FFI blob holds a 1 GiB module keeps peak RSS under
  100 MB, i.e. module payloads are hashed in a streaming way, never read whole;
* on a macOS arm64 dylib with 75k exports (Itanium-mangled names, as a C++ library's;
  built with zig, cached like the libtorch-shaped library), `inspect --json` costs at most
  1.0x `llvm-nm --extern-only --defined-only` on it, in the same run (skip: --no-macho).

The libraries are built here with gcc from generated sources (plus bench/gen/), so the
benchmark needs no downloaded artifacts; the libtorch-shaped one is cached between runs
(see --cache-dir) and shared with bench/pack.py. With --libtorch (opt-in, never in CI)
the real libtorch_cpu.so of the torch 2.13.0 wheel is measured as well.

Usage (from the repo root, with a python in which ffitool is installed):

    python bench/inspect.py [--workdir DIR] [--keep] [--repeat N] [--check] [--libtorch [WHEEL]]
                            [--no-macho] [--macho-exports N]

The output is a report: the exit status is 0 unless --check is given and a target is
missed (a target that could not be measured counts as missed under --check).
Only the standard library is used, so the script runs before ffitool's own
dependencies are settled. Linux (ELF, gcc, nm) is assumed; the Mach-O case also needs
the `ziglang` package and llvm-nm (Debian package llvm).
"""

import os
import sys

# This file shares its name with the standard library's `inspect`, which dataclasses and
# others import; running it as a script puts bench/ first on sys.path, where it would
# shadow that module. Move that entry to the end before anything imports `inspect`: there
# it still provides the shared helpers (bench/_common.py) but shadows nothing.
if sys.path and os.path.realpath(sys.path[0] or os.curdir) == os.path.dirname(
    os.path.realpath(__file__)
):
    sys.path.pop(0)
sys.path.append(os.path.dirname(os.path.realpath(__file__)))

import argparse
import hashlib
import importlib.util
import json
import os
import random
import shutil
import struct
import sys
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from _common import (
    BUILD_JOBS,
    FFI_EXPORTS_SOURCE,
    FFITOOL,
    GIB,
    MIB,
    PAYLOAD_KIND,
    LibShape,
    Meter,
    Target,
    add_libtorch_argument,
    add_shape_arguments,
    blob_module_report,
    build_libtorch_shaped,
    cache_root,
    check_free_space,
    describe_elf,
    describe_failure,
    ffi_exports_object,
    fmt_s,
    incbin_object,
    json_libraries,
    load_manifest,
    log,
    mangled_name,
    print_series,
    print_summary,
    real_libtorch,
    run_checked,
    shape_from_args,
    time_series,
    write_random_file,
)
from _pe import bench_pe

# Bump when what build_big_blob produces changes, so cached blob libraries are rebuilt.
BLOB_VERSION = 2
DEFAULT_PAYLOAD_MIB = 1024

# Free space needed before building: generated blob, object and library coexist.
BLOB_MIN_FREE = 4 * GIB

NM_RATIO_TARGET = 1.0
RSS_TARGET_MB = 100.0

# Bump when what build_macho_dylib produces changes, so cached dylibs are rebuilt.
MACHO_VERSION = 1
DEFAULT_MACHO_EXPORTS = 75_000
MACHO_SOURCES = 2  # one compiler per core: zig takes ~1 min per 40k functions
LLVM_NM = ["--extern-only", "--defined-only"]


def blob_prefix(payload_size: int) -> bytes:
    """The blob up to the payload: `_lib` (module 0) importing one PAYLOAD_KIND module.

    Layout per shared/docs/tvm-ffi-library-format.md: u64 nbytes, CSR import tree
    (indptr [0, 1, 1], child_indices [1]), then per module its key and, unless `_lib`,
    its value as u64 size + bytes.
    """

    def u64(value: int) -> bytes:
        return struct.pack("<Q", value)

    def vec(values: Sequence[int]) -> bytes:
        return u64(len(values)) + b"".join(u64(v) for v in values)

    def string(text: str) -> bytes:
        raw = text.encode()
        return u64(len(raw)) + raw

    body = vec([0, 1, 1]) + vec([1]) + string("_lib") + string(PAYLOAD_KIND) + u64(payload_size)
    return u64(len(body) + payload_size) + body


def build_big_blob(workdir: Path, payload_mib: int) -> tuple[Path, str] | None:
    """Build big_blob.so, whose blob carries a `payload_mib` MiB module; return it with
    the payload's sha256 (computed while writing, kept in the manifest for reuse)."""
    lib = workdir / "big_blob.so"
    manifest_path = workdir / "big_blob.json"
    expected = {"version": BLOB_VERSION, "payload_mib": payload_mib}
    manifest = load_manifest(manifest_path, expected)
    if lib.exists() and manifest is not None and isinstance(manifest.get("sha256"), str):
        log(f"reusing {lib}")
        return lib, manifest["sha256"]
    if not check_free_space(workdir, BLOB_MIN_FREE, "big_blob.so"):
        return None
    started = time.perf_counter()
    build = workdir / "build_blob"
    shutil.rmtree(build, ignore_errors=True)
    build.mkdir()
    try:
        payload_size = payload_mib * MIB
        blob = build / "library_bin.bin"
        hasher = hashlib.sha256()
        write_random_file(
            blob, payload_size, seed=2, prefix=blob_prefix(payload_size), on_chunk=hasher.update
        )
        sha256 = hasher.hexdigest()
        log(f"generated {blob.stat().st_size} byte blob (payload sha256 {sha256[:16]}...)")
        blob_obj = build / "library_bin.o"
        incbin_object(blob, "__tvm_ffi__library_bin", ".rodata.tvm_ffi_library_bin", blob_obj)
        blob.unlink()  # free 1 GiB before the linker writes another copy
        ffi_obj = build / "ffi_exports.o"
        ffi_exports_object(ffi_obj, embed_example_blob=False)
        tmp_lib = lib.with_suffix(".so.tmp")
        run_checked(["gcc", "-shared", "-o", str(tmp_lib), str(blob_obj), str(ffi_obj)])
        tmp_lib.replace(lib)
    finally:
        shutil.rmtree(build, ignore_errors=True)
    seconds = time.perf_counter() - started
    manifest_path.write_text(
        json.dumps({**expected, "sha256": sha256, "build_seconds": round(seconds, 1)})
    )
    log(f"built {lib} ({lib.stat().st_size / MIB:.1f} MiB) in {seconds:.1f}s")
    return lib, sha256


def llvm_nm() -> str | None:
    """llvm-nm by its plain name or Debian's versioned one (bookworm: llvm-nm-14 too)."""
    found = shutil.which("llvm-nm")
    if found:
        return found
    versioned = sorted(Path("/usr/bin").glob("llvm-nm-[0-9]*"), key=lambda p: p.name)
    return str(versioned[-1]) if versioned else None


def build_macho_dylib(cache: Path, exports: int) -> Path | None:
    """An arm64 macOS dylib with `exports` exported C functions named like a C++ library's
    symbols, plus the FFI functions and 96-byte example blob of bench/gen/ffi_exports.c;
    built with zig (no macOS SDK needed) once, then reused from `cache`. None if zig is
    missing or the build fails."""
    if importlib.util.find_spec("ziglang") is None:
        log("SKIP Mach-O: the ziglang package is not installed")
        return None
    key = hashlib.sha256(FFI_EXPORTS_SOURCE.read_bytes())
    key.update(json.dumps({"version": MACHO_VERSION, "exports": exports}).encode())
    directory = cache / f"macho-{key.hexdigest()[:12]}"
    lib = directory / "libbench_macho.dylib"
    manifest_path = directory / "manifest.json"
    expected = {"version": MACHO_VERSION, "exports": exports}
    manifest = load_manifest(manifest_path, expected)
    if lib.is_file() and manifest is not None:
        log(f"reusing {lib} (its build took {manifest.get('build_seconds')} s)")
        return lib
    directory.mkdir(parents=True, exist_ok=True)
    log(f"building {lib} with zig (~2 min on 2 idle cores)")
    started = time.perf_counter()
    build = Path(tempfile.mkdtemp(prefix="build-", dir=directory))
    env = {**os.environ, "ZIG_GLOBAL_CACHE_DIR": str(build / "zig-global")}
    env["ZIG_LOCAL_CACHE_DIR"] = str(build / "zig-local")
    zig_cc = [sys.executable, "-m", "ziglang", "cc", "-target", "aarch64-macos"]
    try:
        rng = random.Random("exported")
        names = [mangled_name(rng, i, 0) for i in range(exports)]
        sources = [build / f"exports_{n}.c" for n in range(MACHO_SOURCES)]
        for index, source in enumerate(sources):
            # Mangled names are valid C identifiers: C compiles far faster than C++.
            lines = [
                f"int {name}(int x) {{ return x + {i}; }}\n"
                for i, name in enumerate(names)
                if i % MACHO_SOURCES == index
            ]
            source.write_text("".join(lines))
        objects = [source.with_suffix(".o") for source in sources]
        commands = [
            [*zig_cc, "-O1", "-fPIC", "-w", "-c", str(src), "-o", str(obj)]
            for src, obj in zip(sources, objects, strict=True)
        ]
        ffi_obj = build / "ffi_exports.o"
        blob_flag = "-DBENCH_EMBED_EXAMPLE_BLOB"
        ffi_source = str(FFI_EXPORTS_SOURCE)
        commands.append(
            [*zig_cc, "-O1", "-fPIC", "-w", blob_flag, "-c", ffi_source, "-o", str(ffi_obj)]
        )
        with ThreadPoolExecutor(max_workers=BUILD_JOBS) as pool:
            list(pool.map(lambda argv: run_checked(argv, env=env), commands))
        staged = build / lib.name
        link = ["-shared", f"-Wl,-install_name,@rpath/{lib.name}", "-o", str(staged)]
        run_checked([*zig_cc, *link, *map(str, objects), str(ffi_obj)], env=env)
        staged.replace(lib)
    except (OSError, RuntimeError) as exc:
        log(f"SKIP Mach-O: the build failed: {exc}")
        return None
    finally:
        shutil.rmtree(build, ignore_errors=True)
    seconds = time.perf_counter() - started
    manifest_path.write_text(json.dumps({**expected, "build_seconds": round(seconds, 1)}))
    log(f"built {lib} ({lib.stat().st_size / MIB:.1f} MiB) in {seconds:.1f} s")
    return lib


# --------------------------------------------------------------------------- measuring


def summarize_inspect_output(path: Path) -> str:
    """One line of what ffitool found, to check by eye: a fast but wrong answer would
    make the timing meaningless."""
    try:
        document = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        return f"unreadable JSON: {exc}"
    libraries = json_libraries(document)
    functions = sum(len(lib.get("functions") or []) for lib in libraries)
    modules = sum(
        len((lib.get("library_bin") or {}).get("modules") or [])
        for lib in libraries
        if isinstance(lib.get("library_bin"), dict)
    )
    schema = document.get("schema") if isinstance(document, dict) else None
    return (
        f"schema={schema!r} libraries={len(libraries)} functions={functions} blob_modules={modules}"
    )


def compare_with_nm(
    meter: Meter,
    label: str,
    lib: Path,
    *,
    repeat: int,
    workdir: Path,
    floor_s: float | None,
    expected: str = "",
    counts: bool = True,
    nm: Sequence[str] = ("nm", "-D", "--defined-only"),
    description: str | None = None,
) -> Target:
    """Time nm (the `nm` command line, without the file) and ffitool on `lib`, print both
    medians and make the summary row.

    One unmeasured ffitool run first saves its JSON for a sanity check (a fast but
    wrong answer would make the timing meaningless) and warms the page cache.
    """
    name = f"{label} ffitool/nm"
    goal = f"<= {NM_RATIO_TARGET}"
    print(f"\n== {label}: {lib}\n    {description or describe_elf(lib)}")
    sample = workdir / f"{lib.stem}.inspect.json"
    ffitool_argv = [*FFITOOL, "inspect", "--json", str(lib)]
    check = meter.measure(ffitool_argv, stdout=sample)
    if check.ok:
        print(f"    ffitool found: {summarize_inspect_output(sample)}")
        if expected:
            print(f"    expected:      {expected}")
    else:
        log(f"FAILED ffitool on {lib.name}: {describe_failure(check)}")
    nm_label = " ".join([Path(nm[0]).name, *nm[1:]])
    commands = {nm_label: [*nm, str(lib)]}
    if check.ok:
        commands["ffitool inspect --json"] = ffitool_argv
    series = time_series(meter, commands, repeat)
    print_series(series)
    nm_series = series[nm_label]
    ff_series = series.get("ffitool inspect --json")
    if not nm_series.ok:
        return Target(name, "nm failed", goal, None, counts)
    if ff_series is None or not ff_series.ok:
        return Target(name, "ffitool failed", goal, None, counts)
    ratio = ff_series.median_s / nm_series.median_s
    print(f"    ratio ffitool/nm: {ratio:.2f}")
    if floor_s is not None:
        net = (ff_series.median_s - floor_s) / nm_series.median_s
        print(f"    (ffitool minus the interpreter floor, over nm: {net:.2f})")
    return Target(name, f"{ratio:.2f}", goal, ratio <= NM_RATIO_TARGET, counts)


def bench_macho(
    meter: Meter, lib: Path | None, args: argparse.Namespace, workdir: Path, floor_s: float | None
) -> Target:
    """ffitool against llvm-nm on the Mach-O dylib, in this run."""
    name = "macho ffitool/llvm-nm"
    nm = llvm_nm()
    if lib is None or nm is None:
        log("SKIP Mach-O: " + ("llvm-nm is not installed" if lib else "no dylib"))
        return Target(
            name, "not built" if lib is None else "no llvm-nm", f"<= {NM_RATIO_TARGET}", None
        )
    size = lib.stat().st_size / MIB
    return compare_with_nm(
        meter,
        "macho",
        lib,
        repeat=args.repeat,
        workdir=workdir,
        floor_s=floor_s,
        expected="libraries=1 functions=5 blob_modules=2",
        nm=[nm, *LLVM_NM],
        description=f"Mach-O arm64 dylib, {size:.1f} MiB, {args.macho_exports} exports + 5 FFI",
    )


def bench_big_blob(
    meter: Meter, lib: Path, sha256: str, payload_size: int, workdir: Path
) -> list[Target]:
    """Peak RSS and time of one ffitool run on big_blob.so, with cat and sha256sum as
    the cost of merely reading (and hashing) the file for reference."""
    print(f"\n== big_blob: {lib} ({lib.stat().st_size / MIB:.1f} MiB)")
    meter.measure(["cat", str(lib)])  # warm the page cache, as for the other comparisons
    out = workdir / "big_blob.inspect.json"
    ffitool = meter.measure([*FFITOOL, "inspect", "--json", str(lib)], stdout=out)
    references = {
        "sha256sum": meter.measure(["sha256sum", str(lib)]),
        "cat": meter.measure(["cat", str(lib)]),
    }
    for name, m in references.items():
        print(f"    {name:<34} wall {fmt_s(m.wall_s)}   peak RSS {m.peak_rss_mb:7.1f} MB")
    if not ffitool.ok:
        log(f"FAILED ffitool on {lib.name}: {describe_failure(ffitool)}")
        return [
            Target("big_blob peak RSS", "ffitool failed", f"< {RSS_TARGET_MB:.0f} MB", None),
            Target("big_blob payload sha256", "ffitool failed", "matches", None),
        ]
    print(
        f"    {'ffitool inspect --json':<34} wall {fmt_s(ffitool.wall_s)}   "
        f"peak RSS {ffitool.peak_rss_mb:7.1f} MB"
    )
    report, sha_ok = blob_module_report(out, sha256, payload_size)
    print(f"    module {PAYLOAD_KIND}: {report}")
    return [
        Target(
            "big_blob peak RSS",
            f"{ffitool.peak_rss_mb:.1f} MB",
            f"< {RSS_TARGET_MB:.0f} MB",
            ffitool.peak_rss_mb < RSS_TARGET_MB,
        ),
        Target("big_blob payload sha256", "OK" if sha_ok else "MISMATCH", "matches", sha_ok),
    ]


# --------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None) -> tuple[argparse.Namespace, LibShape]:
    """Sizes are options so that a quick smoke run (small libraries) is possible; the
    targets only mean something at the defaults."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--workdir",
        type=Path,
        default=None,
        help="build the blob library and write outputs here (kept); default: "
        "a directory under the temp dir, removed unless --keep",
    )
    parser.add_argument(
        "--keep",
        action="store_true",
        help="keep the default work dir, so the next run reuses its blob library",
    )
    parser.add_argument("--repeat", type=int, default=7, help="timed runs per command (median)")
    parser.add_argument(
        "--check", action="store_true", help="exit 1 if a target is missed or could not be measured"
    )
    parser.add_argument(
        "--payload-mib",
        type=int,
        default=DEFAULT_PAYLOAD_MIB,
        help="MiB of the module payload in big_blob.so",
    )
    parser.add_argument(
        "--build-only",
        action="store_true",
        help="build (or reuse) the libraries, describe them and stop",
    )
    parser.add_argument(
        "--no-macho", action="store_true", help="skip the Mach-O dylib (needs zig and llvm-nm)"
    )
    parser.add_argument(
        "--macho-exports",
        type=int,
        default=DEFAULT_MACHO_EXPORTS,
        help="exported functions of the Mach-O dylib",
    )
    parser.add_argument(
        "--no-pe",
        action="store_true",
        help="skip the PE case (a zig-built DLL with 65,535 exports, timed against llvm-readobj)",
    )
    add_libtorch_argument(parser)
    add_shape_arguments(parser)
    args = parser.parse_args(argv)
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    return args, shape_from_args(parser, args)


def main(argv: Sequence[str] | None = None) -> int:
    """Build, measure, report; the return value is the exit status."""
    args, shape = parse_args(argv)
    default_dir = args.workdir is None
    workdir: Path = args.workdir or Path(tempfile.gettempdir()) / "ffitool-bench"
    workdir.mkdir(parents=True, exist_ok=True)
    log(f"work dir {workdir}; python {sys.executable}")
    try:
        return run(args, shape, workdir)
    finally:
        if default_dir and not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)


def run(args: argparse.Namespace, shape: LibShape, workdir: Path) -> int:
    """Build (or reuse) the libraries, then measure them in a fixed order: floors first,
    so that every later number can be read against what merely starting costs."""
    cache = cache_root(args.cache_dir)
    shaped = build_libtorch_shaped(shape, cache)
    big_blob = build_big_blob(workdir, args.payload_mib)
    libtorch = real_libtorch(args.libtorch, cache)
    macho = None if args.no_macho else build_macho_dylib(cache, args.macho_exports)
    for lib in (shaped, big_blob[0] if big_blob else None, libtorch):
        if lib is not None:
            log(f"{lib.name}: {describe_elf(lib)}")
    if args.libtorch is None:
        log("the real libtorch_cpu.so is not measured (opt in with --libtorch)")
    if args.build_only:
        return 0

    meter = Meter(workdir)
    print("\n== floors")
    floor = time_series(
        meter,
        {
            f"{Path(sys.executable).name} -c pass": [sys.executable, "-c", "pass"],
            "true (measurement overhead)": ["true"],
        },
        args.repeat,
    )
    print_series(floor)
    floor_series = floor[f"{Path(sys.executable).name} -c pass"]
    floor_s = floor_series.median_s if floor_series.ok else None

    targets: list[Target] = []
    if shaped is not None:
        targets.append(
            compare_with_nm(
                meter,
                "libtorch-shaped",
                shaped,
                repeat=args.repeat,
                workdir=workdir,
                floor_s=floor_s,
                expected="libraries=1 functions=5 blob_modules=0",
            )
        )
    else:
        targets.append(
            Target("libtorch-shaped ffitool/nm", "not built", f"<= {NM_RATIO_TARGET}", None)
        )
    if libtorch is not None:
        targets.append(
            compare_with_nm(
                meter,
                "libtorch_cpu",
                libtorch,
                repeat=args.repeat,
                workdir=workdir,
                floor_s=floor_s,
                expected="libraries=1 functions=0 blob_modules=0",
            )
        )
    elif args.libtorch is not None:
        targets.append(Target("libtorch_cpu ffitool/nm", "not had", f"<= {NM_RATIO_TARGET}", None))
    if not args.no_macho:
        targets.append(bench_macho(meter, macho, args, workdir, floor_s))
    if big_blob is not None:
        lib, sha256 = big_blob
        targets.extend(bench_big_blob(meter, lib, sha256, args.payload_mib * MIB, workdir))
    else:
        targets.append(Target("big_blob peak RSS", "not built", f"< {RSS_TARGET_MB:.0f} MB", None))

    if not args.no_pe:
        targets.append(bench_pe(meter, cache, args.repeat, workdir))

    print_summary(targets)
    defaults = (
        args.payload_mib == DEFAULT_PAYLOAD_MIB and args.macho_exports == DEFAULT_MACHO_EXPORTS
    )
    if shape != LibShape() or not defaults:
        print("    (non-default sizes: the targets are defined for the defaults)")
    missed = [t for t in targets if t.counts and t.passed is not True]
    return 1 if args.check and missed else 0


if __name__ == "__main__":
    sys.exit(main())
