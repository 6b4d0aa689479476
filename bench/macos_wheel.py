#!/usr/bin/env python3
"""Local check (not a CI test): `ffitool inspect` on the real macOS arm64 apache-tvm-ffi wheel.

The wheel's dylibs are linked and signed by Apple's toolchain, which the zig-built fixtures
are not. For every Mach-O member ffitool reports, the FFI functions and getters
(`__tvm_ffi_<name>`, `__tvm_ffi__metadata_<name>`, `__tvm_ffi__doc_<name>`) must be
exactly the external defined symbols `llvm-nm` lists for that member, exported when the
member is loadable; the code-signature state ffitool reads and the dyld load commands each
member uses (chained fixups or the older dyld info) are printed alongside.

Then every loadable member is packed (`ffitool pack --add cuda_ptx:PAYLOAD`, default ad hoc
re-signing): the pack must succeed (its verifier recomputes every page hash), keep the
signature state, and `llvm-nm` must list the same symbols as before plus
`___tvm_ffi__library_bin`; the time of each pack is printed.

Usage (from the repo root): python bench/macos_wheel.py [--wheel WHEEL] [--cache-dir DIR]

Without --wheel, the wheel is looked for in the bench cache's wheels/ (the one bench/inspect.py
uses for torch) and `pip download`ed there if missing. Exit status 0 when every member
agrees, 1 otherwise, 2 when the wheel or llvm-nm cannot be had.
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
import json
import shutil
import subprocess
import tempfile
import time
import zipfile
from collections.abc import Sequence
from pathlib import Path

from _common import FFITOOL, cache_root, json_libraries, log

PACKAGE = "apache-tvm-ffi"
VERSION = "0.1.15.post2"
PLATFORMS = ("macosx_11_0_arm64", "macosx_12_0_arm64", "macosx_13_0_arm64", "macosx_14_0_arm64")
FFI_MARK = "___tvm_ffi_"  # C's __tvm_ffi_ with the Mach-O leading underscore
DYLD_COMMANDS = (
    "LC_DYLD_CHAINED_FIXUPS",
    "LC_DYLD_EXPORTS_TRIE",
    "LC_DYLD_INFO",
    "LC_DYLD_INFO_ONLY",
    "LC_CODE_SIGNATURE",
)


def llvm_tool(name: str) -> str | None:
    """An LLVM tool by its plain name or Debian's versioned one."""
    found = shutil.which(name)
    if found:
        return found
    versioned = sorted(Path("/usr/bin").glob(f"{name}-[0-9]*"), key=lambda p: p.name)
    return str(versioned[-1]) if versioned else None


def find_wheel(cache: Path) -> Path | None:
    """The macOS arm64 wheel in cache/wheels, `pip download`ed there if missing, trying the
    platform tags from the oldest macOS up until pip finds one."""
    wheels = cache / "wheels"
    pattern = f"apache_tvm_ffi-{VERSION}-*-macosx_*_arm64.whl"
    found = sorted(wheels.glob(pattern))
    if found:
        return found[0]
    wheels.mkdir(parents=True, exist_ok=True)
    for platform in PLATFORMS:
        log(f"pip download {PACKAGE}=={VERSION} --platform {platform} into {wheels}")
        argv = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(wheels)]
        argv += ["--only-binary=:all:", "--platform", platform, f"{PACKAGE}=={VERSION}"]
        if subprocess.run(argv, check=False).returncode == 0:
            found = sorted(wheels.glob(pattern))
            if found:
                return found[0]
    return None


def nm_ffi_symbols(nm: str, path: Path) -> set[str]:
    """The external defined FFI-named symbols llvm-nm lists, as the file spells them."""
    argv = [nm, "--extern-only", "--defined-only", "--just-symbol-name", str(path)]
    listing = subprocess.run(argv, check=True, capture_output=True, text=True).stdout
    return {name for name in listing.split() if name.startswith(FFI_MARK)}


def load_commands(objdump: str | None, path: Path) -> list[str]:
    """The dyld-related load commands of `path`, in file order."""
    if objdump is None:
        return ["(llvm-objdump missing)"]
    argv = [objdump, "--macho", "--private-headers", str(path)]
    listing = subprocess.run(argv, check=True, capture_output=True, text=True).stdout
    found = [line.split()[1] for line in listing.splitlines() if line.strip().startswith("cmd ")]
    return [name for name in found if name in DYLD_COMMANDS]


def nm_all(nm: str, path: Path) -> list[str]:
    listing = subprocess.run([nm, str(path)], check=True, capture_output=True, text=True).stdout
    return listing.splitlines()


