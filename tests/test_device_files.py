"""Device code files (cubins and fatbins built by nvcc) given directly, in a directory and in a
wheel: reported as device code, one line each, never as host libraries, and no FFI requirement
applies to them.

The files are the session's nvcc builds (conftest `builds`, about 4 s of nvcc CPU once per
pytest-xdist worker), hence the slow mark on the tests that use them. `check --require-arch`
(R105) over those files and over payloads packed into a library; its compatibility rules alone
in the fast loop.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import jsonschema
import pytest
from conftest import CUBINS, FATBINS, FIXTURES, Builds, ffitool
from test_cli import schema
from test_targets import build_wheel

from ffitool.payloads import decode_payload
from ffitool.payloads.archs import DeviceCode, device_code, runs_on
from ffitool.units import format_size

DEVICE_FILES = sorted([f"{name}.cubin" for name in CUBINS] + [f"{name}.fatbin" for name in FATBINS])


def device_line(path: Path | str, size: int, summary: str, kind: str = "CUDA cubin") -> str:
    return f"{path}   {kind}, {format_size(size)}, {summary}"


@pytest.mark.slow
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


@pytest.mark.slow
def test_extract_says_a_device_file_holds_no_blob(builds: Builds, tmp_path):
    path = builds.path("sm_90a.cubin")
    run = ffitool("extract", str(path), "-d", str(tmp_path / "out"))
    assert (run.returncode, run.stdout) == (3, "")
    assert run.stderr == (
        f"ffitool: error: {path}: this is a CUDA cubin file (device code), which holds no blob;"
        " `ffitool inspect` shows its architectures and kernels\n"
    )
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_a_fatbin_given_directly_lists_its_entries(builds: Builds):
    path = builds.path("multi.fatbin")
    run = ffitool("inspect", str(path))
    assert run.returncode == 0, run.stderr
    summary = "fatbin, 3 entries: sm_80, sm_90a, ptx sm_100* (* compressed)"
    assert run.stdout == device_line(path, path.stat().st_size, summary, "CUDA fatbin") + "\n"


@pytest.mark.slow
def test_a_directory_of_device_files_is_one_line_each(builds: Builds):
    run = ffitool("inspect", str(builds.directory))
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert [line.split()[0] for line in lines] == [str(builds.path(n)) for n in DEVICE_FILES]
    assert all("  CUDA cubin, " in line or "  CUDA fatbin, " in line for line in lines)
    assert "No FFI functions" not in run.stdout


@pytest.mark.slow
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


@pytest.mark.slow
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
@pytest.mark.slow
def test_a_malformed_device_file_is_unreadable_in_one_line(
    builds: Builds, tmp_path, name, cut, message
):
    damaged = tmp_path / name
    damaged.write_bytes(builds.path(name).read_bytes()[:cut])
    run = ffitool("inspect", str(damaged))
    assert (run.returncode, run.stdout) == (3, "")
    assert run.stderr == f"ffitool: error: {damaged}: {message}\n"


@pytest.mark.slow
@pytest.mark.parametrize(
    ("archs", "code", "lines"),
    [
        (
            "sm_100,sm_80",
            1,
            [
                "{d}/sm_100.cubin",
                "  R105 error: the CUDA cubin has no code for sm_80 (it has sm_100)",
                "{d}/sm_80.cubin",
                "  R105 error: the CUDA cubin has no code for sm_100 (it has sm_80)",
                "{d}/sm_90a.cubin",
                "  R105 error: the CUDA cubin has no code for sm_100 (it has sm_90a)",
                "  R105 error: the CUDA cubin has no code for sm_80 (it has sm_90a)",
            ],
        ),
        (
            "sm_90",
            1,
            [
                "{d}/sm_100.cubin",
                "  R105 error: the CUDA cubin has no code for sm_90 (it has sm_100)",
                "{d}/sm_80.cubin",
                "  R105 error: the CUDA cubin has no code for sm_90 (it has sm_80)",
            ],
        ),
        (
            "sm_90a",
            1,
            [
                "{d}/sm_100.cubin",
                "  R105 error: the CUDA cubin has no code for sm_90a (it has sm_100)",
                "{d}/sm_80.cubin",
                "  R105 error: the CUDA cubin has no code for sm_90a (it has sm_80)",
            ],
        ),
    ],
)
def test_require_arch_over_device_files(builds: Builds, tmp_path, archs, code, lines):
    directory = tmp_path / "cubins"
    directory.mkdir()
    for name in ("sm_80.cubin", "sm_90a.cubin", "sm_100.cubin", "multi.fatbin"):
        (directory / name).write_bytes(builds.path(name).read_bytes())
    run = ffitool("check", "--require-arch", archs, str(directory))
    assert run.returncode == code, run.stdout + run.stderr
    errors = sum(line.startswith("  R105") for line in lines)
    failed = "failed" if errors else "passed"
    summary = f"4 files checked: {errors} error{'s' * (errors != 1)}, 0 warnings, 0 info; {failed}"
    assert run.stdout.splitlines() == [line.format(d=directory) for line in lines] + [summary]


@pytest.mark.slow
def test_a_fatbin_with_ptx_meets_later_architectures(builds: Builds):
    """multi.fatbin holds SASS for sm_80 and sm_90a and PTX for compute_100."""
    path = str(builds.path("multi.fatbin"))
    run = ffitool("check", "--require-arch", "sm_80,sm_86,sm_90", "--require-arch", "sm_120", path)
    assert (run.returncode, run.stdout) == (
        0,
        "1 file checked: 0 errors, 0 warnings, 0 info; passed\n",
    )
    run = ffitool("check", "--require-arch", "sm_100a", path)
    assert run.returncode == 1
    assert run.stdout.splitlines()[1] == (
        "  R105 error: the CUDA fatbin has no code for sm_100a (it has sm_80, sm_90a, ptx sm_100)"
    )


@pytest.mark.slow
def test_require_arch_in_pyproject_and_over_payloads_with_their_offsets(builds: Builds, tmp_path):
    cubin, fatbin = builds.path("sm_80.cubin"), builds.path("multi.fatbin")
    packed = tmp_path / "libdevice.so"
    run = ffitool(
        "pack", str(FIXTURES / "libffi_c.so"), "--add", f"cuda_cubin:{cubin}",
        "--add", f"cuda_fatbin:{fatbin}", "-o", str(packed), "--quiet",
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    (tmp_path / "pyproject.toml").write_text('[tool.ffitool.check]\nrequire-arch = ["sm_86"]\n')
    assert ffitool("check", str(packed), cwd=tmp_path).returncode == 0
    run = ffitool("check", "--require-arch", "sm_90", "--format", "json", str(packed), cwd=tmp_path)
    assert run.returncode == 1, run.stdout + run.stderr
    (found,) = json.loads(run.stdout)["files"][0]["findings"]
    message = "module 3 (cuda_cubin) of __tvm_ffi__library_bin has no code for sm_90 (it has sm_80)"
    assert (found["code"], found["message"]) == ("R105", message)
    data = packed.read_bytes()
    assert (
        data[found["file_offset"] : found["file_offset"] + cubin.stat().st_size]
        == cubin.read_bytes()
    )


def test_a_mistyped_architecture_is_a_usage_error(tmp_path):
    run = ffitool("check", "--require-arch", "sm_90,90a", str(tmp_path))
    assert run.returncode == 2
    assert run.stderr == (
        "ffitool: error: command line: require-arch: '90a' is not an architecture such as sm_90,"
        " sm_90a or sm_100f\n"
    )


@pytest.mark.parametrize(
    ("kind", "arch", "required", "meets"),
    [
        ("sass", "sm_80", "sm_80", True),
        ("sass", "sm_80", "sm_86", True),  # later minor, same major
        ("sass", "sm_80", "sm_89", True),
        ("sass", "sm_86", "sm_80", False),  # never an earlier minor
        ("sass", "sm_80", "sm_90", False),  # never another major
        ("ptx", "sm_80", "sm_90", True),  # PTX JITs forward across majors
        ("ptx", "sm_80", "sm_100", True),
        ("ptx", "sm_90", "sm_80", False),
        ("sass", "sm_90a", "sm_90", True),  # `a` runs on its own architecture only
        ("sass", "sm_90a", "sm_90a", True),
        ("sass", "sm_90a", "sm_100", False),
        ("ptx", "sm_90a", "sm_100", False),  # nor JITs to another
        ("sass", "sm_90", "sm_90a", False),  # a required `a` asks for `a` code
        ("ptx", "sm_80", "sm_90a", False),
        ("sass", "sm_100f", "sm_103", True),  # `f` runs on its family's later minors
        ("sass", "sm_100f", "sm_103f", True),
        ("sass", "sm_103f", "sm_100", False),
        ("sass", "sm_100f", "sm_110", False),
        ("ptx", "sm_100f", "sm_120", False),
        ("sass", "sm_100", "sm_100f", False),  # a required `f` asks for family code
        ("sass", "sm_100a", "sm_100f", True),  # or `a` code, a superset of it
        ("sass", "sm_100a", "sm_103f", False),
    ],
)
def test_architecture_compatibility(kind, arch, required, meets):
    assert runs_on(DeviceCode(kind, arch), required) is meets


@pytest.mark.slow
def test_device_code_of_each_decoder(builds: Builds):
    """What R105 reads of each decoder's details: ptxas's -arch for a cubin (sm_100f, which the
    header names sm_100), every fatbin entry, a PTX text's target."""

    def code(kind: str, data: bytes) -> list[str]:
        return [
            piece.label() for piece in device_code(decode_payload(kind, memoryview(data)).details)
        ]

    assert code("cuda_cubin", builds.path("sm_100f.cubin").read_bytes()) == ["sm_100f"]
    assert code("cuda_cubin", builds.path("sm_90a.cubin").read_bytes()) == ["sm_90a"]
    assert code("cuda_fatbin", builds.path("family-debug.fatbin").read_bytes()) == [
        "sm_100f", "sm_103a", "ptx sm_100a",
    ]  # fmt: skip
    ptx = b".version 8.4\n.target sm_90a, debug\n.address_size 64\n.visible .entry k() { ret; }\n"
    assert code("cuda_ptx", ptx) == ["ptx sm_90a"]
    assert code("_lib", b"") == []
