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

import argparse
import hashlib
import json
import os
import random
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
GEN_DIR = BENCH_DIR / "gen"
FFI_EXPORTS_SOURCE = GEN_DIR / "ffi_exports.c"
INCBIN_SOURCE = GEN_DIR / "incbin.S"
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


def run_checked(argv: Sequence[str], env: dict[str, str] | None = None) -> None:
    """Run a build step; a failed build aborts with the tool's own message."""
    proc = subprocess.run(list(argv), capture_output=True, text=True, env=env, check=False)
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


def ffi_exports_object(obj: Path, embed_example_blob: bool) -> Path:
    """Compile the __tvm_ffi_* functions (and optionally the 96-byte example blob);
    return `obj`."""
    argv = ["gcc", "-c", "-O1", "-fPIC", "-w", str(FFI_EXPORTS_SOURCE), "-o", str(obj)]
    if embed_example_blob:
        argv.insert(1, "-DBENCH_EMBED_EXAMPLE_BLOB")
    run_checked(argv)
    return obj


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


# ------------------------------------------------------------------ the libtorch-shaped library

# Bump when what the generator produces changes: it is part of the cache key, so cached
# libraries are then rebuilt.
GEN_VERSION = 3
BUILD_JOBS = 2  # the project's machines have 2 cores
ASM_FILES = 8  # the symbol tables come from several files, so that assemblers overlap
SHAPED_NAME = "libtorch_shaped.so"
CACHE_ENV = "FFITOOL_BENCH_CACHE"


def _shape_field(default: int, help_text: str) -> Any:
    """A LibShape field whose command-line help travels with it."""
    return field(default=default, metadata={"help": help_text})


@dataclass(frozen=True)
class LibShape:
    """What the synthetic big library holds. The defaults follow libtorch_cpu.so of the
    torch 2.13.0 x86-64 wheel (434 MB): 74,265 defined dynamic symbols whose names
    average 68 bytes; 530,773 `.symtab` entries, 455,056 of them local, whose names
    average 153 bytes (a 76 MB `.strtab`); 226k relative and 84k symbolic relocations,
    43k PLT slots, 10k GOT entries; ~510 TLS variables.

    Its `.bss` is 1 MB; here it is tens of MB, so that a writer which puts its new
    segment after the end of the file instead of after the end of the memory image
    overlaps it by far. The bulk is `.rodata` rather than code: to a reader or writer of
    ELF tables the two cost the same, and `.incbin` builds it in seconds.
    """

    exported: int = _shape_field(75_000, "exported C++-mangled functions (.dynsym)")
    local: int = _shape_field(455_000, "local and hidden symbols (.symtab only)")
    bulk_mib: int = _shape_field(308, "MiB of .rodata (most of the file size)")
    bss_mib: int = _shape_field(32, "MiB of .bss")
    tls_vars: int = _shape_field(512, "__thread variables (PT_TLS, DTPMOD64/DTPOFF64)")
    plt_calls: int = _shape_field(43_000, "exported functions called through the PLT")
    got_refs: int = _shape_field(10_000, "exported functions whose address is read from the GOT")
    relative_ptrs: int = _shape_field(226_000, "R_*_RELATIVE relocations")


def add_shape_arguments(parser: argparse.ArgumentParser) -> None:
    """One option per LibShape field (--exported, --bulk-mib, ...) and --cache-dir: both
    benchmarks build the same library from the same options."""
    group = parser.add_argument_group("the libtorch-shaped library (defaults: libtorch's shape)")
    for spec in fields(LibShape):
        group.add_argument(
            "--" + spec.name.replace("_", "-"),
            type=int,
            default=spec.default,
            metavar="N",
            help=f"{spec.metadata['help']} (default: %(default)s)",
        )
    group.add_argument(
        "--cache-dir",
        type=Path,
        default=None,
        help=f"where built libraries are kept between runs (default: ${CACHE_ENV}, else "
        "$XDG_CACHE_HOME/ffitool-bench, else ~/.cache/ffitool-bench)",
    )


def shape_from_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> LibShape:
    """The LibShape the options ask for; impossible combinations are usage errors."""
    shape = LibShape(**{spec.name: getattr(args, spec.name) for spec in fields(LibShape)})
    if any(value < 0 for value in asdict(shape).values()):
        parser.error("library shape options must not be negative")
    if shape.plt_calls + shape.got_refs > shape.exported:
        parser.error("--plt-calls plus --got-refs must not exceed --exported")
    return shape


