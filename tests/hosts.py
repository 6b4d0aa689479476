"""The host libraries of tests/test_pack_matrix.py, built at test time from tests/hosts/.

Committed binaries could only show that pack works on the few layouts someone thought of; these
are linked by each real linker (bfd, gold and lld through ``-fuse-ld=``) with the flags that
change what a writer has to respect: the hash tables, RELRO with immediate binding, separate
code pages, 64 KiB pages, C++ runtime machinery, symbol versions, a large ``.bss``.  Foreign
architectures are built with zig, together with the C loader that runs them under qemu-user.

Each library is built once per test session into a cache directory and only when a test asks
for it, so running one test builds one host.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from conftest import ROOT, require_tool, require_tvm_ffi, require_zig

SOURCES = Path(__file__).resolve().parent / "hosts"
FIXTURE_SOURCES = ROOT / "fixtures" / "src"  # ffi_fixture.h: add_one and main

LINKERS = ("bfd", "gold", "lld")

# Packed functions every host exports, with one argument list and the result each must give.
BASE_CALLS: tuple[tuple[str, tuple[int, ...], int], ...] = (
    ("add_one", (41,), 42),
    ("main", (), 42),
    ("bss_probe", (0x1234,), 0x1234),  # writes and reads both ends of the 1 MiB + 4 KiB .bss
)
# What cxx_host.cc computes: an exception's value, a thread_local after += 5 (it starts at 100),
# an IFUNC's target (3 * x), and the bits its two constructors set.
CXX_CALLS: tuple[tuple[str, tuple[int, ...], int], ...] = (
    ("throw_catch", (7,), 7),
    ("tls_add", (5,), 105),
    ("ifunc", (5,), 15),
    ("constructed", (), 0x11),
)
# versioned.c exports one name at two versions; dlvsym must find each implementation.
VERSIONED_SYMBOLS: tuple[tuple[str, str, int], ...] = (
    ("ffitool_versioned", "FFITOOL_MATRIX_1", 1),
    ("ffitool_versioned", "FFITOOL_MATRIX_2", 2),
)


@dataclass(frozen=True)
class Variant:
    """One way of linking a host: which objects, which driver, which linker flags."""

    name: str
    ldflags: tuple[str, ...] = ()
    objects: tuple[str, ...] = ("matrix_host.o",)
    cxx: bool = False
    calls: tuple[tuple[str, tuple[int, ...], int], ...] = BASE_CALLS
    versioned: tuple[tuple[str, str, int], ...] = ()


VARIANTS = (
    Variant("hash-gnu", ("-Wl,--hash-style=gnu",)),
    Variant("hash-sysv", ("-Wl,--hash-style=sysv",)),
    Variant("hash-both", ("-Wl,--hash-style=both",)),
    Variant("now-relro", ("-Wl,-z,now", "-Wl,-z,relro")),
    Variant("separate-code", ("-Wl,-z,separate-code",)),
    Variant("noseparate-code", ("-Wl,-z,noseparate-code",)),
    Variant("max-page-64k", ("-Wl,-z,max-page-size=0x10000",)),
    Variant(
        "cxx",
        objects=("cxx_host.o", "matrix_host.o"),
        cxx=True,
        calls=BASE_CALLS + CXX_CALLS,
    ),
    Variant(
        "versioned",
        (f"-Wl,--version-script={SOURCES / 'versioned.map'}",),
        objects=("matrix_host.o", "versioned.o"),
        versioned=VERSIONED_SYMBOLS,
    ),
)

# gold has no -z separate-code / -z noseparate-code ("unknown -z option"): it always lays code
# out the way it does, so those two variants are not gold combinations (not skipped tests).
UNSUPPORTED = {("gold", "separate-code"), ("gold", "noseparate-code")}


@dataclass(frozen=True)
class HostSpec:
    linker: str
    variant: Variant

    @property
    def name(self) -> str:
        return f"{self.linker}-{self.variant.name}"


MATRIX = [
    HostSpec(linker, variant)
    for linker in LINKERS
    for variant in VARIANTS
    if (linker, variant.name) not in UNSUPPORTED
]


@dataclass(frozen=True)
class Foreign:
    """A foreign architecture: zig's target, the qemu-user binary and the sysroot it runs with."""

    arch: str
    zig_target: str
    qemu: str
    sysroot: str


