#!/usr/bin/env python3
"""Local check (not a CI test): `ffitool pack` on the MSVC-built DLL of the real win_amd64 wheel.

The apache-tvm-ffi win_amd64 wheel's `tvm_ffi/lib/tvm_ffi_testing.dll` is linked by MSVC's
link.exe (imports from tvm_ffi.dll and the MSVC runtime, a resource section, base
relocations), which no zig fixture imitates. It is packed with a small module; then pefile
must find every export of the input in the output with its ordinal, name and address, every
section header and section's bytes unchanged, the checksum right, and the planned blob at the
new export. With wine (and its dependencies from the wheel beside it), fixtures/bin/pe/
pe_loader.exe loads the original and the packed DLL, prints the blob GetProcAddress finds and
calls the FFI function `__tvm_ffi_testing_dll_schema_id_int(41)`.

Usage (from the repo root): python bench/pe_wheel_pack.py [--wheel PATH] [--no-wine]

Exit status 0 when every check passes, 1 when one fails, 2 when the wheel, pefile or wine
cannot be had.
"""

import os
import sys

# Keep bench/ from shadowing the standard library's `inspect` (see bench/inspect.py).
if sys.path and os.path.realpath(sys.path[0] or os.curdir) == os.path.dirname(
    os.path.realpath(__file__)
):
    sys.path.pop(0)
sys.path.append(os.path.dirname(os.path.realpath(__file__)))

import argparse
import shutil
import subprocess
import tempfile
import time
import zipfile
from pathlib import Path

from pe_wheel_check import MEMBER, wheel_path

ROOT = Path(__file__).resolve().parent.parent
LOADER = ROOT / "fixtures" / "bin" / "pe" / "pe_loader.exe"
DEPENDENCIES = ("tvm_ffi/lib/tvm_ffi.dll", "apache_tvm_ffi.libs/msvcp140.dll")
FUNCTION = "__tvm_ffi_testing_dll_schema_id_int"
PAYLOAD = b"an MSVC DLL's first ffitool module\n" * 64
BLOB = b"__tvm_ffi__library_bin"


def exports(pefile, path: Path) -> dict[int, tuple[bytes | None, int | bytes]]:
    pe = pefile.PE(str(path))
    return {
        e.ordinal: (e.name, e.forwarder if e.forwarder is not None else e.address)
        for e in pe.DIRECTORY_ENTRY_EXPORT.symbols
    }


def check_file(pefile, original: Path, packed: Path, blob: bytes) -> list[str]:
    """What pefile finds wrong with the packed DLL: nothing, when it is right."""
    problems = []
    before, after = pefile.PE(str(original)), pefile.PE(str(packed))
    old, new = exports(pefile, original), exports(pefile, packed)
    ours = after.sections[-1]
    added = {o: e for o, e in new.items() if o not in old}
    if added != {max(old) + 1: (BLOB, ours.VirtualAddress)}:
        problems.append(f"exports added: {added}")
    if any(new.get(o) != e for o, e in old.items()):
        problems.append("an export of the input changed")
    for a, b in zip(before.sections, after.sections, strict=False):
        if a.__pack__() != b.__pack__() or a.get_data() != b.get_data():
            problems.append(f"section {a.Name!r} changed")
    if len(after.sections) != len(before.sections) + 1 or ours.Name.rstrip(b"\0") != b".tvmffi":
        problems.append("no .tvmffi section appended")
    if not after.verify_checksum():
        problems.append("the checksum is wrong")
    data = packed.read_bytes()
    if data[ours.PointerToRawData : ours.PointerToRawData + len(blob)] != blob:
        problems.append("the new section does not start with the planned blob")
    return problems


def planned_blob(original: Path, payload: Path) -> bytes:
    sys.path.insert(0, str(ROOT))
    from ffitool.edit.plan import Edits, plan_edits
    from ffitool.edit.stream import write_blob
    from ffitool.pack import existing_modules, payload_source

    plan = plan_edits(
        existing_modules(original), Edits(add=(("cuda_ptx", payload_source(str(payload))),))
    )
    with tempfile.TemporaryFile() as handle:
        write_blob(handle.fileno(), 0, plan)
        handle.seek(0)
        return handle.read()


def run_wine(folder: Path, dlls: list[str]) -> list[str]:
    """pe_loader.exe's output for each DLL, in a throwaway prefix; the DLLs' imports resolve
    from `folder`, the current directory."""
    env = {**os.environ, "WINEDEBUG": "-all", "WINEPREFIX": str(folder / "prefix"),
           "WINEDLLOVERRIDES": "mscoree,mshtml="}  # fmt: skip
    (folder / "prefix").mkdir()
    quiet = {"env": env, "stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    subprocess.run(["wineserver", "-p"], **quiet, check=True)
    try:
        started = time.monotonic()
        subprocess.run(["wine", "wineboot", "-i"], **quiet, check=True, timeout=300)
        print(f"  wineboot: {time.monotonic() - started:.1f} s")
        outputs = []
        for dll in dlls:
            result = subprocess.run(
                ["wine", str(LOADER), dll, FUNCTION],
                cwd=folder,
                env=env,
                capture_output=True,
                text=True,
                timeout=120,
            )
            outputs.append(f"exit {result.returncode}\n{result.stdout}")
        return outputs
    finally:
        subprocess.run(["wineserver", "-k"], **quiet)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--wheel", type=Path, help="the win_amd64 wheel (default: cached)")
    parser.add_argument("--no-wine", action="store_true", help="skip the run under wine")
    args = parser.parse_args()
    try:
        import pefile
    except ImportError:
        print("pefile is not installed", file=sys.stderr)
        return 2
    wheel = wheel_path(args.wheel)
    if wheel is None or (not args.no_wine and shutil.which("wine") is None):
        print("the wheel or wine is missing", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="ffitool-pe-wheel-") as tmp:
        folder = Path(tmp)
        with zipfile.ZipFile(wheel) as archive:
            for member in (MEMBER, *DEPENDENCIES):
                (folder / Path(member).name).write_bytes(archive.read(member))
        original = folder / Path(MEMBER).name
        payload = folder / "module.bin"
        payload.write_bytes(PAYLOAD)
        packed = folder / "packed_testing.dll"
        started = time.monotonic()
        result = subprocess.run(
            [sys.executable, "-m", "ffitool", "pack", str(original),
             "--add", f"cuda_ptx:{payload}", "-o", str(packed), "--quiet"],
            cwd=ROOT, capture_output=True, text=True,
        )  # fmt: skip
        print(f"{MEMBER} ({original.stat().st_size} bytes):")
        print(f"  ffitool pack: exit {result.returncode}, {time.monotonic() - started:.2f} s")
        if result.returncode != 0:
            print(f"  {result.stderr.strip()}")
            return 1
        blob = planned_blob(original, payload)
        problems = check_file(pefile, original, packed, blob)
        print(f"  pefile: {len(exports(pefile, packed))} exports; problems: {problems or 'none'}")
        if not args.no_wine:
            before, after = run_wine(folder, [original.name, packed.name])
            call = f"call {FUNCTION} 0 1 41"
            print("  wine, original:", " | ".join(line[:60] for line in before.splitlines()))
            print("  wine, packed:  ", " | ".join(line[:60] for line in after.splitlines()))
            if before != f"exit 0\nblob none\n{call}\n":
                problems.append("the original does not load as expected under wine")
            if after != f"exit 0\nblob {len(blob)} {blob.hex()}\n{call}\n":
                problems.append("the packed DLL does not give the planned blob under wine")
        print("OK" if not problems else f"FAILED: {problems}")
        return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