def cache_root(override: Path | None) -> Path:
    """The directory the benchmarks reuse between runs (hundreds of MB per shape)."""
    if override is not None:
        return override
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "ffitool-bench"


def shape_key(shape: LibShape) -> str:
    """Names the cache entry: the parameters, GEN_VERSION and the static sources that
    go into the library, so that changing any of them builds a new one."""
    digest = hashlib.sha256(
        json.dumps({"version": GEN_VERSION, **asdict(shape)}, sort_keys=True).encode()
    )
    for source in (FFI_EXPORTS_SOURCE, INCBIN_SOURCE):
        digest.update(source.read_bytes())
    return digest.hexdigest()[:12]


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
# Scopes and template arguments per name, chosen so that the mean lengths match
# libtorch's: 68 bytes for exported names, 153 for local ones (templates, lambdas).
EXPORTED_SCOPES = (2, 6)
LOCAL_SCOPES = (3, 8)
LOCAL_TEMPLATE_ARGS = (1, 4)


def _source_name(part: str) -> str:
    return f"{len(part)}{part}"


def mangled_name(rng: random.Random, index: int, template_args: int) -> str:
    """A well-formed Itanium-mangled name (`nm -C` demangles it), unique by `index`.

    Exported names (no template arguments) are nested functions; local ones are
    function templates over `template_args` class types, which is what makes
    libtorch's local names long. Their length, not their meaning, is what costs a
    symbol-table reader; they are defined in assembly, which builds far faster than
    C++ and gives the same symbol tables.
    """
    low, high = LOCAL_SCOPES if template_args else EXPORTED_SCOPES
    scopes = rng.choices(NAMESPACES, k=rng.randint(low, high))
    function = f"{rng.choice(VERBS)}_{rng.choice(NOUNS)}_{index}"
    params = "".join(rng.choices(PARAM_TYPES, k=rng.randint(1, 6)))
    nested = "".join(map(_source_name, [*scopes, function]))
    if not template_args:
        return f"_ZN{nested}E{params}"
    args = "".join(
        "N" + "".join(map(_source_name, rng.choices(NAMESPACES, k=rng.randint(2, 4)))) + "E"
        for _ in range(template_args)
    )
    return f"_ZN{nested}I{args}EEv{params}"