FOREIGN = (
    Foreign("aarch64", "aarch64-linux-gnu.2.28", "qemu-aarch64", "/usr/aarch64-linux-gnu"),
    Foreign("s390x", "s390x-linux-gnu.2.28", "qemu-s390x", "/usr/s390x-linux-gnu"),  # big-endian
)


def run(command: list[str], env: dict[str, str] | None = None) -> None:
    """Run a build step; its output is in the failure message, not on the terminal."""
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, f"{' '.join(command)}\n{result.stdout}{result.stderr}"


@dataclass
class HostCache:
    """Builds each object, host and loader at most once per session, on first use."""

    directory: Path
    _built: dict[str, Path] = field(default_factory=dict)

    def _include_flags(self) -> list[str]:
        tvm_ffi = require_tvm_ffi()
        include = tvm_ffi.libinfo.find_include_path()
        dlpack = tvm_ffi.libinfo.find_dlpack_include_path()
        return [f"-I{FIXTURE_SOURCES}", f"-I{include}", f"-I{dlpack}"]

    def _object(self, name: str) -> Path:
        if name not in self._built:
            source = SOURCES / (name[:-2] + (".cc" if name == "cxx_host.o" else ".c"))
            driver = [require_tool("g++"), "-std=c++17"] if source.suffix == ".cc" else [
                require_tool("gcc"), "-std=c11",
            ]  # fmt: skip
            output = self.directory / name
            # -g: objcopy --strip-debug then has sections to remove and the file to re-lay.
            run([*driver, "-O2", "-g", "-fPIC", "-Wall", *self._include_flags(), "-c", "-o",
                 str(output), str(source)])  # fmt: skip
            self._built[name] = output
        return self._built[name]

    def host(self, spec: HostSpec) -> Path:
        """The host library SPEC names, linked by its linker with its variant's flags."""
        if spec.name not in self._built:
            variant = spec.variant
            require_tool("ld.gold" if spec.linker == "gold" else f"ld.{spec.linker}")
            driver = require_tool("g++" if variant.cxx else "gcc")
            objects = [str(self._object(name)) for name in variant.objects]
            output = self.directory / f"lib{spec.name}.so"
            run([driver, "-shared", f"-fuse-ld={spec.linker}", *variant.ldflags, "-o",
                 str(output), *objects])  # fmt: skip
            self._built[spec.name] = output
        return self._built[spec.name]

    def _zig_env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.setdefault("ZIG_GLOBAL_CACHE_DIR", str(self.directory / "zig-global"))
        env.setdefault("ZIG_LOCAL_CACHE_DIR", str(self.directory / "zig-local"))
        return env

    def foreign_host(self, foreign: Foreign) -> Path:
        """matrix_host.c built by zig for FOREIGN (zig links with lld, -z now)."""
        key = f"host-{foreign.arch}"
        if key not in self._built:
            output = self.directory / f"libmatrix.{foreign.arch}.so"
            run([*require_zig(), "cc", "-target", foreign.zig_target, "-O2", "-fPIC", "-shared",
                 *self._include_flags(), "-o", str(output), str(SOURCES / "matrix_host.c")],
                env=self._zig_env())  # fmt: skip
            self._built[key] = output
        return self._built[key]

    def foreign_loader(self, foreign: Foreign) -> Path:
        """dlopen_loader.c built by zig for FOREIGN, exporting the runtime's error setter."""
        key = f"loader-{foreign.arch}"
        if key not in self._built:
            output = self.directory / f"dlopen_loader.{foreign.arch}"
            run([*require_zig(), "cc", "-target", foreign.zig_target, "-O2", "-rdynamic",
                 *self._include_flags(), "-o", str(output), str(SOURCES / "dlopen_loader.c"),
                 "-ldl"], env=self._zig_env())  # fmt: skip
            self._built[key] = output
        return self._built[key]
