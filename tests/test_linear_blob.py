"""Blobs cost time and memory linear in their size, with small constants (issue 17, item 1).

Before, a 15.6 MB blob of 600k one-byte modules took 8.8 s of CPU and 517 MB to `blob decode`,
7.5 s and 477 MB with `--json`, and 8.4 s and 531 MB to `inspect` in a library: a Module, a
payload view, a layout and a pread per field for every module, and a B206 message listing
599,999 indices that rich then wrapped. Now it is about 3.5 s (4.3 s with `--json`) and 235 MB.

Each case runs ffitool in a child and bounds its CPU seconds (rusage: a busy machine stretches
wall-clock time, not CPU time) and its peak RSS, generously for a loaded 2-core machine but far
below the cost before. Codec facts that make the cost linear (one read per 64 KiB of fields,
one string per distinct kind, one expanded legacy tree) are tested in-process, exactly.
"""

from __future__ import annotations

import hashlib
import json
import struct
import subprocess
from collections.abc import Iterable
from pathlib import Path

import pytest
from conftest import require_tool
from test_bounds import measured

from ffitool.blob import _CURSOR_WINDOW, Span, decode, decode_legacy, encode
from ffitool.errors import BlobError
from ffitool.findings import LIST_ITEMS

# Inputs large enough (hundreds of thousands of modules) to tell linear from quadratic.
pytestmark = pytest.mark.slow

MODULES = 600_000
"""The issue's blob: 600k one-byte modules, 26 bytes each (indptr entry, key, payload)."""


def q(*values: int) -> bytes:
    return struct.pack(f"<{len(values)}Q", *values)


def s(text: bytes) -> bytes:
    return q(len(text)) + text


def raw_blob(indptr: list[int], children: list[int], entries: bytes) -> bytes:
    body = q(len(indptr), *indptr) + q(len(children), *children) + entries
    return q(len(body)) + body


def flat_blob(count: int, payload: bytes = b"x") -> bytes:
    """`count` modules of kind `k`, none importing anything: all but the root unreachable."""
    return raw_blob([0] * (count + 1), [], (s(b"k") + s(payload)) * count)


def capped(first: Iterable[int], more: int) -> str:
    """How a message quotes a long list: its first LIST_ITEMS items, then how many more."""
    return "[" + ", ".join(map(str, first)) + f", ... ({more} more)]"


def unreachable_message(count: int) -> str:
    listed = capped(range(1, LIST_ITEMS + 1), count - 1 - LIST_ITEMS)
    return f"module(s) {listed} are not reachable from the root"


def library_with(tmp_path: Path, blob: Path, symbol: str = "__tvm_ffi__library_bin") -> Path:
    """A shared library whose `symbol` holds the bytes of `blob` (assembled, not compiled:
    gcc takes minutes over a 15 MB C initializer and milliseconds over `.incbin`)."""
    gcc = require_tool("gcc")
    source = tmp_path / "blob.s"
    source.write_text(
        f".section .rodata\n.globl {symbol}\n.type {symbol},@object\n.p2align 3\n{symbol}:\n"
        f'.incbin "{blob}"\n.size {symbol}, .-{symbol}\n'
    )
    library = tmp_path / "libblob.so"
    subprocess.run(
        [gcc, "-shared", "-nostdlib", "-o", library, source], check=True, capture_output=True
    )
    return library


def test_600k_one_byte_modules_decode_in_linear_time_and_memory(tmp_path):
    path = tmp_path / "flat.blob"
    path.write_bytes(flat_blob(MODULES))
    assert path.stat().st_size == 15_600_032

    code, out, cpu, megabytes = measured(tmp_path, "blob", "decode", path)
    assert code == 0
    text = out.decode()
    assert text.splitlines()[0] == f"{path}   raw blob, 14.9 MiB, nbytes 15600024"
    assert "Modules (600000)" in text and "598000 more not shown; --json lists them all" in text
    assert unreachable_message(MODULES) in text
    assert len(out) < 1 << 20  # 2000 rows and bounded messages, not one per module
    assert cpu < 8 and megabytes < 320, (cpu, megabytes)

    code, out, cpu, megabytes = measured(tmp_path, "blob", "decode", "--json", path)
    assert code == 0
    document = json.loads(out)
    assert len(document["modules"]) == MODULES
    assert document["modules"][-1] == {
        "index": MODULES - 1,
        "kind": "k",
        "size": 1,
        "sha256": hashlib.sha256(b"x").hexdigest(),
        "imports": [],
        "payload_offset": 8 * (MODULES + 4) + 18 * MODULES - 1,
        "details": None,
    }
    assert document["findings"] == [
        {
            "code": "B206",
            "severity": "error",
            "message": unreachable_message(MODULES),
            "offset": 8 * (MODULES + 4),
        }
    ]
    assert cpu < 10 and megabytes < 320, (cpu, megabytes)