def _split(total: int, parts: int, index: int) -> range:
    """The `index`-th of `parts` near-equal consecutive slices of range(total)."""
    return range(total * index // parts, total * (index + 1) // parts)


def symbols_asm(shape: LibShape, exported: Sequence[str], index: int) -> Iterator[str]:
    """Lines of the `index`-th of ASM_FILES assembler files: its share of the exported
    functions, local functions (every fourth a hidden global, which the linker turns
    into a local), local objects, and a pointer table whose entries become symbolic
    relocations (to the exported functions) and relative ones (into this file's code).

    Only directives and `ret` are used, which GNU as accepts on x86-64, AArch64 and
    RISC-V. Every function is a distinct address, so no linker can fold them.
    """
    rng = random.Random(f"locals-{index}")
    base = f".Lbench_text_{index}"
    yield f"/* Generated by bench/_common.py (GEN_VERSION {GEN_VERSION}). */"
    yield "\t.text"
    yield f"{base}:"
    functions = 0
    for i in _split(len(exported), ASM_FILES, index):
        name = exported[i]
        yield f"\t.globl {name}\n\t.type {name}, %function\n{name}:\n\tret"
        yield f"\t.size {name}, .-{name}"
        functions += 1
    objects: list[str] = []
    for i in _split(shape.local, ASM_FILES, index):
        name = mangled_name(rng, len(exported) + i, rng.randint(*LOCAL_TEMPLATE_ARGS))
        if i % 4 == 3:
            objects.append(f"\t.type {name}, %object\n{name}:\n\t.quad {i}\n\t.size {name}, 8")
            continue
        if i % 4 == 1:
            yield f"\t.globl {name}\n\t.hidden {name}"
        yield f"\t.type {name}, %function\n{name}:\n\tret"
        functions += 1
    yield '\t.section .rodata.bench_locals, "a"\n\t.p2align 3'
    yield from objects
    yield '\t.section .data.rel.ro.bench_pointers, "aw"\n\t.p2align 3'
    for i in _split(len(exported), ASM_FILES, index):
        yield f"\t.quad {exported[i]}"
    for i in _split(shape.relative_ptrs, ASM_FILES, index):
        yield f"\t.quad {base}+{i % max(functions, 1)}"
    yield '\t.section .note.GNU-stack, "", %progbits'


def dynamic_refs_c(shape: LibShape, exported: Sequence[str]) -> Iterator[str]:
    """Lines of the C file that gives the library libtorch's other dynamic machinery:
    PLT calls and GOT loads of exported functions (JUMP_SLOT and GLOB_DAT relocations
    against .dynsym), exported `__thread` variables read in the general-dynamic model
    (a PT_TLS segment, .tdata and .tbss, DTPMOD64/DTPOFF64 relocations) and the big .bss.
    """
    per_function = 100
    called = exported[: shape.plt_calls]
    addressed = exported[shape.plt_calls : shape.plt_calls + shape.got_refs]
    yield f"/* Generated by bench/_common.py (GEN_VERSION {GEN_VERSION}). */"
    yield '#define BENCH_EXPORT __attribute__((visibility("default")))'
    yield from (f"extern int {name}(int);" for name in [*called, *addressed])
    yield f"BENCH_EXPORT unsigned char bench_big_bss[{shape.bss_mib * MIB}];"
    for k in range(shape.tls_vars):
        # Even ones initialised (.tdata), odd ones 64 zero bytes (.tbss).
        yield (
            f"BENCH_EXPORT __thread long bench_tls_{k} = {k + 1};"
            if k % 2 == 0
            else f"BENCH_EXPORT __thread long bench_tls_{k}[8];"
        )
        yield f"BENCH_EXPORT long *bench_tls_addr_{k}(void) {{ return (long *)&bench_tls_{k}; }}"
    for start in range(0, len(called), per_function):
        yield f"BENCH_EXPORT int bench_calls_{start}(int x) {{"
        yield from (f"  x = {name}(x);" for name in called[start : start + per_function])
        yield "  return x;\n}"
    for start in range(0, len(addressed), per_function):
        yield f"BENCH_EXPORT void bench_addresses_{start}(void **out) {{"
        chunk = addressed[start : start + per_function]
        yield from (f"  out[{j}] = (void *)&{name};" for j, name in enumerate(chunk))
        yield "}"


def incbin_object(data: Path, symbol: str, section: str, obj: Path) -> Path:
    """Assemble bench/gen/incbin.S so that `symbol` is the content of `data`; return `obj`."""
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
    return obj


def compile_object(source: Path) -> Path:
    """gcc -c of a generated C or assembler file, without debug info."""
    obj = source.with_suffix(".o")
    run_checked(["gcc", "-c", "-O1", "-fPIC", "-w", "-g0", str(source), "-o", str(obj)])
    return obj


def write_lines(path: Path, lines: Iterator[str]) -> Path:
    """Write a generated source, a line at a time (some are tens of MB)."""
    with path.open("w") as out:
        for line in lines:
            out.write(line)
            out.write("\n")
    return path


def build_libtorch_shaped(shape: LibShape, cache: Path) -> Path | None:
    """The libtorch-shaped library for `shape`, built once and then reused from `cache`.

    Sources are generated in this process while BUILD_JOBS compilers work on the
    previous ones; the result is renamed into place only when complete, and a manifest
    records the shape and how long the build took. None if the disk is too full.
    """
    directory = cache / f"libtorch-shaped-{shape_key(shape)}"
    lib = directory / SHAPED_NAME
    manifest_path = directory / "manifest.json"
    expected = {"version": GEN_VERSION, **asdict(shape)}
    manifest = load_manifest(manifest_path, expected)
    if lib.is_file() and manifest is not None:
        log(f"reusing {lib} (its build took {manifest.get('build_seconds')} s)")
        return lib
    directory.mkdir(parents=True, exist_ok=True)
    # bulk data, its object and the library coexist, plus the tables' sources and objects
    if not check_free_space(directory, 3 * shape.bulk_mib * MIB + 2 * GIB, SHAPED_NAME):
        return None
    log(f"building {lib} (~20 s on 2 idle cores)")
    started = time.perf_counter()
    build = Path(tempfile.mkdtemp(prefix="build-", dir=directory))
    try:
        rng = random.Random("exported")
        exported = [mangled_name(rng, i, 0) for i in range(shape.exported)]
        with ThreadPoolExecutor(max_workers=BUILD_JOBS) as pool:
            jobs: list[Future[Path]] = []
            refs = write_lines(build / "dynamic_refs.c", dynamic_refs_c(shape, exported))
            jobs.append(pool.submit(compile_object, refs))
            ffi_obj = build / "ffi_exports.o"
            jobs.append(pool.submit(ffi_exports_object, ffi_obj, False))
            for index in range(ASM_FILES):
                source = build / f"symbols_{index}.s"
                write_lines(source, symbols_asm(shape, exported, index))
                jobs.append(pool.submit(compile_object, source))
            log(f"generated the symbol tables' sources; {shape.bulk_mib} MiB of bulk data next")
            bulk, bulk_obj = build / "bulk.bin", build / "bulk.o"
            write_random_file(bulk, shape.bulk_mib * MIB, seed=1)
            incbin = pool.submit(
                incbin_object, bulk, "bench_bulk_data", ".rodata.bench_bulk", bulk_obj
            )
            objects = [job.result() for job in [*jobs, incbin]]
        bulk.unlink()
        log(f"linking {SHAPED_NAME}")
        staged = build / SHAPED_NAME
        run_checked(
            ["gcc", "-shared", f"-Wl,-soname,{SHAPED_NAME}", "-o", str(staged), *map(str, objects)]
        )
        staged.replace(lib)
    finally:
        shutil.rmtree(build, ignore_errors=True)
    seconds = time.perf_counter() - started
    manifest_path.write_text(json.dumps({**expected, "build_seconds": round(seconds, 1)}))
    log(f"built {lib} in {seconds:.1f} s")
    return lib


# --------------------------------------------------------------------------- the real libtorch

TORCH_VERSION = "2.13.0"
LIBTORCH_ENV = "FFITOOL_BENCH_LIBTORCH"
# libtorch_cpu.so and what it needs that a bare Debian lacks, found through its
# RUNPATH $ORIGIN once extracted side by side.
LIBTORCH_MEMBERS = ("torch/lib/libtorch_cpu.so", "torch/lib/libc10.so", "torch/lib/libgomp.so.1")


def add_libtorch_argument(parser: argparse.ArgumentParser) -> None:
    """--libtorch: the opt-in for the real library (never in CI: a ~200 MB download)."""
    parser.add_argument(
        "--libtorch",
        nargs="?",
        const="",
        default=os.environ.get(LIBTORCH_ENV),
        metavar="WHEEL",
        help=f"also measure the real libtorch_cpu.so of torch {TORCH_VERSION}, from WHEEL or "
        f"else `pip download`ed into the cache dir (default: ${LIBTORCH_ENV}, "
        "'1' meaning no WHEEL given)",
    )


def real_libtorch(option: str | None, cache: Path) -> Path | None:
    """libtorch_cpu.so extracted from the torch wheel with libc10.so and libgomp.so.1
    (cached), or None if not asked for (`option` is --libtorch's value) or not to be had.

    Only those three members are unzipped, streamed: the wheel's other 300 MB are not
    needed to pack, inspect or load it.
    """
    if option is None:
        return None
    directory = cache / f"torch-{TORCH_VERSION}"
    targets = [directory / Path(member).name for member in LIBTORCH_MEMBERS]
    if all(target.is_file() for target in targets):
        return targets[0]
    wheel = Path(option) if option not in ("", "1") else download_torch_wheel(cache)
    if wheel is None:
        return None
    directory.mkdir(parents=True, exist_ok=True)
    log(f"extracting {', '.join(t.name for t in targets)} from {wheel}")
    try:
        with zipfile.ZipFile(wheel) as archive:
            for member, target in zip(LIBTORCH_MEMBERS, targets, strict=True):
                staged = target.with_name(target.name + ".tmp")
                with archive.open(member) as src, staged.open("wb") as dst:
                    shutil.copyfileobj(src, dst, CHUNK)
                staged.chmod(0o755)
                staged.replace(target)
    except (OSError, KeyError, zipfile.BadZipFile) as exc:
        log(f"SKIP libtorch: cannot extract from {wheel}: {exc}")
        return None
    return targets[0]


def download_torch_wheel(cache: Path) -> Path | None:
    """The torch wheel in cache/wheels, fetched there with pip if not yet present."""
    wheels = cache / "wheels"
    found = sorted(wheels.glob(f"torch-{TORCH_VERSION}*.whl"))
    if found:
        return found[0]
    wheels.mkdir(parents=True, exist_ok=True)
    log(f"pip download --no-deps torch=={TORCH_VERSION} into {wheels}")
    argv = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(wheels)]
    proc = subprocess.run([*argv, f"torch=={TORCH_VERSION}"], check=False)
    found = sorted(wheels.glob(f"torch-{TORCH_VERSION}*.whl"))
    if proc.returncode != 0 or not found:
        log(f"SKIP libtorch: pip download failed (exit {proc.returncode})")
        return None
    return found[0]


