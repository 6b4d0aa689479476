"""The blob codec: golden bytes, exact errors and findings with offsets, round trips."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ffitool.blob import (
    Blob,
    Module,
    decode,
    decode_legacy,
    encode,
    encoded_size,
    find_cycle,
)
from ffitool.errors import BlobError
from ffitool.findings import Severity

# The worked example of the format notes: `_lib` importing one `cuda_ptx` module DE AD BE EF.
WORKED_EXAMPLE = bytes.fromhex(
    "5800000000000000"
    "0300000000000000"
    "0000000000000000"
    "0100000000000000"
    "0100000000000000"
    "0100000000000000"
    "0100000000000000"
    "0400000000000000"
    "5f6c6962"
    "0800000000000000"
    "637564615f707478"
    "0400000000000000"
    "deadbeef"
)


def q(*values: int) -> bytes:
    return struct.pack(f"<{len(values)}Q", *values)


def s(text: bytes) -> bytes:
    return q(len(text)) + text


def raw_blob(indptr: list[int], children: list[int], entries: list[bytes]) -> bytes:
    body = q(len(indptr), *indptr) + q(len(children), *children) + b"".join(entries)
    return q(len(body)) + body


def test_worked_example_decodes_exactly():
    decoded = decode(WORKED_EXAMPLE)
    assert len(WORKED_EXAMPLE) == 96
    assert decoded.nbytes == 88
    assert decoded.size == 96
    assert decoded.blob == Blob(
        (Module("_lib", None, (1,)), Module("cuda_ptx", b"\xde\xad\xbe\xef"))
    )
    assert [
        (layout.key_offset, layout.payload_offset, layout.payload_size)
        for layout in decoded.layouts
    ] == [
        (56, None, 0),
        (68, 92, 4),
    ]
    assert decoded.findings == ()


def test_worked_example_encodes_exactly():
    blob = Blob((Module("_lib", None, (1,)), Module("cuda_ptx", b"\xde\xad\xbe\xef")))
    assert encode(blob) == WORKED_EXAMPLE
    assert encoded_size(blob) == 96


def test_payload_is_a_view_not_a_copy():
    data = bytearray(WORKED_EXAMPLE)
    payload = decode(data).blob.modules[1].payload
    data[92] = 0x11
    assert bytes(payload) == b"\x11\xad\xbe\xef"


def test_decode_accepts_padding_after_nbytes():
    assert decode(WORKED_EXAMPLE + b"\0" * 5).nbytes == 88


@pytest.mark.parametrize(
    ("data", "message", "offset"),
    [
        (b"", "truncated nbytes header: need 8 bytes, 0 left", 0),
        (b"\x58\x00", "truncated nbytes header: need 8 bytes, 2 left", 0),
        (q(89) + WORKED_EXAMPLE[8:], "nbytes 89 exceeds the 88 bytes available", 0),
        (q(8) + q(0), "indptr has 0 entries; the runtime needs at least 2 (one module)", 8),
        (q(16) + q(1, 0), "indptr has 1 entries; the runtime needs at least 2 (one module)", 8),
        (q(8) + q(5), "indptr count 5 needs 40 bytes, 0 left", 8),
        (q(24) + q(2, 0, 0), "truncated child_indices count: need 8 bytes, 0 left", 32),
        (
            q(56) + q(3, 0, 0, 0) + q(0) + s(b"_lib") + b"\x03\0\0\0",
            "truncated module 1 key size: need 8 bytes, 4 left",
            60,
        ),
        (q(36) + q(2, 0, 0) + q(0) + b"\x03\0\0\0", "1 modules need at least 8 bytes, 4 left", 8),
        (
            raw_blob([0, 0], [], [q(9) + b"_lib"]),
            "module 0 key size 9 exceeds the 4 bytes left",
            40,
        ),
        (
            raw_blob([0, 0], [], [q(0)]),
            "module 0 key is empty, which the runtime's reader rejects",
            40,
        ),
        (
            raw_blob([0, 0], [], [s(b"k"), q(0)]),
            "module 0 (k) payload is empty, which the runtime's reader rejects",
            49,
        ),
        (
            raw_blob([0, 0], [], [q(0) + s(b"payload")]),
            "module 0 key is empty, which the runtime's reader rejects",
            40,
        ),
        (
            raw_blob([0, 0], [], [s(b"k") + q(5) + b"xy"]),
            "module 0 (k) payload size 5 exceeds the 2 bytes left",
            49,
        ),
        (
            raw_blob([0, 0], [], [s(b"k\xff") + q(5) + b"xy"]),
            "module 0 (k\\xff) payload size 5 exceeds the 2 bytes left",
            50,
        ),
        (
            raw_blob([0, 1], [1], [s(b"_lib")]),
            "module 0 imports module 1, but there are 1 modules",
            40,
        ),
        (raw_blob([0, 2], [1], [s(b"_lib")]), "indptr[1] = 2 points past the 1 child indices", 24),
    ],
)
def test_runtime_rejections_carry_message_and_offset(data, message, offset):
    with pytest.raises(BlobError) as caught:
        decode(data)
    assert caught.value.what == message
    assert caught.value.offset == offset
    assert str(caught.value) == f"{message} at blob offset {offset}"


def test_decode_stops_at_the_end_of_its_buffer():
    with pytest.raises(BlobError, match="nbytes 88 exceeds the 80 bytes available"):
        decode(memoryview(WORKED_EXAMPLE)[:88])


def test_hostile_counts_are_refused_from_the_count_alone():
    # A count of 2**61 entries must be refused from the count alone.
    with pytest.raises(BlobError, match=r"indptr count 2305843009213693952 needs"):
        decode(q(16) + q(1 << 61, 0))
    with pytest.raises(BlobError, match=r"module 0 key size 18446744073709551615 exceeds"):
        decode(raw_blob([0, 0], [], [q(2**64 - 1)]))


def codes(data: bytes) -> list[tuple[str, str, int | None]]:
    return [(f.code, f.severity.value, f.offset) for f in decode(data).findings]


def test_trailing_bytes_are_a_warning_with_offset():
    body = WORKED_EXAMPLE[8:] + b"\xff" * 3
    data = q(len(body)) + body
    assert codes(data) == [("B201", "warning", 96)]
    assert (
        decode(data).findings[0].message == "3 trailing bytes after the last module (inside nbytes)"
    )


def test_cycle_is_found_and_reported():
    data = raw_blob([0, 1, 2], [1, 0], [s(b"_lib"), s(b"k") + s(b"x")])
    decoded = decode(data)
    assert find_cycle([m.imports for m in decoded.blob.modules]) == [0, 1, 0]
    assert [(f.code, f.message) for f in decoded.findings] == [("B202", "import cycle 0 -> 1 -> 0")]


def test_shapes_tvm_never_writes():
    entries = [s(b"_lib"), s(b"_lib"), s(b"k") + s(b"x"), s(b"k") + s(b"y")]
    data = raw_blob([0, 2, 3, 3, 3], [2, 2, 2], entries)
    found = {(f.code, f.message) for f in decode(data).findings}
    assert found == {
        ("B204", "module 0 imports [2, 2]: unsorted or duplicated"),
        ("B205", "2 `_lib` modules (at [0, 1]); TVM writes one"),
        ("B206", "module(s) [1, 3] are not reachable from the root"),
    }
    # The runtime loads such a blob, but drops the modules nothing imports.
    severities = {f.code: f.severity for f in decode(data).findings}
    assert severities == {
        "B204": Severity.WARNING,
        "B205": Severity.WARNING,
        "B206": Severity.ERROR,
    }


def test_backward_import_without_cycle():
    data = raw_blob([0, 1, 1, 2], [2, 1], [s(b"_lib"), s(b"a") + s(b"x"), s(b"b") + s(b"y")])
    assert [(f.code, f.message) for f in decode(data).findings] == [
        ("B203", "module 2 imports earlier module(s) [1]")
    ]


def test_non_canonical_indptr_is_reported():
    data = raw_blob([1, 1], [0, 0], [s(b"_lib")])
    assert [(f.code, f.message, f.offset) for f in decode(data).findings] == [
        ("B207", "indptr starts at 1, not 0", 8),
        ("B207", "1 child indices are not referenced by indptr", 32),
    ]


def test_invalid_utf8_kind_round_trips_exactly():
    data = raw_blob([0, 0], [], [s(b"k\xff") + s(b"p")])
    decoded = decode(data)
    assert [f.code for f in decoded.findings] == ["B208"]
    assert encode(decoded.blob) == data


def test_encode_rejects_what_the_runtime_rejects():
    with pytest.raises(ValueError, match="at least one module"):
        encode(Blob(()))
    with pytest.raises(ValueError, match="empty or missing payload"):
        encode(Blob((Module("k", b""),)))
    with pytest.raises(ValueError, match="imports 5"):
        encode(Blob((Module("_lib", None, (5,)),)))
    with pytest.raises(ValueError, match="kind cannot be empty"):
        encode(Blob((Module("", b"x"),)))
    with pytest.raises(ValueError, match="carries no payload"):
        encode(Blob((Module("_lib", b"x"),)))


def test_legacy_blob_reads_up_to_the_first_unknown_module():
    body = (
        q(3) + s(b"_import_tree") + q(3, 0, 1, 1) + q(1, 1) + s(b"_lib") + s(b"cuda") + b"\x01\x02"
    )
    legacy = decode_legacy(q(len(body)) + body)
    assert legacy.kinds == ("_lib", "cuda")
    assert legacy.imports == ((1,), ())
    assert [(f.code, f.offset) for f in legacy.findings] == [("B301", 96)]


kinds = st.one_of(
    st.just("_lib"),
    st.text(min_size=1, max_size=12).filter(lambda k: k != "_lib"),
)


@st.composite
def blobs(draw) -> Blob:
    count = draw(st.integers(min_value=1, max_value=8))
    modules = []
    for _ in range(count):
        kind = draw(kinds)
        payload = None if kind == "_lib" else draw(st.binary(min_size=1, max_size=64))
        imports = tuple(draw(st.lists(st.integers(0, count - 1), max_size=4)))
        modules.append(Module(kind, payload, imports))
    return Blob(tuple(modules))


@settings(max_examples=400, deadline=None)
@given(blobs())
@pytest.mark.slow
def test_decode_of_encode_is_identity(blob):
    data = encode(blob)
    assert len(data) == encoded_size(blob)
    assert decode(data).blob == blob


@settings(max_examples=400, deadline=None)
@given(blobs())
@pytest.mark.slow
def test_encode_of_decode_is_identity(blob):
    data = encode(blob)
    assert encode(decode(data).blob) == data


def overlapping_rows(modules: int, children: int) -> tuple[list[int], list[int]]:
    """indptr [0, C, 0, C, ...]: every other module claims all C children."""
    indptr = [0 if i % 2 == 0 else children for i in range(modules + 1)]
    return indptr, [1 + j % (modules - 1) for j in range(children)]


def test_overlapping_rows_past_the_edge_bound_are_not_expanded():
    """1000 children, 140 modules: the 68th full row (module 134) passes 2 * 1000 + 65536
    edges. Without the bound every even module would import all 1000."""
    indptr, children = overlapping_rows(140, 1000)
    decoded = decode(raw_blob(indptr, children, [s(b"_lib")] * 140))
    assert decoded.imports == ((),) * 140
    assert [(f.code, f.message, f.offset) for f in decoded.findings] == [
        ("B207", "indptr decreases at entry 2 (1000 -> 0)", 8 + 8 * 3),
        ("B207", "1000 child indices are not referenced by indptr", 8 + 8 * 142),
        (
            "B209",
            "import rows overlap: by module 134 they expand to more than 67536 edges"
            " from 1000 child indices; the import tree is not expanded",
            16 + 8 * 135,
        ),
    ]


def test_a_bad_child_index_no_row_reaches_is_only_unreferenced():
    """The runtime only reads the children that rows name: index 7 of 1 module is left over."""
    data = raw_blob([0, 0], [7], [s(b"_lib")])
    assert [(f.code, f.message) for f in decode(data).findings] == [
        ("B207", "1 child indices are not referenced by indptr")
    ]
    data = raw_blob([0, 1, 1], [1, 7], [s(b"_lib"), s(b"k") + s(b"x")])
    assert [(f.code, f.message) for f in decode(data).findings] == [
        ("B207", "1 child indices are not referenced by indptr")
    ]


def test_a_legacy_tree_past_the_edge_bound_is_not_expanded():
    indptr, children = overlapping_rows(140, 1000)
    tree = s(b"_import_tree") + q(len(indptr), *indptr) + q(len(children), *children)
    body = q(2) + tree + s(b"_lib")
    legacy = decode_legacy(q(len(body)) + body)
    assert legacy.kinds == ("_lib",)
    assert legacy.imports == ((),) * 140
    assert [(f.code, f.offset) for f in legacy.findings] == [("B209", 44 + 8 * 135)]


def test_a_legacy_blob_without_a_tree_or_a_module():
    body = q(2) + s(b"_lib") + s(b"_lib")
    legacy = decode_legacy(q(len(body)) + body)
    assert (legacy.kinds, legacy.imports, legacy.findings) == (("_lib", "_lib"), None, ())
