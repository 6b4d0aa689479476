#!/usr/bin/env python3
"""Benchmark `ffitool inspect` on libraries as large as the ones it must handle.

Two performance promises are checked here, because unit tests on small fixtures
cannot show them:

* inspecting a ~400 MiB library with ~75,000 dynamic symbols (libtorch-sized) costs
  at most 1.5x what `nm -D --defined-only` costs on it, i.e. ffitool does not parse
  more of the file than it needs;
* inspecting a library whose TVM FFI blob holds a 1 GiB module keeps peak RSS under
  100 MB, i.e. module payloads are hashed in a streaming way, never read whole.

The libraries are built here with gcc from generated sources (plus bench/gen/), so
the benchmark needs no downloaded artifacts. The bulk of each file comes from an
assembler `.incbin` of a generated file, which builds in seconds.

Usage (from the repo root, with a python in which ffitool is installed):

    python bench/inspect.py [--workdir DIR] [--keep] [--repeat N] [--check]

The output is a report: the exit status is 0 unless --check is given and a target is
missed (a target that could not be measured counts as missed under --check).
Only the standard library is used, so the script runs before ffitool's own
dependencies are settled. Linux (ELF, gcc, nm) is assumed.
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
import random
import shutil
import struct
import subprocess
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from _common import (
    FFITOOL,
    GEN_DIR,
    GIB,
    MIB,
    PAYLOAD_KIND,
    Meter,
    Target,
    check_free_space,
    describe_failure,
    ffi_exports_object,
    fmt_s,
    load_manifest,
    log,
    print_series,
    print_summary,
    run_checked,
    time_series,
    write_random_file,
)

INCBIN_SOURCE = GEN_DIR / "incbin.S"

# Bump when what the generators produce changes, so cached libraries are rebuilt.
GEN_VERSION = 2

DEFAULT_FUNCTIONS = 75_000
DEFAULT_BULK_MIB = 384  # plus ~15 MiB of code and symbol tables: ~400 MiB on disk
DEFAULT_PAYLOAD_MIB = 1024
SOURCE_FILES = 8  # several translation units so that 2 compile jobs overlap
BUILD_JOBS = 2  # the project's machines have 2 cores

# Free space needed before building: generated input, object and library coexist.
BLOB_MIN_FREE = 4 * GIB
SYMBOLS_MIN_FREE = 2 * GIB

RATIO_TARGET = 1.5
RSS_TARGET_MB = 100.0


def incbin_object(data: Path, symbol: str, section: str, obj: Path) -> None:
    """Assemble bench/gen/incbin.S so that `symbol` is the content of `data`."""
    run_checked(
        [
            "gcc",
            "-c",
            f"-DINCBIN_SECTION={section}",
            f"-DINCBIN_SYMBOL={symbol}",
            f"-DINCBIN_FILE={json.dumps(str(data))}",
            str(INCBIN_SOURCE),
            "-o",
            str(obj),
        ]
    )


NAMESPACES = (
    "at", "native", "cpu", "detail", "impl", "kernels", "autograd", "functional",
    "quantized", "sparse", "vec", "internal", "dispatch", "meta", "jit", "tensorexpr",
    "c10", "torch", "compositeimplicitautograd", "structured", "anonymous_helpers",
)  # fmt: skip
VERBS = (
    "add", "mul", "conv2d", "max_pool2d", "layer_norm", "gather", "scatter_reduce",
    "index_put", "upsample_bilinear2d", "embedding_bag", "softmax_backward_data",
    "linear", "addmm", "bmm", "topk", "cumsum", "native_batch_norm", "grid_sampler_3d",
)  # fmt: skip
NOUNS = (
    "kernel", "impl", "out", "stub", "functor", "fallback", "inplace", "backward",
    "forward", "nchw", "nhwc", "channels_last", "vectorized", "reduced_precision",
)  # fmt: skip
# Itanium codes of parameter types: int, long, unsigned long, float, double, bool and
# (const) pointers to some of them.
PARAM_TYPES = ("i", "l", "m", "f", "d", "b", "Pf", "PKf", "Pd", "PKd", "Pl", "PKl", "PKh")


def mangled_name(rng: random.Random, index: int) -> str:
    """A well-formed Itanium-mangled name (`nm -C` demangles it), unique by `index`.

    C++ libraries such as libtorch export long mangled names; their length, not their
    meaning, is what costs a symbol-table reader. The names are defined as C
    functions, which compiles far faster than C++ and gives the same symbol table.
    """
    scopes = rng.choices(NAMESPACES, k=rng.randint(4, 8))
    function = f"{rng.choice(VERBS)}_{rng.choice(NOUNS)}_{index}"
    params = "".join(rng.choices(PARAM_TYPES, k=rng.randint(1, 6)))
    nested = "".join(f"{len(part)}{part}" for part in [*scopes, function])
    return f"_ZN{nested}E{params}"


def generate_symbol_sources(src_dir: Path, functions: int) -> tuple[list[Path], float]:
    """Write the exported functions as SOURCE_FILES C files; return them and the mean
    name length (printed, since name bytes drive the cost of reading .dynstr)."""
    rng = random.Random(20240601)
    per_file = -(-functions // SOURCE_FILES)
    sources: list[Path] = []
    total_len = 0
    for file_index in range(SOURCE_FILES):
        lines = ["/* Generated by bench/inspect.py: exported functions only. */"]
        for index in range(file_index * per_file, min(functions, (file_index + 1) * per_file)):
            name = mangled_name(rng, index)
            total_len += len(name)
            # Distinct bodies, so no toolchain can fold them into one.
            lines.append(f"int {name}(int x) {{ return x * {index % 97 + 3} + {index}; }}")
        path = src_dir / f"symbols_{file_index:02d}.c"
        path.write_text("\n".join(lines) + "\n")
        sources.append(path)
    return sources, total_len / max(functions, 1)


def compile_parallel(sources: Sequence[Path]) -> list[Path]:
    """Compile the generated C files BUILD_JOBS at a time (gcc is single-threaded)."""

    def compile_one(source: Path) -> Path:
        obj = source.with_suffix(".o")
        run_checked(["gcc", "-c", "-O1", "-fPIC", "-w", "-g0", str(source), "-o", str(obj)])
        return obj

    with ThreadPoolExecutor(max_workers=BUILD_JOBS) as pool:
        return list(pool.map(compile_one, sources))


def build_big_symbols(workdir: Path, functions: int, bulk_mib: int) -> Path | None:
    """Build big_symbols.so: `functions` exported C++-like functions, five
    __tvm_ffi_* functions, the 96-byte example blob and `bulk_mib` MiB of .rodata."""
    lib = workdir / "big_symbols.so"
    manifest_path = workdir / "big_symbols.json"
    expected = {"version": GEN_VERSION, "functions": functions, "bulk_mib": bulk_mib}
    if lib.exists() and load_manifest(manifest_path, expected) is not None:
        log(f"reusing {lib}")
        return lib
    if not check_free_space(workdir, SYMBOLS_MIN_FREE, "big_symbols.so"):
        return None
    started = time.perf_counter()
    build = workdir / "build_symbols"
    shutil.rmtree(build, ignore_errors=True)
    build.mkdir()
    try:
        sources, mean_len = generate_symbol_sources(build, functions)
        log(f"generated {functions} functions (mean name length {mean_len:.0f} chars)")
        bulk = build / "bulk.bin"
        write_random_file(bulk, bulk_mib * MIB, seed=1)
        log(f"generated {bulk_mib} MiB of bulk data; compiling with {BUILD_JOBS} jobs")
        objects = compile_parallel(sources)
        bulk_obj = build / "bulk.o"
        incbin_object(bulk, "bench_bulk_data", ".rodata.bench_bulk", bulk_obj)
        ffi_obj = build / "ffi_exports.o"
        ffi_exports_object(ffi_obj, embed_example_blob=True)
        log("linking big_symbols.so")
        tmp_lib = lib.with_suffix(".so.tmp")
        run_checked(
            ["gcc", "-shared", "-o", str(tmp_lib), *map(str, objects), str(bulk_obj), str(ffi_obj)]
        )
        tmp_lib.replace(lib)
    finally:
        shutil.rmtree(build, ignore_errors=True)
    seconds = time.perf_counter() - started
    manifest_path.write_text(json.dumps({**expected, "build_seconds": round(seconds, 1)}))
    log(f"built {lib} ({lib.stat().st_size / MIB:.1f} MiB) in {seconds:.1f}s")
    return lib


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
    expected = {"version": GEN_VERSION, "payload_mib": payload_mib}
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


def find_libtorch() -> Path | None:
    """libtorch_cpu.so of an installed torch wheel, the real-world reference library.

    find_spec locates the package without importing it: importing torch takes seconds
    and hundreds of MB that this script does not need.
    """
    try:
        spec = importlib.util.find_spec("torch")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        candidate = Path(location) / "lib" / "libtorch_cpu.so"
        if candidate.is_file():
            return candidate
    return None


# --------------------------------------------------------------------------- measuring


def json_libraries(document: Any) -> list[dict[str, Any]]:
    """All `libraries` entries of an ffitool.inspect/1 document, tolerating gaps."""
    if not isinstance(document, dict):
        return []
    found: list[dict[str, Any]] = []
    for entry in document.get("files") or []:
        if isinstance(entry, dict):
            found.extend(lib for lib in entry.get("libraries") or [] if isinstance(lib, dict))
    return found


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
) -> Target:
    """Time nm and ffitool on `lib`, print both medians and make the summary row.

    One unmeasured ffitool run first saves its JSON for a sanity check (a fast but
    wrong answer would make the timing meaningless) and warms the page cache.
    """
    name = f"{label} ffitool/nm"
    goal = f"<= {RATIO_TARGET}"
    print(f"\n== {label}: {lib} ({lib.stat().st_size / MIB:.1f} MiB)")
    sample = workdir / f"{lib.stem}.inspect.json"
    ffitool_argv = [*FFITOOL, "inspect", "--json", str(lib)]
    check = meter.measure(ffitool_argv, stdout=sample)
    if check.ok:
        print(f"    ffitool found: {summarize_inspect_output(sample)}")
        if expected:
            print(f"    expected:      {expected}")
    else:
        log(f"FAILED ffitool on {lib.name}: {describe_failure(check)}")
    commands = {"nm -D --defined-only": ["nm", "-D", "--defined-only", str(lib)]}
    if check.ok:
        commands["ffitool inspect --json"] = ffitool_argv
    series = time_series(meter, commands, repeat)
    print_series(series)
    nm_series = series["nm -D --defined-only"]
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
    return Target(name, f"{ratio:.2f}", goal, ratio <= RATIO_TARGET, counts)


def count_dynamic_symbols(lib: Path) -> int:
    """`nm -D --defined-only | wc -l`, streamed so 75k lines are never all in memory."""
    with subprocess.Popen(["nm", "-D", "--defined-only", str(lib)], stdout=subprocess.PIPE) as proc:
        assert proc.stdout is not None
        count = sum(1 for _ in proc.stdout)
    return count


def blob_module_report(path: Path, expected_sha256: str, payload_size: int) -> tuple[str, bool]:
    """Compare the reported bench_payload module with what was generated."""
    try:
        document = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        return f"unreadable JSON: {exc}", False
    for lib in json_libraries(document):
        blob = lib.get("library_bin")
        if not isinstance(blob, dict):
            continue
        for module in blob.get("modules") or []:
            if not isinstance(module, dict) or module.get("kind") != PAYLOAD_KIND:
                continue
            reported = str(module.get("sha256", "")).lower().removeprefix("sha256:")
            size = module.get("size")
            sha_ok = reported == expected_sha256
            size_note = "OK" if size == payload_size else f"expected {payload_size}"
            sha_note = "OK" if sha_ok else "MISMATCH"
            return (
                f"sha256 {sha_note} ({reported[:16] or 'missing'}...), size {size} ({size_note})",
                sha_ok,
            )
    return f"no module of kind {PAYLOAD_KIND!r} in the JSON", False


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


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Sizes are options so that a quick smoke run (small libraries) is possible; the
    targets only mean something at the defaults."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--workdir",
        type=Path,
        default=None,
        help="build and cache the libraries here (kept); default: "
        "a directory under the temp dir, removed unless --keep",
    )
    parser.add_argument(
        "--keep",
        action="store_true",
        help="keep the default work dir, so the next run reuses its libraries",
    )
    parser.add_argument("--repeat", type=int, default=5, help="timed runs per command (median)")
    parser.add_argument(
        "--check", action="store_true", help="exit 1 if a target is missed or could not be measured"
    )
    parser.add_argument(
        "--functions",
        type=int,
        default=DEFAULT_FUNCTIONS,
        help="exported functions in big_symbols.so",
    )
    parser.add_argument(
        "--bulk-mib",
        type=int,
        default=DEFAULT_BULK_MIB,
        help="MiB of read-only data in big_symbols.so",
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
        help="build (or reuse) the libraries, print their sizes and stop",
    )
    args = parser.parse_args(argv)
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Build, measure, report; the return value is the exit status."""
    args = parse_args(argv)
    default_dir = args.workdir is None
    workdir: Path = args.workdir or Path(tempfile.gettempdir()) / "ffitool-bench"
    workdir.mkdir(parents=True, exist_ok=True)
    log(f"work dir {workdir}; python {sys.executable}")
    try:
        return run(args, workdir)
    finally:
        if default_dir and not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)


