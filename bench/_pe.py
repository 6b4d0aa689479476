"""The PE case of bench/inspect.py: `inspect` on a DLL with as many exports as PE allows.

The promise: `ffitool inspect --json` on a DLL with ~75k exports costs at most 1.0x what
`llvm-readobj --coff-exports` costs on it, in the same run. A PE export table cannot hold
75,000 exports: its ordinals are 16-bit and lld (like MSVC's link.exe) stops at 65,535. The
DLL built here has that maximum: 65,529 plain exports with long generated names, all aliases
of one function (a .def file), and six FFI exports among them. It is built with zig
(`python -m ziglang`), so the benchmark needs no Windows toolchain and no download.
"""

import json
import random
import shutil
import sys
import tempfile
from pathlib import Path

from _common import (
    FFITOOL,
    Meter,
    Target,
    describe_failure,
    fmt_s,
    log,
    print_series,
    run_checked,
    time_series,
)

PE_RATIO_TARGET = 1.0
PE_EXPORTS = 65535
"""The most a PE export table holds (16-bit ordinals), and what lld accepts."""
FFI_NAMES = ("add_one", "main", "sub", "mul", "div")
PE_VERSION = 1
"""Bump when the generated DLL changes, so that a cached one is rebuilt."""

_SOURCE = """\
int plain_impl(void) { return 1; }
int __stdcall DllMainCRTStartup(void* m, unsigned r, void* p) {
  (void)m; (void)r; (void)p; return 1;
}
#define F(n) __declspec(dllexport) int __tvm_ffi_##n(void* s, const void* a, int c, void* r) \\
  { (void)s; (void)a; (void)c; (void)r; return 0; }
F(add_one) F(main) F(sub) F(mul) F(div)
__declspec(dllexport) const unsigned char __tvm_ffi__library_bin[8] = {0};
"""


def _def_file() -> str:
    """The export list: plain aliases first (in name order they surround the FFI names)."""
    rng = random.Random(PE_VERSION)
    plain = PE_EXPORTS - len(FFI_NAMES) - 1
    lines = ["LIBRARY pe_exports.dll", "EXPORTS"]
    for index in range(plain):
        space = rng.choice(["at", "c10", "torch", "caffe2", "aten", "zz"])
        op = rng.choice(["add", "mul", "conv2d", "linear", "softmax", "index_put"])
        tail = f"{rng.getrandbits(40):010x}"
        lines.append(f"  {space}_native_{op}_{index}_out_cpu_kernel_impl_{tail}=plain_impl")
    lines.extend(f"  __tvm_ffi_{name}" for name in FFI_NAMES)
    lines.append("  __tvm_ffi__library_bin DATA")
    return "\n".join(lines) + "\n"


def build_pe_exports(cache: Path) -> Path | None:
    """The DLL, built once into the benchmark cache; None (with a log line) without zig."""
    out = cache / f"pe_exports.v{PE_VERSION}" / "pe_exports.dll"
    if out.exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="ffitool-bench-pe-") as tmp:
        work = Path(tmp)
        (work / "pe_exports.c").write_text(_SOURCE)
        (work / "pe_exports.def").write_text(_def_file())
        zig = [sys.executable, "-m", "ziglang", "cc", "-target", "x86_64-windows-gnu"]
        try:
            run_checked(
                [*zig, "-O2", "-c", "-o", str(work / "pe_exports.o"), str(work / "pe_exports.c")]
            )
            run_checked(
                [
                    *zig,
                    *("-shared", "-nostdlib", "-s", "-Wl,/Brepro"),
                    *("-o", str(work / "pe_exports.dll")),
                    *(str(work / "pe_exports.o"), str(work / "pe_exports.def")),
                ]
            )
        except (OSError, RuntimeError) as exc:
            log(f"the PE benchmark DLL was not built: {exc}")
            return None
        shutil.copyfile(work / "pe_exports.dll", out)
    return out


def bench_pe(meter: Meter, cache: Path, repeat: int, workdir: Path) -> Target:
    """Time llvm-readobj --coff-exports and ffitool inspect --json on the DLL."""
    name = "PE exports ffitool/llvm-readobj"
    goal = f"<= {PE_RATIO_TARGET}"
    dll = build_pe_exports(cache)
    readobj = shutil.which("llvm-readobj")
    if dll is None or readobj is None:
        return Target(name, "not built" if dll is None else "no llvm-readobj", goal, None)
    print(
        f"\n== PE exports: {dll} ({dll.stat().st_size / (1 << 20):.1f} MiB, {PE_EXPORTS} exports)"
    )
    sample = workdir / "pe_exports.inspect.json"
    ffitool_argv = [*FFITOOL, "inspect", "--json", str(dll)]
    check = meter.measure(ffitool_argv, stdout=sample)
    if not check.ok:
        log(f"FAILED ffitool on {dll.name}: {describe_failure(check)}")
        return Target(name, "ffitool failed", goal, None)
    # A fast but wrong answer would make the timing meaningless.
    (library,) = json.loads(sample.read_text())["files"][0]["libraries"]
    found = sorted(function["name"] for function in library["functions"])
    print(f"    ffitool found the functions {', '.join(found)}")
    if found != sorted(FFI_NAMES):
        return Target(name, "wrong functions", goal, False)
    commands = {
        "llvm-readobj --coff-exports": [readobj, "--coff-exports", str(dll)],
        "ffitool inspect --json": ffitool_argv,
    }
    series = time_series(meter, commands, repeat)
    print_series(series)
    reference, ours = series["llvm-readobj --coff-exports"], series["ffitool inspect --json"]
    if not reference.ok or not ours.ok:
        return Target(name, "a command failed", goal, None)
    ratio = ours.median_s / reference.median_s
    print(
        f"    ratio ffitool/llvm-readobj: {ratio:.2f} ({fmt_s(ours.median_s).strip()} over"
        f" {fmt_s(reference.median_s).strip()})"
    )
    return Target(name, f"{ratio:.2f}", goal, ratio <= PE_RATIO_TARGET)
