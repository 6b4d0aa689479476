"""Shared test plumbing: fixture paths, tool requirements that must not skip in CI, goldens."""

from __future__ import annotations

import importlib.util
import os
import resource
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent

_COVERAGE_ENV = "COVERAGE_PROCESS_CONFIG"
"""Set by coverage's subprocess patch: a Python child that has it measures itself."""

if os.environ.get("FFITOOL_COVERAGE") == "1":
    # CI measures branch coverage of the whole run (see [tool.coverage] in pyproject.toml),
    # started here, before any test module imports ffitool, so that the README's test command
    # stays `python3 -m pytest`. Child processes are measured through coverage's own hook,
    # and so are pytest-xdist's workers: a worker is already measured when it imports this
    # file, and a second Coverage started here would only pause the first. Each process saves
    # its own data file (parallel = true) for `coverage combine`.
    import coverage

    _COVERAGE = coverage.Coverage.current()
    if _COVERAGE is None:
        _COVERAGE = coverage.Coverage(config_file=str(ROOT / "pyproject.toml"))
        _COVERAGE.start()
FIXTURES = ROOT / "fixtures" / "bin"
GOLDEN = Path(__file__).resolve().parent / "golden"

# Every ELF fixture, for tests that run over all of them (the .blob files are raw blobs).
ELF_FIXTURES = [
    "libffi_c.so",
    "libffi_c.stripped.so",
    "ffi_c.o",
    "syslib.o",
    "libffi_static.a",
    "libplain.so",
    "libffi_cpp.so",
    "libffi_hidden_blob.so",
    "libffi_bss_blob.so",
    "libffi_legacy.so",
    "libffi_c.aarch64.so",
    "libffi_c.arm32.so",
    "libffi_c.ppc64be.so",
]

# The suite runs on several pytest-xdist workers at once (addopts in pyproject.toml). `pack`
# takes a non-blocking exclusive lock on its input, so two workers packing the same committed
# fixture at the same moment would fail one of them ("another ffitool pack is rewriting it").
# A test that packs a file under fixtures/bin itself, not a copy of it, carries the xdist_group
# of its fixtures ("packs-elf-fixtures", "packs-macho-fixtures", "packs-pe-fixtures"): the tests
# of one group run on one worker, one after the other.

# CI sets FFITOOL_REQUIRE_ALL=1: a missing tool then fails the test instead of skipping it.
REQUIRE_ALL = os.environ.get("FFITOOL_REQUIRE_ALL") == "1"


def ffitool(*args: str, **options: Any) -> subprocess.CompletedProcess[str]:
    """Run the real command line, as a user would, from the repository root; `options` go
    to subprocess.run (env, preexec_fn...). PYTHONPATH names this checkout, so a test run
    from another directory (`cwd=tmp_path`) still runs this code, not the installed one."""
    options.setdefault("timeout", 300)
    options.setdefault("cwd", ROOT)
    options["env"] = {"PYTHONPATH": str(ROOT), **options.get("env", os.environ)}
    return subprocess.run(
        [sys.executable, "-m", "ffitool", *args], capture_output=True, text=True, **options
    )


def require(condition: bool, why: str) -> None:
    """Skip (locally) or fail (in CI) when a core prerequisite is missing."""
    if condition:
        return
    if REQUIRE_ALL:
        pytest.fail(f"required for core tests but missing: {why}")
    pytest.skip(why)


def require_tool(name: str) -> str:
    path = shutil.which(name)
    require(path is not None, f"`{name}` is not on PATH")
    assert path is not None
    return path


def nvidia_tool(name: str) -> Path:
    """A binary of the nvidia-cuda-* wheels (site-packages nvidia/cu13/bin), not /usr/local/cuda:
    a missing one skips locally and fails under FFITOOL_REQUIRE_ALL=1."""
    spec = importlib.util.find_spec("nvidia")
    roots = list(spec.submodule_search_locations or []) if spec is not None else []
    found = [Path(root) / "cu13" / "bin" / name for root in roots]
    found = [path for path in found if path.is_file()]
    require(bool(found), f"{name} of the nvidia-cuda-* wheels is not installed")
    return found[0]


def require_tvm_ffi():
    try:
        import tvm_ffi
    except ImportError:
        require(False, "apache-tvm-ffi is not installed")
    return tvm_ffi


def require_zig() -> list[str]:
    command = [sys.executable, "-m", "ziglang"]
    try:
        ok = subprocess.run([*command, "version"], capture_output=True, timeout=60).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        ok = False
    require(ok, "the ziglang wheel is not installed")
    return command