def run(args: argparse.Namespace, workdir: Path) -> int:
    """Build (or reuse) the libraries, then measure them in a fixed order: floors first,
    so that every later number can be read against what merely starting costs."""
    big_symbols = build_big_symbols(workdir, args.functions, args.bulk_mib)
    big_blob = build_big_blob(workdir, args.payload_mib)
    libtorch = find_libtorch()
    for lib in (big_symbols, big_blob[0] if big_blob else None, libtorch):
        if lib is not None:
            log(
                f"{lib.name}: {lib.stat().st_size / MIB:.1f} MiB, "
                f"{count_dynamic_symbols(lib)} defined dynamic symbols"
            )
    if libtorch is None:
        log("torch is not installed: no libtorch_cpu.so comparison")
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
    if big_symbols is not None:
        targets.append(
            compare_with_nm(
                meter,
                "big_symbols",
                big_symbols,
                repeat=args.repeat,
                workdir=workdir,
                floor_s=floor_s,
                expected="libraries=1 functions=5 blob_modules=2 (_lib, cuda_ptx)",
            )
        )
    else:
        targets.append(Target("big_symbols ffitool/nm", "not built", f"<= {RATIO_TARGET}", None))
    if libtorch is not None:
        targets.append(
            compare_with_nm(
                meter,
                "libtorch_cpu",
                libtorch,
                repeat=args.repeat,
                workdir=workdir,
                floor_s=floor_s,
                counts=False,
            )
        )
    if big_blob is not None:
        lib, sha256 = big_blob
        targets.extend(bench_big_blob(meter, lib, sha256, args.payload_mib * MIB, workdir))
    else:
        targets.append(Target("big_blob peak RSS", "not built", f"< {RSS_TARGET_MB:.0f} MB", None))

    non_default = (args.functions, args.bulk_mib, args.payload_mib) != (
        DEFAULT_FUNCTIONS,
        DEFAULT_BULK_MIB,
        DEFAULT_PAYLOAD_MIB,
    )
    print_summary(targets)
    if non_default:
        print("    (non-default sizes: the targets are defined for the defaults)")
    missed = [t for t in targets if t.counts and t.passed is not True]
    return 1 if args.check and missed else 0


if __name__ == "__main__":
    sys.exit(main())
