"""Thousands of truncated and mutated blobs and libraries: each ends cleanly, fast, and small.

A clean end is a result or an FfitoolError with a one-line message; never another exception,
a hang, or memory sized by a corrupted length.
"""

from __future__ import annotations

import random
import struct
import time
import tracemalloc

import pytest
from conftest import FIXTURES

from ffitool.blob import decode, decode_legacy, encode
from ffitool.errors import BlobError, FfitoolError
from ffitool.library import inspect_path

# Thousands of mutated inputs per test.
pytestmark = pytest.mark.slow

EXTREMES = (0, 1, 7, 8, 255, 2**31, 2**32 - 1, 2**63, 2**64 - 1)


def blob_mutants(data: bytes, rng: random.Random, count: int):
    """Every prefix, every aligned u64 set to an extreme value, then random byte flips."""
    for end in range(len(data) + 1):
        yield data[:end]
    for offset in range(0, len(data) - 7, 8):
        for value in (*EXTREMES, len(data), len(data) - offset):
            mutant = bytearray(data)
            mutant[offset : offset + 8] = struct.pack("<Q", value & (2**64 - 1))
            yield bytes(mutant)
    for _ in range(count):
        mutant = bytearray(data)
        for _ in range(rng.randint(1, 4)):
            mutant[rng.randrange(len(mutant))] = rng.randrange(256)
        yield bytes(mutant)


@pytest.mark.parametrize("name", ["ffi_c.blob", "syslib.blob"])
def test_mutated_blobs_end_cleanly_with_bounded_memory(name):
    data = (FIXTURES / name).read_bytes()
    rng = random.Random(1234)
    cases = round_trips = 0
    tracemalloc.start()
    try:
        for mutant in blob_mutants(data, rng, 3000):
            tracemalloc.reset_peak()
            baseline = tracemalloc.get_traced_memory()[0]
            started = time.process_time()
            try:
                decoded = decode(mutant)
            except BlobError as exc:
                assert "\n" not in str(exc)
                assert 0 <= exc.offset <= len(mutant)
            else:
                lossy = {"B201", "B207"} & {f.code for f in decoded.findings}
                if not lossy:  # the README's promise: byte-exact for every such blob
                    assert encode(decoded.blob) == mutant[: decoded.size], mutant.hex()
                    round_trips += 1
            cpu = time.process_time() - started
            grown = tracemalloc.get_traced_memory()[1] - baseline
            assert grown < 64 * 1024 + 16 * len(mutant), (mutant.hex(), grown)
            assert cpu < 0.5, mutant.hex()
            cases += 1
    finally:
        tracemalloc.stop()
    assert cases > 3000
    assert round_trips > 100


def test_mutated_legacy_blobs_end_cleanly():
    data = (FIXTURES / "legacy.blob").read_bytes()
    for mutant in blob_mutants(data, random.Random(99), 2000):
        try:
            decode_legacy(mutant)
        except BlobError as exc:
            assert 0 <= exc.offset <= len(mutant)


def library_mutants(data: bytes, rng: random.Random, count: int):
    """Truncations, extreme 2/4/8-byte fields in the headers, and random flips anywhere."""
    for end in sorted({*range(0, 128), *rng.sample(range(128, len(data)), 150)}):
        yield data[:end]
    header_span = 64 + 64 * 40  # ELF header, then the region where tables usually start
    for _ in range(count):
        mutant = bytearray(data)
        roll = rng.random()
        if roll < 0.4:
            width = rng.choice((2, 4, 8))
            offset = rng.randrange(0, min(header_span, len(data) - width))
            value = rng.choice(EXTREMES) & (2 ** (8 * width) - 1)
            mutant[offset : offset + width] = value.to_bytes(width, "little")
        elif roll < 0.7:
            # Aim at the section header table, which drives every later parse.
            shoff = struct.unpack_from("<Q", data, 0x28)[0]  # an archive has no such field
            offset = rng.randrange(shoff if shoff < len(data) - 8 else 0, len(data) - 8)
            mutant[offset : offset + 8] = rng.choice(EXTREMES).to_bytes(8, "little")
        else:
            for _ in range(rng.randint(1, 8)):
                mutant[rng.randrange(len(mutant))] = rng.randrange(256)
        yield bytes(mutant)


@pytest.mark.parametrize(
    "name",
    [
        "libffi_c.so",
        "libffi_static.a",
        "libffi_cpp.so",
        "macho/libffi_macho.universal.dylib",
        "macho/libffi_macho.a",
    ],
)
def test_mutated_libraries_end_cleanly(tmp_path, name):
    data = (FIXTURES / name).read_bytes()
    rng = random.Random(name)
    path = tmp_path / name.rpartition("/")[2]
    outcomes = {"ok": 0, "error": 0}
    inspect_path(FIXTURES / name)  # the readers load on first use: measure inputs, not imports
    tracemalloc.start()
    try:
        for mutant in library_mutants(data, rng, 1200):
            path.write_bytes(mutant)
            tracemalloc.reset_peak()
            # Garbage not yet collected counts as current memory: measure growth from here.
            baseline = tracemalloc.get_traced_memory()[0]
            started = time.process_time()
            try:
                inspect_path(path)
                outcomes["ok"] += 1
            except FfitoolError as exc:
                message = str(exc)
                assert message.startswith(str(path)), message
                assert "\n" not in message
                outcomes["error"] += 1
            assert time.process_time() - started < 2.0
            grown = tracemalloc.get_traced_memory()[1] - baseline
            assert grown < 1 << 20, grown  # the fixtures are < 70 KB; 1 MiB means a bad length
    finally:
        tracemalloc.stop()
    assert outcomes["ok"] > 100 and outcomes["error"] > 100, outcomes


def test_packing_mutated_libraries_ends_cleanly(tmp_path):
    """pack on damaged hosts: success, or a one-line error with the input untouched."""
    from ffitool.edit.plan import Edits, plan_edits
    from ffitool.pack import existing_modules, pack_library, payload_source

    data = (FIXTURES / "libpack_host_gnu.so").read_bytes()
    payload = tmp_path / "payload.bin"
    payload.write_bytes(b"payload")
    rng = random.Random("pack")
    path = tmp_path / "host.so"
    outcomes = {"ok": 0, "error": 0}
    for mutant in list(library_mutants(data, rng, 90))[-90:]:
        path.write_bytes(mutant)
        try:
            plan = plan_edits(
                existing_modules(path), Edits(add=(("test_alpha", payload_source(str(payload))),))
            )
            pack_library(path, plan, tmp_path / "out.so")
            outcomes["ok"] += 1
        except FfitoolError as exc:
            assert "\n" not in str(exc)
            outcomes["error"] += 1
        assert path.read_bytes() == mutant
        assert not [p for p in tmp_path.iterdir() if p.name.endswith(".ffitool")]
    assert outcomes["ok"] > 10 and outcomes["error"] > 10, outcomes
