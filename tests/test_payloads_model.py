"""Payload decoding in the model and its output: details on each module, in memory and read
from the file, the findings for a payload that is not its kind, unreadable or too large, and
the JSON and text that show them."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import jsonschema
import pytest
from conftest import FIXTURES, ffitool, run_measured

from ffitool import library, payloads
from ffitool.blob import Blob, Module, encode
from ffitool.library import inspect_blob_file, inspect_path
from ffitool.rules import RULES

PTX = b"//\n// test kernels\n//\n\n.version 8.4\n.target sm_90a\n.address_size 64\n" + (
    b".visible .entry add(.param .u64 a) { ret; }\n.visible .entry scale() { ret; }\n"
)
JUNK = b"hello\x01world"  # no sniffer knows it; the PTX decoder stops at the control byte


def schema(name: str) -> dict:
    return json.loads(resources.files("ffitool").joinpath("schemas", name).read_text())


def raw_blob(*modules: tuple[str, bytes], pad: int = 0) -> bytes:
    """`_lib` importing each module in turn; `pad` adds a first payload of that many bytes of
    a kind nobody decodes (a blob over library._READ_LIMIT is then decoded from the file)."""
    payload_modules = [*((("opaque", b"\0" * pad),) if pad else ()), *modules]
    imports = tuple(range(1, len(payload_modules) + 1))
    return encode(
        Blob((Module("_lib", None, imports), *(Module(k, p) for k, p in payload_modules)))
    )


@pytest.fixture
def cubin_kind(monkeypatch):
    """`cuda_cubin` calls for the cubin decoder (as payloads/cubin.py registers it); its
    decoder never runs here, since the content these tests give it is PTX."""
    monkeypatch.setattr(payloads, "_BY_KIND", {**payloads._BY_KIND, "cuda_cubin": "cubin"})


def codes(findings) -> list[tuple[str, int | None]]:
    return [(f.code, f.offset) for f in findings]


@pytest.mark.parametrize("pad", [0, 17 << 20], ids=["in memory", "from the file"])
def test_details_and_payload_findings(tmp_path, cubin_kind, pad):
    path = tmp_path / "modules.bin"
    path.write_bytes(
        raw_blob(
            ("cuda_ptx", PTX),
            ("cuda_cubin", PTX),
            ("cuda_ptx", JUNK),
            ("my_kernels", PTX),
            ("my_data", JUNK),
            pad=pad,
        )
    )
    report = inspect_blob_file(path)
    first = 2 if pad else 1
    ptx, cubin, junk, sniffed, data = report.modules[first:]
    assert ptx.details is not None and ptx.details.to_json()["entries"] == ["add", "scale"]
    assert cubin.details == ptx.details == sniffed.details
    assert junk.details is None and data.decoded is None
    assert report.modules[0].decoded is None  # `_lib`: no payload
    assert cubin.payload_offset is not None and junk.payload_offset is not None
    assert codes(report.findings) == [
        ("B302", cubin.payload_offset),
        ("B303", junk.payload_offset + 5),
    ]
    mismatch, unreadable = report.findings
    assert "payload is ptx, not the cubin its kind's loader reads" in mismatch.message
    assert f"byte 0x01 in PTX text at blob offset {junk.payload_offset + 5}" in unreadable.message


def test_a_payload_over_the_limit_is_not_read(tmp_path, monkeypatch):
    monkeypatch.setattr(library, "DECODE_LIMIT", len(PTX) - 1)
    path = tmp_path / "modules.bin"
    path.write_bytes(raw_blob(("cuda_ptx", PTX), pad=17 << 20))
    report = inspect_blob_file(path)
    module = report.modules[2]
    assert module.details is None and module.sha256 is not None
    assert codes(report.findings) == [("B304", module.payload_offset)]


@pytest.mark.slow
def test_a_large_payload_costs_no_memory(tmp_path):
    """A 256 MiB PTX payload, over the decoding limit, is hashed in chunks and not read."""
    path = tmp_path / "big.bin"
    with path.open("wb") as out:
        out.write(raw_blob(("cuda_ptx", PTX + b" " * (256 << 20))))
    script = (
        "import sys\nfrom ffitool.library import inspect_blob_file\n"
        f"report = inspect_blob_file({str(path)!r})\n"
        "assert [f.code for f in report.findings] == ['B304'], report.findings\n"
    )
    code, _, peak = run_measured([sys.executable, "-c", script], tmp_path)
    assert code == 0, (tmp_path / "stderr").read_text()
    assert peak < 100


def test_every_payload_rule_is_registered_where_it_is_emitted():
    for code in ("B302", "B303", "B304"):
        assert RULES[code].emitted_by == ("ffitool.library:_payload_findings",)


def test_blob_decode_json_and_text_show_the_details(tmp_path):
    path = tmp_path / "modules.bin"
    path.write_bytes(raw_blob(("cuda_ptx", PTX), ("cuda_ptx", JUNK)))
    result = ffitool("blob", "decode", "--json", str(path))
    document = json.loads(result.stdout)
    jsonschema.validate(document, schema("blob-2.json"))
    assert document["schema"] == "ffitool.blob/2"
    details = [m["details"] for m in document["modules"]]
    assert details[0] is None and details[2] is None
    assert details[1]["decoder"] == "ptx" and details[1]["target"] == ["sm_90a"]
    assert [f["code"] for f in document["findings"]] == ["B303"]
    text = ffitool("blob", "decode", str(path)).stdout
    assert "details" in text
    assert "PTX 8.4 sm_90a, 64-bit, 2 entries: add, scale" in text


@pytest.fixture
def packed_with_ptx(tmp_path):
    """libffi_c.so with a `cuda_ptx` module added by `ffitool pack`."""
    return packed_with(tmp_path, PTX)


def packed_with(tmp_path: Path, payload: bytes) -> Path:
    """A copy of libffi_c.so with `payload` added as a `cuda_ptx` module by `ffitool pack`."""
    source = tmp_path / "libffi_c.so"
    shutil.copyfile(FIXTURES / "libffi_c.so", source)
    added = tmp_path / "payload.ptx"
    added.write_bytes(payload)
    packed = tmp_path / "packed.so"
    result = ffitool(
        "pack", str(source), "--add", f"cuda_ptx:{added}", "-o", str(packed), "--quiet"
    )
    assert result.returncode == 0, result.stderr
    return packed


def test_inspect_json_validates_with_details(packed_with_ptx):
    result = ffitool("inspect", "--json", str(packed_with_ptx))
    document = json.loads(result.stdout)
    jsonschema.validate(document, schema("inspect-3.json"))
    modules = document["files"][0]["libraries"][0]["library_bin"]["modules"]
    assert [m["details"] and m["details"]["decoder"] for m in modules] == [
        None,
        None,
        None,
        "ptx",
    ]
    assert inspect_path(packed_with_ptx).libraries[0].library_bin.modules[3].details is not None


def test_schema_refuses_ptx_details_of_another_shape(packed_with_ptx):
    document = json.loads(ffitool("inspect", "--json", str(packed_with_ptx)).stdout)
    module = document["files"][0]["libraries"][0]["library_bin"]["modules"][3]
    module["details"]["surprise"] = 1
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(document, schema("inspect-3.json"))


def test_check_reports_an_unreadable_payload_at_its_file_offset(tmp_path):
    """`check` reads without hashing payloads, and still decodes them."""
    packed = packed_with(tmp_path, JUNK)
    document = json.loads(ffitool("inspect", "--json", str(packed)).stdout)
    blob = document["files"][0]["libraries"][0]["library_bin"]
    at = blob["modules"][3]["payload_offset"] + 5
    result = ffitool("check", "--format", "json", str(packed))
    assert result.returncode == 0  # a warning
    (found,) = json.loads(result.stdout)["files"][0]["findings"]
    assert (found["code"], found["offset"], found["file_offset"]) == (
        "B303",
        at,
        blob["file_offset"] + at,
    )


@pytest.mark.slow
def test_real_cubin_and_ptx_under_each_others_kind(tmp_path):
    """nvcc's cubin under `cuda_ptx` and its PTX under `cuda_cubin`: each is decoded as what
    it is, with B302 naming what the kind called for."""
    if "cubin" not in payloads._DECODERS:
        pytest.skip("no cubin decoder registered (payloads/cubin.py)")
    from test_payloads_ptx import KERNELS, nvidia_tool

    source = tmp_path / "kernels.cu"
    source.write_text(KERNELS)
    built = {}
    for flag, suffix in (("-cubin", "cubin"), ("-ptx", "ptx")):
        out = tmp_path / f"kernels.{suffix}"
        command = [str(nvidia_tool("nvcc")), flag, "-arch=sm_90a", str(source), "-o", str(out)]
        subprocess.run(command, check=True, capture_output=True, timeout=300)
        built[suffix] = out.read_bytes()
    path = tmp_path / "swapped.bin"
    path.write_bytes(raw_blob(("cuda_ptx", built["cubin"]), ("cuda_cubin", built["ptx"])))
    report = inspect_blob_file(path)
    cubin, ptx = report.modules[1:]
    assert cubin.details is not None and cubin.details.decoder == "cubin"
    assert ptx.details is not None and ptx.details.decoder == "ptx"
    assert codes(report.findings) == [
        ("B302", cubin.payload_offset),
        ("B302", ptx.payload_offset),
    ]
    assert "the payload is cubin, not the ptx" in report.findings[0].message
    assert "the payload is ptx, not the cubin" in report.findings[1].message


@dataclass(frozen=True)
class _Hostile:
    """Details whose summary is what a hostile payload's names could make of it."""

    decoder: str = "hostile"

    def summary(self) -> str:
        return "\x1b[31mred\u202e" * 1000

    def to_json(self) -> dict:
        return {"decoder": self.decoder}


def test_the_details_column_is_escaped_and_bounded():
    from rich.console import Console

    from ffitool.cli.render import CELL_CHARS, _modules_table
    from ffitool.library import ModuleInfo
    from ffitool.payloads import Decoded

    module = ModuleInfo(1, "k", 3, None, (), 8, Decoded(_Hostile()))
    console = Console(width=1 << 16, record=True, file=io.StringIO())
    console.print(_modules_table([module]))
    text = console.export_text()
    assert "\x1b" not in text and "\u202e" not in text
    assert "\\x1b[31mred\\u202e" in text
    (row,) = [line for line in text.splitlines() if "\\x1b" in line]
    assert len(row) < CELL_CHARS + 200
