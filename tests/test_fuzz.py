"""A mutation fuzzer over blobs and libraries, run through the CLI's own code paths.

Each corpus is fuzzed in a child process for a fixed number of cases (FFITOOL_FUZZ_CASES, 100
by default, for CI; set it higher to fuzz for longer) with a fixed seed (FFITOOL_FUZZ_SEED,
default 7), so a run does the same work on a busy machine as on a quiet one and a failure
reproduces. Every mutant is inspected or decoded and rendered both as text and as JSON; the
child lets any exception but FfitoolError escape. The test then asserts no traceback, no
signal (a SIGBUS or SIGSEGV shows as a negative exit code) and a bounded peak RSS.
"""

from __future__ import annotations

import os
import sys

import pytest
from conftest import FIXTURES, run_measured

# A fuzzing campaign per corpus, each in a measured child process.
pytestmark = pytest.mark.slow

CASES = int(os.environ.get("FFITOOL_FUZZ_CASES", "100"))
SEED = int(os.environ.get("FFITOOL_FUZZ_SEED", "7"))
MEGABYTES = 300

CHILD = r"""
import io, random, sys
from pathlib import Path

from rich.console import Console

from ffitool.cli import render
from ffitool.errors import FfitoolError
from ffitool.library import inspect_blob_file, inspect_path
from ffitool.report import blob_document, inspect_document, write_json

count, seed, kind, work = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], Path(sys.argv[4])
corpus = [Path(p).read_bytes() for p in sys.argv[5:]]
rng = random.Random(seed)
EXTREMES = (0, 1, 7, 8, 255, 2**16, 2**31, 2**32 - 1, 2**63, 2**64 - 1)

def mutate(data):
    data = bytearray(data)
    for _ in range(rng.randint(1, 6)):
        roll = rng.random()
        if roll < 0.3:
            data[rng.randrange(len(data))] = rng.randrange(256)
        elif roll < 0.6:
            width = rng.choice((2, 4, 8))
            at = rng.randrange(0, max(1, len(data) - width)) & ~(width - 1)
            value = rng.choice(EXTREMES) & (256**width - 1)
            data[at:at + width] = value.to_bytes(width, "little")
        elif roll < 0.75:
            data = data[:rng.randrange(len(data) + 1)] or bytearray(b"\0")
        elif roll < 0.9:  # copy a chunk over another place: duplicated rows, headers, names
            size = rng.randint(1, 64)
            source, target = rng.randrange(len(data)), rng.randrange(len(data))
            data[target:target + size] = data[source:source + size]
        else:
            data[rng.randrange(len(data)):] += bytes([rng.randrange(256)]) * rng.randint(1, 32)
    return bytes(data)

path = work / ("mutant.blob" if kind == "blob" else "mutant.so")
console = Console(file=io.StringIO(), width=120, force_terminal=True)
cases = errors = 0
while cases < count:
    mutant = mutate(rng.choice(corpus))
    path.write_bytes(mutant)
    (work / "last").write_bytes(mutant)  # for a reproduction if this one fails
    try:
        if kind == "blob":
            report = inspect_blob_file(path)
            render.print_blob_report(report, console)
            write_json(blob_document(report, lazy=True), lambda text: None)
        else:
            inspected = inspect_path(path)
            render.print_inspected([inspected], console)
            write_json(inspect_document([inspected], [], lazy=True), lambda text: None)
    except FfitoolError as exc:
        assert "\n" not in str(exc), str(exc)
        errors += 1
    console.file.seek(0)
    console.file.truncate()
    cases += 1
print(cases, errors)
"""


def _hostile_blob() -> bytes:
    from test_terminal import hostile_blob

    return hostile_blob()


@pytest.mark.parametrize(
    ("kind", "names"),
    [
        ("blob", ["ffi_c.blob", "syslib.blob", "legacy.blob"]),
        ("library", ["libffi_c.so", "libffi_static.a", "libffi_cpp.so", "libffi_c.ppc64be.so"]),
        ("library", ["macho/libffi_macho.universal.dylib", "macho/libffi_macho.arm64.dylib"]),
    ],
)
def test_fuzzed_inputs_end_cleanly(tmp_path, kind, names):
    corpus = [FIXTURES / name for name in names]
    if kind == "blob":
        hostile = tmp_path / "hostile.blob"
        hostile.write_bytes(_hostile_blob())
        corpus.append(hostile)
    command = [sys.executable, "-c", CHILD, str(CASES), str(SEED), kind, str(tmp_path)]
    code, _, megabytes = run_measured([*command, *map(str, corpus)], tmp_path, timeout=CASES + 300)
    errors_text = (tmp_path / "stderr").read_text(errors="replace")
    assert code == 0, f"exit {code}; reproduce with {tmp_path / 'last'}\n{errors_text}"
    assert not errors_text, errors_text
    assert megabytes < MEGABYTES, megabytes
    cases, errors = map(int, (tmp_path / "stdout").read_text().split())
    assert cases == CASES and 0 < errors < cases, (cases, errors)