def test_600k_one_byte_modules_in_a_library(tmp_path):
    blob = tmp_path / "flat.blob"
    blob.write_bytes(flat_blob(MODULES))
    library = library_with(tmp_path, blob)

    code, out, cpu, megabytes = measured(tmp_path, "inspect", library)
    assert code == 0
    text = out.decode()
    assert "Modules (600000)" in text and unreachable_message(MODULES) in text
    assert cpu < 8 and megabytes < 320, (cpu, megabytes)

    code, out, cpu, megabytes = measured(tmp_path, "inspect", "--json", library)
    assert code == 0
    (entry,) = json.loads(out)["files"][0]["libraries"]
    modules = entry["library_bin"]["modules"]
    assert len(modules) == MODULES and {m["sha256"] for m in modules} == {
        hashlib.sha256(b"x").hexdigest()
    }
    assert [f["code"] for f in entry["library_bin"]["findings"]] == ["B206"]
    assert cpu < 10 and megabytes < 320, (cpu, megabytes)


def test_a_blob_over_16_mib_of_tiny_modules_is_read_in_chunks(tmp_path):
    """Past 16 MiB the blob is decoded from the file (`_FileRange`) and its payloads hashed
    there: 700k modules cost 5 s and 260 MB, where they cost 9.6 s and 518 MB before."""
    count = 700_000
    path = tmp_path / "big.blob"
    path.write_bytes(flat_blob(count, b"xy"))
    assert path.stat().st_size > 16 << 20
    code, out, cpu, megabytes = measured(tmp_path, "blob", "decode", "--json", path)
    assert code == 0
    document = json.loads(out)
    assert len(document["modules"]) == count
    assert document["modules"][-1]["sha256"] == hashlib.sha256(b"xy").hexdigest()
    assert document["modules"][-1]["payload_offset"] == 8 * (count + 4) + 19 * count - 2
    assert cpu < 12 and megabytes < 360, (cpu, megabytes)


def test_import_lists_and_tree_findings_cost_linear_time(tmp_path):
    """Shapes whose findings once listed every module: the root imports 100k modules in
    reverse order (B204), the last imports all others but the root, earlier than itself
    (B203), and all are `_lib` (B205). Each message lists 64 indices and counts the rest."""
    count = 100_000
    children = list(range(count - 1, 0, -1)) + list(range(1, count - 1))
    indptr = [0] + [count - 1] * (count - 1) + [len(children)]
    path = tmp_path / "rows.blob"
    path.write_bytes(raw_blob(indptr, children, s(b"_lib") * count))
    code, out, cpu, megabytes = measured(tmp_path, "blob", "decode", "--json", path)
    assert code == 0
    document = json.loads(out)
    first_key = 8 * (len(indptr) + len(children) + 3)
    assert [(f["code"], f["message"], f["offset"]) for f in document["findings"]] == [
        (
            "B204",
            "module 0 imports"
            f" {capped(range(count - 1, count - 1 - LIST_ITEMS, -1), count - 1 - LIST_ITEMS)}"
            ": unsorted or duplicated",
            first_key,
        ),
        (
            "B203",
            f"module {count - 1} imports earlier module(s)"
            f" {capped(range(1, LIST_ITEMS + 1), count - 2 - LIST_ITEMS)}",
            first_key,
        ),
        (
            "B205",
            f"{count} `_lib` modules (at {capped(range(LIST_ITEMS), count - LIST_ITEMS)});"
            " TVM writes one",
            first_key,
        ),
    ]
    assert document["modules"][count - 1]["imports"] == list(range(1, count - 1))
    assert cpu < 6 and megabytes < 200, (cpu, megabytes)


def test_a_cycle_through_every_module_is_one_bounded_finding():
    count = 50_000
    data = raw_blob(list(range(count + 1)), [*range(1, count), 0], (s(b"k") + s(b"x")) * count)
    (found,) = decode(data).findings
    steps = " -> ".join(map(str, range(LIST_ITEMS)))
    assert found.code == "B202"
    assert found.message == f"import cycle {steps} -> ... ({count - LIST_ITEMS} more) -> 0"