def golden(name: str, actual: str) -> None:
    """Compare with tests/golden/NAME; FFITOOL_UPDATE_GOLDENS=1 rewrites it instead."""
    path = GOLDEN / name
    if os.environ.get("FFITOOL_UPDATE_GOLDENS") == "1":
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(actual)
        return
    assert path.exists(), f"missing golden {path}; run with FFITOOL_UPDATE_GOLDENS=1"
    assert actual == path.read_text(), f"output differs from {path}"


# Module kinds the tests' blobs use; each gets a recording Python loader.
TEST_KINDS = ("test_alpha", "test_beta", "test_gamma", "test_sys", "test_empty", "test_cycle")


@pytest.fixture
def runtime():
    """tvm_ffi, with a loader per test kind recording the payload bytes it is handed.

    A loader must return a Module; it returns a fresh load of the C++ fixture.
    """
    tvm_ffi = require_tvm_ffi()
    received: dict[str, list[bytes]] = {}
    stand_in = str(FIXTURES / "libffi_cpp.so")

    def loader_for(kind: str):
        def load(payload: bytes):
            received.setdefault(kind, []).append(bytes(payload))
            return tvm_ffi.load_module(stand_in)

        return load

    for kind in TEST_KINDS:
        tvm_ffi.register_global_func(
            f"ffi.Module.load_from_bytes.{kind}", loader_for(kind), override=True
        )
    return tvm_ffi, received


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Under FFITOOL_REQUIRE_ALL=1 a run with any skipped test fails: core tests never skip.
    The coverage of this process, when measured, is saved for `coverage combine`."""
    if os.environ.get("FFITOOL_COVERAGE") == "1":
        _COVERAGE.stop()
        _COVERAGE.save()
    if not REQUIRE_ALL or hasattr(session.config, "workerinput"):
        return  # a pytest-xdist worker: the controlling process sees every worker's skips
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = reporter.stats.get("skipped", []) if reporter is not None else []
    if skipped and exitstatus == 0:
        reporter.write_line(f"FFITOOL_REQUIRE_ALL=1: {len(skipped)} test(s) skipped", red=True)
        session.exitstatus = 1


# Runs argv[2:] and writes "exit-code cpu-seconds peak-RSS-KiB" to argv[1]. The command is the
# grandchild of pytest on purpose: Linux carries the RSS high-water mark of the process that
# execs into the new program's ru_maxrss, and a child spawned straight from pytest would
# report pytest's own peak (gigabytes, after a test that maps a large file). CPU time (user +
# system, the command's and its waited-for children's) is what the bounds hold, not wall-clock
# time: a busy machine stretches the latter, never the former.
_MEASURE = """
import os, subprocess, sys
child = subprocess.Popen(sys.argv[2:])
_, status, usage = os.wait4(child.pid, 0)
cpu = usage.ru_utime + usage.ru_stime
with open(sys.argv[1], "w") as report:
    report.write(f"{os.waitstatus_to_exitcode(status)} {cpu} {usage.ru_maxrss}")