# --------------------------------------------------------------------------- describing ELF files

SHT_SYMTAB, SHT_STRTAB, SHT_RELA, SHT_NOBITS, SHT_DYNSYM = 2, 3, 4, 8, 11
PT_TLS = 7


def describe_elf(path: Path) -> str:
    """One line with the figures that make a library libtorch-shaped, read from its
    section and program headers (64-bit little-endian ELF), so that the synthetic
    library and the real one can be compared at a glance."""
    with path.open("rb") as f:
        header = f.read(64)
        phoff, shoff = struct.unpack_from("<QQ", header, 0x20)
        phentsize, phnum, shentsize, shnum, shstrndx = struct.unpack_from("<HHHHH", header, 0x36)
        f.seek(shoff)
        raw = f.read(shentsize * shnum)
        sections = [struct.unpack_from("<IIQQQQIIQQ", raw, i * shentsize) for i in range(shnum)]
        f.seek(phoff)
        raw = f.read(phentsize * phnum)
        segments = [struct.unpack_from("<IIQQQQQQ", raw, i * phentsize) for i in range(phnum)]
        f.seek(sections[shstrndx][4])
        names = f.read(sections[shstrndx][5])

    def name(section: tuple[int, ...]) -> str:
        start = section[0]
        return names[start : names.index(b"\0", start)].decode()

    def size(wanted: str) -> int:
        return sum(s[5] for s in sections if name(s) == wanted)

    def entries(kind: int) -> int:
        return sum(s[5] // s[9] for s in sections if s[1] == kind and s[9])

    local = sum(s[7] for s in sections if s[1] == SHT_SYMTAB)
    tls = [p[6] for p in segments if p[0] == PT_TLS]
    return (
        f"{path.stat().st_size / MIB:.0f} MiB; .dynsym {entries(SHT_DYNSYM)} entries "
        f"(.dynstr {size('.dynstr') / MIB:.1f} MiB); .symtab {entries(SHT_SYMTAB)} entries, "
        f"{local} local (.strtab {size('.strtab') / MIB:.1f} MiB); {entries(SHT_RELA)} "
        f"relocations; .bss {size('.bss') / MIB:.1f} MiB; "
        + (f"PT_TLS {tls[0]} bytes" if tls else "no PT_TLS")
    )


# --------------------------------------------------------------------------- ffitool's answers


def json_libraries(document: Any) -> list[dict[str, Any]]:
    """All `libraries` entries of an ffitool.inspect/3 document, tolerating gaps."""
    if not isinstance(document, dict):
        return []
    found: list[dict[str, Any]] = []
    for entry in document.get("files") or []:
        if isinstance(entry, dict):
            found.extend(lib for lib in entry.get("libraries") or [] if isinstance(lib, dict))
    return found


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

    def measure(
        self, argv: Sequence[str], stdout: Path | None = None, env: dict[str, str] | None = None
    ) -> Measurement:
        """Run `argv` once; stdout goes to `stdout` or /dev/null, stderr to a file (a
        pipe could fill up and stall the command). `env`: the command's whole environment,
        e.g. with LD_LIBRARY_PATH for a library whose dependencies are not installed."""
        self.report.unlink(missing_ok=True)
        with open(stdout or os.devnull, "wb") as out, tempfile.TemporaryFile() as err:
            subprocess.run(
                [str(self.launcher), str(self.report), *argv],
                stdout=out,
                stderr=err,
                env=env,
                check=False,
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
    width = max(34, *(len(s.label) for s in series.values()))
    for s in series.values():
        if s.ok:
            print(
                f"    {s.label:<{width}} median {fmt_s(s.median_s)}   peak RSS "
                f"{s.peak_rss_mb:7.1f} MB   ({len(s.runs)} runs)"
            )
        else:
            print(f"    {s.label:<{width}} FAILED")


def print_summary(targets: list[Target]) -> None:
    """The table the lead reads first: one row per target, measured vs goal."""
    print("\n== summary")
    width = max([len("target"), *(len(t.name) for t in targets)])
    header = f"    {'target':<{width}} {'measured':>16} {'goal':>10}   status"
    print(header)
    print("    " + "-" * (len(header) - 4))
    for t in targets:
        print(f"    {t.name:<{width}} {t.measured:>16} {t.goal:>10}   {t.status}")