def test_a_long_kind_repeated_per_module_is_decoded_once():
    """200 modules of one 64 KiB kind hold one string (12.8 MB as separate ones)."""
    kind = b"k" * (64 << 10)
    decoded = decode(raw_blob([0] * 201, [], (s(kind) + s(b"x")) * 200))
    assert len(decoded.kinds) == 200 and len({id(k) for k in decoded.kinds}) == 1
    # Undecodable, the kind is still decoded once, and each module gets its B208.
    decoded = decode(raw_blob([0] * 4, [], (s(b"k\xff") + s(b"x")) * 3))
    assert len({id(k) for k in decoded.kinds}) == 1
    assert [(f.code, f.message) for f in decoded.findings if f.code == "B208"] == [
        ("B208", f"module {i} kind is not valid UTF-8") for i in range(3)
    ]


class CountingSource:
    """A ByteSource over bytes that counts its reads, as `_FileRange` counts preads."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.reads = 0

    def __len__(self) -> int:
        return len(self.data)

    def read(self, start: int, length: int) -> bytes:
        self.reads += 1
        return self.data[start : start + length]

    def span(self, start: int, length: int) -> Span:
        return Span(start, length)


def mixed_blob(count: int) -> bytes:
    """Modules whose fields fall across every read boundary: payloads of 1 to 300 bytes, and
    a `_lib` module every seventh."""
    entries = b"".join(
        s(b"_lib") if i % 7 == 3 else s(b"kind%d" % (i % 5)) + s(bytes(1 + i * 37 % 300))
        for i in range(count)
    )
    return raw_blob([0] * (count + 1), [], entries)


def test_a_file_backed_blob_is_read_a_chunk_at_a_time():
    """Before, every field was one read (one pread from a file): 3 per module."""
    data = mixed_blob(20_000)
    source = CountingSource(data)
    from_source = decode(source)
    assert source.reads <= len(data) // _CURSOR_WINDOW + 2 < 200
    in_memory = decode(data)
    assert from_source.kinds == in_memory.kinds
    assert from_source.layouts == in_memory.layouts
    assert from_source.findings == in_memory.findings
    module = from_source.blob.modules[1]
    assert module.payload == Span(in_memory.layouts[1].payload_offset, 38)
    with pytest.raises(ValueError, match="module 'kind0' needs a payload in memory"):
        encode(from_source.blob)
    assert encode(in_memory.blob) == data


@pytest.mark.parametrize(
    ("tail", "message"),
    [
        (q(5) + b"kin", "module 20000 key size 5 exceeds the 3 bytes left"),
        (s(b"kind") + q(9) + b"p", "module 20000 (kind) payload size 9 exceeds the 1 bytes left"),
        (s(b"kind") + b"\0", "truncated module 20000 (kind) payload size: need 8 bytes, 1 left"),
    ],
)
def test_a_file_backed_blob_refuses_what_the_runtime_refuses(tail, message):
    """The last module is cut short after the reads have moved through the whole file."""
    good = mixed_blob(20_000)
    count = 20_001
    body = q(count + 1) + bytes(8 * (count + 1)) + q(0) + good[8 + 8 * 20_002 + 8 :] + tail
    with pytest.raises(BlobError) as caught:
        decode(CountingSource(q(len(body)) + body))
    assert caught.value.what == message
    assert caught.value.offset == len(body) + 8 - len(tail) + (12 if "payload" in message else 0)


def test_a_legacy_blob_expands_only_its_last_import_tree():
    """Every tree is checked, only the last (the one the runtime keeps) expanded: 2000 trees
    of 6 KB that each expand to 65,792 edges cost what their bytes do."""
    children, rows = 256, 514
    indptr = [0, children] * (rows // 2) + [0]
    tree = s(b"_import_tree") + q(rows + 1, *indptr) + q(children, *([1] * children))
    last = s(b"_import_tree") + q(3, 0, 1, 1) + q(1, 1)
    body = q(2003) + tree * 2000 + last + s(b"_lib") * 2
    legacy = decode_legacy(q(len(body)) + body)
    assert legacy.kinds == ("_lib", "_lib")
    assert legacy.imports == ((1,), ())
    assert legacy.findings == ()


def test_a_legacy_blob_of_300k_lib_entries(tmp_path):
    """300k `_lib` entries (3.6 MB) and then a module without a length prefix, in a library."""
    count = 300_000
    body = q(count + 1) + s(b"_lib") * count + s(b"cuda") + b"\x01"
    blob = tmp_path / "legacy.blob"
    blob.write_bytes(q(len(body)) + body)
    library = library_with(tmp_path, blob, "__tvm_dev_mblob")
    code, out, cpu, megabytes = measured(tmp_path, "inspect", "--json", library)
    assert code == 0
    (entry,) = json.loads(out)["files"][0]["libraries"]
    assert len(entry["library_bin"]["modules"]) == count + 1
    assert [f["code"] for f in entry["library_bin"]["findings"]] == ["L300", "B301"]
    assert cpu < 6 and megabytes < 160, (cpu, megabytes)