def pack_member(member: Path, signature: str, nm: str, tmp: Path) -> bool:
    """Pack a payload into `member`; True when the output keeps everything and its signature
    state and adds only the blob's symbol."""
    payload = tmp / "payload.bin"
    payload.write_bytes(os.urandom(4096))
    out = tmp / f"packed-{member.name}"
    started = time.perf_counter()
    proc = subprocess.run(
        [*FFITOOL, "pack", str(member), "--add", f"cuda_ptx:{payload}", "-o", str(out), "--quiet"],
        capture_output=True,
        text=True,
        check=False,
    )
    elapsed = time.perf_counter() - started
    if proc.returncode != 0:
        print(f"    pack FAILED (exit {proc.returncode}): {proc.stderr.strip()}")
        return False
    after = json.loads(
        subprocess.run(
            [*FFITOOL, "inspect", "--json", str(out)], capture_output=True, text=True, check=True
        ).stdout
    )
    (library,) = json_libraries(after)
    added = sorted(set(nm_all(nm, out)) - set(nm_all(nm, member)))
    removed = sorted(set(nm_all(nm, member)) - set(nm_all(nm, out)))
    blob = library["library_bin"]
    ok = (
        library["signature"] == signature
        and not removed
        and [line.split()[-1] for line in added] == ["___tvm_ffi__library_bin"]
        and blob is not None
        and [m["kind"] for m in blob["modules"]] == ["_lib", "cuda_ptx"]
    )
    print(
        f"    pack: {elapsed:.2f} s, {member.stat().st_size} -> {out.stat().st_size} bytes,"
        f" signature {library['signature']}, nm adds {added}: {'ok' if ok else 'WRONG'}"
    )
    return ok


def compare(wheel: Path, nm: str, objdump: str | None) -> bool:
    """Print one block per Mach-O member; True when ffitool and llvm-nm agree on all."""
    proc = subprocess.run(
        [*FFITOOL, "inspect", "--json", str(wheel)], capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        log(f"ffitool inspect failed (exit {proc.returncode}): {proc.stderr.strip()}")
        return False
    document = json.loads(proc.stdout)
    agree = True
    members = 0
    with zipfile.ZipFile(wheel) as archive, tempfile.TemporaryDirectory() as tmp:
        for entry in document["files"]:
            member = entry["path"].split("!", 1)[1]
            libraries = json_libraries({"files": [entry]})
            if entry.get("format") != "Mach-O" or not libraries:
                continue
            members += 1
            extracted = Path(archive.extract(member, tmp))
            expected = nm_ffi_symbols(nm, extracted)
            (library,) = libraries
            reported = {s["symbol"] for s in library["symbols"] if s["defined"]}
            functions = sorted(f["symbol"] for f in library["functions"])
            nm_functions = sorted(n for n in expected if not n.startswith(FFI_MARK + "_"))
            exported = all(s["exported"] for s in library["symbols"] if s["symbol"] in expected)
            ok = reported == expected and functions == nm_functions
            if library["loadable"]:
                ok = ok and exported
            agree = agree and ok
            print(f"\n== {member}")
            print(f"    {library['kind']}, {library['machine']}, signature {library['signature']}")
            print(f"    load commands: {', '.join(load_commands(objdump, extracted))}")
            print(f"    llvm-nm: {len(expected)} FFI symbols, {len(nm_functions)} functions")
            for name in sorted(expected | reported):
                where = (
                    "both"
                    if name in expected and name in reported
                    else ("llvm-nm only" if name in expected else "ffitool only")
                )
                print(f"      {name}  [{where}]")
            if library["loadable"]:
                packed_ok = pack_member(extracted, library["signature"], nm, Path(tmp))
                ok = ok and packed_ok
                agree = agree and packed_ok
            print(f"    {'AGREE' if ok else 'DISAGREE'}")
    print(f"\n{members} Mach-O members: {'all agree' if agree else 'DISAGREEMENT'}")
    return agree and members > 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--wheel", type=Path, help="the wheel to check (default: cached/downloaded)"
    )
    parser.add_argument("--cache-dir", type=Path, default=None, help="bench cache directory")
    args = parser.parse_args(argv)
    wheel = args.wheel or find_wheel(cache_root(args.cache_dir))
    nm = llvm_tool("llvm-nm")
    if wheel is None or nm is None:
        log("cannot check: " + ("no wheel" if wheel is None else "llvm-nm is not installed"))
        return 2
    log(f"wheel {wheel}")
    return 0 if compare(wheel, nm, llvm_tool("llvm-objdump")) else 1


if __name__ == "__main__":
    sys.exit(main())
