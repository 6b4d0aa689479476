"""Load one packed library with the real runtime and report what happened, as JSON on stdout.

Run by tests/test_pack_matrix.py in a child process, so that a library that crashes the loader
fails one test instead of killing pytest.  The spec (a JSON file named by argv[1]) gives:
``library``, ``kinds`` (a recording loader is registered for each
``ffi.Module.load_from_bytes.<kind>``), ``stand_in`` (the library each loader returns as its
Module), ``calls`` ([name, [int args]]: packed functions to call) and ``versioned``
([symbol, version]: resolved with dlvsym and called as ``int f(void)``).

The report holds the bytes each loader received (hex, in order), the number of modules the
library module imports, each call's result and each versioned symbol's result.  Nothing is
judged here: the test compares the report with what it expects.
"""

from __future__ import annotations

import ctypes
import json
import sys
from pathlib import Path

import tvm_ffi


def main() -> int:
    spec = json.loads(Path(sys.argv[1]).read_text())
    received: dict[str, list[str]] = {}

    def loader_for(kind: str):
        def load(payload: bytes):
            received.setdefault(kind, []).append(bytes(payload).hex())
            return tvm_ffi.load_module(spec["stand_in"])

        return load

    for kind in spec["kinds"]:
        tvm_ffi.register_global_func(f"ffi.Module.load_from_bytes.{kind}", loader_for(kind))
    module = tvm_ffi.load_module(spec["library"])
    results = [module[name](*args) for name, args in spec["calls"]]
    versioned = []
    if spec["versioned"]:
        # The same handle tvm_ffi holds (dlopen returns it again); dlvsym takes a version name.
        handle = ctypes.CDLL(spec["library"], mode=ctypes.RTLD_LOCAL)._handle
        libc = ctypes.CDLL(None)
        libc.dlvsym.restype = ctypes.c_void_p
        libc.dlvsym.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_char_p]
        for symbol, version in spec["versioned"]:
            address = libc.dlvsym(handle, symbol.encode(), version.encode())
            versioned.append(None if address is None else ctypes.CFUNCTYPE(ctypes.c_int)(address)())
    report = {
        "received": received,
        "imports": len(module.imports),
        "results": results,
        "versioned": versioned,
    }
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
