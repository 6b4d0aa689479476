"""Load a packed library with tvm_ffi and report what the payload's loader received.

    python bench/gen/tvm_load_check.py LIBRARY KIND STAND_IN

Prints one JSON object: `received`, one {"size", "sha256"} per call of the loader of KIND
(in call order), the root module's `kind` and its number of `imports`.

Why a separate process started by bench/pack.py: the runtime copies every payload into
memory (a 1 GiB module costs GBs), so its peak RSS must be measured alone, not on top
of the benchmark's; and the benchmark itself stays free of third-party imports.

A loader must return a Module and Python cannot define a new Module kind, so the loader
returns a fresh load of STAND_IN (any tvm_ffi library, e.g. fixtures/bin/libffi_cpp.so).
"""

import hashlib
import json
import sys


def main(argv: list[str]) -> int:
    """Register the loader, load LIBRARY, print the report; exceptions propagate (exit 1)."""
    if len(argv) != 4:
        print(__doc__, file=sys.stderr)
        return 2
    library, kind, stand_in = argv[1:]
    import tvm_ffi  # here, so that a usage error does not pay for the import

    received: list[dict[str, object]] = []

    def load(payload: bytes) -> object:
        """Hash what the runtime hands over: the bytes it read from the library."""
        received.append({"size": len(payload), "sha256": hashlib.sha256(payload).hexdigest()})
        return tvm_ffi.load_module(stand_in)

    tvm_ffi.register_global_func(f"ffi.Module.load_from_bytes.{kind}", load, override=True)
    module = tvm_ffi.load_module(library)
    report = {"received": received, "kind": module.kind, "imports": len(module.imports)}
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
