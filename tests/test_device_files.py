"""Device code files (cubins and fatbins built by nvcc) given directly, in a directory and in a
wheel: reported as device code, one line each, never as host libraries, and no FFI requirement
applies to them.

The files are the session's nvcc builds (conftest `builds`, about 4 s of nvcc CPU once per
pytest-xdist worker), hence the slow mark.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import jsonschema
import pytest
from conftest import CUBINS, FATBINS, Builds, ffitool
from test_cli import schema
from test_targets import build_wheel

from ffitool.units import format_size

pytestmark = pytest.mark.slow

DEVICE_FILES = sorted([f"{name}.cubin" for name in CUBINS] + [f"{name}.fatbin" for name in FATBINS])


def device_line(path: Path | str, size: int, summary: str, kind: str = "CUDA cubin") -> str:
    return f"{path}   {kind}, {format_size(size)}, {summary}"


def test_a_cubin_given_directly_is_one_line_of_device_code(builds: Builds):
    path = builds.path("sm_90a.cubin")
    run = ffitool("inspect", str(path))
    assert run.returncode == 0, run.stderr
    size = path.stat().st_size
    assert run.stdout == device_line(path, size, "cubin sm_90a, toolkit 13.5, 4 kernels") + "\n"

    run = ffitool("inspect", "--json", str(path))
    document = json.loads(run.stdout)
    jsonschema.validate(document, schema("inspect-3.json"))
    (entry,) = document["files"]
    assert (entry["format"], entry["size"], entry["libraries"]) == ("CUDA cubin", size, [])
    assert entry["device"]["decoder"] == "cubin"
    assert entry["device"]["arch"] == "sm_90a"
    assert entry["device"]["kernel_count"] == 4


def test_a_fatbin_given_directly_lists_its_entries(builds: Builds):
    path = builds.path("multi.fatbin")
    run = ffitool("inspect", str(path))
    assert run.returncode == 0, run.stderr
    summary = "fatbin, 3 entries: sm_80, sm_90a, ptx sm_100* (* compressed)"
    assert run.stdout == device_line(path, path.stat().st_size, summary, "CUDA fatbin") + "\n"


def test_a_directory_of_device_files_is_one_line_each(builds: Builds):
    run = ffitool("inspect", str(builds.directory))
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert [line.split()[0] for line in lines] == [str(builds.path(n)) for n in DEVICE_FILES]
    assert all("  CUDA cubin, " in line or "  CUDA fatbin, " in line for line in lines)
    assert "No FFI functions" not in run.stdout


def test_device_files_in_a_wheel_stored_and_deflated(builds: Builds, tmp_path):
    wheel = tmp_path / "demo-1.0-cp311-cp311-linux_x86_64.whl"
    cubin, fatbin = builds.path("sm_80.cubin"), builds.path("multi.fatbin")
    build_wheel(
        wheel,
        [
            ("pkg/cubins/sm_80.cubin", cubin.read_bytes(), zipfile.ZIP_STORED),
            ("pkg/cubins/multi.fatbin", fatbin.read_bytes(), zipfile.ZIP_DEFLATED),
        ],
    )
    run = ffitool("inspect", str(wheel))
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines() == [
        device_line(
            f"{wheel}!pkg/cubins/sm_80.cubin",
            cubin.stat().st_size,
            "cubin sm_80, toolkit 13.5, 4 kernels",
        ),
        device_line(
            f"{wheel}!pkg/cubins/multi.fatbin",
            fatbin.stat().st_size,
            "fatbin, 3 entries: sm_80, sm_90a, ptx sm_100* (* compressed)",
            "CUDA fatbin",
        ),
    ]
    document = json.loads(ffitool("inspect", "--json", str(wheel)).stdout)
    jsonschema.validate(document, schema("inspect-3.json"))
    assert [(f["format"], f["device"]["decoder"]) for f in document["files"]] == [
        ("CUDA cubin", "cubin"),
        ("CUDA fatbin", "fatbin"),
    ]


def test_no_ffi_requirement_applies_to_device_files(builds: Builds, tmp_path):
    """Before, each cubin was an "executable, cuda" image with no FFI functions: R100 on each."""
    run = ffitool(
        "check", "--require-ffi", "--require-function", "add", "--require-kind", "cuda",
        str(builds.directory),
    )  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    checked = len(DEVICE_FILES)
    assert run.stdout == f"{checked} files checked: 0 errors, 0 warnings, 0 info; passed\n"


@pytest.mark.parametrize(
    ("name", "cut", "message"),
    [
        (
            "sm_80.cubin",
            100,
            "malformed CUDA cubin: section header table past the end of the cubin at offset 40",
        ),
        (
            "multi.fatbin",
            30,
            "malformed CUDA fatbin: fatbin entries past the end of the payload at offset 0",
        ),
    ],
)
def test_a_malformed_device_file_is_unreadable_in_one_line(
    builds: Builds, tmp_path, name, cut, message
):
    damaged = tmp_path / name
    damaged.write_bytes(builds.path(name).read_bytes()[:cut])
    run = ffitool("inspect", str(damaged))
    assert (run.returncode, run.stdout) == (3, "")
    assert run.stderr == f"ffitool: error: {damaged}: {message}\n"