"""


def uninstrumented(env: dict[str, str] | None = None) -> dict[str, str]:
    """`env` (by default this process's) without coverage's subprocess hook: for a child that
    runs where coverage could not save its data (under a file-size limit)."""
    return {k: v for k, v in (os.environ if env is None else env).items() if k != _COVERAGE_ENV}


CPU_SCALE = 4.0 if os.environ.get("FFITOOL_COVERAGE") == "1" else 1.0
"""How many times the CPU a Python child takes while coverage instruments it (2.5-4 times,
measured on the linear-cost tests); `run_measured` divides by it, so one bound serves the
fast loop and CI, where the child is measured for coverage too."""


def run_measured(
    command: list[str], workdir: Path, env: dict[str, str] | None = None, timeout: float = 600
) -> tuple[int, float, float]:
    """Run `command` with stdout and stderr in workdir/stdout, workdir/stderr; return its exit
    code (negative for a signal), CPU seconds and peak RSS in MB. `timeout` only guards against
    a hang; tests bound the CPU time. Under coverage the CPU time is divided by CPU_SCALE:
    the child stays instrumented, so that the refusals it reaches count as tested."""
    report = workdir / "measure"
    with open(workdir / "stdout", "wb") as out, open(workdir / "stderr", "wb") as err:
        subprocess.run(
            [sys.executable, "-c", _MEASURE, str(report), *command],
            stdout=out,
            stderr=err,
            cwd=ROOT,
            env=env,
            timeout=timeout,
            check=True,
        )
    code, cpu, kilobytes = report.read_text().split()
    return int(code), float(cpu) / CPU_SCALE, int(kilobytes) / 1024


# --- device code built by nvcc, shared by the decoder tests and the device file tests --------
# Kernels compiled once per session (per pytest-xdist worker) for several architectures, with
# and without -G, relocatable, and into fatbins with PTX, compressed or not.

SOURCE = """
namespace ns {
template <typename T> __global__ void scale(T* x, T a, int n) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) x[i] *= a;
}
template __global__ void scale<float>(float*, float, int);
template __global__ void scale<double>(double*, double, int);
}  // namespace ns
extern "C" __global__ void add(float* a, const float* b, int n) {
  int i = threadIdx.x;
  if (i < n) a[i] += b[i];
}
__device__ float helper(float x) { return x * x; }
__global__ void square(float* a) { a[threadIdx.x] = helper(a[threadIdx.x]); }
"""

CUBINS = {
    "sm_80": ["-arch=sm_80"],
    "sm_90a": ["-arch=sm_90a"],
    "sm_90a-debug": ["-arch=sm_90a", "-G"],
    "sm_90a-rdc": ["-arch=sm_90a", "-rdc=true"],
    "sm_100": ["-arch=sm_100"],
    "sm_100a": ["-arch=sm_100a"],
    "sm_100f": ["-arch=sm_100f"],
    "sm_103a": ["-arch=sm_103a"],
}
FATBINS = {
    # PTX is compressed by default (nvcc 13): the cubins are not.
    "multi": ["-gencode=arch=compute_80,code=sm_80", "-gencode=arch=compute_90a,code=sm_90a",
              "-gencode=arch=compute_100,code=compute_100"],
    "compressed": ["-gencode=arch=compute_80,code=sm_80",
                   "-gencode=arch=compute_90,code=compute_90", "-Xfatbin=-compress-all"],
    "lz4-all": ["-gencode=arch=compute_80,code=sm_80",
                "-gencode=arch=compute_90,code=compute_90", "--compress-mode=speed",
                "-Xfatbin=-compress-all"],
    "compress-speed": ["-gencode=arch=compute_80,code=sm_80",
                       "-gencode=arch=compute_90,code=compute_90", "--compress-mode=speed"],
    "family-debug": ["-G", "-gencode=arch=compute_100f,code=sm_100f",
                     "-gencode=arch=compute_103a,code=sm_103a",
                     "-gencode=arch=compute_100a,code=compute_100a", "-Xfatbin=-compress=false"],
}  # fmt: skip


class Builds:
    """The files built for the session, and cuobjdump's view of them (run on demand, once)."""

    def __init__(self, directory: Path, cuobjdump: Path) -> None:
        self.directory = directory
        self.cuobjdump = cuobjdump
        self.cpu_seconds = 0.0
        self._outputs: dict[tuple[str, str], str] = {}

    def path(self, name: str) -> Path:
        return self.directory / name

    def cuobjdump_output(self, name: str, *options: str) -> str:
        key = (name, " ".join(options))
        if key not in self._outputs:
            run = subprocess.run(
                [str(self.cuobjdump), *options, str(self.path(name))],
                capture_output=True, text=True, check=True, timeout=300,
            )  # fmt: skip
            self._outputs[key] = run.stdout
        return self._outputs[key]


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


@pytest.fixture(scope="session")
def builds(tmp_path_factory: pytest.TempPathFactory) -> Builds:
    require_tool("gcc")  # nvcc preprocesses with the host compiler
    nvcc, cuobjdump = nvidia_tool("nvcc"), nvidia_tool("cuobjdump")
    directory = tmp_path_factory.mktemp("cuda")
    (directory / "kernels.cu").write_text(SOURCE)
    started = _children_cpu()
    jobs = [(f"{name}.cubin", ["-cubin", *flags]) for name, flags in CUBINS.items()]
    jobs += [(f"{name}.fatbin", ["-fatbin", *flags]) for name, flags in FATBINS.items()]
    for output, flags in jobs:
        subprocess.run(
            [str(nvcc), *flags, "kernels.cu", "-o", output],
            cwd=directory, check=True, capture_output=True, timeout=600,
        )  # fmt: skip
    result = Builds(directory, cuobjdump)
    result.cpu_seconds = _children_cpu() - started
    return result
